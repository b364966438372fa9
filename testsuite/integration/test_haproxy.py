"""HAProxy in front of a real local cluster, routed by the nodes' REST API
(docs/haproxy.cfg on loopback ports): a writer through HAProxy's port sees
a failover of a dead primary host with nothing lost, a write gap bounded
by the failover plus a check interval, and no connection ever reaching a
standby."""
import os
import time

import pytest

from harness import workload
from harness.haproxy import HAProxy, binary
from testsuite.integration.test_cluster import primary_is
from testsuite.integration.conftest import wait_for

pytestmark = pytest.mark.skipif(binary() is None, reason="haproxy is not installed (apt-get install haproxy)")

MAX_GAP = 12.0      # the multi-host DSN's failover (~5 s) plus a check interval, with room for a busy machine


def routes(proxy, expected):
    def check():
        servers = proxy.servers()
        return all(servers.get(key) == status for key, status in expected.items())
    return check


def test_writes_through_haproxy_follow_a_failover(local_cluster):
    cluster = local_cluster
    port = lambda name: f"127.0.0.1:{cluster.pg_ports[name]}"    # noqa: E731
    proxy = HAProxy(cluster, os.path.join(cluster.dir, "haproxy"), cluster.base_port + 30, cluster.base_port + 31)
    proxy.start()
    try:
        wait_for(routes(proxy, {("primary", "pgsql-1"): "UP", ("primary", "pgsql-2"): "DOWN",
                                ("replicas", "pgsql-1"): "DOWN", ("replicas", "pgsql-2"): "UP"}),
                 20, "HAProxy routing writes to pgsql-1 and reads to pgsql-2")
        writer = workload.Writer(proxy.dsn(), writers=2, interval=0.05, commit_timeout=15,
                                 server_of=workload.server_address)
        writer.start()
        try:
            wait_for(lambda: writer.counts[workload.ACK] >= 10, 30, "writes through HAProxy")
            fault_at = writer.elapsed()
            cluster.kill_host("pgsql-1")
            # A write that started while kill_host ran may still be acknowledged
            # by pgsql-1: only writes started after it returned must go to pgsql-2.
            killed_at = writer.elapsed()
            wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "pgsql-2 promoted at epoch 2")
            target = writer.counts[workload.ACK] + 20
            wait_for(lambda: writer.counts[workload.ACK] >= target, 60, "writes through HAProxy after the failover")
        finally:
            writer.stop()
        report = workload.check(writer.attempts, writer.read_back(timeout=90), fault_at)
        servers = proxy.servers()
    finally:
        proxy.stop()

    assert report.lost == [], f"acknowledged rows lost: {report.lost[:10]}"
    assert report.unexpected == [], f"rows present that were never committed: {report.unexpected[:10]}"
    assert report.longest_gap is not None and report.longest_gap.length < MAX_GAP, report.longest_gap
    acked = [a for a in writer.attempts if a.outcome == workload.ACK]
    assert {a.node for a in acked if a.end < fault_at} == {port("pgsql-1")}
    assert {a.node for a in acked if a.start > killed_at} == {port("pgsql-2")}
    # HAProxy never sent a connection to a standby: no write met a read-only
    # server, and pgsql-2 was reached only after pgsql-1 died.
    read_only = [a for a in writer.attempts if a.error and "read-only" in a.error]
    assert read_only == [], read_only[:3]
    assert all(a.start > fault_at for a in writer.attempts if a.node == port("pgsql-2"))
    assert servers[("primary", "pgsql-2")] == "UP" and servers[("primary", "pgsql-1")] == "DOWN"
    assert servers[("replicas", "pgsql-2")] == "DOWN"
    print(f"\nHAProxy failover: longest write gap {report.longest_gap.length:.2f}s, "
          f"{report.acknowledged} acknowledged, {report.failed} failed, {report.indeterminate} indeterminate")


def test_haproxy_keeps_the_primary_under_a_slow_loris(local_cluster):
    """Issue 19: 33 connections sending a byte a second blinded the REST API
    and HAProxy took the healthy primary out of service. Now 300 slow-loris
    clients and 100 silent connections on the primary's API for 10 s: HAProxy's
    own checks (docs/haproxy.cfg: inter 500 ms, 100 ms after a failure, fall 2,
    timeout 1 s) never mark it down."""
    from harness.abusers import Abusers, HTTP_LORIS
    from pgha import limits
    cluster = local_cluster
    limits.raise_open_files_limit()
    proxy = HAProxy(cluster, os.path.join(cluster.dir, "haproxy"), cluster.base_port + 30, cluster.base_port + 31)
    proxy.start()
    abusers = Abusers(("127.0.0.1", cluster.api_ports["pgsql-1"]), 300, 100, payload=HTTP_LORIS, interval=1.0)
    try:
        wait_for(routes(proxy, {("primary", "pgsql-1"): "UP"}), 20, "HAProxy routing writes to pgsql-1")
        abusers.start()
        seen = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            seen.append(proxy.servers()[("primary", "pgsql-1")])
            time.sleep(0.2)
        checks_failed = proxy.stat("primary", "pgsql-1", "chkfail")
    finally:
        abusers.stop()
        proxy.stop()
    print(f"HAProxy under a slow-loris on the primary's API: {seen.count('UP')} of {len(seen)} samples UP, "
          f"{checks_failed} checks failed ({abusers.opened} attacker connections)")
    assert abusers.opened >= 400
    assert set(seen) == {"UP"}, f"HAProxy marked the healthy primary down: {seen}"
