"""What the REST API shows beyond the heartbeat's report, read off the HA loop.

The facts Patroni's tools want (pgha.pg_facts: one query, on a connection
of this thread's own) and the disk use under PostgreSQL (pgha.disk: statvfs
and the sizes in pg_wal) are read by one thread, each at most every its
interval and the facts at once when PostgreSQL starts running. A slow
query, a large pg_wal or a hung filesystem then delays only this thread,
never a heartbeat (the HA loop's own connection allows a query 5 s: more
than a lease). The HA loop takes the latest Reading, one reference, when
it publishes its snapshot, and tells the thread what PostgreSQL is doing.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pgha import logs
from pgha.disk import DiskUse, DiskWatch
from pgha.messages import PG_RUNNING, PG_STOPPED
from pgha.pg_facts import FactsReader, PgFacts

log = logs.get("api")

TICK = 0.5      # s between looks (each reader keeps its own interval)


@dataclass(frozen=True)
class Reading:
    facts: PgFacts | None = None    # None: PostgreSQL not running, not answering, or no REST API
    disk: DiskUse | None = None     # None: not read yet, or the data directory cannot be read
    disk_report: Mapping[str, int] | None = None    # disk as the heartbeat reports it: made here, off the loop

    @classmethod
    def of(cls, facts: PgFacts | None, disk: DiskUse | None) -> Reading:
        return cls(facts, disk, None if disk is None else disk.to_report())


class FactsWatcher(threading.Thread):
    """settings(): the node's current settings (pgdata, api_bind,
    disk_warning_percent); connect(): a new autocommit connection to the
    local PostgreSQL with a short statement timeout."""

    def __init__(self, settings: Callable[[], Any], connect: Callable[[], Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(daemon=True, name="facts")
        self.settings, self.connect = settings, connect
        self.reader = FactsReader(clock=clock)
        self.disk_watch = DiskWatch(clock=clock)
        self.latest = Reading()     # replaced whole: the HA loop reads one reference
        self._pg = PG_STOPPED       # as the HA loop last saw it
        self._conn: Any = None
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def note(self, pg_state: str) -> None:
        """The HA loop's latest PostgreSQL state; a change is looked at at once."""
        if pg_state != self._pg:
            self._pg = pg_state
            self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.latest = self.read_once()
            except Exception:   # noqa: BLE001 -- a bug here must cost the readings, not the thread
                log.debug("facts for the REST API not read", exc_info=True)
            self._wake.wait(TICK)
            self._wake.clear()
        self._close()

    def read_once(self) -> Reading:
        s = self.settings()
        disk = self.disk_watch.read_or_none(s.pgdata, s.disk_warning_percent / 100)
        if self._pg != PG_RUNNING or not getattr(s, "api_bind", None):
            self.reader.forget()        # running again: read at once
            self._close()
            return Reading.of(None, disk)
        return Reading.of(self.reader.read_or_none(self._query), disk)

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> Sequence[Sequence[Any]]:
        if self._conn is None:
            self._conn = self.connect()
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except Exception:
            self._close()
            raise

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:   # noqa: BLE001 -- closing a broken connection
                pass
            self._conn = None
