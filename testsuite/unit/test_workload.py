"""The checker, report and fault helpers on hand-made histories, and the
CLI's handling of bad input (no database needed)."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import faults, localcluster, workload
from harness.cluster import FaultError
from harness.docker import ComposeCluster
from harness.localcluster import LocalCluster
from harness.workload import ACK, FAILED, INDETERMINATE, Attempt

ROOT = Path(__file__).resolve().parents[2]
A, B = "127.0.0.1:5001", "127.0.0.1:5002"


def ack(ident, start, end, node=A):
    return Attempt(ident, 0, start, end, ACK, node)


def history():
    """Acks on A until 1.0 s, a fault at 1.05 s, nothing until 3.0 s, then acks on B."""
    return [
        ack(1, 0.0, 0.1), ack(2, 0.1, 0.3), ack(3, 0.3, 1.0),
        Attempt(4, 0, 1.0, 1.2, INDETERMINATE, A, "server closed the connection"),
        Attempt(5, 0, 1.2, 1.3, FAILED, None, "connection refused"),
        Attempt(6, 0, 1.3, 2.0, FAILED, None, "connection refused"),
        ack(7, 2.0, 3.0, B), ack(8, 3.0, 3.1, B), ack(9, 3.1, 3.15, B),
    ]


# ---------------------------------------------------------------- checker

def test_everything_present_is_ok():
    report = workload.check(history(), {1, 2, 3, 7, 8, 9})
    assert (report.attempted, report.acknowledged, report.failed, report.indeterminate) == (9, 6, 2, 1)
    assert report.lost == [] and report.unexpected == [] and report.ok
    assert report.indeterminate_committed == 0


def test_missing_acknowledged_rows_are_lost():
    report = workload.check(history(), {1, 7, 9})
    assert report.lost == [2, 3, 8]
    assert not report.ok


def test_rows_never_committed_by_the_client_are_unexpected():
    # 99 was never attempted; 5 failed before COMMIT was sent, so it cannot exist.
    report = workload.check(history(), {1, 2, 3, 7, 8, 9, 99, 5})
    assert report.unexpected == [5, 99]
    assert report.lost == [] and not report.ok


def test_indeterminate_is_never_lost_nor_unexpected():
    committed = workload.check(history(), {1, 2, 3, 4, 7, 8, 9})
    missing = workload.check(history(), {1, 2, 3, 7, 8, 9})
    assert committed.indeterminate_committed == 1 and committed.ok
    assert missing.indeterminate_committed == 0 and missing.ok


def test_longest_gap_spans_the_outage_across_writers():
    attempts = history() + [Attempt(10, 1, 0.5, 0.6, ACK, A)]
    report = workload.check(attempts, set())
    gap = report.longest_gap
    assert (gap.start, gap.end) == (1.0, 3.0) and not gap.open_ended
    assert gap.length == pytest.approx(2.0)


def test_gaps_count_the_run_edges():
    gaps = workload.write_gaps([1.0, 1.5], run_start=0.0, run_end=5.0)
    assert [(g.start, g.end, g.open_ended) for g in gaps] == [(0.0, 1.0, False), (1.0, 1.5, False),
                                                              (1.5, 5.0, True)]
    assert workload.write_gaps([], 0.0, 2.0)[0].open_ended


def test_fault_phases_and_primaries():
    report = workload.check(history(), {1, 2, 3, 7, 8, 9}, fault_at=1.05)
    assert report.recovered_at == 3.0
    assert report.primary_before == A and report.primary_after == B
    assert report.nodes == [A, B]
    lat = report.latency
    assert [lat[p]["count"] for p in ("before", "during", "after")] == [3, 1, 2]
    assert lat["during"]["max"] == pytest.approx(1.0)      # the write that waited out the outage
    assert lat["after"]["max"] == pytest.approx(0.1)


def test_no_recovery_after_fault():
    attempts = [ack(1, 0.0, 0.1), Attempt(2, 0, 0.1, 5.0, FAILED, None, "refused")]
    report = workload.check(attempts, {1}, fault_at=0.5)
    assert report.recovered_at is None
    assert report.longest_gap.open_ended and report.longest_gap.length == pytest.approx(4.9)
    assert report.primary_before == A
    assert report.latency["during"]["count"] == 0 and report.latency["after"]["count"] == 0


def test_without_fault_one_latency_bucket():
    report = workload.check(history(), {1, 2, 3, 7, 8, 9})
    assert list(report.latency) == ["all"] and report.latency["all"]["count"] == 6
    assert report.recovered_at is None and report.primary_before is None


def test_empty_history():
    report = workload.check([], set())
    assert report.attempted == 0 and report.ok
    assert report.latency["all"] == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    assert workload.timeline([]) == []


def test_percentiles_nearest_rank():
    values = list(range(1, 101))
    assert [workload.percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert workload.percentile([7.0], 99) == 7.0
    assert workload.percentile([3, 1, 2], 50) == 2
    summary = workload.latency_summary([0.01] * 98 + [0.5, 2.0])
    assert (summary["p50"], summary["p99"], summary["max"], summary["count"]) == (0.01, 0.5, 2.0, 100)


def test_timeline_per_second():
    rows = workload.timeline(history())
    assert [r["acknowledged"] for r in rows] == [2, 1, 0, 3]
    assert [r["errors"] for r in rows] == [0, 2, 1, 0]
    assert rows[1]["max_latency"] == pytest.approx(0.7) and rows[2]["max_latency"] is None


def test_report_dict_and_text():
    report = workload.check(history(), {1, 7, 9, 99, 4}, fault_at=1.05)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["lost"] == 3 and data["lost_ids"] == [2, 3, 8]
    assert data["unexpected"] == 1 and data["unexpected_ids"] == [99]
    assert data["indeterminate_committed"] == 1 and data["ok"] is False
    assert data["longest_gap"]["length"] == pytest.approx(2.0)
    text = workload.format_report(report, labels={A: "pgsql-1", B: "pgsql-2"},
                                  fault={"fault": "kill-primary", "at": 1.05, "node": "pgsql-1", "error": None})
    assert "lost           3" in text and "2, 3, 8" in text
    assert "pgsql-1 (127.0.0.1:5001)" in text and "pgsql-2 (127.0.0.1:5002)" in text
    assert "fault kill-primary on pgsql-1 at +1.050 s" in text
    assert text.splitlines()[-1].startswith("VERDICT: FAILED")


def test_ids_are_unique_per_run_and_writer():
    ids = {workload.make_id(run, w, seq) for run in (1, 2) for w in (0, 1, workload.MAX_WRITERS) for seq in (1, 2)}
    assert len(ids) == 12
    low, high = workload.run_id_range(2)
    assert all(low <= workload.make_id(2, w, 5) <= high for w in (0, workload.MAX_WRITERS))
    assert high < 2**63


def test_sync_cancel_notice_is_recognised():
    notices = ["WARNING:  canceling wait for synchronous replication due to user request\n",
               "WARNING:  canceling the wait for synchronous replication and terminating connection "
               "due to administrator command\n"]
    assert all(workload.SYNC_CANCEL_NOTICE.search(n) for n in notices)
    assert not workload.SYNC_CANCEL_NOTICE.search("NOTICE:  relation \"pgha_writes\" already exists")


@pytest.mark.parametrize("dsn, masked", [
    ("host=a password=secret user=u", "host=a password=*** user=u"),
    ("host=a password = 'se cr\\'et' user=u", "host=a password = *** user=u"),
    ("host=a PASSWORD=x", "host=a PASSWORD=***"),
    ("postgresql://kronos:secret@127.0.0.1:5432/testdb", "postgresql://kronos:***@127.0.0.1:5432/testdb"),
    ("host=a user=u", "host=a user=u"),
])
def test_mask_dsn(dsn, masked):
    assert workload.mask_dsn(dsn) == masked


def test_writer_rejects_bad_writer_count():
    with pytest.raises(ValueError):
        workload.Writer("host=127.0.0.1", writers=0)


# ---------------------------------------------------------------- faults

class FakeArbiter:
    """Answers the arbiter's JSON-line protocol on loopback with canned replies."""

    def __init__(self, primary="pgsql-2", switchover_reply=None):
        self.primary = primary
        self.switchover_reply = switchover_reply or {"v": 1, "type": "ok"}
        self.requests = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                request = json.loads(f.readline())
                self.requests.append(request)
                reply = ({"v": 1, "type": "status", "epoch": 1, "primary": self.primary, "nodes": {}}
                         if request["type"] == "status" else self.switchover_reply)
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    def close(self):
        self.sock.close()


