"""A complete cluster on this one machine: the arbiter, two nodes and two
PostgreSQL instances on loopback ports, with generated settings.

    python -m harness.localcluster [--dir DIR] [--base-port N] [--fresh] [--demo] [--etcd]

--etcd: the arbiter's state in etcd (a 3-member etcd on loopback in DIR/etcd,
client ports base+30, +32, +34) and two arbiter processes ("arbiter" on the
base port, "arbiter-2" on base+9), one of which leads.

Stays in the foreground and stops everything on Ctrl-C. As root it runs the
daemons (and so PostgreSQL) as the `postgres` OS user, from a copy of the
code inside DIR so that user can read it. The test suites use the
LocalCluster class directly to kill and restart pieces; tests.py loads one
from the DIR/cluster.json a running cluster keeps up to date, to inject faults.
"""
import argparse
import json
import os
import pwd
import runpy
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import psycopg2
import psycopg2.extensions

from harness.cluster import ARBITER_TIMEOUT, ClusterHandle, FaultError
from harness.procs import listening_within
from harness.etcd import EtcdCluster
from pgha import arbiter_link, keys, protocol
from pgha import tls as tls_mod
from pgha.postgres import pgpass_line, process_alive, read_postmaster_pid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_FILES = ("node.py", "arbiter.py", "logger.py", "node_settings.py", "arbiter_settings.py", "tests.py")
NODES = ("pgsql-1", "pgsql-2")
SLOTS = {"pgsql-1": "rep177", "pgsql-2": "rep98"}   # as in the original setup
DEFAULT_BASE_PORT = 6430
ADMIN_USER, APP_USER = "kronos", "app"     # the node's superuser; the application's role (the DSN's)
# What a client needs not to hang on a dead or cut-off primary (README "Client settings"):
# unacknowledged data gives up after 3 s, an idle connection is found dead within ~4 s.
CLIENT_TIMEOUTS = "keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=2 tcp_user_timeout=3000"
SECRETS_FILE = "secrets.json"   # this cluster's random passwords, 0600
PASSWORD_SETTINGS = ("admin_password", "replication_password", "app_password")
MARKER = ".pgha-local-cluster"    # only folders holding it are ever wiped by --fresh


def default_dir():
    return os.environ.get("PGHA_CLUSTER_DIR") or "/var/tmp/pgha-local-cluster"


class ClusterError(Exception):
    pass


