"""Fencing without the node daemon (issue 8, invariant 2): on the primary the
daemon alone is killed -9 or frozen while PostgreSQL runs on; its fencer
must stop PostgreSQL within the lease. A client that lowered
synchronous_commit to local writes straight to the old primary's port (the
one client the synchronous standby does not protect) and a sampler asks
both servers pg_is_in_recovery() every 150 ms.

Timings are printed (run with -s to see them); the asserted bounds are the
invariant's: refusing writes within lease (1.8 s) + 1 s of the daemon's end,
nothing acknowledged there after the standby's promotion, never two
writable servers at one sampled moment.
"""
import os
import threading
import time
from datetime import datetime

import psycopg2
import pytest

from conftest import WriteRun, running_cluster, wait_for
from pgha import settings

LEASE_TIME = settings.LEASE_TIME     # the default lease (arbiter_settings.py reads it)
SHORT_LEASE = 1.0    # a cluster's lease under the default (two heartbeats at least)
OTHER = {"pgsql-1": "pgsql-2", "pgsql-2": "pgsql-1"}


def connect(cluster, node, timeout=1):
    return psycopg2.connect(**cluster.superuser_params(node), connect_timeout=timeout)


def sql(cluster, node, query):
    conn = connect(cluster, node, timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


class Sampler(threading.Thread):
    """Every interval: does each server answer pg_is_in_recovery(), and what?"""

    def __init__(self, cluster, interval=0.15):
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, interval
        self.samples = []       # (started, ended, {node: True | False | None})
        self._conns = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            started = time.monotonic()
            answers = {node: self._ask(node) for node in OTHER}
            self.samples.append((started, time.monotonic(), answers))
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))
        for conn in self._conns.values():
            conn.close()

    def _ask(self, node):
        try:
            if node not in self._conns:
                self._conns[node] = connect(self.cluster, node)
                self._conns[node].autocommit = True
            with self._conns[node].cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                return cur.fetchone()[0]
        except psycopg2.Error:
            conn = self._conns.pop(node, None)
            if conn:
                conn.close()
            return None

    def stop(self):
        self._halt.set()
        self.join(timeout=10)

    def both_writable(self):
        return [(s, e) for s, e, answers in self.samples if answers["pgsql-1"] is False and answers["pgsql-2"] is False]

    def promoted(self, node, after):
        """(last start of a sample that saw node in recovery, end of the first that saw it writable)."""
        last_recovery = None
        for started, ended, answers in self.samples:
            if started < after:
                continue
            if answers[node] is True:
                last_recovery = started
            elif answers[node] is False and last_recovery is not None:
                return last_recovery, ended
        return None


class LocalCommitWriter(threading.Thread):
    """Writes straight to one port with synchronous_commit = local, every 50 ms."""

    def __init__(self, cluster, node):
        super().__init__(daemon=True)
        self.cluster, self.node = cluster, node
        self.acks = []          # when each acknowledgement was received
        self.failures = []      # when each attempt failed
        self._halt = threading.Event()

    def run(self):
        conn = None
        while not self._halt.is_set():
            try:
                if conn is None:
                    conn = connect(self.cluster, self.node)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("SET synchronous_commit = local")
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO fence_probe (note) VALUES ('local commit')")
                self.acks.append(time.monotonic())
            except psycopg2.Error:
                self.failures.append(time.monotonic())
                if conn is not None:
                    conn.close()
                    conn = None
            self._halt.wait(0.05)
        if conn is not None:
            conn.close()

    def stop(self):
        self._halt.set()
        self.join(timeout=10)

    def refusing_since(self):
        """The first failure after the last acknowledgement."""
        last_ack = self.acks[-1] if self.acks else 0.0
        return min((t for t in self.failures if t > last_ack), default=None)


def current_primary(cluster):
    status = cluster.status()
    return status["primary"], status["epoch"]


def postmaster_gone(cluster, node):
    return lambda: cluster.postmaster_pid(node) is None


