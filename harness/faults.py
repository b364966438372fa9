"""Fault injection for HA tests: kill the primary, its host, the standby, or
ask the arbiter for a switchover.

Two targets share one interface (primary(), standbys(), kill_primary(),
kill_primary_host(), stop_standby(), switchover()):
  LocalCluster    the loopback cluster of `python -m harness.localcluster`,
                  described by its cluster.json
  ComposeCluster  the docker compose cluster (services pgsql-1, pgsql-2, arbiter)
Each fault returns the name of the node it hit.
"""
import json
import os
import signal
import subprocess
import threading

import psycopg2
import psycopg2.extensions

from pgha import protocol

FAULTS = ("kill-primary", "kill-primary-host", "stop-standby", "switchover")
ARBITER_TIMEOUT = 3.0


class FaultError(Exception):
    """A fault could not be injected (or its target could not be found)."""


def inject(target, fault):
    """Fire one fault by name; returns the node it hit."""
    if fault not in FAULTS:
        raise FaultError(f"unknown fault {fault!r} (choose from {', '.join(FAULTS)})")
    return getattr(target, fault.replace("-", "_"))()


class FaultThread(threading.Thread):
    """Fires `fault` when clock() reaches `at`; the outcome is in .result:
    {"fault", "at" (clock time it fired, None if never), "node", "error"}."""

    def __init__(self, target, fault, at, clock):
        super().__init__(daemon=True, name="fault")
        self.target, self.fault, self.at, self.clock = target, fault, at, clock
        self.cancelled = threading.Event()
        self.result = {"fault": fault, "at": None, "node": None, "error": None}

    def run(self):
        if self.cancelled.wait(max(0.0, self.at - self.clock())):
            return
        self.result["at"] = self.clock()
        try:
            self.result["node"] = inject(self.target, self.fault)
        except Exception as exc:   # reported as a failed injection, never lost in a thread
            self.result["error"] = str(exc) or type(exc).__name__

    def cancel(self):
        self.cancelled.set()


def standby_of(primary, names):
    others = [n for n in names if n != primary]
    if not others:
        raise FaultError(f"no standby: the only node is {primary}")
    return others


# ---------------------------------------------------------------- local

def read_pid(pgdata):
    """The postmaster pid: first line of <pgdata>/postmaster.pid."""
    path = os.path.join(pgdata, "postmaster.pid")
    try:
        with open(path) as f:
            return int(f.readline())
    except (OSError, ValueError) as exc:
        raise FaultError(f"no running PostgreSQL in {pgdata}: {exc}") from None


def process_tree(root):
    """root and all its descendants (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name may contain spaces: fields resume after ")"
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_tree(root):
    """SIGKILL a process and its descendants, like a crash would."""
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """The loopback cluster described by DIR/cluster.json."""

    def __init__(self, config, arbiter=None):
        self.dsn = config["dsn"]
        self.nodes = config["nodes"]
        a = config.get("arbiter") or {}
        self.arbiter = arbiter or ((a["host"], a["port"]) if "host" in a and "port" in a else None)

    @classmethod
    def load(cls, cluster_dir, arbiter=None):
        """Read cluster.json; raises FaultError with a clear message."""
        path = os.path.join(cluster_dir, "cluster.json")
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise FaultError(f"{path} not found (start a cluster with "
                             f"`python -m harness.localcluster --dir {cluster_dir}` or pass --dsn)") from None
        except (OSError, ValueError) as exc:
            raise FaultError(f"cannot read {path}: {exc}") from None
        if not isinstance(config, dict) or not isinstance(config.get("dsn"), str) \
                or not isinstance(config.get("nodes"), dict):
            raise FaultError(f"{path} lacks a \"dsn\" string or a \"nodes\" object")
        return cls(config, arbiter)

    def labels(self):
        """"host:port" -> node name, to name the server that acknowledged a write."""
        return {f"{n.get('host', '127.0.0.1')}:{n['pg_port']}": name
                for name, n in self.nodes.items() if "pg_port" in n}

    def primary(self):
        """The primary's name: the arbiter's word, else whichever node is not in recovery."""
        why = "cluster.json names no arbiter"
        if self.arbiter is not None:
            try:
                return arbiter_primary(*self.arbiter)
            except (OSError, protocol.ProtocolError, FaultError) as exc:
                why = f"arbiter: {exc}"
        return self._primary_by_recovery(why)

    def standbys(self):
        return standby_of(self.primary(), list(self.nodes))

    def _primary_by_recovery(self, why):
        params = psycopg2.extensions.parse_dsn(self.dsn)
        params.pop("target_session_attrs", None)
        params["connect_timeout"] = params.get("connect_timeout", "2")
        for name, n in self.nodes.items():
            params.update(host=n.get("host", "127.0.0.1"), port=str(n["pg_port"]))
            try:
                in_recovery = _in_recovery(params)
            except psycopg2.Error:
                continue
            if not in_recovery:
                return name
        raise FaultError(f"no primary found ({why}) and no node accepts writes")

    def kill_primary(self):
        victim = self.primary()
        kill_tree(read_pid(self.nodes[victim]["pgdata"]))
        return victim

    def kill_primary_host(self):
        victim = self.primary()
        self._kill_host(victim)
        return victim

    def stop_standby(self):
        victim = self.standbys()[0]
        self._kill_host(victim)
        return victim

    def _kill_host(self, name):
        """A host dies: its node daemon and its PostgreSQL, all at once."""
        node = self.nodes[name]
        roots = [node["pid"]] if node.get("pid") else []
        try:
            roots.append(read_pid(node["pgdata"]))
        except FaultError:
            pass   # PostgreSQL already down: the daemon alone is the host
        if not roots:
            raise FaultError(f"no process to kill for {name}")
        for pid in roots:
            kill_tree(pid)

    def switchover(self, to=None):
        if self.arbiter is None:
            raise FaultError("switchover needs the arbiter, which cluster.json does not name")
        to = to or self.standbys()[0]
        request_switchover(lambda m: protocol.call(*self.arbiter, m, timeout=ARBITER_TIMEOUT), to)
        return to


def _in_recovery(params):
    conn = psycopg2.connect(**params)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def arbiter_primary(host, port):
    return _status_primary(protocol.call(host, port, {"type": "status"}, timeout=ARBITER_TIMEOUT))


def _status_primary(reply):
    if reply.get("type") != "status" or not reply.get("primary"):
        raise FaultError(f"arbiter status names no primary: {reply}")
    return reply["primary"]


def request_switchover(call, to):
    reply = call({"type": "switchover", "to": to})
    if reply.get("type") != "ok":
        raise FaultError(f"arbiter refused the switchover to {to}: {reply.get('error', reply)}")


# ---------------------------------------------------------------- compose

# Run inside the arbiter container: one request to the arbiter on its loopback.
_ARBITER_CALL = """
import json, socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as s:
    s.sendall(sys.stdin.buffer.read())
    print(s.makefile("rb").readline().decode(), end="")