class LocalCluster(ClusterHandle):
    """The loopback cluster: runs its processes (prepare, start, stop), or is
    loaded from a running one's cluster.json (load) to inject faults."""

    def __init__(self, workdir=None, base_port=DEFAULT_BASE_PORT, os_user="postgres", echo=False,
                 arbiter_overrides=None, passwords=None, node_overrides=None, etcd=False, tls=False,
                 per_node_overrides=None, extra_clusters=None, extra_env=None):
        """passwords: {setting: password} for PASSWORD_SETTINGS; by default
        random ones made at the first prepare() and kept in DIR/secrets.json.
        extra_clusters: {name: [node, node]} more clusters the same arbiter
        serves (its setting clusters; keys by pgha-keys add-cluster in
        keys/NAME/), played by simulated nodes (start_simnode); the first
        node is the initial primary. This cluster stays "main"."""
        self.extra_clusters = dict(extra_clusters or {})
        self.sim_procs = {}         # (cluster, node) -> a harness.simnode process
        self.dir = os.path.abspath(workdir or default_dir())
        self.passwords = dict(passwords or {})
        self._init_arbiter = False  # pass --init at the next arbiter start (a new cluster)
        self.base_port = base_port
        self.echo = echo
        self.arbiter_overrides = arbiter_overrides or {}
        self.node_overrides = node_overrides or {}     # settings for both nodes (e.g. pg_parameters, api_bind)
        self.per_node_overrides = per_node_overrides or {}     # node -> settings for that node alone
        self.user = pwd.getpwnam(os_user) if os_user and os.geteuid() == 0 else None
        self.procs = {}
        self.extra_env = dict(extra_env or {})   # key ("arbiter", a node) -> more environment for that daemon
        self.arbiter_port = base_port
        self.arbiter = ("127.0.0.1", base_port)       # None: no arbiter to ask
        self.hosts = {name: "127.0.0.1" for name in NODES}
        self.pg_ports = {name: base_port + 1 + i for i, name in enumerate(NODES)}
        self.peer_ports = {name: base_port + 11 + i for i, name in enumerate(NODES)}
        self.api_ports = {name: base_port + 21 + i for i, name in enumerate(NODES)}    # REST API
        self._pgdata = {name: os.path.join(self.dir, name, "data") for name in NODES}
        self._daemon_pids = {}     # daemons this object did not start (loaded from cluster.json)
        self._dsn = None           # a loaded cluster's own DSN
        self.keys_dir = os.path.join(self.dir, "keys")     # pgha-keys output, 0700/0600
        self._operator = None      # the operator's auth.Credential, loaded when first needed
        self.tls = tls             # TLS on the control ports: certificates in keys/tls (pgha.tls)
        self._tls_client = None    # the operator's TLS client context, made when first needed
        # --etcd: the etcd members and the arbiter processes (name -> port)
        self.etcd = EtcdCluster(os.path.join(self.dir, "etcd"), base_port + 30, members=3) if etcd else None
        self.arbiter_ports = {"arbiter": base_port, "arbiter-2": base_port + 9} if etcd else {"arbiter": base_port}

    @classmethod
    def load(cls, cluster_dir, arbiter=None):
        """The cluster a cluster.json describes (written by a running
        LocalCluster); raises FaultError with a clear message."""
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
        a = config.get("arbiter") or {}
        cluster = cls(cluster_dir, base_port=a.get("port", DEFAULT_BASE_PORT), os_user=None)
        cluster._dsn = config["dsn"]
        cluster.tls = os.path.exists(cluster.tls_file("operator", ".crt"))
        cluster.arbiter = arbiter or ((a["host"], a["port"]) if "host" in a and "port" in a else None)
        nodes = config["nodes"]
        cluster.hosts = {name: n.get("host", "127.0.0.1") for name, n in nodes.items()}
        cluster.pg_ports = {name: n["pg_port"] for name, n in nodes.items() if "pg_port" in n}
        cluster.api_ports = {name: n["api_port"] for name, n in nodes.items() if "api_port" in n}
        cluster._pgdata = {name: n["pgdata"] for name, n in nodes.items() if "pgdata" in n}
        cluster._daemon_pids = {name: n["pid"] for name, n in nodes.items() if n.get("pid")}
        return cluster

    # -- layout ----------------------------------------------------------------

    @property
    def nodes(self):
        return list(self.hosts)

    @property
    def dsn(self):
        return self._dsn or self.dsn_for(*NODES, timeouts=True)

    def dsn_for(self, *nodes, password=True, timeouts=False):
        """The application's DSN (the app role) for nodes; password=None leaves
        the password out (it is in the pgpass file); timeouts: with the
        client settings an application should use (CLIENT_TIMEOUTS)."""
        hosts = ",".join("127.0.0.1" for _ in nodes)
        ports = ",".join(str(self.pg_ports[n]) for n in nodes)
        secret = f" password={conninfo_quote(self.passwords['app_password'])}" if password else ""
        extra = f" {CLIENT_TIMEOUTS}" if timeouts else ""
        return (f"host={hosts} port={ports} dbname=testdb user={APP_USER}{secret} "
                f"target_session_attrs=read-write connect_timeout=2{extra}")

    def superuser_params(self, name):
        """psycopg2.connect keywords for the node's superuser (tests that inspect the server)."""
        return dict(host=self.hosts[name], port=self.pg_ports[name], dbname="testdb", user=ADMIN_USER,
                    password=self.passwords["admin_password"])

    def pgdata(self, name):
        try:
            return self._pgdata[name]
        except KeyError:
            raise FaultError(f"cluster.json names no pgdata for {name}") from None

    def prepare(self, fresh=False):
        """Write the code copy and the settings files; keep data unless fresh."""
        if fresh and os.path.exists(self.dir):
            self._check_owned()
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        open(os.path.join(self.dir, MARKER), "w").close()
        self._load_or_make_passwords()
        state_file = os.path.join(self.dir, "arbiter-state.json")
        # A new cluster (no decision, no data yet) is the one case the arbiter may start from nothing.
        self._init_arbiter = not os.path.exists(state_file) and all(
            not os.path.exists(self.pgdata(name)) for name in NODES)
        app = os.path.join(self.dir, "app")
        shutil.rmtree(app, ignore_errors=True)
        os.makedirs(app)
        for name in APP_FILES:
            if os.path.exists(os.path.join(ROOT, name)):
                copied = shutil.copy2(os.path.join(ROOT, name), app)
                # the daemons refuse a settings file others can write (a checkout under umask 002)
                os.chmod(copied, stat.S_IMODE(os.stat(copied).st_mode) & ~0o022)
        shutil.copytree(os.path.join(ROOT, "pgha"), os.path.join(app, "pgha"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        if self.etcd is not None:
            # The decision lives in etcd: a fresh etcd folder is a new cluster too.
            self._init_arbiter = not os.path.exists(self.etcd.folder) and all(
                not os.path.exists(self.pgdata(name)) for name in NODES)
        for key, port in self.arbiter_ports.items():
            arbiter = {"listen_port": port, "state_file": state_file,
                       "log_file": os.path.join(self.dir, f"{key}.log"), **self.arbiter_overrides}
            if self.etcd is not None:
                arbiter.update(state_backend="etcd", etcd_endpoints=self.etcd_endpoints_of(key),
                               acting_record_file=os.path.join(self.dir, f"{key}.acting"))
            arbiter.setdefault("key_file", self.key_file("arbiter"))
            if self.extra_clusters:
                arbiter["clusters"] = {"main": {"nodes": list(NODES), "initial_primary": NODES[0]}, **{
                    name: {"nodes": list(nodes), "initial_primary": nodes[0]}
                    for name, nodes in self.extra_clusters.items()}}
            if self.tls:
                arbiter.update(self.tls_settings("arbiter"))
            self._write_settings(f"{key}.py", arbiter)
        for name in NODES:
            self._write_settings(f"{name}.py", {
                "name": name, "pg_port": self.pg_ports[name], "peer_port": self.peer_ports[name],
                "api_port": self.api_ports[name],
                "slot_name": SLOTS[name], "arbiter_port": self.arbiter_port,
                "arbiter_hosts": [f"127.0.0.1:{p}" for p in self.arbiter_ports.values()] if self.etcd else None,
                "pgdata": self.pgdata(name), "admin_user": ADMIN_USER, "app_user": APP_USER,
                **{setting: self.passwords[setting] for setting in PASSWORD_SETTINGS},
                "log_file": os.path.join(self.dir, f"{name}.log"), "key_file": self.key_file(name),
                **(self.tls_settings(name) if self.tls else {}),
                **self.node_overrides, **self.per_node_overrides.get(name, {}),
            })
        self._chown_tree(self.dir)
        self._make_keys()

    def etcd_member_of(self, key):
        """The etcd member co-located with arbiter `key` (arbiter i with member i):
        the first endpoint it talks to."""
        return self.etcd.names[list(self.arbiter_ports).index(key) % len(self.etcd.names)]

    def etcd_endpoints_of(self, key):
        """Every member, the arbiter's own first (the client sticks to the one that answered last)."""
        own = self.etcd.names.index(self.etcd_member_of(key))
        endpoints = self.etcd.endpoints
        return endpoints[own:] + endpoints[:own]

    def key_file(self, member):
        return os.path.join(self.keys_dir, member + keys.SUFFIX)

    def tls_file(self, member, ext):
        return os.path.join(self.keys_dir, "tls", member + ext)

    def tls_settings(self, member):
        return {"tls_cert_file": self.tls_file(member, ".crt"), "tls_key_file": self.tls_file(member, ".key"),
                "tls_ca_file": self.tls_file("ca", ".crt")}

    def tls_client(self):
        """The operator's TLS client context, or None when the cluster runs without TLS."""
        if self.tls and self._tls_client is None:
            try:
                self._tls_client = tls_mod.client_context(self.tls_file("operator", ".crt"),
                                                          self.tls_file("operator", ".key"),
                                                          self.tls_file("ca", ".crt"))
            except tls_mod.TLSError as exc:
                raise FaultError(str(exc)) from None
        return self._tls_client

    def _make_keys(self):
        """One keyring per member, made once per cluster folder. The daemons
        (run as the postgres user) own theirs; the operator's and reader's
        stay with the harness's user, as an operator's would."""
        if not os.path.exists(self.key_file("arbiter")):
            keys.generate(self.keys_dir, NODES)
        for name, nodes in self.extra_clusters.items():
            if not os.path.exists(os.path.join(self.keys_dir, name)):
                keys.add_cluster(self.keys_dir, name, list(nodes))
        if self.tls and not os.path.exists(self.tls_file("ca", ".crt")):
            tls_mod.generate(os.path.join(self.keys_dir, "tls"), ["arbiter", *NODES, "operator"])
        if self.user:
            for path in [self.keys_dir] + [self.key_file(m) for m in ("arbiter",) + NODES]:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
            if self.tls:    # the daemons' certificates are theirs; the CA key and the operator's stay ours
                os.chown(os.path.join(self.keys_dir, "tls"), self.user.pw_uid, self.user.pw_gid)
                for member in ("arbiter",) + NODES:
                    for ext in (".crt", ".key"):
                        os.chown(self.tls_file(member, ext), self.user.pw_uid, self.user.pw_gid)
                for name in ("ca.key", "operator.key", "operator.crt"):
                    os.chown(os.path.join(self.keys_dir, "tls", name), os.getuid(), os.getgid())
            for member in ("operator", "reader"):   # _chown_tree gave them away on a restart
                os.chown(self.key_file(member), os.getuid(), os.getgid())

    def _check_owned(self):
        ours = any(os.path.exists(os.path.join(self.dir, name)) for name in (MARKER, "cluster.json"))
        if os.listdir(self.dir) and not ours:
            raise ClusterError(f"{self.dir} exists and is not a local cluster folder; refusing to wipe it")

    def _write_settings(self, filename, values):
        body = "".join(f"{k} = {v!r}\n" for k, v in values.items())
        self._write_private(filename, "# Generated by harness.localcluster\n" + body)

    # -- secrets: random per cluster, in files only the daemons' user can read -----

    def _load_or_make_passwords(self):
        """This cluster's passwords: given, else kept from an earlier prepare, else new random ones."""
        path = os.path.join(self.dir, SECRETS_FILE)
        kept = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                kept = json.load(f)
        for setting in PASSWORD_SETTINGS:
            self.passwords.setdefault(setting, kept.get(setting) or secrets.token_urlsafe(24))
        self._write_private(SECRETS_FILE, json.dumps(self.passwords, indent=1) + "\n")

    def _write_private(self, filename, text):
        """Write DIR/filename created 0600 (never readable by others, even briefly),
        owned by the daemons' user when we are root; replaced atomically."""
        path = os.path.join(self.dir, filename)
        tmp = path + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if self.user:
                os.fchown(f.fileno(), self.user.pw_uid, self.user.pw_gid)
            f.write(text)
        os.replace(tmp, path)
        return path

    def _chown_tree(self, path):
        if not self.user:
            return
        for folder, dirs, files in os.walk(path):
            for item in [folder] + [os.path.join(folder, n) for n in dirs + files]:
                os.lchown(item, self.user.pw_uid, self.user.pw_gid)

    # -- processes -----------------------------------------------------------

    def _spawn(self, key, script, settings_file, flags=()):
        cmd = [sys.executable, "-u", os.path.join(self.dir, "app", script), "--settings",
               os.path.join(self.dir, settings_file), *flags]
        kwargs = {}
        env = dict(os.environ)
        env.update(self.extra_env.get(key, {}))
        if self.user:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
            env.update(HOME=self.user.pw_dir, USER=self.user.pw_name)
        out = subprocess.PIPE if self.echo else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdout=out, stderr=out,
                                start_new_session=True, **kwargs)
        if self.echo:
            threading.Thread(target=_copy_lines, args=(proc.stderr,), daemon=True).start()
        self.procs[key] = proc
        self.write_manifest()
        return proc

    def check_runtime(self):
        """The daemons' user must be able to run this Python with psycopg2."""
        cmd = [sys.executable, "-c", "import psycopg2"]
        kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[]) if self.user else {}
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, cwd="/", **kwargs)
        except OSError as exc:
            result = subprocess.CompletedProcess(cmd, 1, "", str(exc))
        if result.returncode != 0:
            who = self.user.pw_name if self.user else "this user"
            raise ClusterError(f"{who} cannot run {sys.executable} with psycopg2 "
                               f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'failed'}); "
                               "start the cluster with bin/cluster, which makes a virtualenv it can use")

    def start_arbiter(self, *flags, key="arbiter"):
        """flags: extra arguments (--rebuild); --init is added on a new cluster's first start.
        key: which arbiter process (--etcd: "arbiter" or "arbiter-2")."""
        if self._init_arbiter:
            flags = ("--init",) + flags
            self._init_arbiter = False
        return self._spawn(key, "arbiter.py", f"{key}.py", flags)

    def wait_listening(self, port, timeout=15):
        if not listening_within(port, timeout):
            raise ClusterError(f"no arbiter listening on port {port} after {timeout}s; see {self.dir}/arbiter.log")

    def start_node(self, name):
        return self._spawn(name, "node.py", f"{name}.py")

    def start(self):
        self.check_runtime()
        if self.etcd is not None:
            self.etcd.start()
            self.start_arbiter()
            self.wait_listening(self.arbiter_port)     # it has created the state (--init) by then
            for key in list(self.arbiter_ports)[1:]:
                self.start_arbiter(key=key)
        else:
            self.start_arbiter()
        for name in NODES:
            self.start_node(name)

    def send_signal(self, key, signum):
        proc = self.procs.get(key)
        if proc and proc.poll() is None:
            os.kill(proc.pid, signum)

    def kill(self, key):
        """SIGKILL a daemon and wait until it is gone."""
        self.send_signal(key, signal.SIGKILL)
        proc = self.procs.pop(key, None)
        if proc:
            proc.wait(timeout=10)
            self.write_manifest()

    def terminate(self, key):
        """SIGTERM a daemon (a leading arbiter steps down at once) and wait until it is gone."""
        self.send_signal(key, signal.SIGTERM)
        proc = self.procs.pop(key, None)
        if proc:
            proc.wait(timeout=30)
            self.write_manifest()

    def postmaster_pid(self, name):
        """The running postmaster's pid, or None."""
        pid = read_postmaster_pid(self.pgdata(name))
        return pid if pid and process_alive(pid) else None

    def kill_postgres(self, name, signum=signal.SIGKILL):
        """Signal the node's postmaster; SIGKILL takes all its processes at once,
        like a crash. Returns the pid; FaultError when no PostgreSQL runs."""
        pid = self.postmaster_pid(name)
        if pid is None:
            raise FaultError(f"no running PostgreSQL in {self.pgdata(name)}")
        if signum == signal.SIGKILL:
            kill_tree(pid)
        else:
            os.kill(pid, signum)
        return pid

    def fencer_pid(self, name):
        """The node's fencer (pgha/fencer.py), from its pid file, or None."""
        from pgha.fencing import running_fencer
        state = os.path.join(self.dir, name, "state")
        return running_fencer(os.path.join(state, "fencer.pid"), os.path.join(state, "fencer.fifo"))

    def kill_fencer(self, name):
        pid = self.fencer_pid(name)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return pid

    def kill_daemon(self, name):
        """The node daemon alone killed -9 (OOM, crash): PostgreSQL and the fencer run on."""
        self.kill(name)

    def freeze_daemon(self, name):
        """SIGSTOP the node daemon alone (swap storm, debugger): PostgreSQL and the fencer run on."""
        self.send_signal(name, signal.SIGSTOP)

    def thaw_daemon(self, name):
        self.send_signal(name, signal.SIGCONT)

    def freeze_host(self, name):
        """SIGSTOP everything of the host (daemon, fencer, PostgreSQL): a VM paused, a swap storm."""
        for pid in self._host_pids(name):
            _signal(pid, signal.SIGSTOP)

    def thaw_host(self, name):
        for pid in self._host_pids(name):
            _signal(pid, signal.SIGCONT)

    def _host_pids(self, name):
        proc = self.procs.get(name)
        roots = [proc.pid if proc and proc.poll() is None else None, self.fencer_pid(name),
                 self.postmaster_pid(name)]
        return [pid for root in roots if root for pid in process_tree(root)]

    def kill_host(self, name):
        """A dead host: the node daemon, its fencer and its PostgreSQL, all at once."""
        proc = self.procs.get(name)
        daemon = proc.pid if proc and proc.poll() is None else self._daemon_pids.get(name)
        roots = [pid for pid in (daemon, self.postmaster_pid(name)) if pid]
        if not roots:
            raise FaultError(f"no process to kill for {name}")
        for pid in roots:
            kill_tree(pid)
        self.kill_fencer(name)
        if proc:
            self.kill(name)    # reap it, forget it: start_node() brings the host back

    def start_simnode(self, cluster, node, role):
        """A simulated node of an extra cluster (harness.simnode), as its own process."""
        nodes = self.extra_clusters[cluster]
        listed = os.path.join(self.dir, f"sim-{cluster}-{node}.json")
        with open(listed, "w") as f:
            json.dump([{"cluster": cluster, "node": node, "peer": next(n for n in nodes if n != node),
                        "key_file": os.path.join(self.keys_dir, cluster, node + keys.SUFFIX), "role": role}], f)
        with open(os.path.join(self.dir, f"sim-{cluster}-{node}.log"), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "harness.simnode", "--arbiter",
                                     f"127.0.0.1:{self.arbiter_port}", "--nodes", listed], cwd=ROOT,
                                    stdout=log, stderr=log, start_new_session=True)
        self.sim_procs[(cluster, node)] = proc
        return proc

    def stop_simnode(self, cluster, node):
        proc = self.sim_procs.pop((cluster, node), None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    def cluster_call(self, cluster, message):
        """arbiter_call about one of the arbiter's clusters."""
        return self.arbiter_call({**message, "cluster": cluster})

    def stop(self, timeout=60):
        for cluster, node in list(self.sim_procs):
            self.stop_simnode(cluster, node)
        for key in list(NODES) + list(self.arbiter_ports):
            self.send_signal(key, signal.SIGCONT)    # a frozen daemon could not stop
            self.send_signal(key, signal.SIGTERM)
            proc = self.procs.get(key)
            if proc:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in NODES:   # a node killed earlier may have left its PostgreSQL and fencer behind
            self.kill_fencer(name)
            if self.postmaster_pid(name):
                self.kill_postgres(name)
        deadline = time.monotonic() + timeout    # SIGKILL is not instant: stopped means gone
        while any(self.postmaster_pid(name) for name in NODES) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.etcd is not None:
            self.etcd.stop()

    def discard_data(self):
        """Remove the stopped cluster's bulky data: each node's data directory
        with its staging copies (data.*), and the etcd members. Logs, settings
        and keys stay, for reading after a failure. A test suite keeps ~80 MB
        per node per test otherwise (14 GB a run)."""
        for name in NODES:
            if self.postmaster_pid(name):
                raise FaultError(f"PostgreSQL still runs in {self.pgdata(name)}: stop the cluster first")
            folder, data = os.path.split(self.pgdata(name))
            if not os.path.isdir(folder):
                continue
            for entry in os.listdir(folder):
                if entry == data or entry.startswith(data + "."):
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
        if self.etcd is not None:
            for member in self.etcd.names:
                shutil.rmtree(os.path.join(self.etcd.folder, member), ignore_errors=True)

    # -- observing -------------------------------------------------------------

    def status(self):
        return self.arbiter_call({"type": "status"})

    def arbiter_call(self, message):
        if self.arbiter is None:
            raise FaultError("cluster.json names no arbiter")
        if len(self.arbiter_ports) > 1:     # the leading arbiter, wherever it is
            return arbiter_link.call([("127.0.0.1", p) for p in self.arbiter_ports.values()], message,
                                     timeout=ARBITER_TIMEOUT, credential=self.operator(),
                                     tls_context=self.tls_client())
        return protocol.call(*self.arbiter, message, timeout=ARBITER_TIMEOUT, credential=self.operator(),
                             tls_context=self.tls_client())

    def arbiter_setting(self, name):
        """An arbiter setting as the arbiters run with it (defaults, then this cluster's overrides)."""
        if name in self.arbiter_overrides:
            return self.arbiter_overrides[name]
        return runpy.run_path(os.path.join(ROOT, "arbiter_settings.py"))[name]

    def leading_arbiter(self):
        """The key ("arbiter", "arbiter-2") of the arbiter that says it leads, or None."""
        try:
            status = self.status()
        except (OSError, protocol.ProtocolError):
            return None
        role = status.get("arbiter") or {}
        if not role.get("leader"):
            return None
        port = int(role["address"].rpartition(":")[2])
        return next((key for key, p in self.arbiter_ports.items() if p == port), None)

    def operator(self):
        """The operator's credential (keys/operator.keys), or None when this
        folder has none (the arbiter then refuses every call)."""
        if self._operator is None and os.path.exists(self.key_file("operator")):
            try:
                self._operator = keys.client_credential(self.key_file("operator"))
            except keys.KeyFileError as exc:
                raise FaultError(str(exc)) from None
        return self._operator

    def labels(self):
        return {f"{self.hosts[name]}:{port}": name for name, port in self.pg_ports.items()}

    def writable(self, name):
        params = psycopg2.extensions.parse_dsn(self.dsn)
        params.pop("target_session_attrs", None)
        params.setdefault("connect_timeout", "2")
        params.update(host=self.hosts[name], port=str(self.pg_ports[name]))
        try:
            conn = psycopg2.connect(**params)
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                return not cur.fetchone()[0]
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def healthy_status(self):
        """The arbiter's status if it shows the cluster healthy (primary writable,
        standby streaming synchronously and promotable), else None. One status
        call: a caller that also wants the primary or epoch reads them from this
        same snapshot, never from a second call that can straddle a change."""
        try:
            status = self.status()
        except (OSError, protocol.ProtocolError):
            return None
        if status.get("type") != "status" or not status.get("promotable"):
            return None
        reports = {n: ((status.get("nodes") or {}).get(n) or {}).get("report") or {} for n in NODES}
        primary = status["primary"]
        standby = NODES[1] if primary == NODES[0] else NODES[0]
        if reports[primary].get("role") == "primary" and reports[standby].get("role") == "standby" \
                and reports[primary].get("sync_standby") == standby:
            return status
        return None

    def healthy(self):
        """Primary writable, standby streaming synchronously and promotable."""
        return self.healthy_status() is not None

    def wait_healthy(self, timeout=120):
        """The first healthy status snapshot (the one judged healthy, not a later call)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = [key for key, proc in self.procs.items() if proc.poll() is not None]
            if exited:
                raise ClusterError(f"{', '.join(exited)} exited; see {self.dir}/{exited[0]}.log")
            status = self.healthy_status()
            if status is not None:
                return status
            time.sleep(0.3)
        raise ClusterError(f"cluster not healthy within {timeout}s; last status: {self._safe_status()}")

    def _safe_status(self):
        try:
            return self.status()
        except (OSError, protocol.ProtocolError) as exc:
            return f"arbiter unreachable ({exc})"

    def write_pgpass(self):
        return self._write_private("pgpass", pgpass_line("127.0.0.1", "*", "*", APP_USER,
                                                         self.passwords["app_password"]))

    def write_manifest(self):
        manifest = {
            "dsn": self.dsn,
            "arbiter": {"host": "127.0.0.1", "port": self.arbiter_port,
                        "pid": self.procs["arbiter"].pid if "arbiter" in self.procs else None},
            "nodes": {name: {"host": "127.0.0.1", "pg_port": self.pg_ports[name], "pgdata": self.pgdata(name),
                             "api_port": self.api_ports[name],
                             "pid": self.procs[name].pid if name in self.procs else None,
                             "log": os.path.join(self.dir, f"{name}.log")} for name in NODES},
        }
        self._write_private("cluster.json", json.dumps(manifest, indent=1))    # the DSN holds a password


def conninfo_quote(value):
    """A libpq conninfo value, quoted only when it must be."""
    if value and not any(c in value for c in " '\\\t\n\r\f\v="):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _copy_lines(stream):
    for line in iter(stream.readline, b""):
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a complete HA cluster on this machine")
    parser.add_argument("--dir", default=default_dir(), help="working folder (default %(default)s)")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                        help="arbiter port; PostgreSQL on +1/+2, lease links on +11/+12, REST APIs on +21/+22")
    parser.add_argument("--fresh", action="store_true", help="wipe the working folder first")
    parser.add_argument("--demo", action="store_true",
                        help="once healthy, run tests.py with a primary kill and leave a report and plot")
    parser.add_argument("--etcd", action="store_true",
                        help="the arbiter's state in a 3-member etcd on loopback (base+30..35), two arbiters "
                             "(base and base+9), one leading")
    args = parser.parse_args(argv)
    try:
        cluster = LocalCluster(args.dir, args.base_port, echo=True, etcd=args.etcd)
        cluster.prepare(fresh=args.fresh)
        cluster.start()
    except (ClusterError, KeyError, OSError) as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        status = cluster.wait_healthy(timeout=180)
        print(f"\ncluster healthy: primary {status['primary']} (epoch {status['epoch']})\n"
              f"connect with (the password is in the pgpass file, never printed):\n"
              f"  PGPASSFILE={cluster.write_pgpass()} "
              f"psql \"{cluster.dsn_for(*NODES, password=None, timeouts=True)}\"\n"
              f"ask the arbiter with:\n  python -m pgha.ctl --arbiter 127.0.0.1:{cluster.arbiter_port} "
              f"--key-file {cluster.key_file('operator')} status\n"
              f"folder: {cluster.dir} (settings, logs, cluster.json, keys/)\nCtrl-C stops everything.\n",
              file=sys.stderr, flush=True)
        if args.demo:
            run_demo(cluster)
        while not stopping.is_set():
            stopping.wait(0.5)
    except ClusterError as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the cluster...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0


def run_demo(cluster):
    report, plot = os.path.join(cluster.dir, "demo-report.json"), os.path.join(cluster.dir, "demo.png")
    cmd = [sys.executable, os.path.join(ROOT, "tests.py"), "--cluster", cluster.dir, "--duration", "20",
           "--fault", "kill-primary", "--fault-at", "6", "--json", report, "--plot", plot]
    print("demo: writing for 20 s, killing the primary's PostgreSQL at 6 s...", file=sys.stderr, flush=True)
    subprocess.run(cmd)
    print(f"demo: report {report}, plot {plot}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
