"""A disk that fills (issue 19, item 2).

One node keeps its whole folder (data directory, pg_wal, its state) on a
small tmpfs of its own. The test fills that filesystem to the last byte
while a writer runs, then makes the cluster write WAL. On the primary
PostgreSQL cannot write WAL and PANICs: the standby must take over within
the usual failover time, with nothing acknowledged lost. On the standby
the WAL receiver cannot write: commits must not wait longer than the sync
stall timeout. Either node rejoins by itself once there is room.
"""
import os
import pwd
import subprocess
import threading
import time

import psycopg2
import pytest

from conftest import BASE, WriteRun, running_cluster, wait_for
from test_cluster import log_text, primary_is, sql

SMALL_FS_MB = 256
MAX_GAP = 15.0      # a failover (~2.5 s) after PostgreSQL's PANIC and a failed restart, with room for a busy machine
MAX_STALL = 8.0     # the sync stall timeout (0.7 s) and the arbiter's word, with room for a busy machine


@pytest.fixture
def small_disk_cluster(request):
    """The cluster with request.param's (default pgsql-1's) folder on a small tmpfs."""
    node = getattr(request, "param", "pgsql-1")
    folders = []

    def mount(cluster):
        folder = os.path.join(cluster.dir, node)
        os.makedirs(folder, exist_ok=True)
        user = pwd.getpwnam("postgres")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_MB}m,mode=0700,uid={user.pw_uid},"
                        f"gid={user.pw_gid}", "tmpfs", folder], check=True)
        folders.append((cluster, folder))

    name = f"disk_full_{node[-1]}"     # one folder per case; short: PostgreSQL's socket path has a limit
    # A tmpfs a killed earlier run left mounted there would make the fresh prepare fail.
    for leftover in (os.path.join(BASE, name, n) for n in ("pgsql-1", "pgsql-2")):
        subprocess.run(["umount", "--lazy", leftover], check=False, capture_output=True)
    try:
        yield from running_cluster(request, name, before_start=mount)
    finally:
        for cluster, folder in folders:
            log = os.path.join(folder, "state", "postgresql.log")
            if os.path.exists(log):     # kept beside the daemons' logs: the tmpfs goes
                subprocess.run(["cp", log, os.path.join(cluster.dir, f"{node}-postgresql.log")], check=False)
            subprocess.run(["umount", "--lazy", folder], check=False)


def fill(path):
    """Write zeros into `path` until the filesystem has no byte left; its size."""
    chunk = b"\0" * (1 << 20)
    written = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError:
            pass
        try:            # the last partial block
            while True:
                written += f.write(b"\0" * 4096)
        except OSError:
            pass
    return written


def make_wal(cluster, node, stop, rounds=None):
    """WAL and nothing else on `node` (16 MB a round: logical messages touch
    no data file, so the first write that fails is a WAL segment's) until
    `stop` or after `rounds`."""
    done = 0
    while not stop.is_set() and (rounds is None or done < rounds):
        try:
            sql(cluster, node, "SELECT count(pg_logical_emit_message(false, 'fill', repeat('x', 1000000))) "
                               "FROM generate_series(1, 16)")
            done += 1
        except psycopg2.Error:
            time.sleep(0.2)


def fill_under_writes(cluster, node, run, rounds=None):
    """Once writes flow: `node`'s disk filled, the fault marked, WAL made on
    the primary (pgsql-1) in a thread. Returns (filler path, bytes, stop event)."""
    assert run.wait_for_acks(20, 30), "no writes before the fault"
    filler = os.path.join(cluster.dir, node, "filler")
    filled = fill(filler)
    run.mark_fault()
    stop = threading.Event()
    threading.Thread(target=make_wal, args=(cluster, "pgsql-1", stop, rounds), daemon=True).start()
    return filler, filled, stop


def rejoin_failures(cluster, node):
    with open(os.path.join(cluster.dir, f"{node}.log")) as f:
        return sum("rejoin failed (" in line for line in f)


def test_a_primary_whose_disk_fills_hands_over_and_rejoins_once_there_is_room(small_disk_cluster):
    cluster = small_disk_cluster
    with WriteRun(cluster) as run:
        filler, filled, stop = fill_under_writes(cluster, "pgsql-1", run)
        try:
            status = wait_for(primary_is(cluster, "pgsql-2"), 60, "pgsql-2 promoted after pgsql-1's disk filled")
            promoted_at = time.monotonic()
            assert run.wait_for_acks(20, 60), "no writes after the failover"
        finally:
            stop.set()
        # The old primary cannot rejoin (no room for pg_rewind or a clone): it
        # backs off (0.5, 1, 2, 4, 8 s ...) instead of a clone a second, each
        # costing the new primary a checkpoint.
        time.sleep(max(0.0, promoted_at + 10 - time.monotonic()))
        failures = rejoin_failures(cluster, "pgsql-1")
        os.unlink(filler)
        healthy = cluster.wait_healthy(timeout=90)
    report = run.check()
    print(f"\ndisk full: filled {filled / 2**20:.0f} MB; longest write gap {report.longest_gap.length:.2f}s, "
          f"{report.acknowledged} acknowledged, {report.failed} failed; {failures} failed rejoins in 10 s")
    assert status["epoch"] == 2
    assert report.longest_gap.length < MAX_GAP, report.longest_gap
    assert 1 <= failures <= 6, f"{failures} failed rejoins in 10 s: no backoff"   # 5 at most with it, 17 without
    assert healthy["primary"] == "pgsql-2", healthy


@pytest.mark.parametrize("small_disk_cluster", ["pgsql-2"], indirect=True)
def test_a_standby_whose_disk_fills_does_not_hold_commits_past_the_stall_timeout(small_disk_cluster):
    cluster = small_disk_cluster
    with WriteRun(cluster) as run:
        # Three new segments on the standby, no more: a backlog larger than the
        # room freed below would fill its disk again before a restartpoint.
        filler, filled, stop = fill_under_writes(cluster, "pgsql-2", run, rounds=3)
        try:
            # The standby's receiver meets the full disk at its first new segment, and the
            # arbiter takes it out of synchronous replication: the fault really happened.
            wait_for(lambda: "marked not promotable" in log_text(cluster, "arbiter"), 30,
                     "the standby with a full disk marked not promotable")
            assert run.wait_for_acks(20, 30), "no writes with the standby's disk full"
        finally:
            stop.set()
        os.unlink(filler)
        healthy = cluster.wait_healthy(timeout=90)
    report = run.check()
    print(f"\nstandby disk full: filled {filled / 2**20:.0f} MB; longest write gap "
          f"{report.longest_gap.length:.2f}s, {report.acknowledged} acknowledged, {report.failed} failed")
    assert healthy["primary"] == "pgsql-1" and healthy["epoch"] == 1, healthy
    assert report.longest_gap.length < MAX_STALL, report.longest_gap
