"""Permanent slots (issue 20 item 7; Patroni's `slots`): a physical and a
logical slot kept on whichever member is primary, across a switchover; the
standby's copy of the physical one follows the primary's position, so after
the switchover its consumer finds the WAL it still needs."""
import pytest

from conftest import running_cluster, wait_for
from test_cluster import primary_is, sql

SLOTS = {"archive": {"type": "physical"},
         "cdc": {"type": "logical", "database": "testdb", "plugin": "test_decoding"}}


@pytest.fixture
def slots_cluster(request):
    yield from running_cluster(request, "permanent-slots", node_overrides={"permanent_slots": SLOTS})


def slots_on(cluster, node):
    """{slot name: (type, restart_lsn as text)} on the node's PostgreSQL, one query."""
    rows = sql(cluster, node, "SELECT slot_name, slot_type, restart_lsn::text FROM pg_replication_slots "
                              "WHERE slot_name IN ('archive', 'cdc')")
    return {name: (kind, lsn) for name, kind, lsn in rows}


def lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def test_permanent_slots_are_kept_on_the_primary_across_a_switchover(slots_cluster):
    cluster = slots_cluster
    wait_for(lambda: set(slots_on(cluster, "pgsql-1")) == {"archive", "cdc"}, 20, "both slots on the primary")
    assert {kind for kind, _ in slots_on(cluster, "pgsql-1").values()} == {"physical", "logical"}
    wait_for(lambda: set(slots_on(cluster, "pgsql-2")) == {"archive"}, 20, "the physical slot's copy on the standby")

    # The primary's consumer moves on; the standby's copy follows it (every few seconds).
    sql(cluster, "pgsql-1", "CREATE TABLE IF NOT EXISTS slot_probe (n int); INSERT INTO slot_probe "
                            "SELECT generate_series(1, 1000) RETURNING 1")
    (moved,), = sql(cluster, "pgsql-1", "SELECT (pg_replication_slot_advance('archive', pg_current_wal_lsn())).end_lsn::text")
    wait_for(lambda: lsn(slots_on(cluster, "pgsql-2")["archive"][1]) >= lsn(moved), 30,
             "the standby's copy moved up to the primary's position")

    cluster.switchover("pgsql-2")
    wait_for(primary_is(cluster, "pgsql-2", 2), 60, "the switchover to pgsql-2")
    wait_for(lambda: set(slots_on(cluster, "pgsql-2")) == {"archive", "cdc"}, 30, "both slots on the new primary")
    on_new = slots_on(cluster, "pgsql-2")
    assert on_new["archive"][0] == "physical" and lsn(on_new["archive"][1]) >= lsn(moved)
    assert on_new["cdc"][0] == "logical"
    # The old primary, now a standby, keeps the physical copy and drops the logical slot
    # (a standby cannot serve it before PostgreSQL 16, and it would hold back its catalog).
    wait_for(lambda: set(slots_on(cluster, "pgsql-1")) == {"archive"}, 30,
             "the old primary keeps only the physical slot's copy")
    sql(cluster, "pgsql-2", "INSERT INTO slot_probe VALUES (424242) RETURNING 1")
    changes = sql(cluster, "pgsql-2", "SELECT data FROM pg_logical_slot_get_changes('cdc', NULL, NULL)")
    assert any("424242" in data for (data,) in changes), changes     # the new primary's slot decodes its writes
