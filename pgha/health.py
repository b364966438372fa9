"""The REST API's answers as pure functions of a snapshot.

Each health check takes the HA loop's last NodeSnapshot, the arbiter's
last ClusterView (or None) and the current monotonic time, and says yes or
no; the HTTP layer (api.py) turns that into 200 or 503. Nothing here does
I/O, so every status code in every role is a table-driven unit test.
"""
from __future__ import annotations

import datetime
import re
from typing import Any, Callable, Mapping

from pgha.messages import PG_RUNNING, PRIMARY, STANDBY
from pgha.node_state import CLUSTER_VIEW_MAX_AGE, ClusterView, NodeSnapshot, RoleChange

VERSION = "pgha-0.2"
GRANTED_LEASES = ("arbiter", "standby")    # not the restart grace: nobody granted it

LIVENESS_SLACK = 2.0            # seconds on top of three heartbeats

_LAG = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}


def parse_lag(text: str) -> int:
    """`?lag=` as bytes: a number with an optional B, kB, MB, GB or TB
    suffix (1024-based, like PostgreSQL's and Patroni's). ValueError otherwise."""
    match = _LAG.match(text)
    if not match:
        raise ValueError(f"lag must be bytes with an optional kB/MB/GB/TB unit, got {text[:40]!r}")
    unit = match.group(2)
    return int(match.group(1)) * _UNITS[unit.lower() if unit else None]


# -- what the node knows -------------------------------------------------------

def lease_remaining(s: NodeSnapshot, now: float) -> dict[str, float]:
    return {source: max(0.0, s.lease_until.get(source, 0.0) - now) for source in GRANTED_LEASES}


def fresh_view(view: ClusterView | None, now: float) -> ClusterView | None:
    return view if view is not None and now - view.fetched_at <= CLUSTER_VIEW_MAX_AGE else None


def is_primary(s: NodeSnapshot, view: ClusterView | None, now: float) -> bool:
    """Writable primary under a lease at the arbiter's current epoch. The
    lease is measured now, so a stuck HA loop stops answering yes when the
    lease ends, exactly when the watchdog and fencer stop PostgreSQL."""
    if not (s.pg == PG_RUNNING and s.running_as == PRIMARY and s.acting_primary
            and s.instruction_role == PRIMARY and s.instruction_epoch is not None):
        return False
    if s.instruction_epoch < s.acted_epoch:
        return False
    current = fresh_view(view, now)
    if current is not None and current.epoch > s.instruction_epoch:
        return False    # the arbiter has moved on (this node hears it at its next heartbeat)
    return max(lease_remaining(s, now).values()) > 0


def is_streaming_standby(s: NodeSnapshot) -> bool:
    """Running in recovery, streaming from the primary the arbiter names."""
    return (s.pg == PG_RUNNING and s.running_as == STANDBY and s.receiver == "streaming"
            and s.instruction_role == STANDBY and s.primary_address is not None
            and s.upstream == s.primary_address)


def standby_lag(s: NodeSnapshot, view: ClusterView | None, now: float) -> int | None:
    """Bytes this standby is behind the primary's last reported position,
    from the arbiter's status (None when that is unknown or too old)."""
    current = fresh_view(view, now)
    if current is None or s.running_as != STANDBY or s.primary is None:
        return None
    member = current.member(s.primary)
    if member is None or member.report is None or member.report.running_as != PRIMARY:
        return None
    return max(0, member.report.lsn - max(s.lsn, s.receive_lsn))


def replica_ok(s: NodeSnapshot, view: ClusterView | None, now: float, max_lag: int | None) -> bool:
    if not is_streaming_standby(s):
        return False
    if max_lag is None:
        return True
    lag = standby_lag(s, view, now)
    return lag is not None and lag <= max_lag     # unknown lag is not "small enough"


def is_live(s: NodeSnapshot, now: float) -> bool:
    return now - s.taken_at <= 3 * s.heartbeat_interval + LIVENESS_SLACK


def sync_streaming(s: NodeSnapshot) -> bool:
    """A primary whose named synchronous standby streams as `sync`."""
    if s.running_as != PRIMARY or not s.sync_standby:
        return False
    row = next((r for r in s.replication if r.name == s.sync_standby), None)
    return row is not None and row.state == "streaming" and row.sync_state == "sync"


# -- the checks, by path ---------------------------------------------------------

Check = Callable[[NodeSnapshot, "ClusterView | None", float, "int | None"], bool]

CHECKS: dict[str, Check] = {
    "primary": lambda s, v, now, lag: is_primary(s, v, now),
    "replica": lambda s, v, now, lag: replica_ok(s, v, now, lag),
    "read-only": lambda s, v, now, lag: is_primary(s, v, now) or replica_ok(s, v, now, lag),
    "health": lambda s, v, now, lag: s.pg == PG_RUNNING,
    "liveness": lambda s, v, now, lag: is_live(s, now),
    "readiness": lambda s, v, now, lag: is_primary(s, v, now) or is_streaming_standby(s),
}
ALIASES = {"master": "primary", "leader": "primary", "read-write": "primary", "standby": "replica"}


