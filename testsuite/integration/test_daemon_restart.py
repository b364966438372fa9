"""Stopping or restarting the node daemon leaves PostgreSQL running (issue 21,
item 4): real daemons, real SIGTERM, a writer through the multi-host DSN.

- the primary's daemon restarted (SIGTERM, then started again), outside pause
  and in pause: no failover (same epoch), the same postmaster, the same
  fencer (adopted), nothing acknowledged lost, the write gap printed;
- in pause its PostgreSQL outlives the lease with no daemon (nothing fences
  it), and a resume while that daemon is down fails nothing over;
- the standby's daemon restarted: it streams on, commits do not stall;
- the primary's daemon stopped and not restarted outside pause: its fencer
  fences PostgreSQL at the lease's end and the standby is promoted;
- stop_postgres_on_exit = True: the old way (PostgreSQL stopped with the
  daemon, a failover), measured for comparison.

Run with -s to see the timings. The bounds asserted are generous (a shared
machine); what a failover costs is measured by harness/bench_failover.py.
"""
import time

import pytest

from conftest import WriteRun, running_cluster, wait_for
from harness import workload
from test_fencing import daemon_fault_on_primary
from test_operations import ctl_run, heard_paused

from pgha import settings

LEASE_TIME = settings.LEASE_TIME
FAILOVER_WAIT = settings.LEASE_TIME + settings.FAILOVER_MARGIN
GAP_BOUND = 1.0     # seconds without an acknowledged write; a failover costs ~2.2 s


def gap_after(run):
    """The longest time without an acknowledged write, from the fault on."""
    acked = sorted(a.end for a in run.writer.attempts if a.outcome == workload.ACK)
    return max((b - a for a, b in zip(acked, acked[1:]) if b > run.fault_at), default=None)


def restart_primary_daemon(cluster, paused, down_for=0.0, while_down=None):
    """SIGTERM the primary's daemon, wait down_for seconds (while_down() runs
    then), start it again, past the failover wait: returns (gap, report)."""
    status = cluster.status()
    primary, epoch = status["primary"], status["epoch"]
    postmaster, fencer = cluster.postmaster_pid(primary), cluster.fencer_pid(primary)
    assert postmaster and fencer
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        stop_at = time.monotonic()
        cluster.terminate(primary)
        stopped_in = time.monotonic() - stop_at
        assert cluster.postmaster_pid(primary) == postmaster, "PostgreSQL stopped with its daemon"
        if while_down:
            while_down()
        time.sleep(max(0.0, stop_at + down_for - time.monotonic()))
        assert cluster.postmaster_pid(primary) == postmaster, "PostgreSQL fenced while its daemon was down"
        cluster.start_node(primary)
        time.sleep(FAILOVER_WAIT + 2)   # a failover would have happened by now
        assert run.wait_for_acks(20, timeout=30), "writes stalled after the daemon's restart"
    report = run.check()
    gap = gap_after(run)
    print(f"\n{primary} daemon restart ({'paused' if paused else 'not paused'}, down "
          f"{max(down_for, stopped_in):.2f}s, SIGTERM handled in {stopped_in:.2f}s): longest write gap "
          f"{gap:.3f}s, {report.acknowledged} acknowledged, {len(report.lost)} lost")
    status = cluster.wait_healthy(timeout=60)
    assert (status["primary"], status["epoch"]) == (primary, epoch), "the daemon's restart caused a failover"
    assert cluster.postmaster_pid(primary) == postmaster, "PostgreSQL was restarted"
    assert cluster.fencer_pid(primary) == fencer, "the fencer was replaced, not adopted"
    assert gap < GAP_BOUND, f"writes stopped for {gap:.2f}s"
    return gap, report


def test_primary_daemon_restart_keeps_postgres_and_writes(local_cluster):
    restart_primary_daemon(local_cluster, paused=False)


