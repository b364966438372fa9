"""A short coverage-guided fuzz run of the parser (atheris, ~20 s, in a
subprocess so a crash cannot take pytest with it). Fails on any crash."""
import subprocess
import sys
from pathlib import Path

import atheris     # noqa: F401 -- in requirements.txt: missing, this fails rather than skips

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [b'{"v":1,"type":"status"}',
         b'{"v":1,"type":"heartbeat","node":"a","epoch":1,"report":{"pg":"running","role":"primary",'
         b'"replication":[{"name":"b","state":"streaming","flush_lsn":1}],"lease_remaining":{"arbiter":1}}}',
         b'{"v":1,"type":"instruction","epoch":2,"role":"standby","primary":"a",'
         b'"primary_address":{"host":"h","pg_port":1,"peer_port":2,"slot":"s"}}']


def test_the_parser_survives_a_coverage_guided_fuzz_run(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, seed in enumerate(SEEDS):
        (corpus / f"seed{n}").write_bytes(seed)
    run = subprocess.run([sys.executable, str(ROOT / "testsuite/unit/fuzz_parser.py"), "-max_total_time=20",
                          "-max_len=4096", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/", str(corpus)],
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Done" in run.stderr or "DONE" in run.stderr, run.stderr[-2000:]
