"""Disk use under PostgreSQL (pgha/disk.py): when a disk is flagged, the
reading on a real folder, the watch's interval and its one warning per
crossing; and the REST API and metrics that show it."""
import logging
import os
from dataclasses import replace

import pytest

from pgha import disk, health, metrics
from pgha.disk import DiskUse, Filesystem
from test_api import NOW, PRIMARY, VIEW, promtool_problems

GB = 2**30


def fs(free_gb, total_gb=100, fsid=1):
    return Filesystem(fsid=fsid, total_bytes=total_gb * GB, free_bytes=free_gb * GB)


@pytest.mark.parametrize("data, wal, flagged", [
    (fs(50), fs(50), []),
    (fs(10), fs(10), ["data directory"]),                       # 90 % full: at the share
    (fs(11), fs(11), []),
    (fs(5), fs(5), ["data directory"]),                         # one disk: said once
    (fs(50), fs(5, fsid=2), ["pg_wal"]),                        # pg_wal on a disk of its own
    (fs(5), fs(5, fsid=2), ["data directory", "pg_wal"]),
    (Filesystem(1, 0, 0), Filesystem(1, 0, 0), []),             # an empty reading is not "full"
])
def test_a_disk_is_flagged_past_the_warning_share(data, wal, flagged):
    said = DiskUse(data=data, wal=wal, wal_bytes=0).warnings()
    assert [line.split("'s disk")[0].removeprefix("the ") for line in said] == flagged


def test_a_real_folder_is_read(tmp_path):
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / "000000010000000000000001").write_bytes(b"x" * 4096)
    (tmp_path / "pg_wal" / "archive_status").mkdir()
    use = disk.read(str(tmp_path))
    assert use.wal_bytes == 4096
    assert use.data.total_bytes > 0 and 0 <= use.data.free_bytes <= use.data.total_bytes
    assert use.wal.fsid == use.data.fsid


def test_no_pg_wal_yet_reads_the_data_directory_alone(tmp_path):
    assert disk.read(str(tmp_path)).wal_bytes == 0
    with pytest.raises(OSError):
        disk.read(str(tmp_path / "missing"))


def test_the_watch_reads_at_most_every_interval_and_warns_once_per_crossing(tmp_path, monkeypatch, caplog):
    now = [0.0]
    readings = iter([fs(5), fs(5), fs(50), fs(5)])
    monkeypatch.setattr(disk, "read", lambda path, share: DiskUse(next(readings), fs(50, fsid=9), 0, share))
    watch = disk.DiskWatch(interval=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=disk.log.name):
        first = watch.read_or_none(str(tmp_path))
        now[0] = 4.9
        assert watch.read_or_none(str(tmp_path)) is first                  # within the interval
        for now[0] in (5.0, 10.0, 15.0):                                   # still full, healed, full again
            watch.read_or_none(str(tmp_path))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" ")[0] for line in lines] == ["the", "disk", "the"], lines
    assert "95% full" in lines[0]


def test_an_unreadable_data_directory_is_unknown_not_an_error_and_read_again_at_once(tmp_path):
    watch = disk.DiskWatch(interval=5.0, clock=lambda: 0.0)
    missing = tmp_path / "missing"
    assert watch.read_or_none(str(missing)) is None
    missing.mkdir()     # initdb made it: the next look reads it, not one interval later
    assert watch.read_or_none(str(missing)) is not None


def test_the_rest_api_and_the_metrics_show_the_disks():
    full = replace(PRIMARY, scope="main", disk=DiskUse(data=fs(5), wal=fs(5), wal_bytes=3 * GB))
    body = health.node_json(full, VIEW, NOW)["pgha"]["disk"]
    assert body["data"] == {"size_bytes": 100 * GB, "free_bytes": 5 * GB, "used_percent": 95.0}
    assert body["wal_directory_bytes"] == 3 * GB and len(body["warnings"]) == 1
    text = metrics.render(full, VIEW, NOW)
    assert 'pgha_disk_free_bytes{scope="main",name="pgsql-1",disk="wal"} %d' % (5 * GB) in text
    assert 'pgha_disk_warning{scope="main",name="pgsql-1"} 1' in text
    assert promtool_problems(text) == ""
    assert "pgha_disk" not in metrics.render(PRIMARY, VIEW, NOW)           # unknown: left out
    assert health.node_json(PRIMARY, VIEW, NOW)["pgha"]["disk"] is None
