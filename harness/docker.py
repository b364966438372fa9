"""Docker plumbing for the fault suite and the soak benchmark.

Everything here drives the docker CLI and docker-compose (v1, Debian's) with
subprocess; nothing needs a container registry:

* ensure_dockerd()     start dockerd when `docker info` gets no answer;
* ensure_base_image()  make debian:bookworm-slim from a debootstrap rootfs
                       (mirror read from this machine's apt sources) when it
                       is missing, and cache it as a `docker save` tarball so
                       later runs only `docker load` it;
* ComposeCluster       a compose project as a cluster handle
                       (harness.cluster.ClusterHandle: the faults tests.py
                       injects), plus the fault suite's own faults (pause a
                       container, network disconnect, iptables cuts inside a
                       container's network namespace), healing, the arbiter's
                       status and direct PostgreSQL probes, and waiting for a
                       healthy synchronous pair. suite_cluster() is the fault
                       suite's project; etcd_suite_cluster() its arbiter-on-etcd
                       project (docker-compose.etcd.yml added).

Only the project's own network (172.28.0.0/24, made by docker-compose) and
loopback are ever contacted.
"""
import contextlib
import fcntl
import json
import os
import re
import runpy
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

from harness.cluster import ClusterHandle, FaultError
from pgha import keys, protocol

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ETCD_COMPOSE_FILE = ROOT / "docker-compose.etcd.yml"   # added to COMPOSE_FILE: the arbiter on etcd
PROJECT = os.environ.get("PGHA_COMPOSE_PROJECT", "pghafaults")
ETCD_PROJECT = os.environ.get("PGHA_COMPOSE_ETCD_PROJECT", "pghafaultsetcd")
NETWORK_KEY = "pgha"                       # the network's name in docker-compose.yml
SUBNET = "172.28.0.0/24"
ADDR = {"arbiter": "172.28.0.10", "pgsql-1": "172.28.0.11", "pgsql-2": "172.28.0.12",
        # docker-compose.etcd.yml's
        "arbiter-2": "172.28.0.13", "etcd-1": "172.28.0.21", "etcd-2": "172.28.0.22", "etcd-3": "172.28.0.23"}
NODES = ("pgsql-1", "pgsql-2")
SERVICES = ("arbiter",) + NODES
ETCD_ARBITERS = ("arbiter", "arbiter-2")
ETCD_MEMBERS = ("etcd-1", "etcd-2", "etcd-3")
PG_PORT = 5432
ARBITER_PORT = 5430

BASE_IMAGE = "debian:bookworm-slim"
CACHE_DIR = Path(os.environ.get("PGHA_TEST_CACHE", "/var/cache/pgha-test"))
BASE_TARBALL = CACHE_DIR / "debian-bookworm-slim.tar"
LOCK_FILE = CACHE_DIR / "suite.lock"
DOCKERD_LOG = Path(os.environ.get("PGHA_DOCKERD_LOG", "/tmp/dockerd.log"))
FAULT_CHAIN = "PGHA_FAULT"


_NODE_SETTINGS = runpy.run_path(str(ROOT / "docker" / "node.py"))   # shared by both services
ADMIN_USER = _NODE_SETTINGS["admin_user"]
ADMIN_PASSWORD = _NODE_SETTINGS["admin_password"]
APP_USER = _NODE_SETTINGS["app_user"]          # what the workload and probes connect as
APP_PASSWORD = _NODE_SETTINGS["app_password"]
DATABASE = _NODE_SETTINGS["database"]
SLOT = {n: _NODE_SETTINGS["_SLOTS"][n] for n in NODES}   # the slot a node streams through as standby

DSN = (f"host={ADDR['pgsql-1']},{ADDR['pgsql-2']} port={PG_PORT},{PG_PORT} dbname={DATABASE} "
       f"user={APP_USER} password={APP_PASSWORD} target_session_attrs=read-write connect_timeout=2")


