"""HAProxy in front of a local cluster, routed by the nodes' REST API.

    proxy = HAProxy(cluster, "/var/tmp/x/haproxy", rw_port, ro_port); proxy.start()
    proxy.dsn()  ->  a DSN to the read-write port; proxy.servers() -> {(backend, server): status}

The configuration is docs/haproxy.cfg itself (a read-write port checked on
/primary, a read-only port on /replica), its ports rewritten to the
cluster's loopback ports (shipped_config). HAProxy runs in the foreground
(-db) as a child process.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "docs", "haproxy.cfg")


def shipped_config(text, cluster, rw_port, ro_port, stats_port, stats_socket):
    """docs/haproxy.cfg as shipped, pointed at a local cluster: its write,
    read and stats listeners on loopback ports, each `server NAME NAME:5432
    ... check port 8008` line at that node's PostgreSQL and REST API ports,
    and the stats socket at the harness's. Nothing else changes (the checks
    and timings are the file's). Raises HAProxyError when the file no longer
    has the lines rewritten."""
    binds = {"bind *:5000": f"bind 127.0.0.1:{rw_port}", "bind *:5001": f"bind 127.0.0.1:{ro_port}",
             "bind *:7000": f"bind 127.0.0.1:{stats_port}"}
    socket_line = re.compile(r"^(\s*)stats socket \S+", re.MULTILINE)
    if any(old not in text for old in binds) or not socket_line.search(text):
        raise HAProxyError(f"{SHIPPED} changed: expected binds on *:5000, *:5001 and *:7000 and a stats socket")
    for old, new in binds.items():
        text = text.replace(old, new)
    text = socket_line.sub(lambda m: f"{m.group(1)}stats socket {stats_socket}", text, count=1)

    def server(m):
        name = m.group(1)
        if name not in cluster.nodes:
            raise HAProxyError(f"{SHIPPED} names server {name!r}, not a node of the cluster")
        return f"server {name} {cluster.hosts[name]}:{cluster.pg_ports[name]}{m.group(2)}check port " \
               f"{cluster.api_ports[name]}"
    return re.sub(r"server (\S+) \S+:5432( .*?)check port 8008", server, text)


class HAProxyError(Exception):
    pass


def binary():
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/sbin/haproxy")
                                            if os.access(p, os.X_OK)), None)


def app_password(cluster):
    """The app role's password: the cluster's own, or (a cluster loaded from
    its cluster.json) the one in its secrets.json; None when neither has it."""
    if cluster.passwords.get("app_password"):
        return cluster.passwords["app_password"]
    from harness.localcluster import SECRETS_FILE
    try:
        with open(os.path.join(cluster.dir, SECRETS_FILE), encoding="utf-8") as f:
            secret = json.load(f).get("app_password")
    except (OSError, ValueError, AttributeError):
        return None
    return secret if isinstance(secret, str) else None


def _die_with_parent():
    """In the child before exec: SIGTERM when the parent dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed harness leaves no HAProxy behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class HAProxy:
    """HAProxy with docs/haproxy.cfg (or `shipped`, a variant of it) pointed
    at the cluster; its stats listener on stats_port (default rw_port + 2)."""

    def __init__(self, cluster, workdir, rw_port, ro_port, stats_port=None, shipped=SHIPPED):
        self.cluster = cluster
        self.dir = workdir
        self.rw_port, self.ro_port = rw_port, ro_port
        self.stats_port = stats_port or rw_port + 2
        self.shipped = shipped
        self.config = os.path.join(workdir, "haproxy.cfg")
        self.socket = os.path.join(workdir, "haproxy.sock")
        self.log = os.path.join(workdir, "haproxy.log")
        self.proc = None

    def write_config(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(self.shipped, encoding="utf-8") as f:
            text = shipped_config(f.read(), self.cluster, self.rw_port, self.ro_port, self.stats_port, self.socket)
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(text)
        return self.config

    def start(self, timeout=10, die_with_parent=False):
        exe = binary()
        if exe is None:
            raise HAProxyError("haproxy is not installed (apt-get install haproxy)")
        self.write_config()
        check = subprocess.run([exe, "-c", "-f", self.config], capture_output=True, text=True)
        if check.returncode != 0:
            raise HAProxyError(f"haproxy rejects {self.config}: {check.stderr.strip() or check.stdout.strip()}")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([exe, "-db", "-f", self.config], stdout=out, stderr=out,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent if die_with_parent else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyError(f"haproxy exited with {self.proc.returncode}; see {self.log}")
            if os.path.exists(self.socket):
                try:
                    self.servers()
                    return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise HAProxyError(f"haproxy did not open its stats socket within {timeout}s; see {self.log}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def dsn(self, port=None, password=True):
        """The application's DSN through HAProxy (the app role; password=False:
        left out, for the pgpass file)."""
        from harness.localcluster import APP_USER, CLIENT_TIMEOUTS
        from pgha.postgres import conninfo
        secret = app_password(self.cluster) if password else None
        secret = f" {conninfo(password=secret)}" if secret else ""
        return (f"host=127.0.0.1 port={port or self.rw_port} dbname=testdb user={APP_USER}{secret} "
                f"connect_timeout=2 {CLIENT_TIMEOUTS}")

    def command(self, text):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(self.socket)
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self, column="status"):
        """{(backend, server): "UP" | "DOWN" | ...} from `show stat` (or another column's values)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        pxname, svname, wanted = header.index("pxname"), header.index("svname"), header.index(column)
        result = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > wanted and fields[svname] not in ("FRONTEND", "BACKEND"):
                result[(fields[pxname], fields[svname])] = fields[wanted].split()[0] if fields[wanted] else ""
        return result

    def stat(self, backend, server, column):
        """One server's `show stat` value (e.g. "chkfail": its failed checks)."""
        return self.servers(column)[(backend, server)]


PATRONI_EXAMPLE = os.path.join(os.environ.get("PGHA_PATRONI_EXAMPLES", "/usr/share/doc/patroni/examples"),
                               "haproxy.cfg")      # Debian's patroni package (bin/setup)


def patroni_example_config(text, cluster, rw_port, ro_port, stats_port, stats_socket):
    """Patroni's example haproxy.cfg with its ports pointed at a local
    cluster: its stats and write listeners on loopback ports, its two
    servers at our nodes (PostgreSQL port, `check port` the REST API), a
    stats socket for the harness, and a copy of its write listener as a
    read listener checked on /replica (the example has none). Nothing
    else changes: Patroni's `option httpchk` (OPTIONS /), timings and
    `on-marked-down shutdown-sessions` are what it ships. Raises
    HAProxyError when the file no longer has the lines rewritten."""
    names = list(cluster.nodes)
    servers = re.findall(r"^\s*server \S+ 127\.0\.0\.1:\d+ .*check port \d+.*$", text, re.MULTILINE)
    expected = {"bind *:7000": f"bind 127.0.0.1:{stats_port}", "bind *:5000": f"bind 127.0.0.1:{rw_port}",
                "global\n": f"global\n    stats socket {stats_socket} mode 600 level admin\n"}
    if len(servers) != len(names) or any(old not in text for old in expected):
        raise HAProxyError("Patroni's example haproxy.cfg changed: expected binds on *:7000 and *:5000 and "
                           f"{len(names)} `server ... check port` lines")
    for old, new in expected.items():
        text = text.replace(old, new, 1)
    for line, name in zip(servers, names):
        text = text.replace(line, re.sub(r"server \S+ 127\.0\.0\.1:\d+ (.*check port )\d+",
                                         lambda m: f"server {name} {cluster.hosts[name]}:{cluster.pg_ports[name]} "
                                                   f"{m.group(1)}{cluster.api_ports[name]}", line), 1)
    writes = next(m for m in re.finditer(r"^listen (\S+)\n((?:[ \t]+.*(?:\n|$))+)", text, re.MULTILINE)
                  if f"127.0.0.1:{rw_port}" in m.group(2))
    reads = writes.group(0).replace(f"listen {writes.group(1)}", f"listen {writes.group(1)}_replicas", 1) \
        .replace(f"bind 127.0.0.1:{rw_port}", f"bind 127.0.0.1:{ro_port}") \
        .replace("option httpchk\n", "option httpchk GET /replica\n")
    return text.rstrip("\n") + "\n\n" + reads.rstrip("\n") + "\n", writes.group(1)


class PatroniExampleHAProxy(HAProxy):
    """HAProxy run with Patroni's own example haproxy.cfg (a temp copy with
    the ports rewritten, see patroni_example_config)."""

    def __init__(self, cluster, workdir, rw_port, ro_port, stats_port, example=PATRONI_EXAMPLE):
        super().__init__(cluster, workdir, rw_port, ro_port, stats_port)
        self.example = example
        self.write_backend = self.read_backend = None

    def write_config(self):
        os.makedirs(self.dir, exist_ok=True)
        try:
            with open(self.example, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise HAProxyError(f"Patroni's example {self.example} is missing ({exc.strerror}): "
                               "apt-get install patroni") from None
        text, self.write_backend = patroni_example_config(text, self.cluster, self.rw_port, self.ro_port,
                                                          self.stats_port, self.socket)
        self.read_backend = self.write_backend + "_replicas"
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(text)
        return self.config


def main(argv=None):
    """Run HAProxy in the foreground in front of a running local cluster
    (bin/cluster), with the configuration of docs/haproxy.cfg."""
    import argparse
    import signal
    import sys

    from harness.cluster import FaultError
    from harness.localcluster import LocalCluster, default_dir

    parser = argparse.ArgumentParser(prog="python -m harness.haproxy", description=main.__doc__)
    parser.add_argument("--cluster", default=default_dir(), help="local cluster folder (default %(default)s)")
    parser.add_argument("--rw-port", type=int, default=5000, help="read-write port (default %(default)s)")
    parser.add_argument("--ro-port", type=int, default=5001, help="read-only port (default %(default)s)")
    parser.add_argument("--stats-port", type=int, help="HAProxy's stats page (default: the read-write port + 2)")
    args = parser.parse_args(argv)
    try:
        cluster = LocalCluster.load(args.cluster)
        if set(cluster.api_ports) != set(cluster.nodes):
            raise FaultError(f"{args.cluster}/cluster.json names no REST API ports (a cluster started "
                             "before they existed: restart it with bin/cluster)")
        proxy = HAProxy(cluster, os.path.join(cluster.dir, "haproxy"), args.rw_port, args.ro_port, args.stats_port)
        proxy.start(die_with_parent=True)
    except (FaultError, HAProxyError, OSError) as exc:
        print(f"haproxy: {exc}", file=sys.stderr)
        return 1
    # From here on HAProxy runs: whatever happens, it stops with us.
    signal.signal(signal.SIGTERM, lambda *_: proxy.proc.terminate())
    try:
        print(f"HAProxy: writes on 127.0.0.1:{args.rw_port}, reads on 127.0.0.1:{args.ro_port} "
              f"(config {proxy.config}, log {proxy.log}); Ctrl-C stops it.\n"
              f"  python tests.py --cluster {cluster.dir} --dsn \"{proxy.dsn()}\" "
              "--fault kill-primary-host --duration 20", file=sys.stderr, flush=True)
        proxy.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