@pytest.fixture
def arbiter():
    fake = FakeArbiter()
    yield fake
    fake.close()


def write_cluster_json(folder, arbiter_port):
    config = {"dsn": "host=127.0.0.1,127.0.0.1 port=1,2 dbname=testdb user=kronos password=pw "
                     "target_session_attrs=read-write connect_timeout=2",
              "arbiter": {"host": "127.0.0.1", "port": arbiter_port, "pid": 1},
              "nodes": {"pgsql-1": {"pid": None, "pg_port": 1, "pgdata": str(folder / "d1"), "host": "127.0.0.1"},
                        "pgsql-2": {"pid": None, "pg_port": 2, "pgdata": str(folder / "d2"), "host": "127.0.0.1"}}}
    (folder / "cluster.json").write_text(json.dumps(config))


def test_local_cluster_asks_the_arbiter(tmp_path, arbiter):
    write_cluster_json(tmp_path, arbiter.port)
    cluster = LocalCluster.load(str(tmp_path))
    assert cluster.labels() == {"127.0.0.1:1": "pgsql-1", "127.0.0.1:2": "pgsql-2"}
    assert cluster.primary() == "pgsql-2" and cluster.standbys() == ["pgsql-1"]
    assert cluster.switchover() == "pgsql-1"
    assert arbiter.requests[-1] == {"v": 1, "type": "switchover", "to": "pgsql-1"}