def daemon_fault_on_primary(cluster, inject, recover):
    """inject() ends or freezes the primary's daemon; returns the timings and
    asserts what invariant 2 promises; recover() brings the daemon back."""
    old, epoch = current_primary(cluster)
    new = OTHER[old]
    sql(cluster, old, "CREATE TABLE IF NOT EXISTS fence_probe (id bigserial PRIMARY KEY, note text)")
    fencer = cluster.fencer_pid(old)
    assert fencer, "the primary has no fencer running"
    sampler, writer = Sampler(cluster), LocalCommitWriter(cluster, old)
    sampler.start()
    writer.start()
    try:
        wait_for(lambda: len(writer.acks) >= 10, 20, "local commits on the primary")
        postmaster = cluster.postmaster_pid(old)
        fault_at = time.monotonic()
        inject(old)
        wait_for(postmaster_gone(cluster, old), LEASE_TIME + 5, "the old primary fenced")
        fenced_at = time.monotonic()
        status = wait_for(lambda: (s := cluster.status())["primary"] == new and s, 30,
                          f"{new} promoted")
        assert status["epoch"] > epoch
        wait_for(lambda: sampler.promoted(new, fault_at), 10, f"{new} seen writable")
        time.sleep(1.0)     # a few more samples after the promotion
        recover(old)
        assert cluster.wait_healthy(timeout=120)["primary"] == new, "the old primary came back as primary"
    finally:
        writer.stop()
        sampler.stop()
    last_in_recovery, seen_writable = sampler.promoted(new, fault_at)
    refusing = writer.refusing_since()
    acks_after_fault = [t - fault_at for t in writer.acks if t > fault_at]
    timings = {
        "postmaster": postmaster,
        "last local commit acknowledged": max(acks_after_fault, default=0.0),
        "old primary refusing writes": refusing - fault_at,
        "postmaster gone (seen by 0.2 s polling)": fenced_at - fault_at,
        "standby promoted (between)": (last_in_recovery - fault_at, seen_writable - fault_at),
    }
    print(f"\n{old} daemon fault: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in timings.items()))
    assert sampler.both_writable() == [], "both servers answered pg_is_in_recovery() = false"
    assert writer.acks[-1] <= last_in_recovery, \
        "a local commit was acknowledged on the old primary after the standby may have been promoted"
    assert refusing - fault_at <= LEASE_TIME + 1.0, "the old primary took writes past its lease"
    assert cluster.fencer_pid(old) == fencer, "the old primary's fencer was replaced, not adopted"
    return timings


def _fmt(value):
    if isinstance(value, tuple):
        return "%.2f-%.2fs" % value
    return "%.2fs" % value if isinstance(value, float) else str(value)


def test_primary_daemon_killed(local_cluster):
    daemon_fault_on_primary(local_cluster, local_cluster.kill_daemon, local_cluster.start_node)


def test_primary_daemon_frozen(local_cluster):
    frozen = {}

    def freeze(node):
        frozen["at"] = time.monotonic()
        local_cluster.freeze_daemon(node)

    def thaw(node):
        time.sleep(max(0.0, frozen["at"] + 10.0 - time.monotonic()))
        local_cluster.thaw_daemon(node)

    daemon_fault_on_primary(local_cluster, freeze, thaw)


def test_fencer_killed(local_cluster):
    cluster = local_cluster
    primary, epoch = current_primary(cluster)
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        for node in (primary, OTHER[primary]):
            old = cluster.kill_fencer(node)
            killed_at = time.monotonic()
            assert old
            new = wait_for(lambda: (cluster.fencer_pid(node) or old) != old and cluster.fencer_pid(node), 5,
                           f"{node}'s fencer restarted")
            print(f"\n{node}: fencer {old} killed, {new} running after {time.monotonic() - killed_at:.2f}s")
            assert time.monotonic() - killed_at < 1.5
        assert run.wait_for_acks(40, timeout=30), "writes stalled after the fencers were killed"
    run.check()
    assert current_primary(cluster) == (primary, epoch), "a fencer's death caused a failover"
    with open(os.path.join(cluster.dir, f"{primary}.log")) as f:
        assert "restarted it" in f.read()
    # The restarted fencer is armed: without its daemon, it still fences the primary.
    killed_at = time.monotonic()
    cluster.kill_daemon(primary)
    wait_for(postmaster_gone(cluster, primary), LEASE_TIME + 2, "the primary fenced by its new fencer")
    print(f"{primary}: daemon killed, postmaster gone {time.monotonic() - killed_at:.2f}s later")


@pytest.fixture
def short_lease_cluster(request):
    yield from running_cluster(request, "short-lease", arbiter_overrides={"lease_time": SHORT_LEASE})


def first_line(path, skip, text):
    """The first line after the first `skip` lines of a log that holds text, or None."""
    with open(path) as f:
        return next((line for line in f.readlines()[skip:] if text in line), None)


def _logged_at(line):
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")


def test_a_restarted_daemon_gives_a_running_primary_the_clusters_lease_as_grace(short_lease_cluster):
    """Issue 16: a node daemon restarted beside a running primary gives it the
    cluster's lease (as last heard from the arbiter), not a fixed 1.8 s that
    outlasts the arbiter's failover wait (lease_time + failover_margin) when
    lease_time is shorter. The arbiter and the old fencer are gone, so only
    the restarted daemon's grace (and its new fencer) bound the primary."""
    cluster = short_lease_cluster
    primary, _ = current_primary(cluster)
    cluster.kill("arbiter")         # nobody confirms the primary
    cluster.kill_daemon(primary)
    cluster.kill_fencer(primary)
    assert cluster.postmaster_pid(primary), "PostgreSQL should outlive its daemon and fencer"
    log_path = os.path.join(cluster.dir, f"{primary}.log")
    with open(log_path) as f:
        seen = len(f.readlines())
    cluster.start_node(primary)
    wait_for(postmaster_gone(cluster, primary), 20, "the adopted primary fenced")
    adopted = wait_for(lambda: first_line(log_path, seen, "PostgreSQL is already running as primary"), 5,
                       "the adoption logged")
    fenced = wait_for(lambda: first_line(log_path, seen, "fencing PostgreSQL"), 5, "the fence logged")
    grace = (_logged_at(fenced) - _logged_at(adopted)).total_seconds()
    print(f"\n{primary}: adopted primary fenced {grace:.2f}s after the restart ({adopted.strip()})")
    assert f"within {SHORT_LEASE:.1f}s" in adopted
    assert grace <= SHORT_LEASE + 0.3, f"the grace ({grace:.2f}s) outlasted the cluster's lease {SHORT_LEASE}s"
