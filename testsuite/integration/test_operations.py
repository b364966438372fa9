"""Operating a real local cluster with pgha-ctl (issue 10, item 4): maintenance
mode holds back a failover and resume lets it happen, the durable history
names the failover, a scheduled switchover, a manual failover."""
import json
import time

from conftest import WriteRun, wait_for
from test_cluster import primary_is
from test_rest_api import get

from pgha import ctl

LEASE_PLUS_MARGIN = 2.2     # the default lease (1.8 s) + failover margin (0.4 s)
FAILOVER_TARGET = 15.0      # generous for a shared machine; bench_failover measures the real figure


def ctl_run(cluster, *argv, capsys=None):
    code = ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file", cluster.key_file("operator"),
                     *argv])
    return code


def heard_paused(cluster, node):
    """The node's last instruction said paused (its REST API's own view)."""
    status, body = get(cluster, node, "/")
    return status == 200 and (json.loads(body)["pgha"]["instruction"] or {}).get("paused") is True


def test_pause_holds_back_a_failover_resume_lets_it_happen_and_history_names_it(local_cluster, capsys):
    cluster = local_cluster
    assert ctl_run(cluster, "pause") == 0
    assert cluster.status()["paused"] is True
    capsys.readouterr()
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30), "writes must go on while paused"
        run.mark_fault()
        wait_for(lambda: all(heard_paused(cluster, node) for node in cluster.nodes), 10,
                 "both nodes heard paused=True")
        cluster.kill_host("pgsql-1")
        killed_at = time.monotonic()
        # For 10 s beyond the normal failover time the standby is not promoted.
        while time.monotonic() - killed_at < LEASE_PLUS_MARGIN + 10:
            status = cluster.status()
            assert (status["primary"], status["epoch"], status["paused"]) == ("pgsql-1", 1, True), status
            assert (status["nodes"]["pgsql-2"]["report"] or {}).get("role") == "standby"
            time.sleep(0.5)
        assert ctl_run(cluster, "list") == 0
        assert "PAUSED" in capsys.readouterr().out

        assert ctl_run(cluster, "resume") == 0
        resumed_at = time.monotonic()
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), FAILOVER_TARGET, "pgsql-2 promoted after resume")
        promoted_in = time.monotonic() - resumed_at
        assert promoted_in < FAILOVER_TARGET, promoted_in
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    run.check()

    capsys.readouterr()
    assert ctl_run(cluster, "history", "--json") == 0
    events = json.loads(capsys.readouterr().out)
    kinds = [e["event"] for e in events]
    assert kinds.index("pause") < kinds.index("resume") < kinds.index("failover"), kinds
    [failover] = [e for e in events if e["event"] == "failover"]
    assert (failover["epoch"], failover["old_primary"], failover["new_primary"]) == (2, "pgsql-1", "pgsql-2")
    assert "silent" in failover["reason"]
    assert failover["old_primary_lsn"] > 0 and failover["new_primary_lsn"] > 0
    assert failover["new_primary_lsn"] >= failover["old_primary_lsn"] - 16 * 1024 * 1024
    assert ctl_run(cluster, "history") == 0
    assert "failover" in capsys.readouterr().out


def test_scheduled_switchover_starts_at_its_time(local_cluster, capsys):
    cluster = local_cluster
    wait_for(lambda: cluster.status()["promotable"], 30, "a promotable standby")
    asked_at = time.monotonic()
    assert ctl_run(cluster, "switchover", "--at", "+3s") == 0
    assert "scheduled" in capsys.readouterr().out
    time.sleep(2.0)
    status = cluster.status()
    assert (status["primary"], status["epoch"]) == ("pgsql-1", 1)
    assert status["switchover_scheduled"]["to"] is None
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), 30, "the scheduled switchover")
    took = time.monotonic() - asked_at
    assert 2.5 < took < 20, took
    events = [e["event"] for e in cluster.arbiter_call({"type": "history", "limit": 20})["events"]]
    assert events.index("switchover_scheduled") < events.index("switchover_requested") < events.index("failover")


def test_manual_failover_with_a_live_primary_is_a_switchover_and_refused_for_a_non_promotable_node(
        local_cluster, capsys):
    cluster = local_cluster
    wait_for(lambda: cluster.status()["promotable"], 30, "a promotable standby")
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        assert ctl_run(cluster, "failover", "--to", "pgsql-2") == 0
        assert "switching over" in capsys.readouterr().out
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "failover (switchover) to pgsql-2")
        assert run.wait_for_acks(20, timeout=60)
    run.check()

    # The old primary's host dies: it is no longer promotable, and a failover to it is refused.
    cluster.kill_host("pgsql-1")
    wait_for(lambda: not cluster.status()["promotable"], 30, "pgsql-1 marked not promotable")
    capsys.readouterr()
    assert ctl_run(cluster, "failover", "--to", "pgsql-1") == 1
    err = capsys.readouterr().err
    assert "not promotable" in err and err.count("\n") == 1
    assert ctl_run(cluster, "failover", "--to", "pgsql-1", "--force") == 1     # the primary lives: never forced
    status = cluster.status()
    assert (status["primary"], status["epoch"]) == ("pgsql-2", 2)