def check_for(path: str) -> Check | None:
    name = path.strip("/")
    return CHECKS.get(ALIASES.get(name, name))


# -- JSON bodies ---------------------------------------------------------------

def node_json(s: NodeSnapshot, view: ClusterView | None, now: float) -> dict[str, Any]:
    """GET / and /patroni: this node, in the spirit of Patroni's answer."""
    running = s.pg == PG_RUNNING
    body: dict[str, Any] = {
        "state": s.pg,
        "role": {PRIMARY: "primary", STANDBY: "replica"}.get(s.running_as or "") if running else None,
        "timeline": s.timeline if running else None,
        "patroni": {"name": s.name, "version": VERSION},
    }
    if running and s.running_as == PRIMARY:
        body["xlog"] = {"location": s.lsn}
        body["replication"] = [{"application_name": r.name, "state": r.state, "sync_state": r.sync_state,
                                "flush_lsn": r.flush_lsn, "lag_bytes": max(0, s.lsn - r.flush_lsn),
                                "reply_age": r.reply_age} for r in s.replication]
        body["sync_standby"] = s.sync_standby
    elif running:
        body["xlog"] = {"received_location": s.receive_lsn, "replayed_location": s.lsn}
        body["receiver"] = s.receiver
        body["lag_bytes"] = standby_lag(s, view, now)
    leases = lease_remaining(s, now)
    current = fresh_view(view, now)
    body["pgha"] = {
        "writable_primary": is_primary(s, view, now),
        "streaming_standby": is_streaming_standby(s),
        "epoch": s.acted_epoch,
        "instruction": None if s.instruction_role is None else {
            "role": s.instruction_role, "epoch": s.instruction_epoch, "primary": s.primary,
            "reason": s.instruction_reason, "paused": s.instruction_paused},
        "lease_remaining": {k: round(v, 3) for k, v in leases.items()} if s.acting_primary else None,
        "grant_remaining": round(s.grant_remaining, 3),
        "arbiter_reachable": s.arbiter_reachable,
        "heartbeat_rtt": None if s.heartbeat_rtt is None else round(s.heartbeat_rtt, 4),
        "last_action": s.last_action,
        "snapshot_age": round(now - s.taken_at, 3),
        "failovers": s.failovers,
        "fences": s.fences,
        "promotable": None if current is None else current.promotable,
        "pause": None if current is None else current.paused,      # Patroni's name for it
    }
    return body


def cluster_json(s: NodeSnapshot, view: ClusterView | None, now: float) -> dict[str, Any]:
    """GET /cluster: every member from the arbiter's last status (fetched at
    most every few seconds in the background), or this node alone."""
    if view is None:
        return {"source": "this node only: the arbiter's status is not known yet",
                "members": [{"name": s.name, "role": _member_role(s.running_as, False, False),
                             "state": s.pg, "timeline": s.timeline}]}
    primary = view.member(view.primary) if view.primary else None
    primary_lsn = primary.report.lsn if primary and primary.report and primary.report.running_as == PRIMARY \
        else None
    sync_name = primary.report.sync_standby if primary and primary.report else None
    members = []
    for m in view.members:
        r = m.report
        running_as = r.running_as if r else None
        entry: dict[str, Any] = {
            "name": m.name,
            "role": _member_role(running_as, m.name == view.primary, m.name == sync_name),
            "state": ("streaming" if r.receiver == "streaming" else r.pg) if r else "unknown",
            "host": r.address.host if r and r.address else None,
            "port": r.address.pg_port if r and r.address else None,
            "timeline": r.timeline if r else None,
            "last_seen_ago": m.last_seen_ago,
            "last_action": r.last_action if r else None,
        }
        if r and running_as == STANDBY and primary_lsn is not None:
            entry["lag"] = max(0, primary_lsn - max(r.lsn, r.receive_lsn))
        if r and r.lease_remaining is not None:
            entry["lease_remaining"] = dict(r.lease_remaining)
        members.append(entry)
    return {"source": "arbiter", "age": round(now - view.fetched_at, 3), "epoch": view.epoch,
            "primary": view.primary, "promotable": view.promotable, "pause": view.paused, "members": members}


def _member_role(running_as: str | None, named_primary: bool, named_sync: bool) -> str | None:
    if running_as == PRIMARY:
        return "leader" if named_primary else "primary"
    if running_as == STANDBY:
        return "sync_standby" if named_sync else "replica"
    return None


def history_json(events: tuple[RoleChange, ...]) -> list[dict[str, Any]]:
    return [{"time": datetime.datetime.fromtimestamp(e.at, datetime.timezone.utc).isoformat(timespec="milliseconds"),
             "epoch": e.epoch, "from": e.old, "to": e.new, "reason": e.reason} for e in events]


def query_lag(query: Mapping[str, list[str]]) -> int | None:
    values = query.get("lag")
    return None if not values else parse_lag(values[-1])