def test_primary_daemon_restart_in_pause_never_fences(local_cluster):
    """Down longer than the lease: in pause nothing fences the primary. A
    resume meanwhile fails nothing over: the arbiter heard the daemon leave
    it unfenced, and waits for the daemon to report again."""
    cluster = local_cluster
    assert ctl_run(cluster, "pause") == 0
    wait_for(lambda: all(heard_paused(cluster, node) for node in cluster.nodes), 10, "both nodes heard paused")

    def resume():
        assert ctl_run(cluster, "resume") == 0

    restart_primary_daemon(cluster, paused=True, down_for=FAILOVER_WAIT + 3, while_down=resume)
    assert cluster.status()["paused"] is False


def test_standby_daemon_restart_keeps_it_streaming(local_cluster):
    """The standby's daemon restarted: its PostgreSQL streams on, the
    primary's synchronous commits do not stall, nothing changes role."""
    cluster = local_cluster
    status = cluster.status()
    primary, epoch = status["primary"], status["epoch"]
    standby = next(node for node in cluster.nodes if node != primary)
    postmaster = cluster.postmaster_pid(standby)
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        cluster.terminate(standby)
        assert cluster.postmaster_pid(standby) == postmaster, "the standby's PostgreSQL stopped with its daemon"
        cluster.start_node(standby)
        time.sleep(FAILOVER_WAIT + 2)
        assert run.wait_for_acks(20, timeout=30)
    report = run.check()
    gap = gap_after(run)
    print(f"\n{standby} (standby) daemon restart: longest write gap {gap:.3f}s, {len(report.lost)} lost")
    status = cluster.wait_healthy(timeout=60)
    assert (status["primary"], status["epoch"]) == (primary, epoch)
    assert cluster.postmaster_pid(standby) == postmaster, "the standby's PostgreSQL was restarted"
    assert gap < GAP_BOUND, f"writes stopped for {gap:.2f}s"


def test_primary_daemon_stopped_for_good_is_fenced_at_the_lease_end(local_cluster):
    """Outside pause a daemon that does not come back: its fencer stops
    PostgreSQL at the lease's end, the standby is promoted, nothing
    acknowledged is lost; started later, it rejoins as the standby."""
    cluster = local_cluster
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        timings = daemon_fault_on_primary(cluster, cluster.terminate, cluster.start_node)
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    report = run.check()
    print(f"write gap {gap_after(run):.3f}s, {report.acknowledged} acknowledged, {len(report.lost)} lost")
    assert timings["postmaster gone (seen by 0.2 s polling)"] <= LEASE_TIME + 1.0


@pytest.fixture
def stopping_cluster(request):
    yield from running_cluster(request, "stop-pg-on-exit", node_overrides={"stop_postgres_on_exit": True})


def test_stop_postgres_on_exit_is_the_old_way(stopping_cluster):
    """stop_postgres_on_exit = True: the daemon's stop stops PostgreSQL (what
    every restart cost before: a PostgreSQL restart, or a failover when the
    daemon is slower back than the failover wait); in pause it is left
    running all the same."""
    cluster = stopping_cluster
    primary = cluster.status()["primary"]
    postmaster = cluster.postmaster_pid(primary)
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        cluster.terminate(primary)
        assert cluster.postmaster_pid(primary) is None, "PostgreSQL outlived its daemon"
        cluster.start_node(primary)
        time.sleep(FAILOVER_WAIT + 2)
        assert run.wait_for_acks(20, timeout=60)
    report = run.check()
    status = cluster.wait_healthy(timeout=120)
    print(f"\nstop_postgres_on_exit: daemon restart on the primary, epoch now {status['epoch']}, longest write "
          f"gap {gap_after(run):.3f}s, {len(report.lost)} lost")
    new_primary = status["primary"]
    assert cluster.postmaster_pid(primary) != postmaster
    assert ctl_run(cluster, "pause") == 0
    wait_for(lambda: all(heard_paused(cluster, node) for node in cluster.nodes), 10, "both nodes heard paused")
    postmaster = cluster.postmaster_pid(new_primary)
    cluster.terminate(new_primary)
    assert cluster.postmaster_pid(new_primary) == postmaster, "in pause PostgreSQL must be left running"
    cluster.start_node(new_primary)
    assert cluster.wait_healthy(timeout=60)["primary"] == new_primary
    assert cluster.postmaster_pid(new_primary) == postmaster
