"""Operating a real local cluster with pgha-ctl (issue 10, item 4; issue 21,
item 5): maintenance mode holds back a failover and resume lets it happen,
the durable history names the failover, a scheduled switchover (kept across
an arbiter restart, cancelled by flush), a manual failover that waits for
and prints the new primary."""
import json
import time

from conftest import WriteRun, superuser, wait_for
from test_cluster import log_text, primary_is, sql
from test_rest_api import get

from pgha import ctl, settings

LEASE_PLUS_MARGIN = settings.LEASE_TIME + settings.FAILOVER_MARGIN     # the default timings
FAILOVER_TARGET = 15.0      # generous for a shared machine; bench_failover measures the real figure


def ctl_run(cluster, *argv, capsys=None):
    code = ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file", cluster.key_file("operator"),
                     *argv])
    return code


def heard_paused(cluster, node):
    """The node's last instruction said paused (its REST API's own view)."""
    status, body = get(cluster, node, "/patroni")    # "/" is /primary, as in Patroni
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
    # A time out of range is refused in one line and nothing sticks (issue 19): before,
    # +99999999h was stored and every status after it answered "internal error", and
    # -1e18 closed the connection without a reply.
    for at in (time.time() + 99999999 * 3600, -1e18):
        reply = cluster.arbiter_call({"type": "switchover", "at": at})
        assert reply["type"] == "error" and "'at' must be a time between" in reply["error"], reply
        assert cluster.status()["switchover_scheduled"] is None
    assert ctl_run(cluster, "switchover", "--at", "+99999999h") == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert ctl_run(cluster, "list") == 0 and "scheduled" not in capsys.readouterr().out
    asked_at = time.monotonic()
    assert ctl_run(cluster, "switchover", "--at", "+3s", "--force") == 0
    assert "scheduled" in capsys.readouterr().out
    time.sleep(2.0)
    status = cluster.status()
    assert (status["primary"], status["epoch"]) == ("pgsql-1", 1)
    assert status["switchover_scheduled"]["to"] is None
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), 30, "the scheduled switchover")
    took = time.monotonic() - asked_at
    assert 2.5 < took < 20, took
    events = [e["event"] for e in cluster.arbiter_call({"type": "history", "limit": 20})["events"]]
    # A planned hand-over is named a switchover (it was "failover" before issue 21).
    assert events.index("switchover_scheduled") < events.index("switchover_requested") < events.index("switchover")
    assert "failover" not in events


def test_scheduled_switchover_survives_an_arbiter_restart_and_flush_cancels_it(local_cluster, capsys):
    cluster = local_cluster
    wait_for(lambda: cluster.status()["promotable"], 30, "a promotable standby")
    assert ctl_run(cluster, "switchover", "--at", "+1h", "--force") == 0
    first = cluster.status()["switchover_scheduled"]
    assert first["to"] is None and 3590 < first["in"] <= 3600, first
    # A second one is refused in one line unless it replaces the first explicitly.
    capsys.readouterr()
    assert ctl_run(cluster, "switchover", "--to", "pgsql-2", "--at", "+2h", "--force") == 1
    err = capsys.readouterr().err
    assert "already scheduled" in err and err.count("\n") == 1
    assert cluster.status()["switchover_scheduled"]["at"] == first["at"]

    cluster.kill("arbiter")
    cluster.start_arbiter()
    cluster.wait_healthy(timeout=60)
    assert cluster.status()["switchover_scheduled"]["at"] == first["at"], "the restart forgot it"
    capsys.readouterr()
    assert ctl_run(cluster, "list") == 0
    assert f"switchover to the standby scheduled at {first['at']}" in capsys.readouterr().out
    status, body = get(cluster, "pgsql-2", "/cluster")
    assert status == 200
    wait_for(lambda: json.loads(get(cluster, "pgsql-2", "/cluster")[1]).get("scheduled_switchover", {}).get("at")
             == first["at"], 20, "REST /cluster shows the scheduled switchover")

    assert ctl_run(cluster, "flush", "switchover") == 0
    assert cluster.status()["switchover_scheduled"] is None
    assert ctl_run(cluster, "flush", "switchover") == 1
    assert "no switchover is scheduled" in capsys.readouterr().err

    # Scheduled again, the arbiter restarted before it is due: it still happens, once.
    assert ctl_run(cluster, "switchover", "--to", "pgsql-2", "--at", "+8s", "--force") == 0
    asked_at = time.monotonic()
    cluster.kill("arbiter")
    cluster.start_arbiter()
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "the scheduled switchover after the restart")
    assert time.monotonic() - asked_at > 7.5
    status = cluster.status()
    assert status["switchover_scheduled"] is None
    events = [e["event"] for e in cluster.arbiter_call({"type": "history", "limit": 20})["events"]]
    assert events.count("switchover_scheduled") == 2 and "switchover_cancelled" in events
    assert events[events.index("switchover_cancelled"):].count("switchover") == 1


