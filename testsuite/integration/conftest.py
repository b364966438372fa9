"""Fixtures for the integration suite: a real local cluster per test.

Each test gets a fresh cluster (arbiter, two node daemons, two PostgreSQL
servers) in its own folder under /var/tmp, run as the postgres OS user when
the suite runs as root. On failure the tail of every daemon's log is shown.
"""
import itertools
import os
import socket
import time

import pytest

from harness import workload
from harness.exposure import ExposureMonitor
from harness.localcluster import LocalCluster
from harness.cluster import FaultError
from testsuite import helpers, packaging

BASE = os.environ.get("PGHA_TEST_DIR", "/var/tmp/pgha-test")
_ports = itertools.count(int(os.environ.get("PGHA_TEST_PORT_BASE", "7430")), 40)


def next_port():
    """A base port whose cluster ports (base .. base+22) and the HAProxy ports
    tests put beside them (base+30 .. base+36) are all free now."""
    for base in _ports:
        if all(_free(base + offset) for offset in (0, 1, 2, 11, 12, 21, 22, 30, 31, 32, 33, 34, 35, 36)):
            return base
    raise RuntimeError("no free ports")


def _free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(wheel, .deb) built once from a copy of the checkout, for every test
    that installs them (test_package.py, test_guide.py)."""
    return packaging.build(tmp_path_factory.mktemp("package"))


@pytest.fixture
def local_cluster(request):
    yield from running_cluster(request, request.node.name.replace("/", "_")[:60])


def running_cluster(request, name, before_start=None, **options):
    """A fresh, healthy LocalCluster(options) for the test; stopped after it,
    with its daemons' logs shown when the test failed. before_start(cluster)
    runs once its folder is prepared, before any process starts."""
    cluster = LocalCluster(os.path.join(BASE, name), base_port=next_port(), **options)
    cluster.prepare(fresh=True)
    if before_start is not None:
        before_start(cluster)
    cluster.start()
    try:
        cluster.wait_healthy(timeout=120)
        yield cluster
    finally:
        finish(cluster, request)


def finish(cluster, request=None):
    """Stop the test's cluster and, when the test passed, remove its data
    directories (logs stay; PGHA_KEEP_DATA=1 keeps all): the disk of a CI
    machine is shared, and a run kept 14 GB without this. A failed test's
    data stays for the post-mortem, and its daemons' logs are shown."""
    cluster.stop()
    failed = request is not None and helpers.failed(request.node)
    if failed:
        _show_logs(cluster)
    if failed or os.environ.get("PGHA_KEEP_DATA"):
        return
    try:
        cluster.discard_data()
    except FaultError as exc:       # never in place of the test's own outcome
        print(f"\nnot removed: {exc}")


def _show_logs(cluster, lines=40):
    for name in ("arbiter", "arbiter-2", "pgsql-1", "pgsql-2"):
        path = os.path.join(cluster.dir, f"{name}.log")
        try:
            with open(path) as f:
                tail = f.readlines()[-lines:]
        except OSError:
            continue
        print(f"\n----- {path} (last {len(tail)} lines) -----\n" + "".join(tail))


class WriteRun:
    """A writer through the multi-host DSN around a fault; check() judges it."""

    def __init__(self, cluster, writers=2, interval=0.05):
        self.writer = workload.Writer(cluster.dsn, writers=writers, interval=interval, commit_timeout=15)
        self.fault_at = None

    def __enter__(self):
        self.writer.start()
        return self

    def mark_fault(self):
        self.fault_at = self.writer.elapsed()

    def wait_for_acks(self, count, timeout):
        """Wait until `count` more writes are acknowledged; True if they were."""
        target = self.writer.counts[workload.ACK] + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.writer.counts[workload.ACK] >= target:
                return True
            time.sleep(0.05)
        return False

    def __exit__(self, *exc):
        self.writer.stop()

    def check(self):
        report = workload.check(self.writer.attempts, self.writer.read_back(timeout=90), self.fault_at)
        assert report.acknowledged > 0, "no write was ever acknowledged"
        assert report.lost == [], f"acknowledged rows lost: {report.lost[:10]}"
        assert report.unexpected == [], f"rows present that were never committed: {report.unexpected[:10]}"
        return report


class WatchedWriteRun(WriteRun):
    """A WriteRun whose fault an outside monitor watches (issue 8): from
    mark_fault() on, every server is sampled every 20 ms for being writable
    and for having a synchronous standby."""

    def __init__(self, cluster, nodes=("pgsql-1", "pgsql-2")):
        super().__init__(cluster)
        self.monitor = ExposureMonitor({n: cluster.dsn_for(n) for n in nodes}, interval=0.02)
        self.fault_clock = None     # monotonic, as the monitor's samples

    def mark_fault(self):
        self.monitor.start()
        super().mark_fault()
        self.fault_clock = time.monotonic()

    def __exit__(self, *exc):
        if self.monitor.is_alive():
            self.monitor.stop()
        super().__exit__(*exc)

    def unprotected_seconds(self):
        """Seconds since the fault with a writable server acknowledging commits alone."""
        return self.monitor.unprotected_seconds(since=self.fault_clock)

    def unprotected_samples(self):
        return [s for s in self.monitor.samples if s.unprotected][:5]


def superuser(cluster, node, statement):
    """Run `statement` and reload the configuration, as the node's superuser
    (ALTER SYSTEM, then pg_reload_conf)."""
    import psycopg2
    conn = psycopg2.connect(**cluster.superuser_params(node), connect_timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
