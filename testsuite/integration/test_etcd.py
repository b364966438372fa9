"""The arbiter's state on etcd: a 3-member etcd on loopback, two arbiter
processes of which one leads (LocalCluster(etcd=True)); arbiter i talks to
etcd member i first (its co-located member)."""
import os
import time

import pytest

from harness import acting, etcd
from harness.exposure import ExposureMonitor
from pgha import ctl, protocol
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


def both_heard(cluster, status=None):
    """The leader has heard both nodes within the last second (they found it),
    in `status` (a snapshot already taken) or a new one."""
    if status is None:
        try:
            status = cluster.status()
        except OSError:
            return False
    nodes = status.get("nodes") or {}
    return (status.get("arbiter") or {}).get("leader") and all(
        (nodes.get(n) or {}).get("last_seen_ago") is not None and nodes[n]["last_seen_ago"] < 1 for n in NODES)


def heard_and_healthy(cluster):
    """Both nodes heard and the standby promotable, in one status snapshot."""
    status = cluster.healthy_status()
    return status is not None and both_heard(cluster, status)


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


def test_operator_commands_sent_to_the_follower_get_not_the_leader_never_a_stale_answer(etcd_cluster):
    """pause, failover and resume sent to the arbiter that does not lead: it
    answers "not the leader" and where the leader is (before, it answered from
    its own stale memory: "cannot store its decision", "not promotable", "it
    was not paused"), and nothing changes."""
    cluster = etcd_cluster
    leader = wait_for(cluster.leading_arbiter, 10, "a leading arbiter")
    follower = next(key for key in cluster.arbiter_ports if key != leader)
    wait_for(lambda: heard_and_healthy(cluster), 30, "both nodes heard, the standby promotable")

    def ask_follower(message):
        return protocol.call("127.0.0.1", cluster.arbiter_ports[follower], message, timeout=5.0,
                             credential=cluster.operator(), tls_context=cluster.tls_client())

    for message in ({"type": "pause"}, {"type": "failover", "to": "pgsql-2"}, {"type": "resume"},
                    {"type": "switchover"}, {"type": "reload"}):
        reply = ask_follower(message)
        assert (reply["type"], reply["error"]) == ("error", "not the leader"), (message, reply)
        assert reply["leader"].rpartition(":")[2] == str(cluster.arbiter_ports[leader]), reply
    status = cluster.status()
    assert (status["epoch"], status["primary"], bool(status.get("paused"))) == (1, "pgsql-1", False)
    assert status["failover_to"] is None and status["switchover_to"] is None
    assert cluster.leading_arbiter() == leader
    # pgha-ctl given both arbiters, the follower first: the command takes effect through the leader.
    both = ",".join(f"127.0.0.1:{cluster.arbiter_ports[key]}" for key in (follower, leader))
    for command, paused in (("pause", True), ("resume", False)):
        assert ctl.main(["--arbiter", both, "--key-file", cluster.key_file("operator"), command]) == 0
        assert cluster.status()["paused"] is paused


def test_a_scheduled_switchover_survives_a_change_of_leading_arbiter(etcd_cluster):
    """switchover --at is in the stored state (issue 21): the follower shows it
    from etcd, the arbiter that takes over has it, and it happens once, on time."""
    cluster = etcd_cluster
    leader = wait_for(cluster.leading_arbiter, 10, "a leading arbiter")
    follower = next(key for key in cluster.arbiter_ports if key != leader)
    wait_for(lambda: heard_and_healthy(cluster), 30, "both nodes heard, the standby promotable")
    both = ",".join(f"127.0.0.1:{cluster.arbiter_ports[key]}" for key in (follower, leader))
    asked_at = time.monotonic()
    assert ctl.main(["--arbiter", both, "--key-file", cluster.key_file("operator"), "switchover", "--to", "pgsql-2",
                     "--at", "+12s", "--force"]) == 0
    at = cluster.status()["switchover_scheduled"]["at"]
    from_follower = protocol.call("127.0.0.1", cluster.arbiter_ports[follower], {"type": "status"}, timeout=5.0,
                                  credential=cluster.operator(), tls_context=cluster.tls_client())
    assert from_follower["switchover_scheduled"]["at"] == at, from_follower

    cluster.terminate(leader)       # it revokes its etcd lease: the other leads at once
    wait_for(lambda: cluster.leading_arbiter() not in (None, leader), 20, "the other arbiter leading")
    scheduled = cluster.status()["switchover_scheduled"]
    assert (scheduled["at"], scheduled["to"]) == (at, "pgsql-2"), scheduled
    wait_for(primary_is(cluster, "pgsql-2", 2), 60, "the scheduled switchover by the new leader")
    assert time.monotonic() - asked_at > 11.5
    assert cluster.status()["switchover_scheduled"] is None
    kinds = [e["event"] for e in cluster.arbiter_call({"type": "history", "limit": 50})["events"]]
    assert kinds.count("switchover") == 1 and "failover" not in kinds, kinds


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
            # Up before the next move stops the other: else, under load, neither arbiter
            # runs for longer than the primary's lease and a failover is right (not a move).
            cluster.wait_listening(cluster.arbiter_ports[leader])
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
