"""The HA cluster end to end on this machine (issue 2): real PostgreSQL,
real daemons, real signals. Every scenario writes through the multi-host DSN
while the fault happens and checks that no acknowledged row is lost.

Timeouts are generous upper bounds for slow shared machines; speed is
measured by harness/bench_failover.py, not asserted here.
"""
import os
import subprocess
import time

import psycopg2
import pytest

from conftest import BASE, WatchedWriteRun, WriteRun, finish, next_port, running_cluster, wait_for
from harness.localcluster import LocalCluster
from pgha.postgres import find_bindir

def sql(cluster, node, query):
    """As the node's superuser."""
    return _query(psycopg2.connect(**cluster.superuser_params(node), connect_timeout=3), query)


def sql_dsn(cluster, node, query):
    """As the application, on this node whether primary or standby."""
    return _query(psycopg2.connect(cluster.dsn_for(node), target_session_attrs="any"), query)


def _query(conn, query):
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def psql_literal(text):
    """A psql \\set argument holding text as one word (single-quoted, quotes and backslashes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def primary_is(cluster, node, epoch=None):
    def check():
        try:
            status = cluster.status()
        except OSError:   # the arbiter may be restarting
            return False
        report = (status["nodes"][node] or {}).get("report") or {}
        return status["primary"] == node and report.get("role") == "primary" \
            and (epoch is None or status["epoch"] == epoch) and status
    return check


def fail_over(cluster, victim, new_primary, epoch, during=None):
    """Kill `victim`'s host with a writer running; `new_primary` must take over
    at `epoch` and take writes, with nothing acknowledged lost. `during` runs
    right after the promotion is seen. Returns the writer's report."""
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        cluster.kill_host(victim)
        wait_for(primary_is(cluster, new_primary, epoch=epoch), 60, f"{new_primary} promoted at epoch {epoch}")
        if during:
            during()
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    return run.check()


def log_text(cluster, node):
    with open(os.path.join(cluster.dir, f"{node}.log")) as f:
        return f.read()


def test_bootstrap_from_empty_directories(local_cluster):
    status = local_cluster.status()
    assert status["epoch"] == 1 and status["primary"] == "pgsql-1" and status["promotable"]
    rows = sql(local_cluster, "pgsql-1", "SELECT application_name, state, sync_state FROM pg_stat_replication")
    assert rows == [("pgsql-2", "streaming", "sync")]
    slots = sql(local_cluster, "pgsql-1", "SELECT slot_name, active FROM pg_replication_slots")
    assert ("rep98", True) in slots
    assert sql(local_cluster, "pgsql-2", "SELECT pg_is_in_recovery()") == [(True,)]
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(20, timeout=30)
    report = run.check()
    assert report.nodes == [f"127.0.0.1:{local_cluster.pg_ports['pgsql-1']}"]


def test_primary_postmaster_killed(local_cluster):
    """A quick local restart; the standby's reconnect does not cost synchronous
    replication (issue 8): the restarted primary is never writable with
    synchronous_standby_names empty."""
    with WatchedWriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        assert local_cluster.kill_postgres("pgsql-1")
        assert run.wait_for_acks(20, timeout=60), "writes did not resume"
        local_cluster.wait_healthy(timeout=120)
    run.check()
    assert local_cluster.status()["epoch"] == 1, "a local restart, not a failover"
    assert run.unprotected_seconds() == 0, run.unprotected_samples()


def test_primary_host_dead_then_rejoins_by_rewind_and_fails_back(local_cluster):
    # (3) the primary host dies: the standby is promoted.
    report = fail_over(local_cluster, "pgsql-1", "pgsql-2", epoch=2)
    assert report.primary_after == f"127.0.0.1:{local_cluster.pg_ports['pgsql-2']}"

    # (4) the old primary's node comes back: rewind, stream, synchronous again.
    local_cluster.start_node("pgsql-1")
    status = local_cluster.wait_healthy(timeout=180)
    assert status["primary"] == "pgsql-2" and status["epoch"] == 2
    assert "pg_rewind" in log_text(local_cluster, "pgsql-1")
    assert sql(local_cluster, "pgsql-2", "SELECT application_name, sync_state FROM pg_stat_replication") \
        == [("pgsql-1", "sync")]
    assert ("rep177", True) in sql(local_cluster, "pgsql-2", "SELECT slot_name, active FROM pg_replication_slots")

    # ... and a second failover back to it works, with nothing lost.
    fail_over(local_cluster, "pgsql-2", "pgsql-1", epoch=3)


