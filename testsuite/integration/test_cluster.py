"""The HA cluster end to end on this machine (issue 2): real PostgreSQL,
real daemons, real signals. Every scenario writes through the multi-host DSN
while the fault happens and checks that no acknowledged row is lost.

Timeouts are generous upper bounds for slow shared machines; speed is
measured by bench/failover.py, not asserted here.
"""
import os
import signal
import time

import psycopg2

from conftest import WriteRun, wait_for

OTHER = {"pgsql-1": "pgsql-2", "pgsql-2": "pgsql-1"}


def sql(cluster, node, query):
    conn = psycopg2.connect(host="127.0.0.1", port=cluster.pg_ports[node], dbname="testdb", user="kronos",
                            password="kronos-local", connect_timeout=3)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


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
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        assert local_cluster.kill_postgres("pgsql-1")
        assert run.wait_for_acks(20, timeout=60), "writes did not resume"
    run.check()
    local_cluster.wait_healthy(timeout=120)


def test_primary_host_dead_then_rejoins_by_rewind_and_fails_back(local_cluster):
    # (3) the primary host dies: the standby is promoted.
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        local_cluster.kill_host("pgsql-1")
        wait_for(primary_is(local_cluster, "pgsql-2", epoch=2), 60, "pgsql-2 promoted at epoch 2")
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    report = run.check()
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
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        local_cluster.kill_host("pgsql-2")
        wait_for(primary_is(local_cluster, "pgsql-1", epoch=3), 60, "pgsql-1 promoted back at epoch 3")
        assert run.wait_for_acks(20, timeout=60)
    run.check()


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
    with WriteRun(local_cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        local_cluster.kill_host("pgsql-1")
        wait_for(primary_is(local_cluster, "pgsql-2", epoch=2), 60, "failover to pgsql-2")
        local_cluster.kill("arbiter")
        local_cluster.start_arbiter()
        wait_for(primary_is(local_cluster, "pgsql-2", epoch=2), 30, "restarted arbiter keeps epoch 2")
        assert run.wait_for_acks(20, timeout=60)
    run.check()
    # The old primary, back, asks first and rejoins as standby: never primary on its own.
    local_cluster.start_node("pgsql-1")
    status = local_cluster.wait_healthy(timeout=180)
    assert status["primary"] == "pgsql-2" and status["epoch"] == 2
    assert sql(local_cluster, "pgsql-1", "SELECT pg_is_in_recovery()") == [(True,)]
