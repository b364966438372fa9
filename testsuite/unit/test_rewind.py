"""The pure parts of a rejoin (pgha/rewind.py): how much WAL to keep, the
restore command, pg_basebackup's progress lines; and fetch_wal's refusals."""
import os
import subprocess
import sys

import pytest

from pgha import fetch_wal, rewind
from pgha.messages import Report


@pytest.mark.parametrize("params, keep", [
    ({}, "2048MB"),                                 # PostgreSQL's default max_wal_size, 1 GB
    ({"max_wal_size": "512MB"}, "1024MB"),
    ({"max_wal_size": "4GB"}, "8192MB"),
    ({"max_wal_size": 256}, "512MB"),               # a bare number is in MB
    ({"max_wal_size": "65536kB"}, "128MB"),
    ({"max_wal_size": "lots"}, "2048MB"),           # unreadable: the default
])
def test_wal_keep_size_follows_max_wal_size(params, keep):
    assert rewind.wal_keep_size(params) == keep


def test_pgpass_line_escapes_separators():
    assert rewind.pgpass_line("h", 5432, "u", "a:b\\c") == "h:5432:*:u:a\\:b\\\\c\n"


def test_restore_command_carries_no_password_and_quotes_paths():
    command = rewind.restore_command("/opt/py thon", "/x/fetch_wal.py", "db1", 5432, "kronos", "/s/rewind.pgpass")
    assert command.startswith("'/opt/py thon' /x/fetch_wal.py --host db1 --port 5432 --user kronos")
    assert command.endswith("--passfile /s/rewind.pgpass %f %p")


def test_derived_sizes_stay_within_what_postgresql_reads():
    # max_wal_size given in bytes by mistake (1 GB = 1073741824 "MB"): a wal_keep_size past 2^31-1 MB
    # would be refused, fatal at the next start of every member.
    assert rewind.wal_keep_size({"max_wal_size": 1073741824}) == f"{rewind.MAX_MB}MB"
    assert rewind.wal_keep_size({"max_wal_size": float("inf")}) == "2048MB"
    assert rewind.max_slot_wal_keep_size({}, 10 ** 30) == f"{rewind.MAX_MB}MB"


def test_replica_method_command_as_patroni_builds_it():
    method = {"command": "/usr/local/bin/restore --from 'repo 2'", "threads": 4, "keep_data": True}
    assert rewind.replica_method_command(method, "main", "/d.restore", "host=h port=5 user=rep") == [
        "/usr/local/bin/restore", "--from", "repo 2", "--scope=main", "--datadir=/d.restore", "--role=replica",
        "--connstring=host=h port=5 user=rep", "--threads=4"]
    assert rewind.replica_method_command({"command": "pgbackrest --stanza=main restore", "no_params": True},
                                         "main", "/d", "c") == ["pgbackrest", "--stanza=main", "restore"]


def test_bootstrap_method_command_as_patroni_builds_it():
    method = {"command": "restore-it --fast", "recovery_conf": {"restore_command": "x"},
              "keep_existing_recovery_conf": True, "threads": 2}
    assert rewind.bootstrap_method_command(method, "main", "/d.restore") == [
        "restore-it", "--fast", "--scope=main", "--datadir=/d.restore", "--threads=2"]
    assert rewind.bootstrap_method_command({**method, "no_params": True}, "main", "/d") == ["restore-it", "--fast"]


def test_progress_lines():
    p = rewind.parse_progress("   20480/409600 kB (5%), 0/1 tablespace")
    assert p == rewind.CloneProgress(20480 * 1024, 409600 * 1024, 5)
    assert p.describe() == "5% (20 of 400 MB)"
    assert rewind.parse_progress("pg_basebackup: error: connection failed") is None


def test_rewind_outcome_names_its_path():
    assert rewind.RewindOutcome(1.0, 0).path == "rewind"
    assert rewind.RewindOutcome(1.0, 3).path == "rewind+fetched-wal"
    stderr = "pgha fetch_wal: fetched 0001 (1 bytes) from h:1\npgha fetch_wal: fetched 0002 (1 bytes) from h:1\n"
    assert rewind.fetched_segments(stderr) == 2


def test_fetch_wal_serves_only_segment_names(tmp_path, capsys):
    for name in ("000000010000000000000015.partial", "../../etc/passwd", "00000002.history"):
        assert fetch_wal.main(["--host", "h", "--port", "1", "--user", "u", "--passfile", "/nonexistent",
                               name, str(tmp_path / "out")]) == 1
    assert "not a WAL segment name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_carries_clone_progress_and_old_reports_parse():
    wire = {"pg": "stopped", "clone_progress": {"done_bytes": 10, "total_bytes": 100, "percent": 10}}
    report = Report.from_wire(wire)
    assert report.clone_progress == wire["clone_progress"]
    assert report.to_wire()["clone_progress"] == wire["clone_progress"]
    assert Report.from_wire({"pg": "stopped"}).clone_progress is None
    assert "clone_progress" not in Report.from_wire({"pg": "stopped"}).to_wire()


GB = 2**30


@pytest.mark.parametrize("params, fs_bytes, cap", [
    ({}, 100 * GB, "10240MB"),                          # a tenth of the disk
    ({}, 4 * GB, "2048MB"),                             # never below what wal_keep_size keeps
    ({}, None, "2048MB"),                               # disk unreadable: the floor
    ({"max_wal_size": "4GB"}, 20 * GB, "8192MB"),       # the floor follows max_wal_size
    ({"wal_keep_size": "100MB"}, GB, "102MB"),          # and an explicit wal_keep_size
])
def test_max_slot_wal_keep_size_is_a_share_of_the_disk(params, fs_bytes, cap):
    assert rewind.max_slot_wal_keep_size(params, fs_bytes) == cap


def test_fetch_wal_runs_as_a_script_beside_its_file_writer(tmp_path):
    """pg_rewind runs it as `python .../pgha/fetch_wal.py` (pgha/ is sys.path[0]):
    it finds pgha/files.py, which writes the segment (never through a planted link)."""
    script = fetch_wal.__file__
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}     # as pg_rewind's environment
    done = subprocess.run([sys.executable, script, "--host", "h", "--port", "1", "--user", "u",
                           "--passfile", "/nonexistent", "not-a-segment", "pg_wal/RECOVERYXLOG"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "not a WAL segment name" in done.stderr, done.stderr
