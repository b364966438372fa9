"""tests.py, the client simulator, against a real local cluster: a fault
during the writes, and the JSON report says nothing was lost."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tests_py(cluster, out, *args):
    cmd = [sys.executable, str(ROOT / "tests.py"), "--cluster", str(cluster.dir), "--json", str(out),
           "--interval", "0.05", "--quiet", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return json.loads(out.read_text()), done.stdout


def assert_nothing_lost(report):
    assert report["acknowledged"] > 0, "no write was acknowledged"
    assert report["lost"] == 0, f"acknowledged rows lost: {report['lost_ids'][:10]}"
    assert report["unexpected"] == 0, f"rows never committed: {report['unexpected_ids'][:10]}"
    assert report["ok"] is True


def test_kill_primary_loses_nothing(local_cluster, tmp_path):
    report, text = run_tests_py(local_cluster, tmp_path / "out.json", "--fault", "kill-primary",
                                "--fault-at", "3", "--duration", "12", "--plot", str(tmp_path / "out.png"))
    fault = report["fault"]
    assert fault["error"] is None and fault["at"] >= 3
    assert_nothing_lost(report)
    names = report["node_names"]
    assert names[report["primary_before"]] == fault["node"], "the killed node was the primary"
    assert report["primary_after"] in names
    assert report["recovered_at"] is not None, "writes never resumed after the kill"
    assert sum(row["acknowledged"] for row in report["timeline"]) == report["acknowledged"]
    assert "VERDICT: OK" in text and (tmp_path / "out.png").stat().st_size > 0


def test_switchover_moves_writes_to_the_standby(local_cluster, tmp_path):
    report, _ = run_tests_py(local_cluster, tmp_path / "out.json", "--fault", "switchover",
                             "--fault-at", "2", "--duration", "10")
    assert report["fault"]["error"] is None
    assert_nothing_lost(report)
    names = report["node_names"]
    assert names[report["primary_after"]] == report["fault"]["node"] != names[report["primary_before"]]
