"""The write engine against a real single PostgreSQL: crash it mid-run and
check nothing acknowledged is lost; abandon a commit stuck in a sync-rep wait."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import workload
from harness.localcluster import kill_tree, process_tree
from pgha.postgres import read_postmaster_pid

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 not installed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL on loopback, run as OS user postgres (it refuses root)."""

    def __init__(self, base, port):
        self.base, self.port = base, port
        self.pgdata = base / "data"
        self.dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres connect_timeout=2"

    def _run(self, *cmd):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + [str(c) for c in cmd], check=True, capture_output=True, cwd=self.base)

    def initdb(self):
        self._run(PG_BIN / "initdb", "-D", self.pgdata, "-A", "trust", "-U", "postgres")

    def start(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.pgdata, "-l", self.base / "log", "-w", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "start")

    def stop(self):
        self._run(PG_BIN / "pg_ctl", "-D", self.pgdata, "-m", "immediate", "-w", "stop")

    def crash(self):
        """SIGKILL the postmaster and its children, and wait until they are gone."""
        pids = process_tree(read_postmaster_pid(self.pgdata))
        kill_tree(pids[0])
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def sql(self, query):
        self._run(PG_BIN / "psql", "-h", self.base, "-p", self.port, "-U", "postgres", "-Atc", query)


@pytest.fixture
def pg():
    base = Path(tempfile.mkdtemp(prefix="pgha-workload-", dir="/var/tmp"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    server = Server(base, free_port())
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass   # already down
        shutil.rmtree(base, ignore_errors=True)


def test_crash_and_restart_loses_nothing(pg):
    writer = workload.Writer(pg.dsn, writers=4, duration=60, commit_timeout=5).start()
    time.sleep(1.5)
    pg.crash()
    crashed_at = writer.elapsed()
    time.sleep(1.0)
    pg.start()
    # Writes on until some are acknowledged after the restart: a loaded
    # machine may take seconds to restart and reconnect (a fixed 6 s run
    # ended before that once, with no write after the crash to judge).
    acked = writer.counts[workload.ACK]
    deadline = time.monotonic() + 30
    while writer.counts[workload.ACK] < acked + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    writer.stop()
    report = workload.check(writer.attempts, writer.read_back(timeout=30), fault_at=crashed_at)
    assert report.acknowledged > 0
    assert report.failed + report.indeterminate > 0, "the crash should have hit some writes"
    assert report.lost == [] and report.unexpected == []
    assert report.longest_gap.length >= 1.0
    assert report.recovered_at is not None and report.recovered_at > crashed_at
    assert report.latency["after"]["count"] > 0


def test_stuck_commit_is_abandoned_as_indeterminate(pg):
    writer = workload.Writer(pg.dsn, writers=1, count=1, commit_timeout=1)
    writer.prepare()
    # Synchronous replication to a standby that does not exist: COMMIT waits forever.
    pg.sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    pg.sql("SELECT pg_reload_conf()")
    writer.start()
    assert writer.wait(timeout=10)
    writer.stop()
    [attempt] = writer.attempts
    assert attempt.outcome == workload.INDETERMINATE
    assert "no reply to COMMIT" in attempt.error
    assert 1.0 <= attempt.latency < 3.0
    # Releasing the wait commits the row: the checker resolves the attempt as committed.
    pg.sql("ALTER SYSTEM RESET synchronous_standby_names")
    pg.sql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while attempt.id not in writer.read_back() and time.monotonic() < deadline:
        time.sleep(0.1)
    report = workload.check(writer.attempts, writer.read_back())
    assert report.indeterminate_committed == 1 and report.ok


def test_cli_end_to_end(pg, tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests.py"), "--dsn", pg.dsn + " password=hunter2",
                           "--writers", "2", "--duration", "2", "--interval", "0.01", "--json", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "VERDICT: OK" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["lost"] == 0 and report["unexpected"] == 0 and report["acknowledged"] > 0
    assert "hunter2" not in out.read_text()
    assert sum(row["acknowledged"] for row in report["timeline"]) == report["acknowledged"]
