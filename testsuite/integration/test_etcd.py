"""The arbiter's state on etcd: a 3-member etcd on loopback, two arbiter
processes of which one leads (LocalCluster(etcd=True))."""
import os
import time

import pytest

from harness import acting, etcd
from harness.exposure import ExposureMonitor
from testsuite.integration.conftest import WriteRun, running_cluster, wait_for

pytestmark = pytest.mark.skipif(not etcd.available(), reason="etcd is not installed (apt-get install etcd-server)")

NODES = ("pgsql-1", "pgsql-2")


@pytest.fixture
def etcd_cluster(request):
    yield from running_cluster(request, request.node.name[:40], etcd=True)


def leading(cluster):
    """The key ("arbiter", "arbiter-2") of the arbiter that leads, or None."""
    try:
        status = cluster.status()
    except OSError:
        return None
    role = status.get("arbiter") or {}
    if not role.get("leader"):
        return None
    port = int(role["address"].rpartition(":")[2])
    return next(key for key, p in cluster.arbiter_ports.items() if p == port)


def both_heard(cluster):
    """The leader has heard both nodes within the last second (they found it)."""
    try:
        status = cluster.status()
    except OSError:
        return False
    nodes = status.get("nodes") or {}
    return (status.get("arbiter") or {}).get("leader") and all(
        (nodes.get(n) or {}).get("last_seen_ago") is not None and nodes[n]["last_seen_ago"] < 1 for n in NODES)


def acting_records(cluster):
    """Every arbiter's acting record's text (harness.acting)."""
    paths = [os.path.join(cluster.dir, f"{key}.acting") for key in cluster.arbiter_ports]
    return [open(path).read() for path in paths if os.path.exists(path)]


def assert_never_two_acting(cluster):
    return acting.assert_never_two_acting(acting_records(cluster))


def primary_is(cluster, node, epoch):
    def check():
        try:
            status = cluster.status()
        except OSError:
            return False
        report = ((status.get("nodes") or {}).get(node) or {}).get("report") or {}
        return status.get("primary") == node and status.get("epoch") == epoch and report.get("role") == "primary"
    return check


def test_leading_arbiter_and_primary_host_killed_together_the_other_arbiter_fails_over(etcd_cluster):
    cluster = etcd_cluster
    leader = wait_for(lambda: leading(cluster), 10, "a leading arbiter")
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        started = time.monotonic()
        cluster.kill(leader)
        cluster.kill_host("pgsql-1")
        wait_for(primary_is(cluster, "pgsql-2", 2), 40, "pgsql-2 promoted at epoch 2 by the other arbiter")
        took = time.monotonic() - started
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    run.check()
    assert took < 20, f"failover took {took:.1f}s"
    assert leading(cluster) != leader
    assert_never_two_acting(cluster)


def test_leadership_moves_back_and_forth_while_a_writer_runs(etcd_cluster):
    cluster = etcd_cluster
    monitor = ExposureMonitor({n: cluster.dsn_for(n) for n in NODES}, interval=0.05)
    moves = 5
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        monitor.start()
        run.mark_fault()
        for _ in range(moves):
            leader = wait_for(lambda: leading(cluster), 20, "a leading arbiter")
            cluster.kill(leader)
            wait_for(lambda: leading(cluster) not in (None, leader), 20, "the other arbiter leading")
            wait_for(lambda: both_heard(cluster), 20, "both nodes found the new leader")
            cluster.start_arbiter(key=leader)
            assert run.wait_for_acks(5, timeout=30), "writes stalled"
        monitor.stop()
    run.check()
    assert monitor.split_brain_seconds() == 0
    status = cluster.status()
    assert status["epoch"] == 1 and status["primary"] == "pgsql-1", "no failover: the primary was healthy"
    intervals = assert_never_two_acting(cluster)
    assert len(intervals) >= moves + 1


def test_etcd_majority_lost_writes_go_on_no_failover_status_says_so(etcd_cluster):
    cluster = etcd_cluster
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        for name in cluster.etcd.names[:2]:
            cluster.etcd.kill_member(name)
        time.sleep(6)       # past the leader's lease, the arbiter lease and a failover's wait
        assert run.wait_for_acks(40, timeout=30), "writes stopped without a majority in etcd"
        status = cluster.status()
    run.check()
    assert cluster.writable("pgsql-1") and not cluster.writable("pgsql-2")
    assert status["arbiter"]["leader"] is False
    assert status["arbiter"]["state_store"].startswith("unreachable"), status["arbiter"]
