"""The arbiter's state on etcd: a 3-member etcd on loopback, two arbiter
processes of which one leads (LocalCluster(etcd=True)); arbiter i talks to
etcd member i first (its co-located member)."""
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


def monitor_of(cluster):
    """Reads every server every 50 ms: two writable servers at once would show."""
    return ExposureMonitor({n: cluster.dsn_for(n) for n in NODES}, interval=0.05)


def failover_wait(cluster):
    """Seconds after which a failover would have begun: the primary's lease,
    the margin, and a dead leading arbiter's etcd lease."""
    return sum(float(cluster.arbiter_setting(s)) for s in ("lease_time", "failover_margin", "etcd_lease_ttl"))


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


def test_leading_arbiter_its_etcd_member_and_primary_host_killed_the_other_arbiter_fails_over(etcd_cluster):
    cluster = etcd_cluster
    leader = wait_for(cluster.leading_arbiter, 10, "a leading arbiter")
    member = cluster.etcd_member_of(leader)
    monitor = monitor_of(cluster)
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        monitor.start()
        run.mark_fault()
        started = time.monotonic()
        cluster.kill(leader)                # the leading arbiter's process, then its etcd member,
        cluster.etcd.kill_member(member)    # with the primary's host
        cluster.kill_host("pgsql-1")
        wait_for(primary_is(cluster, "pgsql-2", 2), 40, "pgsql-2 promoted at epoch 2 by the other arbiter")
        took = time.monotonic() - started
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
        monitor.stop()
    run.check()
    assert monitor.split_brain_seconds() == 0, "two primaries at once"
    assert took < 20, f"failover took {took:.1f}s"
    assert cluster.leading_arbiter() not in (None, leader)
    assert_never_two_acting(cluster)
    cluster.etcd.start_member(member)       # the member rejoins from its data
    cluster.etcd.wait_healthy(names=[member])


def test_leadership_moves_back_and_forth_while_a_writer_runs(etcd_cluster):
    """20 moves, alternately a killed leader (the other waits out its etcd
    lease) and a stopped one (it revokes its lease: the other takes over at once)."""
    cluster = etcd_cluster
    monitor = monitor_of(cluster)
    moves = 20
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        monitor.start()
        run.mark_fault()
        for move in range(moves):
            leader = wait_for(cluster.leading_arbiter, 20, "a leading arbiter")
            (cluster.terminate if move % 2 else cluster.kill)(leader)
            wait_for(lambda: cluster.leading_arbiter() not in (None, leader), 20, "the other arbiter leading")
            cluster.start_arbiter(key=leader)
            wait_for(lambda: both_heard(cluster), 20, "both nodes found the new leader")
            assert run.wait_for_acks(3, timeout=30), f"writes stalled after move {move + 1}"
        monitor.stop()
    run.check()
    assert monitor.split_brain_seconds() == 0, "two primaries at once"
    status = cluster.status()
    assert status["epoch"] == 1 and status["primary"] == "pgsql-1", "no failover: the primary was healthy"
    intervals = assert_never_two_acting(cluster)
    assert len(intervals) >= moves + 1


def test_etcd_minority_lost_nothing_changes_and_the_arbiter_keeps_deciding(etcd_cluster):
    cluster = etcd_cluster
    leader = wait_for(cluster.leading_arbiter, 10, "a leading arbiter")
    member = cluster.etcd_member_of(leader)
    before = cluster.status()
    monitor = monitor_of(cluster)
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        monitor.start()
        run.mark_fault()
        cluster.etcd.kill_member(member)     # the leading arbiter's own member
        time.sleep(failover_wait(cluster) + 1)   # a failover or a change of leader would have begun
        assert run.wait_for_acks(20, timeout=30), "writes stopped with etcd's majority still up"
        during = cluster.status()
        assert (during["epoch"], during["primary"]) == (before["epoch"], before["primary"])
        assert during["arbiter"]["leader"] and during["arbiter"]["state_store"] == "ok", during["arbiter"]
        assert during["arbiter"]["term"] == before["arbiter"]["term"], "the leadership changed"
        # The arbiter keeps deciding: a planned switchover, written to etcd's majority.
        cluster.switchover("pgsql-2")
        wait_for(primary_is(cluster, "pgsql-2", before["epoch"] + 1), 30, "the switchover to pgsql-2")
        assert run.wait_for_acks(20, timeout=30), "writes did not resume after the switchover"
        cluster.etcd.start_member(member)
        cluster.etcd.wait_healthy(names=[member])
        assert run.wait_for_acks(10, timeout=30)
        monitor.stop()
    run.check()
    assert monitor.split_brain_seconds() == 0, "two primaries at once"
    assert cluster.leading_arbiter() == leader
    assert_never_two_acting(cluster)


def test_etcd_majority_lost_writes_go_on_no_failover_status_says_so(etcd_cluster):
    cluster = etcd_cluster
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        for name in cluster.etcd.names[:2]:
            cluster.etcd.kill_member(name)
        time.sleep(failover_wait(cluster))      # past the leader's lease, the arbiter lease and a failover's wait
        assert run.wait_for_acks(40, timeout=30), "writes stopped without a majority in etcd"
        status = cluster.status()
    run.check()
    assert cluster.writable("pgsql-1") and not cluster.writable("pgsql-2")
    assert status["arbiter"]["leader"] is False
    assert status["arbiter"]["state_store"].startswith("unreachable"), status["arbiter"]