def test_standby_killed_writes_resume_then_it_resyncs(local_cluster):
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        local_cluster.kill_host("pgsql-2")
        assert run.wait_for_acks(20, timeout=30), "commits stayed stalled after the standby died"
        status = local_cluster.status()
        assert status["primary"] == "pgsql-1" and status["promotable"] is False
        assert sql(local_cluster, "pgsql-1", "SHOW synchronous_standby_names") == [("",)]
        # the returning standby catches up and becomes synchronous and promotable again
        local_cluster.start_node("pgsql-2")
        local_cluster.wait_healthy(timeout=120)
        assert run.wait_for_acks(10, timeout=30)
    report = run.check()
    assert report.nodes == [f"127.0.0.1:{local_cluster.pg_ports['pgsql-1']}"]
    assert local_cluster.status()["epoch"] == 1


def test_arbiter_killed_and_restarted_keeps_writes_and_state(local_cluster):
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        local_cluster.kill("arbiter")
        # Well past the leases: the standby's lease keeps the primary writable.
        time.sleep(8)
        assert run.wait_for_acks(20, timeout=10), "writes stopped without the arbiter"
        local_cluster.start_arbiter()
        status = local_cluster.wait_healthy(timeout=60)
        assert status["epoch"] == 1 and status["primary"] == "pgsql-1"
        assert run.wait_for_acks(10, timeout=30)
    run.check()


def test_arbiter_restarted_right_after_failover(local_cluster):
    def restart_arbiter():
        local_cluster.kill("arbiter")
        local_cluster.start_arbiter()
        wait_for(primary_is(local_cluster, "pgsql-2", epoch=2), 30, "restarted arbiter keeps epoch 2")

    fail_over(local_cluster, "pgsql-1", "pgsql-2", epoch=2, during=restart_arbiter)
    # The old primary, back, asks first and rejoins as standby: never primary on its own.
    local_cluster.start_node("pgsql-1")
    status = local_cluster.wait_healthy(timeout=180)
    assert status["primary"] == "pgsql-2" and status["epoch"] == 2
    assert sql(local_cluster, "pgsql-1", "SELECT pg_is_in_recovery()") == [(True,)]


def test_adopts_a_data_directory_set_up_by_hand(request):
    """The original manual setup: initdb, users kronos/repuser, testdb,
    ALTER SYSTEM synchronous_standby_names='*'. The node adopts it as is."""
    cluster = LocalCluster(os.path.join(BASE, "adopt"), base_port=next_port())
    cluster.prepare(fresh=True)
    data, bindir = cluster.pgdata("pgsql-1"), find_bindir()
    sock = os.path.join(cluster.dir, "seed-socket")

    def as_postgres(*cmd, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--"] + list(cmd), check=True,
                              capture_output=True, text=True, **kw)

    as_postgres("mkdir", "-p", sock, os.path.dirname(data))
    as_postgres(f"{bindir}/initdb", "-D", data)
    as_postgres(f"{bindir}/pg_ctl", "start", "-w", "-D", data, "-l", os.path.join(sock, "log"),
                "-o", f"-p {cluster.pg_ports['pgsql-1']} -k {sock} -c listen_addresses=''")
    psql = [f"{bindir}/psql", "-h", sock, "-p", str(cluster.pg_ports["pgsql-1"]), "-v", "ON_ERROR_STOP=1"]
    # Passwords through stdin, never in process arguments; the application role the
    # DBA adds when adopting (the node creates roles only when it bootstraps a cluster).
    as_postgres(*psql, "-d", "postgres",
                input=f"\\set admin_pw {psql_literal(cluster.passwords['admin_password'])}\n"
                      f"\\set rep_pw {psql_literal(cluster.passwords['replication_password'])}\n"
                      f"\\set app_pw {psql_literal(cluster.passwords['app_password'])}\n"
                      "CREATE ROLE kronos SUPERUSER LOGIN PASSWORD :'admin_pw';\n"
                      "CREATE ROLE repuser REPLICATION LOGIN PASSWORD :'rep_pw';\n"
                      "CREATE ROLE app LOGIN PASSWORD :'app_pw';\n")
    as_postgres(*psql, "-d", "postgres", "-c", "CREATE DATABASE testdb OWNER kronos")
    as_postgres(*psql, "-d", "testdb", "-c", "GRANT CREATE, USAGE ON SCHEMA public TO app")
    as_postgres(*psql, "-d", "postgres", "-c", "ALTER SYSTEM SET synchronous_standby_names TO '*'")
    as_postgres(*psql, "-d", "testdb", "-c", "CREATE TABLE seed(v text); INSERT INTO seed VALUES ('kept')")
    as_postgres(f"{bindir}/pg_ctl", "stop", "-w", "-D", data)
    try:
        cluster.start()
        cluster.wait_healthy(timeout=120)
        assert sql(cluster, "pgsql-1", "SELECT v FROM seed") == [("kept",)]
        wait_for(lambda: sql(cluster, "pgsql-2", "SELECT v FROM seed") == [("kept",)], 30, "seed row on standby")
        with open(os.path.join(data, "postgresql.auto.conf")) as f:
            assert "synchronous_standby_names" not in f.read()
        with WriteRun(cluster) as run:
            assert run.wait_for_acks(10, timeout=30)
        run.check()
    finally:
        finish(cluster, request)