def test_manual_failover_with_a_live_primary_is_a_switchover_and_refused_for_a_non_promotable_node(
        local_cluster, capsys):
    cluster = local_cluster
    wait_for(lambda: cluster.status()["promotable"], 30, "a promotable standby")
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        asked_at = time.monotonic()
        assert ctl_run(cluster, "failover", "--to", "pgsql-2", "--force") == 0    # waits for the result
        waited = time.monotonic() - asked_at
        out = capsys.readouterr().out
        assert "switching over" in out and "failover done: pgsql-2 is the primary at epoch 2 (" in out, out
        # What it printed was true when it returned: one status snapshot.
        status = cluster.status()
        assert (status["primary"], status["epoch"]) == ("pgsql-2", 2)
        assert status["nodes"]["pgsql-2"]["report"]["role"] == "primary"
        assert waited < 30, waited
        assert run.wait_for_acks(20, timeout=60)
    run.check()

    # The old primary's host dies: it is no longer promotable, and a failover to it is refused.
    cluster.kill_host("pgsql-1")
    wait_for(lambda: not cluster.status()["promotable"], 30, "pgsql-1 marked not promotable")
    capsys.readouterr()
    assert ctl_run(cluster, "failover", "--to", "pgsql-1", "--force") == 1
    err = capsys.readouterr().err
    assert "not promotable" in err and err.count("\n") == 1
    # The primary lives: never forced.
    assert ctl_run(cluster, "failover", "--to", "pgsql-1", "--force", "--allow-data-loss") == 1
    status = cluster.status()
    assert (status["primary"], status["epoch"]) == ("pgsql-2", 2)


def test_query_runs_sql_on_the_member_the_arbiter_names(local_cluster, capsys, monkeypatch):
    """pgha-ctl query (patronictl query): the member found through the
    arbiter's status, the password from libpq's environment, never an option."""
    cluster = local_cluster
    monkeypatch.setenv("PGPASSWORD", cluster.passwords["app_password"])
    capsys.readouterr()
    sql = "SELECT pg_is_in_recovery() AS standby, current_user AS who"
    assert ctl_run(cluster, "query", "-d", "testdb", "-U", "app", "-c", sql) == 0
    out = capsys.readouterr().out
    assert "| standby | who |" in out and "| False   | app |" in out, out
    assert ctl_run(cluster, "query", "-r", "standby", "-d", "testdb", "-U", "app", "-c", sql, "--json") == 0
    assert json.loads(capsys.readouterr().out) == [{"standby": True, "who": "app"}]
    assert ctl_run(cluster, "query", "-m", "pgsql-2", "-d", "testdb", "-U", "app", "-c", "CREATE TABLE t(x int)") == 1
    err = capsys.readouterr().err
    assert err.startswith("ctl: query on pgsql-2 (") and "read-only transaction" in err and err.count("\n") == 1
    monkeypatch.setenv("PGPASSWORD", "wrong")
    assert ctl_run(cluster, "query", "-d", "testdb", "-U", "app", "-c", "SELECT 1") == 1
    assert "password authentication failed" in capsys.readouterr().err


