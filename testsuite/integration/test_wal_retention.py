"""WAL kept for an absent standby has a bound (issue 19).

The primary keeps a replication slot for its standby. Without
max_slot_wal_keep_size a standby that stays away lets pg_wal grow until the
primary's disk is full and PostgreSQL PANICs. The node manages that cap;
past it PostgreSQL invalidates the slot, the primary writes on, and the
standby, when it returns, finds its slot made afresh and rejoins (by a
clone: the WAL it needed is gone) by itself.
"""
import psycopg2

from conftest import running_cluster, wait_for
from test_cluster import sql
from harness.localcluster import SLOTS

import pytest

CAP_MB = 96
SMALL_WAL = {"max_wal_size": "64MB", "min_wal_size": "32MB", "wal_keep_size": "32MB",
             "max_slot_wal_keep_size": f"{CAP_MB}MB"}
WRITTEN_MB = 6 * CAP_MB
BATCH_ROWS = 5000        # ~6 MB of WAL a batch


@pytest.fixture
def small_wal_cluster(request):
    yield from running_cluster(request, "wal_retention", node_overrides={"pg_parameters": SMALL_WAL})


def wal_dir_mb(cluster, node):
    return int(sql(cluster, node, "SELECT sum(size) FROM pg_ls_waldir()")[0][0]) / 2**20


def slot_states(cluster, node):
    return dict(sql(cluster, node, "SELECT slot_name, wal_status FROM pg_replication_slots"))


def write_wal(cluster, node, megabytes):
    """Insert and checkpoint until `megabytes` of WAL were written; the
    largest pg_wal seen after a checkpoint."""
    conn = psycopg2.connect(**cluster.superuser_params(node), connect_timeout=3)
    conn.autocommit = True
    largest = 0.0
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS bulk (id int, pad text)")
            cur.execute("SELECT pg_current_wal_lsn()")
            start = cur.fetchone()[0]
            while True:
                cur.execute("INSERT INTO bulk SELECT g, repeat('x', 1000) FROM generate_series(1, %s) g",
                            (BATCH_ROWS,))
                cur.execute("TRUNCATE bulk")
                cur.execute("SELECT (pg_current_wal_lsn() - %s) / 1048576.0", (start,))
                if float(cur.fetchone()[0]) >= megabytes:
                    break
                cur.execute("CHECKPOINT")
                cur.execute("SELECT sum(size) / 1048576.0 FROM pg_ls_waldir()")
                largest = max(largest, float(cur.fetchone()[0]))
    finally:
        conn.close()
    return largest


def test_an_absent_standby_cannot_fill_the_primarys_disk_and_rejoins_on_return(small_wal_cluster):
    cluster = small_wal_cluster
    primary, standby = cluster.primary(), cluster.standbys()[0]
    assert sql(cluster, primary, "SHOW max_slot_wal_keep_size")[0][0] == f"{CAP_MB}MB"

    cluster.kill_host(standby)
    largest = write_wal(cluster, primary, WRITTEN_MB)
    # The slot alone would keep all of it; the cap (plus wal_keep_size and a
    # checkpoint's distance) bounds what stays.
    bound = CAP_MB + 64 + 32 + 48
    assert largest < bound, f"pg_wal reached {largest:.0f} MB with a {CAP_MB} MB cap ({WRITTEN_MB} MB written)"
    assert wal_dir_mb(cluster, primary) < bound
    slot = SLOTS[standby]
    assert slot_states(cluster, primary).get(slot) in ("lost", "unreserved"), slot_states(cluster, primary)
    assert cluster.writable(primary)

    # The standby returns: its slot is made afresh and it rejoins by itself
    # (it streams no more from the WAL it had: a clone, after the stream deadline).
    cluster.start_node(standby)
    cluster.wait_healthy(timeout=150)
    wait_for(lambda: slot_states(cluster, primary).get(slot) in ("reserved", "extended"), 30,
             "the standby's slot made afresh")