def test_refused_switchover_raises(tmp_path):
    fake = FakeArbiter(switchover_reply={"v": 1, "type": "error", "error": "standby not promotable"})
    try:
        write_cluster_json(tmp_path, fake.port)
        with pytest.raises(FaultError, match="standby not promotable"):
            LocalCluster.load(str(tmp_path)).switchover()
    finally:
        fake.close()


def test_kill_primary_without_postgres_is_a_fault_error(tmp_path, arbiter):
    write_cluster_json(tmp_path, arbiter.port)
    with pytest.raises(FaultError, match="no running PostgreSQL"):
        LocalCluster.load(str(tmp_path)).kill_primary()


def test_missing_or_bad_cluster_json(tmp_path):
    with pytest.raises(FaultError, match="cluster.json not found"):
        LocalCluster.load(str(tmp_path))
    (tmp_path / "cluster.json").write_text("{}")
    with pytest.raises(FaultError, match="lacks"):
        LocalCluster.load(str(tmp_path))


def test_fault_thread_records_time_node_and_errors():
    class Target:
        def kill_primary(self):
            return "pgsql-1"

        def stop_standby(self):
            raise FaultError("no standby")

    t0 = time.monotonic()
    clock = lambda: time.monotonic() - t0  # noqa: E731
    fired = faults.FaultThread(Target(), "kill-primary", 0.1, clock)
    broken = faults.FaultThread(Target(), "stop-standby", 0.0, clock)
    never = faults.FaultThread(Target(), "kill-primary", 60, clock)
    for t in (fired, broken, never):
        t.start()
    never.cancel()
    for t in (fired, broken, never):
        t.join(5)
    assert fired.result["node"] == "pgsql-1" and fired.result["at"] >= 0.1 and fired.result["error"] is None
    assert broken.result["error"] == "no standby"
    assert never.result["at"] is None


def test_kill_tree_kills_descendants():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 5
    while len(localcluster.process_tree(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = localcluster.process_tree(proc.pid)
    assert len(tree) == 3
    localcluster.kill_tree(proc.pid)
    assert proc.wait(5) == -9
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in tree[1:])


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- CLI bad input

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "tests.py"), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def assert_bad_input(done, *words):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_cli_bad_option():
    assert_bad_input(run_cli("--no-such-option"), "--no-such-option")
    assert_bad_input(run_cli("--writers", "zero"), "--writers")
    assert_bad_input(run_cli("--fault", "explode"), "--fault")