"""


class ComposeCluster:
    """The docker compose cluster; node names are the service names."""

    PGDATA = "/var/lib/pgha/data"
    SOCKET_DIR = "/var/lib/pgha/run"

    def __init__(self, compose_file="docker-compose.yml", services=("pgsql-1", "pgsql-2"),
                 arbiter_service="arbiter", arbiter_port=5430, dsn=None):
        self.compose_file = compose_file
        self.services = list(services)
        self.arbiter_service = arbiter_service
        self.arbiter_port = arbiter_port
        self.dsn = dsn     # credentials for the in-container fallback check

    def labels(self):
        return {}

    def _compose(self, *args, stdin=None, timeout=30):
        cmd = ["docker-compose", "-f", self.compose_file, *args]
        # what error messages show: the verb and service, never a password
        shown = "docker-compose " + " ".join(a for a in args[:6] if not a.startswith(("-", "PGPASSWORD=")))
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise FaultError("docker-compose is not installed") from None
        except subprocess.TimeoutExpired:
            raise FaultError(f"`{shown}` did not finish within {timeout} s") from None
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
            raise FaultError(f"`{shown}` failed: {why}")
        return done.stdout

    def _arbiter_call(self, message):
        line = json.dumps({"v": protocol.VERSION, **message}) + "\n"
        out = self._compose("exec", "-T", self.arbiter_service, "python3", "-c", _ARBITER_CALL,
                            str(self.arbiter_port), stdin=line)
        try:
            return json.loads(out)
        except ValueError:
            raise FaultError(f"arbiter gave no JSON reply: {out[:200]!r}") from None

    def primary(self):
        try:
            return _status_primary(self._arbiter_call({"type": "status"}))
        except FaultError as exc:
            return self._primary_by_recovery(f"arbiter: {exc}")

    def standbys(self):
        return standby_of(self.primary(), self.services)

    def _primary_by_recovery(self, why):
        params = psycopg2.extensions.parse_dsn(self.dsn or "")
        env = ["-e", f"PGPASSWORD={params['password']}"] if "password" in params else []
        for svc in self.services:
            try:
                out = self._compose("exec", "-T", *env, svc, "psql", "-h", self.SOCKET_DIR,
                                    "-U", params.get("user", "postgres"), "-d", params.get("dbname", "postgres"),
                                    "-tAc", "SELECT pg_is_in_recovery()", timeout=10)
            except FaultError:
                continue
            if out.strip() == "f":
                return svc
        raise FaultError(f"no primary found ({why}) and no node accepts writes")

    def kill_primary(self):
        victim = self.primary()
        # pkill is in the image (procps); the pid file is the fallback.
        self._compose("exec", "-T", victim, "sh", "-c",
                      f"pkill -9 -x postgres || kill -9 $(head -n1 {self.PGDATA}/postmaster.pid)")
        return victim

    def kill_primary_host(self):
        victim = self.primary()
        self._compose("kill", victim)
        return victim

    def stop_standby(self):
        victim = self.standbys()[0]
        self._compose("kill", victim)
        return victim

    def switchover(self, to=None):
        to = to or self.standbys()[0]
        request_switchover(self._arbiter_call, to)
        return to

