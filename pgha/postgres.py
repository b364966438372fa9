"""Control of the local PostgreSQL: binaries, configuration, start/stop,
promotion, cloning and rewinding, and the status the node reports.

Everything PostgreSQL-specific lives here so the HA loop (node.py) reads as
a sequence of decisions. Addresses are pgha.messages.Address values. Commands run as the configured OS user when the node
runs as root, because PostgreSQL refuses to run as root.
"""
import collections
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import psycopg2
from psycopg2 import sql

from pgha import cluster_config, disk, files, hba, logs, reaper, rewind as rejoin
from pgha.settings import RECOVERY_CONF_KEYS
from pgha.reply_age import REPLY_INTERVAL, ReplyAges
from pgha.messages import PG_RUNNING, PG_STARTING, PG_STOPPED, PRIMARY, STANDBY, PgStatus, ReplicationRow

log = logs.get("postgres")

CONF_FILE = "pgha.conf"
INCLUDE_LINE = f"include_if_exists = '{CONF_FILE}'\t# pgha: managed settings, keep last"
# Settings node.py owns: removed from postgresql.auto.conf so ALTER SYSTEM
# (e.g. the seed's synchronous_standby_names='*') cannot override them.
MANAGED_KEYS = ("synchronous_standby_names", "primary_conninfo", "primary_slot_name", "port",
                "listen_addresses", "unix_socket_directories", "recovery_target_timeline",
                "synchronous_commit")   # the server default stays "on": commits wait for the standby
RECOVERY_STATES = ("in archive recovery", "shut down in recovery")