def test_cli_inconsistent_options():
    assert_bad_input(run_cli("--dsn", "host=127.0.0.1", "--fault-at", "3"), "--fault-at needs --fault")
    assert_bad_input(run_cli("--dsn", "host=127.0.0.1", "--fault", "kill-primary", "--fault-at", "5",
                             "--duration", "4"), "--fault-at")
    assert_bad_input(run_cli("--target", "compose"), "--dsn")
    assert_bad_input(run_cli("--dsn", "this is not a dsn"), "invalid --dsn")
    assert_bad_input(run_cli("--dsn", "host=127.0.0.1", "--json", "/no/such/folder/out.json"), "/no/such/folder")


def test_cli_unreachable_dsn_masks_password():
    line = assert_bad_input(run_cli("--dsn", "host=127.0.0.1 port=1 password=hunter2 connect_timeout=2",
                                    "--duration", "1"), "cannot use", "port 1")
    assert "hunter2" not in line and "password=***" in line


def test_cli_missing_cluster_json(tmp_path):
    assert_bad_input(run_cli("--cluster", str(tmp_path / "nowhere")), "cluster.json not found")
    assert_bad_input(run_cli(env={"PGHA_CLUSTER_DIR": str(tmp_path)}), str(tmp_path), "cluster.json")


# A stand-in docker-compose: logs its arguments; runs only the arbiter query
# (python3 inside the "arbiter" service) locally, never a kill.
FAKE_COMPOSE = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_COMPOSE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "exec" in args:
    i = args.index("exec") + 1
    while args[i].startswith("-"):
        i += 2 if args[i] == "-e" else 1
    if args[i] == "arbiter" and args[i + 1] == "python3":
        os.execv(sys.executable, [sys.executable] + args[i + 2:])
    if args[i + 1] == "psql":
        print("f" if args[i] == "pgsql-2" else "t")
"""


@pytest.fixture
def fake_compose(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "docker-compose"
    script.parent.mkdir()
    script.write_text(FAKE_COMPOSE.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "compose.log"
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_COMPOSE_LOG", str(log))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()]


def test_compose_faults_use_the_arbiter_inside_its_container(fake_compose, arbiter):
    cluster = ComposeCluster("dc.yml", arbiter_port=arbiter.port)
    assert cluster.primary() == "pgsql-2"
    assert faults.inject(cluster, "kill-primary") == "pgsql-2"
    assert faults.inject(cluster, "kill-primary-host") == "pgsql-2"
    assert faults.inject(cluster, "stop-standby") == "pgsql-1"
    assert faults.inject(cluster, "switchover") == "pgsql-1"
    assert arbiter.requests[-1] == {"v": 1, "type": "switchover", "to": "pgsql-1"}
    calls = [c for c in fake_compose() if "arbiter" not in c]
    assert calls[0][:5] == ["-f", "dc.yml", "exec", "-T", "pgsql-2"] and "pkill -9 -x postgres" in calls[0][-1]
    assert calls[1:] == [["-f", "dc.yml", "kill", "pgsql-2"], ["-f", "dc.yml", "kill", "pgsql-1"]]


def test_compose_primary_falls_back_to_pg_is_in_recovery(fake_compose):
    cluster = ComposeCluster(dsn="host=x user=kronos password=s3cret dbname=testdb", arbiter_port=1)
    assert cluster.primary() == "pgsql-2"
    psql = [c for c in fake_compose() if "psql" in c][0]
    assert "PGPASSWORD=s3cret" in psql and psql[psql.index("-U") + 1] == "kronos"


def test_compose_errors_never_show_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no docker-compose at all
    with pytest.raises(FaultError, match="arbiter: docker-compose is not installed"):
        ComposeCluster().kill_primary_host()
    script = tmp_path / "docker-compose"
    script.write_text("#!/bin/sh\necho 'no such service' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(FaultError) as err:
        ComposeCluster(dsn="password=s3cret").primary()
    assert "s3cret" not in str(err.value)