def switch_over_to_pgsql_2(cluster):
    """pgha-ctl switchover as the operator; pgsql-2 is primary at epoch 2 within 60 s."""
    from pgha import ctl
    assert ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}",
                     "--key-file", cluster.key_file("operator"), "switchover", "--force"]) == 0
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "switchover to pgsql-2")


def test_planned_switchover_loses_nothing(local_cluster):
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        switch_over_to_pgsql_2(local_cluster)
        assert run.wait_for_acks(20, timeout=60)
    run.check()
    status = local_cluster.wait_healthy(timeout=120)
    assert status["primary"] == "pgsql-2"
    # a clean hand-over: the old primary follows without a fresh clone
    assert "a fresh copy" not in log_text(local_cluster, "pgsql-1").split("running as primary", 1)[-1]    # no clone


def test_after_a_switchover_no_commit_is_acknowledged_without_the_standby(local_cluster):
    """Issue 8: from its first commit the new primary names the old one as its
    synchronous standby (an outside monitor never sees it writable with
    synchronous_standby_names empty), and every commit acknowledged after the
    switchover is on both nodes."""
    from harness.workload import ACK, TABLE
    nodes = ("pgsql-1", "pgsql-2")
    with WatchedWriteRun(local_cluster, nodes) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        switch_over_to_pgsql_2(local_cluster)
        assert run.wait_for_acks(40, timeout=60)
    run.check()
    assert run.unprotected_seconds() == 0, run.unprotected_samples()
    assert run.monitor.split_brain_seconds() == 0
    acked = sorted(a.id for a in run.writer.attempts if a.outcome == ACK and a.end >= run.fault_at)
    lsn = sql_dsn(local_cluster, "pgsql-2", "SELECT pg_current_wal_lsn()")[0][0]
    wait_for(lambda: sql_dsn(local_cluster, "pgsql-1",
                             f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")[0][0],
             30, "the old primary replaying up to the new primary's position")
    for node in nodes:
        rows = sql_dsn(local_cluster, node, f"SELECT id FROM {TABLE} WHERE id = ANY(ARRAY{acked}::bigint[])")
        missing = set(acked) - {r[0] for r in rows}
        assert not missing, f"{node} lacks {len(missing)} commits acknowledged after the switchover"


def test_node_daemon_restart_keeps_the_running_primary(local_cluster):
    """Only the primary's node daemon dies and comes straight back: its
    PostgreSQL kept running, the new daemon adopts it, nothing fails over."""
    postmaster = local_cluster.postmaster_pid("pgsql-1")
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        local_cluster.kill("pgsql-1")
        local_cluster.start_node("pgsql-1")
        time.sleep(6)   # past lease + margin: a failover would have happened by now
        assert run.wait_for_acks(20, timeout=30)
    run.check()
    status = local_cluster.wait_healthy(timeout=60)
    assert status["epoch"] == 1 and status["primary"] == "pgsql-1"
    assert local_cluster.postmaster_pid("pgsql-1") == postmaster


@pytest.fixture
def strict_cluster(request):
    yield from running_cluster(request, "strict", arbiter_overrides={"strict_sync": True})


def test_strict_sync_never_commits_without_the_standby(strict_cluster):
    """strict_sync: with the standby dead, commits wait instead of going on
    alone; when it returns they complete and nothing is lost."""
    cluster = strict_cluster
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        cluster.kill_host("pgsql-2")
        time.sleep(2)   # commits already in flight may complete
        assert not run.wait_for_acks(1, timeout=8), "a commit was acknowledged without the standby"
        assert sql(cluster, "pgsql-1", "SHOW synchronous_standby_names") == [('"pgsql-2"',)]
        cluster.start_node("pgsql-2")
        assert run.wait_for_acks(20, timeout=120), "writes did not resume when the standby returned"
    run.check()
    assert cluster.status()["epoch"] == 1


def test_rejoin_falls_back_to_basebackup_when_rewind_cannot_work(local_cluster):
    """The old primary lost the WAL pg_rewind needs: it is cloned afresh
    (into a temporary folder, swapped in when complete) and follows again."""
    fail_over(local_cluster, "pgsql-1", "pgsql-2", epoch=2)
    wal = os.path.join(local_cluster.pgdata("pgsql-1"), "pg_wal")
    for name in os.listdir(wal):
        if len(name) == 24:            # WAL segments: rewind (and crash recovery) cannot work
            os.unlink(os.path.join(wal, name))
    local_cluster.start_node("pgsql-1")
    status = local_cluster.wait_healthy(timeout=180)
    assert status["primary"] == "pgsql-2"
    log = log_text(local_cluster, "pgsql-1")
    assert "falling back to a fresh copy (basebackup)" in log and "clone from pgsql-2 complete" in log
    assert not os.path.exists(local_cluster.pgdata("pgsql-1") + ".basebackup")
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
    run.check()
