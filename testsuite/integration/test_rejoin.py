"""Rejoin after a busy primary's host dies (issue 12): the old primary comes
back by pg_rewind, not by a full pg_basebackup, and nothing acknowledged is lost.

The case the issue measured: WAL pours in (a bulk load), checkpoints run
spread out while it does, and the host dies mid-load, with a checkpoint in
progress. That checkpoint saved the replication slot's position at its
start; the old primary's crash recovery ends with a checkpoint of its own
that removes every segment older than that position, which by default is
all WAL after the last *completed* checkpoint's record, the very WAL
pg_rewind reads to find where the timelines split. A smaller max_wal_size
(and completion target) makes that happen within ~400 MB of load.
"""
import os
import threading

import psycopg2
import pytest

from conftest import WriteRun, running_cluster, wait_for
from test_cluster import log_text, primary_is, sql, sql_dsn

LOAD_BYTES = 300 * 2**20
INTO_CHECKPOINT = 48 * 2**20    # WAL written since the in-progress checkpoint began
BATCH_ROWS = 5000        # ~6 MB of WAL per committed batch
SMALL_WAL = {"max_wal_size": "512MB", "min_wal_size": "64MB", "checkpoint_completion_target": "0.5"}


class BulkLoader(threading.Thread):
    """Inserts batches into bulk until its connection breaks; counts the
    batches whose COMMIT was acknowledged."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acknowledged = 0

    def run(self):
        try:
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                while True:
                    cur.execute("INSERT INTO bulk SELECT g, repeat('x', 1000) FROM generate_series(1, %s) g",
                                (BATCH_ROWS,))
                    self.acknowledged += 1
        except psycopg2.Error:
            pass    # the host died


def wal_bytes(cluster, node):
    return int(sql(cluster, node, "SELECT pg_current_wal_lsn() - '0/0'")[0][0])


class CheckpointWatch:
    """Whether a checkpoint of the node's PostgreSQL is in progress, and how
    much WAL was written since it began (PostgreSQL 15 logs checkpoints)."""

    def __init__(self, cluster, node):
        self.cluster, self.node = cluster, node
        self.path = os.path.join(cluster.dir, node, "state", "postgresql.log")
        self.began_at = None        # WAL position when the running checkpoint was first seen

    def wal_into_checkpoint(self):
        with open(self.path) as f:
            lines = [line for line in f if "checkpoint starting" in line or "checkpoint complete" in line]
        if not lines or "checkpoint complete" in lines[-1]:
            self.began_at = None
            return 0
        now = wal_bytes(self.cluster, self.node)
        if self.began_at is None:
            self.began_at = now
        return now - self.began_at


@pytest.fixture
def small_wal_cluster(request):
    yield from running_cluster(request, "rejoin-busy", node_overrides={"pg_parameters": SMALL_WAL})


def test_busy_primary_host_dies_old_primary_rejoins_by_rewind(small_wal_cluster):
    log = busy_primary_dies_then_rejoins(small_wal_cluster)
    assert "path rewind" in log, "rewound with the WAL kept on the old primary"


def test_rewind_fetches_the_wal_the_old_primary_lost_from_the_new_primary(small_wal_cluster):
    """The old primary kept no WAL (wal_keep_size 0 in its own config): its
    crash recovery removes what pg_rewind needs, which the restore command
    fetches from the new primary."""
    def keep_nothing(cluster):
        conf = os.path.join(cluster.pgdata("pgsql-1"), "pgha.conf")
        with open(conf, "a") as f:
            f.write("wal_keep_size = 0\n")
    log = busy_primary_dies_then_rejoins(small_wal_cluster, before_rejoin=keep_nothing)
    assert "missing WAL segment(s) fetched from pgsql-2" in log


def busy_primary_dies_then_rejoins(cluster, before_rejoin=None):
    """Returns the old primary's node log."""
    sql_dsn(cluster, "pgsql-1", "CREATE TABLE bulk (id int, pad text); SELECT 1")    # the app role loads it
    start = wal_bytes(cluster, "pgsql-1")
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        loader = BulkLoader(cluster.dsn_for("pgsql-1"))
        loader.start()
        watch = CheckpointWatch(cluster, "pgsql-1")
        wait_for(lambda: wal_bytes(cluster, "pgsql-1") - start >= LOAD_BYTES
                 and watch.wal_into_checkpoint() >= INTO_CHECKPOINT, 600, "a checkpoint well under way")
        run.mark_fault()
        cluster.kill_host("pgsql-1")
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "pgsql-2 promoted")
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
        loader.join(timeout=30)
        if before_rejoin:
            before_rejoin(cluster)
        cluster.start_node("pgsql-1")
        status = cluster.wait_healthy(timeout=300)
        assert status["primary"] == "pgsql-2" and status["epoch"] == 2
        assert run.wait_for_acks(20, timeout=60)
    run.check()
    log = log_text(cluster, "pgsql-1")
    assert "pg_rewind" in log
    assert "a fresh copy" not in log and "clone from" not in log, \
        [line for line in log.splitlines() if "pg_" in line or "copy" in line][-5:]
    rows = sql(cluster, "pgsql-2", "SELECT count(*) FROM bulk")[0][0]
    assert rows >= loader.acknowledged * BATCH_ROWS, "acknowledged bulk batches lost"
    assert sql(cluster, "pgsql-2", "SELECT application_name, sync_state FROM pg_stat_replication") \
        == [("pgsql-1", "sync")]
    return log