def node_dsn(node, connect_timeout=2, superuser=False):
    """One node, as the application (probes), or as the superuser to inspect the server."""
    user, password = (ADMIN_USER, ADMIN_PASSWORD) if superuser else (APP_USER, APP_PASSWORD)
    return (f"host={ADDR[node]} port={PG_PORT} dbname={DATABASE} user={user} "
            f"password={password} connect_timeout={connect_timeout}")


def label_of(hostport):
    """'172.28.0.11:5432' -> 'pgsql-1' (the workload records host:port)."""
    host = (hostport or "").split(":")[0]
    return next((n for n, a in ADDR.items() if a == host), hostport)


# ---------------------------------------------------------------- commands

@contextlib.contextmanager
def exclusive(timeout=3600, log=print):
    """Hold the machine-wide lock of the compose cluster: the subnet and the
    project are fixed, so two fault-suite or soak runs at once would break each
    other's scenarios. A second run waits here for the first to finish."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CommandError(f"another fault-suite run held {LOCK_FILE} for {timeout} s")
                if not told:
                    handle.seek(0)
                    log(f"waiting for another fault-suite run to finish (lock {LOCK_FILE}: "
                        f"{handle.read().strip() or 'unknown holder'})")
                    told = True
                time.sleep(2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CommandError(FaultError):
    """A docker or docker-compose command failed (a fault, or the plumbing)."""


def run(cmd, check=True, timeout=120, input=None, shown=None):
    """Run a command (list), return CompletedProcess with text output. Errors
    name the command as `shown` when given (one that holds no secret)."""
    shown = shown or " ".join(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError:
        raise CommandError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{shown}` did not finish within {timeout} s") from None
    if check and proc.returncode != 0:
        raise CommandError(f"`{shown}` exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def have_docker():
    return shutil.which("docker") is not None and shutil.which("docker-compose") is not None


def docker_answers(timeout=15):
    try:
        return run(["docker", "info"], check=False, timeout=timeout).returncode == 0
    except CommandError:
        return False


def ensure_dockerd(timeout=90):
    """Start dockerd when none answers; return seconds spent (0.0 if it was up)."""
    if docker_answers():
        return 0.0
    if shutil.which("dockerd") is None:
        raise CommandError("docker does not answer and there is no dockerd to start")
    started = time.monotonic()
    log = open(DOCKERD_LOG, "ab")
    # Its own session: it outlives the test run, like a dockerd started by hand.
    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)
    log.close()
    while time.monotonic() - started < timeout:
        if docker_answers(timeout=5):
            return time.monotonic() - started
        time.sleep(0.5)
    raise CommandError(f"dockerd did not answer within {timeout} s; see {DOCKERD_LOG}")


def apt_mirror():
    """The Debian mirror this machine's apt uses (never written into the repo)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        stanzas = re.split(r"\n\s*\n", deb822.read_text())
        for stanza in stanzas:
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and fields.get("URIs"):
                return fields["URIs"].split()[0]
        for stanza in stanzas:
            match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if match and "security" not in match.group(1):
                return match.group(1)
    legacy = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in legacy:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split("#")[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                url = next(p for p in parts[1:] if not p.startswith("["))
                if "security" not in url:
                    return url
    raise CommandError("no Debian mirror found in /etc/apt/sources.list(.d)")


def image_exists(name):
    return run(["docker", "image", "inspect", name], check=False, timeout=30).returncode == 0


def ensure_base_image(log=print):
    """Make sure debian:bookworm-slim exists. Returns (how, seconds):
    how is "present", "loaded" (from the cache tarball) or "debootstrap"."""
    started = time.monotonic()
    if image_exists(BASE_IMAGE):
        return "present", 0.0
    if BASE_TARBALL.exists():
        proc = run(["docker", "load", "-i", str(BASE_TARBALL)], check=False, timeout=300)
        if proc.returncode == 0 and image_exists(BASE_IMAGE):
            return "loaded", time.monotonic() - started
        log(f"cached base image {BASE_TARBALL} did not load ({proc.stderr.strip()}); rebuilding it")
        BASE_TARBALL.unlink(missing_ok=True)
    if shutil.which("debootstrap") is None:
        raise CommandError(f"{BASE_IMAGE} is missing and debootstrap is not installed")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        mirror = apt_mirror()
        log(f"debootstrap bookworm minbase into {rootfs}")
        t0 = time.monotonic()
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], timeout=1200)
        t1 = time.monotonic()
        # Trim what an image does not need: downloaded .debs and package lists.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import",
                              "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "-c", 'CMD ["bash"]', "-", BASE_IMAGE],
                             stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise CommandError(f"docker import failed: {imp.stderr.strip()}")
        t2 = time.monotonic()
        partial = BASE_TARBALL.with_suffix(".tar.part")
        run(["docker", "save", "-o", str(partial), BASE_IMAGE], timeout=600)
        partial.replace(BASE_TARBALL)
        log(f"base image: debootstrap {t1 - t0:.1f} s, import {t2 - t1:.1f} s, "
            f"save {time.monotonic() - t2:.1f} s (cached in {BASE_TARBALL})")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return "debootstrap", time.monotonic() - started


