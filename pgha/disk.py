"""How full the disks under PostgreSQL are: the data directory's
filesystem, pg_wal's (often the same, or a link to another disk), and how
much WAL pg_wal holds.

A primary whose disk fills does not stop at once: PostgreSQL recycles its
WAL segments and only a commit that needs a new one, or a table that must
grow, fails. So the operator needs to see the disk before that: a thread
of the node daemon (pgha.node_facts, never the HA loop: a hung filesystem
must not delay a heartbeat) reads it at most every DISK_INTERVAL (whether PostgreSQL runs or not:
a server that stopped for a full disk is the case that matters most),
publishes it in its snapshot for the REST API and the metrics, and logs a
warning when a filesystem crosses the warning share.

Reading only: os.statvfs and the sizes of pg_wal's own entries, never a
walk of the data directory (a large database would make it slow).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from pgha import logs

log = logs.get("node")

DISK_INTERVAL = 5.0             # seconds between reads
DEFAULT_WARNING_SHARE = 0.90    # a filesystem this full is logged and flagged


@dataclass(frozen=True)
class Filesystem:
    fsid: int                   # which filesystem (statvfs's f_fsid)
    total_bytes: int
    free_bytes: int             # free to an unprivileged writer (PostgreSQL), as df's "Avail"

    @property
    def used_share(self) -> float:
        return 0.0 if self.total_bytes <= 0 else 1.0 - self.free_bytes / self.total_bytes


@dataclass(frozen=True)
class DiskUse:
    data: Filesystem            # the filesystem of the data directory
    wal: Filesystem             # the filesystem pg_wal is on (the same one unless linked elsewhere)
    wal_bytes: int              # what pg_wal's files take
    warning_share: float = DEFAULT_WARNING_SHARE

    def to_report(self) -> dict[str, int]:
        """The heartbeat report's "disk" (bytes; pg_wal's filesystem only when it
        is another one), for the arbiter's status and pgha-ctl."""
        fields = {"data_size": self.data.total_bytes, "data_free": self.data.free_bytes, "wal_bytes": self.wal_bytes,
                  "warning": int(bool(self.warnings()))}
        if self.wal.fsid != self.data.fsid:
            fields.update(wal_size=self.wal.total_bytes, wal_free=self.wal.free_bytes)
        return fields

    def warnings(self) -> list[str]:
        """One line per filesystem past the warning share (pg_wal's only when it is another one)."""
        said = []
        for what, fs in (("data directory", self.data), ("pg_wal", self.wal)):
            if fs.used_share >= self.warning_share and (what == "data directory" or fs.fsid != self.data.fsid):
                said.append(f"the {what}'s disk is {fs.used_share:.0%} full "
                            f"({fs.free_bytes // 2**20} MB free; warning at {self.warning_share:.0%})")
        return said


def filesystem(path: str) -> Filesystem:
    st = os.statvfs(path)
    return Filesystem(fsid=st.f_fsid, total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize)


def wal_bytes(pg_wal: str) -> int:
    """Sizes of pg_wal's regular files (segments, history, the archive
    status folder's few bytes left out)."""
    total = 0
    with os.scandir(pg_wal) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def read(pgdata: str, warning_share: float = DEFAULT_WARNING_SHARE) -> DiskUse:
    """Raises OSError when the data directory cannot be read."""
    pg_wal = os.path.join(pgdata, "pg_wal")
    data = filesystem(pgdata)
    try:
        wal, in_wal = filesystem(pg_wal), wal_bytes(pg_wal)
    except OSError:         # no pg_wal yet (before initdb or a clone)
        wal, in_wal = data, 0
    return DiskUse(data=data, wal=wal, wal_bytes=in_wal, warning_share=warning_share)


class DiskWatch:
    """The HA loop's reader: at most every `interval`, the last reading
    between; a warning logged when a filesystem crosses the share, and
    once more when it is back below it."""

    def __init__(self, interval: float = DISK_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._last: DiskUse | None = None
        self._read_at: float | None = None
        self._warned: tuple[str, ...] = ()

    def read_or_none(self, pgdata: str, warning_share: float = DEFAULT_WARNING_SHARE) -> DiskUse | None:
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.interval:
            return self._last
        self._read_at = now
        try:
            self._last = read(pgdata, warning_share)
        except OSError as exc:
            log.debug("disk use of %s unavailable: %s", pgdata, exc)
            self._last = self._read_at = None     # tried again at the next look (no data directory yet)
            return None
        warned = tuple(self._last.warnings())
        if warned and not self._warned:
            for line in warned:
                log.warning("%s", line)
        elif self._warned and not warned:
            log.info("disk use back below %.0f%%", warning_share * 100)
        self._warned = warned
        return self._last