def test_reinit_makes_a_fresh_copy_of_the_standby_and_no_commit_waits_for_it(local_cluster, capsys):
    """pgha-ctl reinit (patronictl reinit, issue 21 item 4): the standby is
    copied afresh from the primary (a file left in its old data directory is
    gone), the primary drops it from synchronous replication before it stops,
    so writes go on, and it streams, synchronous and promotable, again."""
    import os
    cluster = local_cluster
    stale = os.path.join(cluster.pgdata("pgsql-2"), "left-by-the-old-copy")
    with open(stale, "w") as f:
        f.write("x")
    assert ctl_run(cluster, "reinit", "pgsql-1", "--force") == 1
    assert "pgsql-1 is the primary: switch over first" in capsys.readouterr().err
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, 30), "no writes before the reinit"
        assert ctl_run(cluster, "reinit", "pgsql-2", "--force", "--wait", "120") == 0
        out = capsys.readouterr().out
        assert "reinit done: pgsql-2 streams from pgsql-1 again" in out, out
        assert run.wait_for_acks(20, 30), "no writes after the reinit"
        healthy = cluster.wait_healthy(timeout=60)
    report = run.check()
    print(f"\nreinit: longest write gap {report.longest_gap.length:.2f}s, {report.acknowledged} acknowledged")
    assert not os.path.exists(stale), "the standby's data directory was not copied afresh"
    assert (healthy["primary"], healthy["epoch"]) == ("pgsql-1", 1)
    assert report.longest_gap.length < 3.0, report.longest_gap     # no commit waited for the copy


def test_restart_every_member_in_place_standby_first_without_a_failover(local_cluster, capsys):
    """pgha-ctl restart (patronictl restart, issue 21 item 4): every member's
    PostgreSQL restarts in place (a new postmaster), the standby first and off
    synchronous replication before it stops (no commit waits for it), then
    the primary (its writes stop only while it restarts); no failover."""
    cluster = local_cluster
    before = {name: cluster.postmaster_pid(name) for name in ("pgsql-1", "pgsql-2")}
    assert all(before.values()), before
    assert ctl_run(cluster, "restart", "--pending", "--force") == 0
    assert "nothing to do" in capsys.readouterr().out
    # A parameter that needs a restart, on the primary only: --pending restarts that member alone.
    superuser(cluster, "pgsql-1", "ALTER SYSTEM SET shared_buffers = '24MB'")
    wait_for(lambda: ((cluster.status()["nodes"]["pgsql-1"].get("report") or {}).get("pending_restart")), 20,
             "the primary to report a pending restart")
    assert ctl_run(cluster, "restart", "--pending", "--force", "--wait", "120") == 0
    assert sql(cluster, "pgsql-1", "SHOW shared_buffers") == [("24MB",)]
    assert cluster.postmaster_pid("pgsql-2") == before["pgsql-2"], "--pending restarted a member that needed none"
    wait_for(lambda: not cluster.status()["nodes"]["pgsql-1"]["report"].get("pending_restart"), 20,
             "the restarted primary to report no pending restart")
    before["pgsql-1"] = cluster.postmaster_pid("pgsql-1")
    superuser(cluster, "pgsql-1", "ALTER SYSTEM RESET shared_buffers")
    assert ctl_run(cluster, "restart", "--no-wait", "--force") == 2      # several members need --wait
    assert "needs --wait" in capsys.readouterr().err
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, 30), "no writes before the restart"
        assert ctl_run(cluster, "restart", "--force", "--wait", "120") == 0
        out = capsys.readouterr().out
        assert out.index("restart done: pgsql-2") < out.index("restart done: pgsql-1"), out   # standby first
        assert run.wait_for_acks(20, 30), "no writes after the restart"
        healthy = cluster.wait_healthy(timeout=60)
    report = run.check()
    after = {name: cluster.postmaster_pid(name) for name in ("pgsql-1", "pgsql-2")}
    print(f"\nrestart of both members: longest write gap {report.longest_gap.length:.2f}s, "
          f"{report.acknowledged} acknowledged")
    assert all(after[name] and after[name] != before[name] for name in after), (before, after)
    assert (healthy["primary"], healthy["epoch"]) == ("pgsql-1", 1), "a restart is no failover"
    events = [e["event"] for e in cluster.arbiter_call({"type": "history", "limit": 20})["events"]]
    assert events.count("restart_requested") == 3 and "failover" not in events, events   # --pending: 1
    assert report.longest_gap.length < 15.0, report.longest_gap     # the primary's restart only

    # Scheduled for both at the same time (restart --at): ordered one after another, standby first.
    before = after
    done_before = {n: r["report"].get("restart_done") for n, r in cluster.status()["nodes"].items()}
    assert ctl_run(cluster, "restart", "--at", "+2s", "--force") == 0
    assert capsys.readouterr().out.count("scheduled at") == 2
    assert [r["member"] for r in cluster.status()["restarts_scheduled"]] == ["pgsql-1", "pgsql-2"]

    def both_restarted_and_back():      # one status: each member reports a new order done and runs again
        status = cluster.status()
        reports = {n: status["nodes"][n].get("report") or {} for n in before}
        return not status["restarts_scheduled"] and status["promotable"] and all(
            r.get("pg") == "running" and r.get("restart_done") not in (None, done_before[n])
            for n, r in reports.items())
    wait_for(both_restarted_and_back, 120, "both scheduled restarts carried out")
    after = {n: cluster.postmaster_pid(n) for n in before}
    assert all(after[name] and after[name] != before[name] for name in after), (before, after)
    events = cluster.arbiter_call({"type": "history", "limit": 20})["events"]
    ordered = [e["member"] for e in events if e["event"] == "restart_requested" and e.get("scheduled_for")]
    assert ordered == ["pgsql-2", "pgsql-1"], events
    assert cluster.status()["epoch"] == 1, "a restart is no failover"