def networks():
    """Every docker network, as `docker network inspect` describes it."""
    return [json.loads(run(["docker", "network", "inspect", net], timeout=30).stdout)[0]
            for net in run(["docker", "network", "ls", "-q"], timeout=30).stdout.split()]


def subnets(info):
    """The subnets of one network (networks())."""
    return [c.get("Subnet") for c in (info.get("IPAM") or {}).get("Config") or []]


def free_subnet(project=PROJECT, log=print):
    """Another compose project of this repository (e.g. a cluster brought up by
    hand) holds 172.28.0.0/24: take it down so ours can be made. A network on
    that subnet that is not ours is reported, never touched."""
    for info in networks():
        if SUBNET not in subnets(info):
            continue
        labels = info.get("Labels") or {}
        other = labels.get("com.docker.compose.project")
        if other == project:
            continue
        if other and labels.get("com.docker.compose.network") == NETWORK_KEY:
            log(f"taking down compose project {other!r}, which holds {SUBNET}")
            # Both files: the project may be the etcd variant, whose extra containers hold the network too.
            run(["docker-compose", "-f", str(COMPOSE_FILE), "-f", str(ETCD_COMPOSE_FILE), "-p", other,
                 "down", "-v", "--remove-orphans"], timeout=180)
        else:
            raise CommandError(f"docker network {info['Name']} uses {SUBNET}, which this project needs")


# ---------------------------------------------------------------- the cluster

# Run inside the arbiter container: one request to the arbiter on its loopback,
# so the arbiter can be asked wherever the compose network is not routable.
# Run in the arbiter container, which holds the operator's key in this test project.
_ARBITER_CALL = """
import json, os, sys
sys.path.insert(0, "/app")
from pgha import keys, protocol
message = json.loads(sys.stdin.buffer.read())
path = "/etc/pgha/keys/operator.keys"   # without it, unsigned: the arbiter answers "authentication failed"
credential = keys.client_credential(path) if os.path.exists(path) else None
print(json.dumps(protocol.call("127.0.0.1", int(sys.argv[1]), message, timeout=3, credential=credential)))
"""
KEYS_DIR = "/etc/pgha/keys"            # baked into the image for this test project (docker/README.md)
PGDATA = "/var/lib/pgha/data"          # in the node containers (docker/node.py)
SOCKET_DIR = "/var/lib/pgha/run"


def suite_cluster():
    """The fault suite's and the soak benchmark's compose project."""
    return ComposeCluster(COMPOSE_FILE, project=PROJECT, dsn=DSN)


def bench_cluster(reuse=False):
    """The suite's compose project up and healthy for a benchmark: started
    afresh, or with `reuse` the one already running (call under exclusive())."""
    ensure_dockerd()
    ensure_base_image()
    cluster = suite_cluster()
    if not reuse:
        free_subnet()
        cluster.compose("down", "-v", "--remove-orphans", check=False)
        cluster.compose("up", "--build", "-d", timeout=900)
    cluster.wait_healthy(timeout=300)
    return cluster