STATUS_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0',
       pg_last_wal_receive_lsn() - '0/0',
       current_setting('synchronous_standby_names'),
       (SELECT status FROM pg_stat_wal_receiver),
       -- how long the WAL receiver has run: one the primary refuses (its WAL is
       -- gone) reconnects every wal_retrieve_retry_interval, "streaming" for a moment
       -- each time (a standby's only: a primary's heartbeat skips pg_stat_activity here)
       CASE WHEN pg_is_in_recovery() THEN (SELECT extract(epoch FROM clock_timestamp() - a.backend_start)
          FROM pg_stat_wal_receiver r JOIN pg_stat_activity a ON a.pid = r.pid) END,
       (SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)
          FROM pg_stat_activity WHERE wait_event = 'SyncRep'),
       CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       -- the standbys, in the same round trip (a standby's list is ignored)
       (SELECT coalesce(json_agg(json_build_array(
                   application_name, state, sync_state, coalesce(flush_lsn - '0/0', 0),
                   coalesce(extract(epoch FROM clock_timestamp() - reply_time), 1e9),
                   extract(epoch FROM reply_time))), '[]')
          FROM pg_stat_replication)
"""

# A slot PostgreSQL invalidated (past max_slot_wal_keep_size) can serve no
# one, not even pg_basebackup -S: drop it so it is made afresh.
DROP_LOST_SLOT_SQL = ("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND wal_status = 'lost' AND NOT active")
ENSURE_SLOT_SQL = ("SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                   "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)")
ENSURE_LOGICAL_SLOT_SQL = ("SELECT pg_create_logical_replication_slot(%s, %s) WHERE NOT EXISTS "
                           "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)")
LOGICAL_SLOT_WAIT = 0.3     # s a logical slot's creation may wait for open transactions (on the HA loop)
PRIMARY_SLOT_POSITIONS_SQL = ("SELECT slot_name, restart_lsn - '0/0' FROM pg_replication_slots "
                              "WHERE slot_name = ANY(%s) AND slot_type = 'physical' AND restart_lsn IS NOT NULL")
# A standby's copy moves up to the primary's position, never past what it has replayed, never back.
ADVANCE_COPY_SQL = ("SELECT pg_replication_slot_advance(slot_name, target) FROM pg_replication_slots, "
                    "LEAST('0/0'::pg_lsn + %s::numeric, pg_last_wal_replay_lsn()) AS target "
                    "WHERE slot_name = %s AND restart_lsn < target")
DROP_INACTIVE_SLOT_SQL = ("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                          "WHERE slot_name = %s AND NOT active")


class PostgresError(Exception):
    """A PostgreSQL operation failed; the message says which and why."""


class UpstreamNotReady(PostgresError):
    """The primary a standby would join cannot be reached or is not promoted
    yet: nothing was tried (a rejoin retries at the next heartbeat, no backoff)."""


def find_bindir(configured=None):
    """The folder holding pg_ctl: the setting, else pg_config, else the newest Debian install."""
    candidates = []
    if configured:
        candidates.append(configured)
    else:
        pg_config = shutil.which("pg_config")
        if pg_config:
            try:
                candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                                 timeout=10).stdout.strip())
            except (OSError, subprocess.SubprocessError):
                pass
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                          key=lambda p: int(re.sub(r"\D", "", p.split("/")[-2]) or 0), reverse=True)
        candidates.extend(versions)
    for folder in candidates:
        if folder and os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return folder
    where = f"pg_bindir={configured!r}" if configured else "pg_config --bindir or /usr/lib/postgresql/*/bin"
    raise PostgresError(f"PostgreSQL binaries (pg_ctl) not found in {where}; "
                        "install them (apt-get install postgresql) or set pg_bindir")


def _read_bytes(path: str, size: int) -> bytes:
    """The first `size` bytes of a file, without a Python file object (the
    HA loop reads these several times a heartbeat)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def read_postmaster_pid(pgdata: str) -> int | None:
    """The pid on the first line of <pgdata>/postmaster.pid, or None when the
    file is missing or unreadable. It may name a process that has died."""
    try:
        return int(_read_bytes(os.path.join(pgdata, "postmaster.pid"), 32).split(b"\n", 1)[0])
    except (OSError, ValueError):
        return None


def process_exists(pid: int) -> bool:
    """Whether any process holds pid, a zombie waiting to be reaped included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass            # alive, owned by someone else
    return True


def process_alive(pid: int) -> bool:
    """Whether pid names a live process (not a zombie)."""
    try:    # our child (the node daemon is the postmaster's subreaper): one syscall, nothing reaped
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        pass
    except OSError:
        return False
    if not process_exists(pid):
        return False
    try:
        return _read_bytes(f"/proc/{pid}/stat", 512).rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True     # no /proc: trust kill(0)


# postgresql.conf's parser reads backslash escapes inside a quoted string
# (\n, \t, \\, octal...), so a lone backslash would be lost or change the value.
_CONF_ESCAPES = {"\\": "\\\\", "'": "''", "\n": "\\n", "\r": "\\r"}


def quote_conf(value):
    """A postgresql.conf string literal that PostgreSQL reads back as exactly str(value)."""
    text = str(value)
    if "\0" in text:
        raise ValueError("a postgresql.conf value cannot hold a NUL character")
    return "'" + "".join(_CONF_ESCAPES.get(char, char) for char in text) + "'"


# Every connection to the primary finds its host gone (packets dropped, no
# RST) within about 5 s of silence, as the WAL receiver does: a clone, a
# rewind or a query waiting on a dead primary would otherwise wait for the
# kernel's two hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3}


def physical_slots(slots):
    """The names of the physical ones among permanent slots (setting permanent_slots), sorted."""
    return sorted(name for name, spec in slots.items() if spec["type"] == "physical")


def conninfo(**parts):
    """A libpq connection string; values quoted so spaces, quotes and backslashes survive."""
    def q(v):
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={q(v)}" for k, v in parts.items() if v is not None)


def pgpass_line(host, port, database, user, password):
    """One line of a libpq password file: ':' and '\\' escaped in every field."""
    def field(v):
        return str(v).replace("\\", "\\\\").replace(":", "\\:")
    return ":".join(field(v) for v in (host, port, database, user, password)) + "\n"


class Postgres:
    def __init__(self, settings):
        self.s = settings
        self.bindir = find_bindir(settings.pg_bindir)
        self.pgdata = os.path.abspath(settings.pgdata)
        base = os.path.dirname(self.pgdata)
        self.socket_dir = settings.socket_dir or os.path.join(base, "run")
        self.state_dir = settings.state_dir or os.path.join(base, "state")
        self.logfile = os.path.join(self.state_dir, "postgresql.log")
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                self._user = pwd.getpwnam(settings.pg_os_user)
            except KeyError:
                raise PostgresError(f"OS user {settings.pg_os_user!r} (setting 'pg_os_user') does not exist; "
                                    "PostgreSQL cannot run as root") from None
        self._conn = None
        self.reply_ages = ReplyAges()   # pg_stat_replication's reply age, whatever the standby's clock
        self._written = None    # write_settings' last arguments: a reload rewrites the same role
        # The cluster-wide parameters from the arbiter's last instruction (pgha.cluster_config);
        # set by the HA loop alone, read when pgha.conf is written.
        self.cluster_parameters = {}
        self.refused_values = {}    # name -> the value PostgreSQL refused (not taken again); the HA loop's too
        self._control_cache = None  # (the control file's stat, pg_controldata's fields)

    # -- files and folders ---------------------------------------------------

    def prepare_folders(self):
        for folder in (os.path.dirname(self.pgdata), self.socket_dir, self.state_dir):
            os.makedirs(folder, mode=0o700 if folder != self.socket_dir else 0o755, exist_ok=True)
            if self._as_root:
                os.chown(folder, self._user.pw_uid, self._user.pw_gid)

    def data_is_empty(self):
        return not os.path.isdir(self.pgdata) or not os.listdir(self.pgdata)

    def control_data(self):
        """pg_controldata's fields. Run again only when the control file
        changed: a stopped PostgreSQL's is read every heartbeat."""
        try:
            st = os.stat(os.path.join(self.pgdata, "global", "pg_control"))
            key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        except OSError:
            key = None      # pg_controldata says what is wrong
        if key is not None and self._control_cache is not None and self._control_cache[0] == key:
            return dict(self._control_cache[1])
        out = self._run(["pg_controldata", "-D", self.pgdata], check=True, quiet=True).stdout
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in pairs}
        self._control_cache = None if key is None else (key, fields)
        return dict(fields)

    def was_standby(self):
        """True when the data directory last ran (or stopped) in recovery."""
        if os.path.exists(os.path.join(self.pgdata, "standby.signal")):
            return True
        return self.control_data().get("Database cluster state") in RECOVERY_STATES

    def write_settings(self, role, primary_address=None, sync_standby=None, recovery=None):
        """(Re)write the managed settings for role "primary" (with its sync
        standby's name) or "standby" (following primary_address).

        A standby with no primary_address only replays the WAL it has (used
        to promote a stopped standby onto a new timeline). Whether PostgreSQL
        starts in recovery is set apart, by set_recovery_signal. `recovery`:
        a custom bootstrap's recovery parameters, for that start only (the
        next write leaves them out).
        """
        standby = role == "standby"
        self._written = (role, primary_address, sync_standby)
        chosen = cluster_config.effective(self.cluster_parameters, self.s.pg_parameters)
        params = {
            "listen_addresses": self.s.listen_addresses, "port": self.s.pg_port,
            "unix_socket_directories": self.socket_dir, "cluster_name": self.s.name,
            "wal_level": self.wal_level(), "max_wal_senders": 10, "max_replication_slots": 10,
            "wal_log_hints": "on", "hot_standby": "on", "synchronous_commit": "on",
            "wal_keep_size": rejoin.wal_keep_size(chosen),  # pg_rewind after a crash
            "max_slot_wal_keep_size": rejoin.max_slot_wal_keep_size(chosen, self._wal_fs_bytes()),
            "wal_sender_timeout": "5s", "wal_receiver_timeout": "5s",
            "wal_receiver_status_interval": f"{REPLY_INTERVAL:g}s", "wal_retrieve_retry_interval": "50ms",
            "recovery_target_timeline": "latest",
            "synchronous_standby_names": f'"{sync_standby}"' if sync_standby and not standby else "",
            "primary_conninfo": self._primary_conninfo(primary_address) if primary_address else "",
            "primary_slot_name": self.s.slot_name if standby else "",
            **chosen,
            **(recovery or {}),
        }
        body = "".join(f"{k} = {quote_conf(v)}\n" for k, v in params.items())
        self._write(os.path.join(self.pgdata, CONF_FILE),
                    "# Managed by pgha node.py and rewritten at every start: edit node_settings.py.\n" + body)
        self._ensure_include()
        self._strip_auto_conf()
        self._write_hba()

    def refused_parameters(self, candidate):
        """{name: PostgreSQL's line} for each of `candidate`'s parameters
        PostgreSQL refuses on its own (a misspelt name, a value it rejects:
        fatal at a start). `postgres -C` with an empty configuration file and
        each parameter as -c, so neither the data directory nor this node's
        own settings take part; one refusal per run, until none is left.
        Empty when the check cannot run (logged)."""
        empty = os.path.join(self.state_dir, "empty.conf")
        refused: dict[str, str] = {}
        left = dict(candidate)
        try:
            if not os.path.exists(empty):
                self._write(empty, "")
            while left:
                args = ["postgres", f"--config-file={empty}", "-C", "port", "-c", "lc_messages=C"]
                for name, value in left.items():
                    args += ["-c", f"{name}={cluster_config.conf_text(value)}"]
                result = self._run(args, quiet=True, timeout=20)
                found = re.search(r'parameter "([^"]+)"', result.stderr) if result.returncode == 1 else None
                name = found.group(1).lower() if found else None
                if name is None or name not in left:
                    return refused       # read them all (it then wants a data directory)
                refused[name] = _last_lines(result.stderr, 1).split(":  ", 1)[-1]
                del left[name]
        except (OSError, PostgresError) as exc:
            log.warning("cannot check the cluster-wide parameters with postgres -C: %s", exc)
        return refused

    def set_recovery_signal(self, on):
        """Make the next start run in recovery (a standby) or not (a primary).

        Not called when promoting: PostgreSQL removes standby.signal itself
        and fails if it is already gone.
        """
        signal_file = os.path.join(self.pgdata, "standby.signal")
        if on and not os.path.exists(signal_file):
            self._write(signal_file, "")
        elif not on and os.path.exists(signal_file):
            os.unlink(signal_file)
            self._fsync_dir(self.pgdata)

    def _primary_conninfo(self, address):
        return conninfo(host=address.host, port=address.pg_port, user=self.s.replication_user,
                        password=self.s.replication_password, application_name=self.s.name,
                        connect_timeout=2, **KEEPALIVES)

    def _ensure_include(self):
        path = os.path.join(self.pgdata, "postgresql.conf")
        lines = [line for line in self._read(path).splitlines() if not line.startswith("include_if_exists = 'pgha.conf'")]
        self._write(path, "\n".join(lines + [INCLUDE_LINE]) + "\n")

    def _strip_auto_conf(self, folder=None, drop=lambda name: name in MANAGED_KEYS):
        """postgresql.auto.conf (it wins over our file) without the parameters we set."""
        path = os.path.join(folder or self.pgdata, "postgresql.auto.conf")
        text = self._read(path, missing_ok=True)
        if text is None:
            return
        lines = text.splitlines()
        kept = [line for line in lines if not drop(line.split("=", 1)[0].strip())]
        if kept != lines:
            self._write(path, "\n".join(kept) + "\n")

    def _write_hba(self):
        """pg_hba.conf and pg_ident.conf from the settings (pgha.hba)."""
        path = os.path.join(self.pgdata, "pg_hba.conf")
        self._write(path, hba.render_hba(self._read(path), self.s))
        ident = hba.render_ident(self.s)
        if ident is not None:
            self._write(os.path.join(self.pgdata, "pg_ident.conf"), ident)

    def _read(self, path, missing_ok=False):
        """A managed file's text, never through a link: the daemon may run
        as root, and a link planted in the data directory (a database
        superuser can write there) must not make it copy another file."""
        data = files.read_no_follow(path)
        if data is not None:
            return data.decode("utf-8", errors="replace")
        if not os.path.lexists(path):
            if missing_ok:
                return None
            raise PostgresError(f"{path} is missing")
        raise PostgresError(f"{path} is a link or not a regular file: refusing to read it")

    def _write(self, path, content):
        """Write a managed file durably, unless it already holds `content`:
        a promotion or a restart rewrites only what changes (each write is
        two fsyncs on the switchover's path). Whatever wrote the file before
        made it durable: this daemon, initdb, pg_basebackup or pg_rewind."""
        if files.read_no_follow(path) == content.encode("utf-8"):
            return
        files.write_durably(path, content, owner=(self._user.pw_uid, self._user.pw_gid) if self._as_root else None)

    # -- running ---------------------------------------------------------------

    def postmaster_pid(self):
        """The running postmaster's pid, or None. The pid file is read each
        time (it is gone after a clean stop), and a zombie counts as gone."""
        pid = read_postmaster_pid(self.pgdata)
        return pid if pid is not None and process_alive(pid) else None

    def start(self, timeout=60):
        self.close()
        self._wait_postmaster_gone()
        result = self._run(["pg_ctl", "start", "-w", "-t", str(timeout), "-D", self.pgdata,
                            "-l", self.logfile], timeout=timeout + 10)
        if result.returncode != 0:
            raise PostgresError(f"pg_ctl start failed: {self._tail_log()}")

    def launch(self, timeout=10):
        """Start the postmaster without waiting until it accepts connections:
        return once it runs (its pid file names a live process), so status()
        says "starting" from then on. The caller goes on while it starts."""
        self.close()
        self._wait_postmaster_gone()
        result = self._run(["pg_ctl", "start", "-W", "-D", self.pgdata, "-l", self.logfile], timeout=timeout + 10)
        if result.returncode != 0 or not wait_until(lambda: self.postmaster_pid() is not None, timeout, 0.005):
            raise PostgresError(f"pg_ctl start failed: {self._tail_log()}")

    def recovery_signal_set(self):
        """Whether the next start runs in recovery (standby.signal is there)."""
        return os.path.exists(os.path.join(self.pgdata, "standby.signal"))

    def stop(self, mode="fast", timeout=60):
        """Stop PostgreSQL; in the end kill it, so a fence always holds."""
        self.close()
        pid = self.postmaster_pid()
        if pid is None:
            return
        # The signal pg_ctl stop -m MODE sends, without running pg_ctl (a
        # fork and two execs on a switchover's path), and a 10 ms wait of
        # our own: pg_ctl -w looks only every 100 ms.
        try:
            os.kill(pid, STOP_SIGNALS[mode])
            stopped = wait_until(lambda: not process_alive(pid), timeout, 0.01)
        except ProcessLookupError:
            stopped = True
        except PermissionError as exc:
            log.warning("cannot signal postmaster %d: %s", pid, exc)
            stopped = False
        if not stopped and self.postmaster_pid():
            log.warning("stop -m %s failed; killing postmaster %d", mode, pid)
            self.kill()

    def checkpoint(self, timeout=1.0):
        """A CHECKPOINT bounded by `timeout` seconds (a cancelled one goes on
        in the checkpointer); False when it did not finish. On a connection
        of its own: it runs beside the HA loop's status queries (a switchover's
        preparation thread)."""
        try:
            conn = self.new_connection(statement_timeout=timeout)
            try:
                with conn.cursor() as cur:
                    cur.execute("CHECKPOINT")
            finally:
                conn.close()
        except psycopg2.Error as exc:
            log.warning("checkpoint before the hand-over: %s", _first_line(exc))
            return False
        return True

    def fence(self, timeout=5.0):
        """Stop PostgreSQL now, without a subprocess: SIGQUIT is what
        pg_ctl -m immediate sends; SIGKILL if it is not gone in time."""
        self.close()
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except OSError:
            return
        if not wait_until(lambda: self.postmaster_pid() is None, timeout, 0.02):
            self.kill()

    def kill(self):
        pid = self.postmaster_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def promote(self, timeout=60):
        """Promote and return once PostgreSQL accepts writes. pg_promote()
        without its wait, then a 10 ms poll: pg_ctl promote -w and
        pg_promote(true) both check only every 100 ms."""
        try:
            self.execute("SELECT pg_promote(wait => false)")
        except PostgresError:   # not reachable by SQL: the signal file way
            self.close()
            result = self._run(["pg_ctl", "promote", "-w", "-t", str(timeout), "-D", self.pgdata],
                               timeout=timeout + 10)
            if result.returncode != 0:
                raise PostgresError(f"pg_ctl promote failed: {result.stderr.strip() or result.stdout.strip()}")
            return
        if not wait_until(self._promoted, timeout, 0.01):
            raise PostgresError(f"PostgreSQL still in recovery {timeout}s after pg_promote()")

    def _promoted(self, refuse_login=False):
        """Out of recovery; False while it cannot be asked. With refuse_login a
        refused login (a restored backup whose superuser or password is not
        admin_user's) is an error at once, not a wait."""
        try:
            return not self.query("SELECT pg_is_in_recovery()")[0][0]
        except PostgresError as exc:
            if refuse_login and ("authentication failed" in str(exc) or "does not exist" in str(exc)):
                raise PostgresError(f"cannot log in to the restored cluster as admin_user (its superuser and "
                                    f"password must be the backup's): {str(exc)[:200]}") from None
            return False

    def reload(self):
        self.execute("SELECT pg_reload_conf()")

    def rewrite_settings(self, written_for_role=None):
        """Rewrite pgha.conf and pg_hba.conf from the (reloaded) settings for the
        role last written; when this daemon wrote none yet (it took over a
        running server), for written_for_role() (the running server's role as
        the arbiter gave it), if given and not None; else False (the next
        start writes them)."""
        written = self._written or (written_for_role() if written_for_role else None)
        if written is None:
            return False
        self.write_settings(*written)
        return True

    def pending_restart(self, wait=0.3):
        """The parameters PostgreSQL has read but can apply only at a restart.
        The reload is a signal: give it `wait` to reach this backend (short:
        this runs in the HA loop)."""
        time.sleep(wait)
        return [row[0] for row in self.query("SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1")]

    # -- creating data directories --------------------------------------------

    def initdb(self):
        """Create a new cluster in a temporary folder, then move it into place."""
        tmp = self.pgdata + ".initdb"
        self._remove_tree(tmp)
        pwfile = os.path.join(self.state_dir, ".initdb-pw")
        self._write(pwfile, self.s.admin_password + "\n")
        try:
            result = self._run(["initdb", "-D", tmp, "-U", self.s.admin_user, f"--pwfile={pwfile}",
                                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"], timeout=300)
        finally:
            os.unlink(pwfile)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed: {_last_lines(result.stderr)}")
        self._swap_in(tmp)

    def create_roles(self):
        """The replication role, the application role (no superuser) and the
        application database, owned by the application role.

        The passwords travel as statement text (psycopg2 interpolates), so
        statement logging is off for this session: they never reach the server log.
        """
        self.execute("SET log_statement = 'none'; SET log_min_error_statement = 'panic'; "
                     "SET log_min_duration_statement = -1")
        try:
            for role, attributes, secret in (
                    (self.s.replication_user, "LOGIN REPLICATION", self.s.replication_password),
                    (self.s.app_user, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION",
                     self.s.app_password)):
                if not self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
                    self.execute(sql.SQL("CREATE ROLE {} " + attributes).format(sql.Identifier(role)))
                self.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (secret,))
        finally:
            self.execute("RESET log_statement; RESET log_min_error_statement; RESET log_min_duration_statement")
        if not self.query("SELECT 1 FROM pg_database WHERE datname = %s", (self.s.database,)):
            self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(self.s.database), sql.Identifier(self.s.app_user)))

    def basebackup(self, address, on_progress=None):
        """Clone the primary into a temporary folder; swap it in only when complete.

        pg_basebackup cannot resume, so an interrupted clone starts again;
        the old data stays in place until the new copy is whole. on_progress
        gets a rewind.CloneProgress about once a second.
        """
        tmp = self.pgdata + ".basebackup"
        self._remove_tree(tmp)
        source = conninfo(host=address.host, port=address.pg_port, user=self.s.replication_user, **KEEPALIVES)
        args = ["pg_basebackup", "-d", source, "-D", tmp, "-X", "stream", "-c", "fast",
                "-S", self.s.slot_name, "--no-password", "--progress"]

        def progress_line(line):
            progress = rejoin.parse_progress(line)
            if progress and on_progress:
                on_progress(progress)

        returncode, lines = self._run_reading_stderr(
            args, progress_line, env={"PGPASSWORD": self.s.replication_password, "PGCONNECT_TIMEOUT": "5"},
            timeout=24 * 3600)
        if returncode != 0:
            self._remove_tree(tmp)
            errors = "\n".join(line for line in lines if not rejoin.parse_progress(line))
            raise PostgresError(f"pg_basebackup from {address.host}:{address.pg_port} failed: "
                                f"{_last_lines(errors)}")
        self._swap_in(tmp)

    def restore_replica(self, name, method, scope, address, on_wait, every, timeout=24 * 3600):
        """Make this standby's copy with a replica method (node settings
        replica_methods: pgBackRest, WAL-G, Barman, a script) into a temporary
        folder, swapped in only once the method exited 0 and left there a
        data directory of this cluster (the primary's system identifier);
        the old data stays in place until then.

        The method runs as pg_os_user in a process group of its own (killed
        whole at `timeout`) and is told the folder three ways: --datadir
        (Patroni's parameter, unless no_params), $PGDATA, and
        $PGBACKREST_PG1_PATH (which overrides pgbackrest.conf's pg1-path, so
        Patroni's `pgbackrest --stanza=main --delta restore` restores here,
        not over the data directory; a --pg1-path on the command line would
        win over it). A restore's recovery.signal is removed: the node starts
        the copy as a standby (standby.signal) and keeps the restore_command
        it wrote, for the WAL since the backup."""
        connstring = conninfo(host=address.host, port=address.pg_port, user=self.s.replication_user,
                              dbname="postgres", connect_timeout=5, **KEEPALIVES)
        tmp = self._restore_into(
            f"replica method {name}", lambda folder: rejoin.replica_method_command(method, scope, folder, connstring),
            {"PGPASSWORD": self.s.replication_password, "PGCONNECT_TIMEOUT": "5"}, timeout, on_wait, every,
            check=lambda folder: self._restored_problem(folder, address))
        self._remove_signal(tmp, "recovery.signal")
        self._swap_in(tmp)

    def restore_bootstrap(self, method, scope, on_wait, every, timeout=24 * 3600):
        """The first primary's data from a backup (node setting
        bootstrap_method, Patroni's custom bootstrap), made like a replica
        method's copy (above: as pg_os_user, into a folder beside the data
        directory, swapped in once complete) but of whatever cluster the
        backup holds. Unless keep_existing_recovery_conf, the copy's signal
        files are removed: the node starts it with its own recovery.signal and
        the method's recovery_conf (start_recovering)."""
        tmp = self._restore_into("bootstrap method", lambda folder: rejoin.bootstrap_method_command(method, scope, folder),
                                 {}, timeout, on_wait, every, check=self._copy_problem)
        if not method.get("keep_existing_recovery_conf"):
            for name in ("recovery.signal", "standby.signal"):
                self._remove_signal(tmp, name)
            # A restore's own restore_command there would win over recovery_conf (Patroni drops it too).
            self._strip_auto_conf(tmp, drop=lambda name: RECOVERY_CONF_KEYS.match(name) is not None)
        # Durable before the copy is in place: a daemon stopped before the end
        # sets the copy aside (node rule B1), never promotes it short of its target.
        self._write(self._bootstrap_marker, "a bootstrap from a backup is under way\n")
        self._swap_in(tmp)

    @property
    def _bootstrap_marker(self):
        return os.path.join(self.state_dir, "bootstrap-unfinished")

    def bootstrap_unfinished(self):
        return os.path.lexists(self._bootstrap_marker)

    def bootstrap_finished(self):
        if os.path.lexists(self._bootstrap_marker):
            os.unlink(self._bootstrap_marker)
            self._fsync_dir(self.state_dir)

    def _restore_into(self, label, command, env, timeout, on_wait, every, check):
        """Run a method's command(folder) into <pgdata>.restore (made afresh,
        as pg_os_user); the folder once check(folder) finds no problem, else
        PostgresError "<label> <problem>" (the folder removed)."""
        tmp = self.pgdata + ".restore"
        try:
            self._remove_tree(tmp)
        except OSError as exc:      # e.g. a link planted there: not ours to follow
            raise PostgresError(f"{label}: cannot clear {tmp}: {exc.strerror or exc}") from None
        self._run(["mkdir", "-m", "0700", tmp], check=True, program=True)     # as pg_os_user: its own folder
        returncode, lines = self._run_calling_back(command(tmp), {"PGDATA": tmp, "PGBACKREST_PG1_PATH": tmp, **env},
                                                   timeout, on_wait, every)
        problem = (f"failed (exit status {returncode}): {_last_lines(chr(10).join(lines))}" if returncode != 0
                   else check(tmp))
        if problem:
            self._remove_tree_quietly(tmp)
            raise PostgresError(f"{label} {problem}")
        return tmp

    def _remove_signal(self, folder, name):
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            os.unlink(path)

    def _copy_problem(self, folder):
        """Why `folder` is not a data directory a method made, or None: a real
        folder of pg_os_user's (not a link) with PG_VERSION and pg_control."""
        try:
            info = os.lstat(folder)
        except OSError as exc:
            return f"left no folder {folder}: {exc.strerror}"
        owner = self._user.pw_uid if self._as_root else os.geteuid()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner:
            return f"left {folder} as something other than a folder of the PostgreSQL user's"
        if not all(os.path.isfile(os.path.join(folder, part)) for part in ("PG_VERSION", "global/pg_control")):
            return (f"exited 0 but left no data directory in {folder} (a method must restore into the folder it "
                    "is given: --datadir, $PGDATA or $PGBACKREST_PG1_PATH)")
        return None

    def _restored_problem(self, folder, address):
        """Why `folder` is not a copy to swap in, or None: a data directory
        (_copy_problem) whose system identifier is the primary's (a backup of
        an earlier cluster in the same repository would never stream)."""
        problem = self._copy_problem(folder)
        if problem:
            return problem
        try:
            fields = dict(line.split(":", 1) for line in self._run(["pg_controldata", "-D", folder], check=True,
                                                                   quiet=True).stdout.splitlines() if ":" in line)
            restored = fields.get("Database system identifier", "").strip()
            conn = self._upstream_connection(address)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT system_identifier::text FROM pg_control_system()")
                    primary = cur.fetchone()[0]
            finally:
                conn.close()
        except (PostgresError, psycopg2.Error) as exc:
            return f"made a copy that could not be checked: {str(exc).strip()[:200]}"
        if restored != primary:
            return (f"restored a backup of another cluster (system identifier {restored or 'unknown'}, the "
                    f"primary's is {primary}): is the repository's stanza older than this cluster?")
        return None

    def start_recovering(self, recovery, own_signal, on_wait, every, timeout=24 * 3600):
        """Start the restored first primary in targeted recovery (with
        `own_signal` our recovery.signal, else the one the method left) with
        the method's recovery parameters, and wait, calling on_wait() every
        `every` s, until it has promoted itself (the end of the archive, or
        recovery_target_action = promote). Its settings are then rewritten
        without the recovery parameters. PostgresError when it stops (a target
        it cannot reach) or pauses at its target, or at `timeout`."""
        if self.recovery_signal_set():
            raise PostgresError("the restored copy has a standby.signal: it would never promote (leave "
                                "keep_existing_recovery_conf off)")
        self.write_settings(PRIMARY, sync_standby=None, recovery=recovery)
        if own_signal:
            self._write(os.path.join(self.pgdata, "recovery.signal"), "")
        self.launch()
        deadline = time.monotonic() + timeout
        while not self._promoted(refuse_login=True):
            if self.postmaster_pid() is None:
                raise PostgresError(f"the restored cluster stopped during its recovery: {self._tail_log()}")
            if self._paused_at_target():
                raise PostgresError("the restored cluster paused at its recovery target: set recovery_conf "
                                    "recovery_target_action = 'promote'")
            if time.monotonic() > deadline:
                raise PostgresError(f"the restored cluster is still in recovery after {timeout:g}s")
            on_wait()
            time.sleep(every)
        self.write_settings(PRIMARY, sync_standby=None)
        self.reload()

    def _paused_at_target(self):
        try:
            return self.query("SELECT pg_get_wal_replay_pause_state() = 'paused'")[0][0]
        except PostgresError:
            return False

    def _remove_tree_quietly(self, path):
        try:
            self._remove_tree(path)
        except OSError as exc:
            log.warning("could not remove %s: %s", path, exc.strerror or exc)

    def _wait_postmaster_gone(self, timeout=10.0):
        """A killed postmaster stays a zombie until its parent (often init)
        reaps it, and PostgreSQL's tools refuse the data directory until then.
        The node daemon is a subreaper (pgha.reaper): it is often that parent."""
        pid = read_postmaster_pid(self.pgdata)
        if pid is not None and not process_alive(pid):
            wait_until(lambda: reaper.reap_postgres() >= 0 and not process_exists(pid), timeout, 0.02)

    def rewind(self, address):
        """pg_rewind from the new primary; returns a rewind.RewindOutcome.

        With --restore-target-wal, a segment the target lacks (its crash
        recovery removed it) is fetched from the source by pgha/fetch_wal.py,
        set as restore_command for this run only (write_settings drops it).
        """
        source = conninfo(host=address.host, port=address.pg_port, user=self.s.admin_user,
                          dbname="postgres", connect_timeout=5, **KEEPALIVES)
        self._wait_postmaster_gone()
        passfile = os.path.join(self.state_dir, "rewind.pgpass")
        self._write(passfile, rejoin.pgpass_line(address.host, address.pg_port, self.s.admin_user,
                                                 self.s.admin_password))
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fetch_wal.py")
        self._set_restore_command(rejoin.restore_command(sys.executable, script, address.host, address.pg_port,
                                                         self.s.admin_user, passfile))
        started = time.monotonic()
        try:
            result = self._run(["pg_rewind", "-D", self.pgdata, "--restore-target-wal",
                                f"--source-server={source}"],
                               env={"PGPASSFILE": passfile}, timeout=3600)    # the restore command's too
        finally:
            os.unlink(passfile)
        if result.returncode != 0:
            raise PostgresError(f"pg_rewind failed: {_last_lines(result.stderr)}")
        return rejoin.RewindOutcome(round(time.monotonic() - started, 2), rejoin.fetched_segments(result.stderr))

    def _set_restore_command(self, command):
        """Append restore_command to the managed settings (a later line wins)."""
        path = os.path.join(self.pgdata, CONF_FILE)
        text = self._read(path, missing_ok=True) or ""
        self._ensure_include()
        self._write(path, text + f"restore_command = {quote_conf(command)}\t# pgha: for pg_rewind only\n")

    def _swap_in(self, new_dir):
        """Replace pgdata by new_dir; the old data is kept aside until the swap is done."""
        old = self.pgdata + ".old"
        self._remove_tree(old)
        if os.path.exists(self.pgdata):
            os.rename(self.pgdata, old)
        os.rename(new_dir, self.pgdata)
        self._fsync_dir(os.path.dirname(self.pgdata))
        self._remove_tree(old)

    def set_aside(self, suffix):
        """Move the data directory to <pgdata><suffix> (an earlier one there
        is replaced), leaving none: a copy that must not be started again."""
        aside = self.pgdata + suffix
        self._remove_tree(aside)
        os.rename(self.pgdata, aside)
        self._fsync_dir(os.path.dirname(self.pgdata))
        return aside

    @staticmethod
    def _fsync_dir(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _remove_tree(path):
        if os.path.lexists(path):
            shutil.rmtree(path)

    # -- SQL -------------------------------------------------------------------

    def _connect(self):
        if self._conn is None or self._conn.closed:
            self._conn = self.new_connection(statement_timeout=5.0)
        return self._conn

    def new_connection(self, statement_timeout, dbname="postgres"):
        """A connection of its own (autocommit) to the local server, for a thread other than the HA loop's."""
        conn = psycopg2.connect(
            host=self.socket_dir, port=self.s.pg_port, user=self.s.admin_user,
            password=self.s.admin_password, dbname=dbname, connect_timeout=2,
            application_name="pgha-node", options=f"-c statement_timeout={int(statement_timeout * 1000)}")
        conn.autocommit = True
        return conn

    def query(self, sql, params=None):
        try:
            with self._connect().cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg2.Error as exc:
            self.close()
            raise PostgresError(_first_line(exc)) from None

    def execute(self, sql, params=None):
        self.query(sql, params)

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None

    def status(self):
        """What PostgreSQL says of itself: a messages.PgStatus (pg "running",
        "starting" or "stopped")."""
        if self.postmaster_pid() is None:
            return PgStatus(pg=PG_STOPPED)
        try:
            (in_recovery, lsn, receive_lsn, sync_names, receiver, receiver_age, syncrep_wait, timeline,
             standbys), = \
                self.query(STATUS_SQL)
            now = time.monotonic()
            replication = () if in_recovery else tuple(
                ReplicationRow(name=name, state=state, sync_state=sync_state, flush_lsn=int(flush),
                               reply_age=round(self.reply_ages.age(name, sent, float(age), now), 3))
                for name, state, sync_state, flush, age, sent in standbys)
            self.reply_ages.polled(now, {row.name for row in replication if row.name is not None})
        except PostgresError as exc:
            return PgStatus(pg=PG_STARTING, error=str(exc))
        return PgStatus(
            pg=PG_RUNNING, role=STANDBY if in_recovery else PRIMARY,
            lsn=int(lsn or 0), receive_lsn=int(receive_lsn or 0), timeline=timeline,
            sync_standby=sync_names.strip('"') or None, receiver=receiver,
            receiver_age=None if receiver_age is None else round(float(receiver_age), 3),
            syncrep_wait=round(float(syncrep_wait), 3), replication=replication,
        )

    def prepare_upstream(self, address, slot, checkpoint=False, wait_promoted=True):
        """Create our replication slot on the primary before streaming from it.

        With checkpoint, first make the primary write a checkpoint: a newly
        promoted primary's control file still shows the old timeline until
        then, and pg_rewind would wrongly find nothing to rewind. Without
        wait_promoted (a clean switchover: our WAL ends where the new
        timeline begins) the upstream may still be finishing its promotion:
        we stream from it as a cascading standby and follow its timeline
        switch (recovery_target_timeline = latest), so we are its synchronous
        standby when its first commit comes.
        """
        conn = self._upstream_connection(address)
        try:
            with conn.cursor() as cur:
                # The arbiter names the new primary before it has promoted: rewinding
                # from (or following) a server still in recovery finds "nothing to
                # rewind" and leaves a copy that cannot follow its new timeline.
                if wait_promoted and not wait_until(lambda: not _in_recovery(cur), PROMOTION_WAIT, 0.02):
                    raise UpstreamNotReady(f"primary {address.host}:{address.pg_port} is not promoted yet; "
                                        "retrying at the next heartbeat")
                if checkpoint:
                    cur.execute("CHECKPOINT")
                _ensure_slot(cur.execute, slot)
        except psycopg2.Error as exc:
            raise PostgresError(f"cannot prepare the primary for this standby: {str(exc).strip()}") from None
        finally:
            conn.close()

    def _upstream_connection(self, address):
        """An autocommit connection to the primary at `address`, as the admin user."""
        try:
            conn = psycopg2.connect(host=address.host, port=address.pg_port, user=self.s.admin_user,
                                    password=self.s.admin_password, dbname="postgres", connect_timeout=3,
                                    # no GSSAPI here (pg_hba: passwords): trying it maps Kerberos' libraries
                                    application_name="pgha-node", gssencmode="disable", **KEEPALIVES)
        except psycopg2.Error as exc:
            raise UpstreamNotReady(f"cannot connect to primary {address.host}:{address.pg_port}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None
        conn.autocommit = True
        return conn

    def ensure_slot(self, slot):
        _ensure_slot(self.execute, slot)

    def wal_level(self):
        """logical when a permanent logical slot is asked for (a running server
        takes it at its next restart: pending_restart), else replica; but once
        logical, it stays so while a logical slot may be left in the data
        directory (PostgreSQL refuses to start with one under replica): back
        to replica only when a running server shows none."""
        slots = getattr(self.s, "permanent_slots", None) or {}
        if any(spec["type"] == "logical" for spec in slots.values()):
            return "logical"
        text = self._read(os.path.join(self.pgdata, CONF_FILE), missing_ok=True) or ""
        if "\nwal_level = 'logical'\n" not in "\n" + text:
            return "replica"
        try:
            (left,), = self.query("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'") \
                if self.postmaster_pid() is not None else ((1,),)
        except (PostgresError, ValueError):
            left = 1
        return "logical" if left else "replica"

    def ensure_permanent_slots(self, slots):
        """On the primary: each permanent slot (setting permanent_slots) made if
        it is missing, a logical one in its database. One that PostgreSQL
        invalidated is left for its consumer to see, not silently replaced."""
        for name, spec in sorted(slots.items()):
            if spec["type"] == "physical":
                self.execute(ENSURE_SLOT_SQL, (name, name))
                continue
            try:
                # Short: making a logical slot waits for every open write
                # transaction, and this runs on the HA loop (tried again later).
                conn = self.new_connection(statement_timeout=LOGICAL_SLOT_WAIT, dbname=spec["database"])
            except psycopg2.Error as exc:
                raise PostgresError(f"permanent slot {name}: {_first_line(exc)}") from None
            try:
                with conn.cursor() as cur:
                    cur.execute(ENSURE_LOGICAL_SLOT_SQL, (name, spec["plugin"], name))
            except psycopg2.Error as exc:
                raise PostgresError(f"permanent slot {name}: {_first_line(exc)}") from None
            finally:
                conn.close()

    def primary_slot_positions(self, address, slots):
        """The primary's restart positions of the permanent physical slots
        (setting permanent_slots): {name: LSN as int}. Only a connection to
        the primary, none to the local server: it may run on a thread of its
        own while the HA loop goes on reporting (a dead primary's host holds
        it for connect_timeout)."""
        physical = physical_slots(slots)
        if not physical:
            return {}
        conn = self._upstream_connection(address)
        try:
            with conn.cursor() as cur:
                cur.execute(PRIMARY_SLOT_POSITIONS_SQL, (physical,))
                return dict(cur.fetchall())
        except psycopg2.Error as exc:
            raise PostgresError(f"cannot read the primary's permanent slots: {_first_line(exc)}") from None
        finally:
            conn.close()

    def copy_permanent_slots(self, slots, positions):
        """On a standby: its copies of the permanent physical slots, each moved up
        to where the primary's stands (`positions`, primary_slot_positions: so
        after a promotion here a consumer finds the WAL it still needs);
        logical ones, which a standby cannot serve (PostgreSQL before 16) but
        which would hold back its catalog, dropped."""
        physical = physical_slots(slots)
        for name in sorted(set(slots) - set(physical)):
            self.execute(DROP_INACTIVE_SLOT_SQL, (name,))
        for name in physical:
            self.execute(ENSURE_SLOT_SQL, (name, name))
            if name in positions:
                self.execute(ADVANCE_COPY_SQL, (int(positions[name]), name))

    def _wal_fs_bytes(self):
        """Size of the filesystem that holds pg_wal (None if unreadable)."""
        try:
            return disk.filesystem(os.path.join(self.pgdata, "pg_wal")).total_bytes
        except OSError:
            return None

    def drop_inactive_slots(self, keep=()):
        for (slot,) in self.query("SELECT slot_name FROM pg_replication_slots WHERE NOT active"):
            if slot not in keep:
                self.execute("SELECT pg_drop_replication_slot(%s)", (slot,))

    def parameter_names(self):
        """Every parameter name this PostgreSQL knows (`postgres --describe-config`), lowercased."""
        described = self._run(["postgres", "--describe-config"], check=True, quiet=True, timeout=20).stdout
        return frozenset(line.split("\t", 1)[0].lower() for line in described.splitlines() if line.strip())

    # -- helpers ---------------------------------------------------------------

    def _tool(self, args, env=None, program=False):
        """A PostgreSQL tool's command line and the subprocess keywords that
        run it (as the PostgreSQL OS user when the node runs as root).
        program: args[0] is any program (found on PATH), not a tool in bindir."""
        cmd = list(args) if program else [os.path.join(self.bindir, args[0])] + args[1:]
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        kwargs: dict = {"env": full_env}
        if self._as_root:
            full_env.update(HOME=self._user.pw_dir, USER=self._user.pw_name)
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return cmd, kwargs

    def _run(self, args, check=False, quiet=False, env=None, timeout=120, program=False):
        cmd, kwargs = self._tool(args, env, program)
        if not quiet:
            log.debug("running %s", " ".join(args[:2]))
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs)
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{args[0]} did not finish within {timeout}s") from None
        except OSError as exc:
            raise PostgresError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        if check and result.returncode != 0:
            raise PostgresError(f"{args[0]} failed: {_last_lines(result.stderr)}")
        return result

    def _run_reading_stderr(self, args, on_line, env=None, timeout=120):
        """Run a tool, calling on_line for each line of its stderr as it
        comes; returns (returncode, stderr lines)."""
        cmd, kwargs = self._tool(args, env)
        log.debug("running %s", " ".join(args[:2]))
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    cwd="/", **kwargs)
        except OSError as exc:
            raise PostgresError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        lines = []
        assert proc.stderr is not None      # opened as a pipe above
        try:
            for line in proc.stderr:
                line = line.rstrip("\r\n")
                lines.append(line)
                del lines[:-50]
                try:
                    on_line(line)
                except Exception:   # a reporting problem must not stall the tool on a full pipe
                    log.exception("while reading %s output", args[0])
        finally:
            timer.cancel()
            proc.wait()
        return proc.returncode, lines

    def _run_calling_back(self, args, env, timeout, on_wait, every):
        """Run a program that may take long (a replica method), calling
        on_wait() every `every` seconds meanwhile (the HA loop's heartbeat);
        its output is read by a thread, the last lines kept. Killed at
        `timeout`. Returns (returncode, last lines)."""
        cmd, kwargs = self._tool(args, env, program=True)
        log.debug("running %s", " ".join(args[:2]))
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", cwd="/", start_new_session=True, **kwargs)
        except OSError as exc:
            raise PostgresError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        lines: collections.deque[str] = collections.deque(maxlen=50)
        output = proc.stdout
        assert output is not None       # opened as a pipe above
        reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\r\n") for line in output),
                                  name="replica-method-output", daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        next_wait = time.monotonic() + every
        try:
            # Waited for without reaping (WNOWAIT), so its group id stays its own until the kill below.
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                now = time.monotonic()
                if now >= deadline:
                    lines.append(f"killed after {timeout:g}s")
                    break
                if now >= next_wait:
                    on_wait()
                    next_wait = time.monotonic() + every
                time.sleep(min(0.2, max(0.0, deadline - now)))
        finally:
            try:    # the whole group: a wrapper script's or pgBackRest's own workers too
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            reader.join(timeout=5)
        return proc.returncode, list(tuple(lines))

    def _tail_log(self, lines=5):
        try:
            with open(self.logfile) as f:
                return " | ".join(line.strip() for line in f.readlines()[-lines:])
        except OSError:
            return "(no log)"


# What pg_ctl stop -m MODE sends the postmaster.
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
PROMOTION_WAIT = 2.0    # seconds a rejoin waits for the named primary to finish its promotion


def _ensure_slot(execute, slot):
    """Our physical slot, made afresh if PostgreSQL invalidated it (execute: a cursor's or Postgres.execute)."""
    execute(DROP_LOST_SLOT_SQL, (slot,))
    execute(ENSURE_SLOT_SQL, (slot, slot))


def _in_recovery(cur):
    cur.execute("SELECT pg_is_in_recovery()")
    return cur.fetchone()[0]


def _last_lines(text, count=3):
    """The end of a tool's error output, whole lines only, on one line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _first_line(exc):
    """A psycopg2 error's first line (its text goes on with context lines)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