def test_edit_config_reaches_every_member_and_restart_pending_applies_the_rest(local_cluster, capsys):
    """pgha-ctl edit-config (patronictl edit-config, issue 21 item 3): the
    arbiter stores the change, every member reloads with it; a parameter that
    needs a restart is pending on both until `restart --pending`, standby first."""
    cluster = local_cluster
    nodes = ("pgsql-1", "pgsql-2")
    # A misspelt name and a bad value too: each member leaves them out before its reload,
    # else they would be fatal at the restart below.
    assert ctl_run(cluster, "edit-config", "-p", "work_mem=7MB", "-p", "max_connections=110", "-p", "wrok_mem=1MB",
                   "-p", "temp_buffers=lots", "--force") == 0
    assert "configuration version 1 stored" in capsys.readouterr().out
    wait_for(lambda: all(sql(cluster, n, "SHOW work_mem") == [("7MB",)] for n in nodes), 30,
             "work_mem reloaded on both members")

    def pending():
        nodes_seen = cluster.status()["nodes"]     # one snapshot for both members
        return all((nodes_seen[n].get("report") or {}).get("pending_restart") for n in nodes)
    wait_for(pending, 30, "both members to report a pending restart")
    assert ctl_run(cluster, "restart", "--pending", "--force", "--wait", "120") == 0
    assert all(sql(cluster, n, "SHOW max_connections") == [("110",)] for n in nodes)
    assert ctl_run(cluster, "edit-config", "-p", "work_mem=null", "--force") == 0
    wait_for(lambda: all(sql(cluster, n, "SHOW work_mem") == [("4MB",)] for n in nodes), 30,
             "work_mem back to PostgreSQL's default on both members")
    status = cluster.status()
    assert (status["parameters"], status["config_version"], status["epoch"]) == (
        {"max_connections": 110, "temp_buffers": "lots", "wrok_mem": "1MB"}, 2, 1)
    events = [e for e in cluster.arbiter_call({"type": "history", "limit": 20})["events"] if e["event"] == "config"]
    assert [e["reason"] for e in events] == ["max_connections=110, temp_buffers='lots', work_mem='7MB', "
                                             "wrok_mem='1MB'", "work_mem removed"]
    for node in nodes:
        log = log_text(cluster, node)
        assert "left out wrok_mem" in log and "left out temp_buffers" in log, node