def etcd_suite_cluster():
    """The fault suite's project of the arbiter on etcd (docker-compose.etcd.yml)."""
    return ComposeCluster([COMPOSE_FILE, ETCD_COMPOSE_FILE], project=ETCD_PROJECT, dsn=DSN,
                          arbiters=ETCD_ARBITERS, others=ETCD_MEMBERS)


class ComposeCluster(ClusterHandle):
    """A docker compose cluster; node names are the service names. project
    None is docker-compose's default (the compose file's folder name).
    compose_file: one file or a list (later ones add to the first). arbiters:
    the arbiter services (several on etcd; status() asks the leading one);
    others: services that are neither (etcd members), healed like the rest."""

    def __init__(self, compose_file="docker-compose.yml", project=None, services=NODES,
                 arbiter_service="arbiter", arbiter_port=ARBITER_PORT, dsn=None, arbiters=None, others=()):
        files = [compose_file] if isinstance(compose_file, (str, Path)) else list(compose_file)
        self.compose_files = [str(f) for f in files]
        self.compose_file = self.compose_files[0]
        self.project = project
        self.services = list(services)
        self.arbiter_service = arbiter_service
        self.arbiters = tuple(arbiters or (arbiter_service,))
        self.others = tuple(others)
        self.arbiter_port = arbiter_port
        self.dsn = dsn     # credentials for the in-container writable check
        self._reader_credential = None     # status() over the network: the reader's key, read once
        folder = Path(self.compose_file).resolve().parent.name
        self.network = f"{project or re.sub(r'[^-_a-z0-9]', '', folder.lower())}_{NETWORK_KEY}"
        self.disconnected = set()
        self.blocked = set()
        self.paused = set()
        self.daemons_down = set()

    # -- compose and containers

    def compose(self, *args, stdin=None, timeout=600, check=True):
        cmd = ["docker-compose"] + [a for f in self.compose_files for a in ("-f", f)]
        cmd += ["-p", self.project] if self.project else []
        # what error messages show: the verb and service, never a password
        shown = "docker-compose " + " ".join(a for a in args[:6] if not a.startswith(("-", "PGPASSWORD=")))
        return run(cmd + list(args), check=check, timeout=timeout, input=stdin, shown=shown)

    def container(self, service):
        cid = self.compose("ps", "-q", service, timeout=60).stdout.strip()
        if not cid:
            raise CommandError(f"service {service} has no container")
        return cid.splitlines()[0]

    def inspect(self, service):
        return json.loads(run(["docker", "inspect", self.container(service)], timeout=30).stdout)[0]

    def running(self, service):
        state = self.inspect(service)["State"]
        return state["Running"] and not state["Paused"]

    def pid(self, service):
        pid = self.inspect(service)["State"]["Pid"]
        if not pid:
            raise CommandError(f"{service} is not running")
        return pid

    def exec(self, service, *cmd, timeout=60, check=True, user=None):
        args = ["docker", "exec"] + (["-u", user] if user else []) + [self.container(service)] + list(cmd)
        return run(args, timeout=timeout, check=check)

    def logs(self, tail=300):
        proc = self.compose("logs", "--no-color", "--timestamps", f"--tail={tail}", timeout=120, check=False)
        return proc.stdout + proc.stderr

    # -- the cluster handle

    @property
    def nodes(self):
        return self.services

    def labels(self):
        return {f"{ADDR[n]}:{PG_PORT}": n for n in self.services if n in ADDR}

    def arbiter_call(self, message):
        line = json.dumps({"v": protocol.VERSION, **message}) + "\n"
        out = self.compose("exec", "-T", self.arbiter_service, "python3", "-c", _ARBITER_CALL,
                           str(self.arbiter_port), stdin=line, timeout=30).stdout
        try:
            return json.loads(out)
        except ValueError:
            raise FaultError(f"arbiter gave no JSON reply: {out[:200]!r}") from None

    def writable(self, service):
        params = psycopg2.extensions.parse_dsn(self.dsn or "")
        env = ["-e", f"PGPASSWORD={params['password']}"] if "password" in params else []
        try:
            out = self.compose("exec", "-T", *env, service, "psql", "-h", SOCKET_DIR,
                               "-U", params.get("user", "postgres"), "-d", params.get("dbname", "postgres"),
                               "-tAc", "SELECT pg_is_in_recovery()", timeout=10).stdout
        except CommandError:
            return False
        return out.strip() == "f"

    def kill_postgres(self, service):
        """SIGKILL the node's PostgreSQL: the postmaster (pid from postmaster.pid)
        and all its processes, in one exec so a quick restart is not hit too.
        pkill is in the image (procps); it fails when nothing was killed."""
        self.compose("exec", "-T", service, "sh", "-c",
                     f"pid=$(head -1 {PGDATA}/postmaster.pid 2>/dev/null); hit=1; "
                     "[ -n \"$pid\" ] && kill -9 \"$pid\" 2>/dev/null && hit=0; "
                     "pkill -9 -x postgres && hit=0; exit $hit", timeout=30)

    def kill_host(self, service):
        self.kill(service)

    # The node daemon alone (python3 /app/node.py); PostgreSQL and the fencer run on.
    DAEMON = "^python3 /app/node.py"

    def kill_daemon(self, service):
        self.exec(service, "pkill", "-9", "-f", self.DAEMON, timeout=30)
        self.daemons_down.add(service)

    def freeze_daemon(self, service):
        self.exec(service, "pkill", "-STOP", "-f", self.DAEMON, timeout=30)

    def thaw_daemon(self, service):
        self.exec(service, "pkill", "-CONT", "-f", self.DAEMON, timeout=30, check=False)

    def start_daemon(self, service):
        """Start the node daemon again inside the running container (as an operator would)."""
        self.exec(service, "sh", "-c", "cd /app && HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups "
                  "python3 /app/node.py --settings /app/docker/node.py "
                  ">>/var/lib/pgha/node-restarted.log 2>&1 &", timeout=30)
        self.daemons_down.discard(service)

    # -- the fault suite's faults

    def kill(self, *services):
        """docker-compose kill: several services are killed by one command, at the same moment."""
        self.compose("kill", *services, timeout=60)

    def start(self, service):
        run(["docker", "start", self.container(service)], timeout=120)

    def pause(self, service):
        run(["docker", "pause", self.container(service)], timeout=60)
        self.paused.add(service)

    def unpause(self, service):
        run(["docker", "unpause", self.container(service)], timeout=60, check=False)
        self.paused.discard(service)

    def disconnect(self, service):
        """Take the container off the project network (all its links go)."""
        run(["docker", "network", "disconnect", "-f", self.network, self.container(service)], timeout=60)
        self.disconnected.add(service)

    def connect(self, service):
        """Put it back with the same address and DNS alias."""
        proc = run(["docker", "network", "connect", "--ip", ADDR[service], "--alias", service,
                    self.network, self.container(service)], timeout=60, check=False)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise CommandError(f"reconnecting {service}: {proc.stderr.strip()}")
        self.disconnected.discard(service)

    def _iptables(self, service, *args, check=True):
        """iptables inside the container's network namespace (works while it is paused)."""
        if shutil.which("nsenter") and shutil.which("iptables"):
            cmd = ["nsenter", "-t", str(self.pid(service)), "-n", "iptables", "-w"] + list(args)
            return run(cmd, timeout=30, check=check)
        return self.exec(service, "iptables", "-w", *args, timeout=30, check=check)

    def _chain(self, service):
        if self._iptables(service, "-n", "-L", FAULT_CHAIN, check=False).returncode != 0:
            self._iptables(service, "-N", FAULT_CHAIN)
            self._iptables(service, "-I", "INPUT", "-j", FAULT_CHAIN)
            self._iptables(service, "-I", "OUTPUT", "-j", FAULT_CHAIN)

    def block(self, service, peer, direction="both"):
        """Drop traffic between service and peer inside service's namespace.
        direction: "in" (peer -> service), "out" (service -> peer) or "both"."""
        self._chain(service)
        if direction in ("in", "both"):
            self._iptables(service, "-A", FAULT_CHAIN, "-s", ADDR[peer], "-j", "DROP")
        if direction in ("out", "both"):
            self._iptables(service, "-A", FAULT_CHAIN, "-d", ADDR[peer], "-j", "DROP")
        self.blocked.add(service)

    def unblock(self, service):
        self._iptables(service, "-F", FAULT_CHAIN, check=False)
        self.blocked.discard(service)

    def heal(self):
        """Undo every fault: unpause, reconnect, flush iptables cuts, start what is stopped
        (etcd members first, then the arbiters, then the nodes)."""
        for service in self.others + self.arbiters + tuple(n for n in NODES if n not in self.arbiters):
            try:
                info = self.inspect(service)
            except CommandError:
                continue
            state = info["State"]
            if state["Paused"]:
                self.unpause(service)
            if self.network not in (info["NetworkSettings"]["Networks"] or {}):
                self.connect(service)
            if state["Running"]:
                self.unblock(service)
                if service in NODES:
                    self.thaw_daemon(service)
                    if service in self.daemons_down:
                        self.start_daemon(service)
            else:
                self.start(service)
        self.daemons_down.clear()
        self.paused.clear()
        self.disconnected.clear()
        self.blocked.clear()

    def restart_project(self):
        """Last resort between scenarios: a new cluster from scratch."""
        self.compose("down", "-v", timeout=300, check=False)
        self.compose("up", "-d", timeout=600)
        self.paused.clear()
        self.disconnected.clear()
        self.blocked.clear()

    # -- observing

    def _reader(self):
        """The reader's credential (status only), read from the arbiter
        container once; it stays in memory, never on this host's disk."""
        if self._reader_credential is None:
            data = self.compose("exec", "-T", self.arbiter_service, "cat", f"{KEYS_DIR}/reader.keys",
                                timeout=30).stdout
            where = f"{self.arbiter_service}:{KEYS_DIR}/reader.keys"
            self._reader_credential = keys.credential_in(keys.parse(data.encode(), where), where)
        return self._reader_credential

    def status(self, timeout=2.0):
        """The arbiter's status reply over the project network, or None when
        none answers there (paused, cut off, down). With several arbiters: the
        leading one's, else the first answer (it says no arbiter leads)."""
        replies = [r for r in (self.status_of(a, timeout) for a in self.arbiters) if r is not None]
        leading = [r for r in replies if (r.get("arbiter") or {}).get("leader")]
        return (leading or replies or [None])[0]

    def status_of(self, arbiter, timeout=2.0):
        """One arbiter service's status reply, or None when it does not answer."""
        try:
            reply = protocol.call(ADDR[arbiter], ARBITER_PORT, {"type": "status"}, timeout=timeout,
                                  credential=self._reader())
        except (OSError, protocol.ProtocolError, CommandError, keys.KeyFileError):
            return None
        return reply if reply.get("type") == "status" else None

    def leading_arbiter(self):
        """The arbiter service that leads now (state on etcd), or None."""
        for arbiter in self.arbiters:
            reply = self.status_of(arbiter)
            if reply and (reply.get("arbiter") or {}).get("leader"):
                return arbiter
        return None

    def node(self, node, timeout=2):
        """Direct look at one node's PostgreSQL, or None when it does not answer."""
        try:
            conn = psycopg2.connect(node_dsn(node, timeout, superuser=True))
        except psycopg2.Error:
            return None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = '3s'")
                cur.execute("SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())")
                in_recovery, checkpoint_tli = cur.fetchone()
                info = {"in_recovery": in_recovery, "checkpoint_tli": checkpoint_tli}
                if in_recovery:
                    cur.execute("SELECT status, received_tli, sender_host FROM pg_stat_wal_receiver")
                    row = cur.fetchone()
                    info["receiver"] = (dict(zip(("status", "received_tli", "sender_host"), row))
                                        if row else None)
                    info["tli"] = (row[1] if row and row[1] else checkpoint_tli)
                else:
                    cur.execute("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
                                "::bit(32)::int")
                    info["tli"] = cur.fetchone()[0]
                    cur.execute("SELECT application_name, host(client_addr), state, sync_state "
                                "FROM pg_stat_replication")
                    info["replication"] = [dict(zip(("application_name", "client_addr", "state",
                                                     "sync_state"), r)) for r in cur.fetchall()]
                    cur.execute("SELECT slot_name, active FROM pg_replication_slots")
                    info["slots"] = dict(cur.fetchall())
                    cur.execute("SHOW synchronous_standby_names")
                    info["synchronous_standby_names"] = cur.fetchone()[0]
                return info
        except psycopg2.Error as exc:
            return {"error": str(exc).strip()}
        finally:
            conn.close()

    def snapshot(self):
        return {"arbiter": self.status(), **{n: self.node(n) for n in NODES}}

    @staticmethod
    def judge(snap):
        """(primary, problems) for a snapshot: healthy when problems is empty."""
        problems = []
        infos = {n: snap.get(n) for n in NODES}
        down = [n for n, i in infos.items() if not i or "error" in i]
        if down:
            problems.append("not answering: " + ", ".join(down))
        writable = [n for n, i in infos.items() if i and "error" not in i and not i["in_recovery"]]
        if len(writable) != 1:
            problems.append(f"writable nodes: {writable or 'none'}")
            return None, problems
        primary = writable[0]
        standby = next(n for n in NODES if n != primary)
        p, s = infos[primary], infos[standby]
        sync = [r for r in p.get("replication", [])
                if r["client_addr"] == ADDR[standby] and r["state"] == "streaming" and r["sync_state"] == "sync"]
        if not sync:
            problems.append(f"{standby} is not a streaming synchronous standby of {primary}: "
                            f"{p.get('replication')}")
        if SLOT[standby] not in p.get("slots", {}) or not p["slots"][SLOT[standby]]:
            problems.append(f"slot {SLOT[standby]} of {standby} not active on {primary}: {p.get('slots')}")
        if s and "error" not in s and s.get("tli") != p.get("tli"):
            problems.append(f"timelines differ: {primary} {p.get('tli')}, {standby} {s.get('tli')}")
        arbiter = snap.get("arbiter")
        if arbiter is None:
            problems.append("arbiter does not answer")
        else:
            if arbiter.get("primary") != primary:
                problems.append(f"arbiter names {arbiter.get('primary')} primary, {primary} is writable")
            if arbiter.get("promotable") is False:
                problems.append("arbiter has the standby not promotable")
        return primary, problems

    def healthy(self):
        return self.judge(self.snapshot())

    def wait_healthy(self, timeout=180, pause=1.0):
        """Wait for one writable primary with a synchronous, streaming, promotable
        standby that the arbiter agrees with; return the primary's name."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            primary, problems = self.judge(snap)
            if not problems:
                return primary
            if time.monotonic() >= deadline:
                raise AssertionError(f"cluster not healthy within {timeout} s: {'; '.join(problems)}\n"
                                     f"snapshot: {json.dumps(snap, default=str)[:4000]}")
            time.sleep(pause)

    def writable_nodes(self):
        return [n for n in NODES if (i := self.node(n)) and "error" not in i and not i["in_recovery"]]

    def primary_and_standby(self):
        primary, problems = self.healthy()
        if primary is None:
            raise AssertionError("no single writable primary: " + "; ".join(problems))
        return primary, next(n for n in NODES if n != primary)
