"""What Patroni's tools read about PostgreSQL beyond the node's report:
server version, postmaster start time, system identifier, replay time
and pause, pending restart, who each streaming standby is, and the
timeline history. A thread of their own reads them (pgha.node_facts: one
query at most every FACTS_INTERVAL, only while PostgreSQL runs and the
REST API is on, on a connection of its own, never on the HA loop) and the
HA loop publishes the latest in its snapshot, so the REST API's answers
stay pure functions of that snapshot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pgha import logs

log = logs.get("api")

FACTS_SQL = """
SELECT current_setting('server_version_num')::int,
       extract(epoch FROM pg_postmaster_start_time()),
       (SELECT system_identifier::text FROM pg_control_system()),
       CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM pg_last_xact_replay_timestamp()) END,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
       EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart),
       (SELECT coalesce(json_agg(json_build_array(application_name, usename, host(client_addr),
                                                  sync_priority)), '[]')
          FROM pg_stat_replication),
       (SELECT coalesce(json_agg(json_build_array(name, extract(epoch FROM modification))), '[]')
          FROM pg_ls_waldir() WHERE name LIKE '%.history')
"""
HISTORY_SQL = "SELECT pg_read_file('pg_wal/' || %s)"
FACTS_INTERVAL = 2.0    # seconds: how stale pending_restart, the replay time and the senders may be


@dataclass(frozen=True)
class Sender:
    """Who a pg_stat_replication row is (the row's state is in the report)."""
    application_name: str | None
    usename: str | None
    client_addr: str | None
    sync_priority: int


@dataclass(frozen=True)
class TimelineSwitch:
    """One line of a timeline history file, dated by its file's mtime."""
    timeline: int               # the parent timeline the switch left
    lsn: int                    # where it left it
    reason: str
    at: float | None            # wall clock the next timeline began (epoch seconds)


@dataclass(frozen=True)
class PgFacts:
    server_version: int                     # e.g. 160004
    postmaster_start_time: float            # epoch seconds
    system_identifier: str
    replay_timestamp: float | None          # last replayed commit's time (standby), epoch seconds
    replay_paused: bool
    pending_restart: bool                   # a changed parameter waits for a restart
    senders: tuple[Sender, ...] = ()
    history: tuple[TimelineSwitch, ...] = ()

    def sender(self, application_name: str | None) -> Sender | None:
        return next((s for s in self.senders if s.application_name == application_name), None)


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def parse_history(text: str, mtimes: dict[int, float]) -> tuple[TimelineSwitch, ...]:
    """A timeline history file's lines (`parent_tli<TAB>lsn<TAB>reason`);
    the switch off timeline N made timeline N+1, dated by N+1's file."""
    switches = []
    for line in text.splitlines():
        fields = line.strip().split(None, 2)
        if len(fields) < 2 or not fields[0].isdigit() or line.lstrip().startswith("#"):
            continue
        try:
            lsn = parse_lsn(fields[1])
        except ValueError:
            continue
        tli = int(fields[0])
        switches.append(TimelineSwitch(tli, lsn, fields[2].strip() if len(fields) > 2 else "", mtimes.get(tli + 1)))
    return tuple(switches)


def _timeline_of(name: str) -> int | None:
    try:
        return int(name[:8], 16) if len(name) == 16 else None
    except ValueError:
        return None


Query = Callable[..., Sequence[Sequence[Any]]]


class FactsReader:
    """Reads PgFacts through the HA loop's connection, at most every
    `interval` (the last ones stand between). The history file is read
    again only when the newest one changes (a new timeline)."""

    def __init__(self, interval: float = FACTS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._history_key: tuple[str, float] | None = None
        self._history: tuple[TimelineSwitch, ...] = ()
        self._last: PgFacts | None = None
        self._read_at: float | None = None

    def forget(self) -> None:
        """PostgreSQL stopped: the next running server is read at once."""
        self._last = self._read_at = None

    def read(self, query: Query) -> PgFacts:
        """One query (two when the timeline history changed); raises what `query` raises."""
        (version, started, sysid, replayed, paused, pending, senders, files), = query(FACTS_SQL)
        files = [(name, float(at)) for name, at in files if _timeline_of(name) is not None]
        mtimes = {tli: at for name, at in files if (tli := _timeline_of(name)) is not None}
        newest = max(files, default=None)       # names are the timeline in fixed-width hex
        if newest != self._history_key:
            text = query(HISTORY_SQL, (newest[0],))[0][0] if newest else ""
            self._history, self._history_key = parse_history(text or "", mtimes), newest
        return PgFacts(
            server_version=int(version), postmaster_start_time=float(started), system_identifier=str(sysid),
            replay_timestamp=None if replayed is None else float(replayed), replay_paused=bool(paused),
            pending_restart=bool(pending),
            senders=tuple(Sender(name, user, addr, int(priority or 0)) for name, user, addr, priority in senders),
            history=self._history)

    def read_or_none(self, query: Query) -> PgFacts | None:
        """The facts (read again when `interval` has passed), or None when
        PostgreSQL does not answer (the report says why)."""
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.interval:
            return self._last
        self._read_at = now
        try:
            self._last = self.read(query)
        except Exception as exc:    # a failed read leaves the fields unknown, never the HA loop broken
            log.debug("PostgreSQL facts for the REST API unavailable: %s", str(exc)[:200])
            self._last = None
        return self._last


def snapshot_fields(settings: Any, scope: str, facts: PgFacts | None) -> dict[str, Any]:
    """The NodeSnapshot fields Patroni's tools read, for the HA loop's publish
    (the facts as pgha.node_facts last read them)."""
    return {"scope": scope, "tags": dict(getattr(settings, "tags", None) or {}), "facts": facts}
