"""The REST API's answers as pure functions of a snapshot.

Each health check takes the HA loop's last NodeSnapshot, the arbiter's
last ClusterView (or None) and the current monotonic time, and says yes or
no; the HTTP layer (api.py) turns that into 200 or 503. Nothing here does
I/O, so every status code in every role is a table-driven unit test.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pgha.disk import DiskUse, Filesystem
from pgha.messages import PG_RUNNING, PRIMARY, STANDBY, ReplicationRow
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


def standby_lag(s: NodeSnapshot, view: ClusterView | None, now: float, replayed: bool = False) -> int | None:
    """Bytes this standby is behind the primary's last reported position,
    from the arbiter's status (None when that is unknown or too old): what it
    has received (or replayed, if later), or with `replayed` what it has replayed."""
    current = fresh_view(view, now)
    if current is None or s.running_as != STANDBY or s.primary is None:
        return None
    member = current.member(s.primary)
    if member is None or member.report is None or member.report.running_as != PRIMARY:
        return None
    return max(0, member.report.lsn - (s.lsn if replayed else max(s.lsn, s.receive_lsn)))


def replica_ok(s: NodeSnapshot, view: ClusterView | None, now: float, max_lag: int | None,
               replayed: bool = False) -> bool:
    if not is_streaming_standby(s):
        return False
    if max_lag is None:
        return True
    lag = standby_lag(s, view, now, replayed)
    return lag is not None and lag <= max_lag     # unknown lag is not "small enough"


def is_live(s: NodeSnapshot, now: float) -> bool:
    return now - s.taken_at <= 3 * s.heartbeat_interval + LIVENESS_SLACK


def sync_streaming(s: NodeSnapshot) -> bool:
    """A primary whose named synchronous standby streams as `sync`."""
    if s.running_as != PRIMARY or not s.sync_standby:
        return False
    row = next((r for r in s.replication if r.name == s.sync_standby), None)
    return row is not None and row.state == "streaming" and row.sync_state == "sync"


# -- Patroni's words for what the node knows -----------------------------------------

def sync_standby_here(s: NodeSnapshot, view: ClusterView | None, now: float) -> bool:
    """Patroni's sync_standby: this running standby is the one the primary
    names in synchronous_standby_names (from the arbiter's fresh status;
    unknown without it, as Patroni's answer needs its DCS)."""
    current = fresh_view(view, now)
    if current is None or s.pg != PG_RUNNING or s.running_as != STANDBY or current.primary is None:
        return False
    primary = current.member(current.primary)
    return bool(primary and primary.report and primary.report.running_as == PRIMARY
                and primary.report.sync_standby == s.name)


def cluster_unlocked(view: ClusterView | None, now: float) -> bool | None:
    """Patroni's cluster_unlocked: the arbiter names no primary (None: its status is unknown)."""
    current = fresh_view(view, now)
    return None if current is None else current.primary is None


def paused(s: NodeSnapshot, view: ClusterView | None, now: float) -> bool:
    current = fresh_view(view, now)
    return current.paused if current is not None else s.instruction_paused


def replication_state(s: NodeSnapshot) -> str | None:
    """Patroni's replication_state on a running standby: "streaming", or None
    (Patroni's other value, "in archive recovery", needs a restore_command,
    which a running standby here never has; our `receiver` says more)."""
    if s.pg != PG_RUNNING or s.running_as != STANDBY or s.receiver != "streaming":
        return None
    return "streaming"


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "on", "yes", "1"))


# -- the checks, by path ---------------------------------------------------------

READINESS_MODES = ("apply", "write")


@dataclass(frozen=True)
class Filters:
    """A health check's query: ?lag=, ?replication_state=, ?tag_NAME=VALUE,
    and /readiness's ?mode=apply|write (the lag of replayed or of received WAL)."""
    lag: int | None = None
    replication_state: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    mode: str = "apply"

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]], readiness: bool = False) -> Filters:
        """Raises ValueError on a bad ?lag=, or a bad ?mode= on /readiness (read there alone, as Patroni does)."""
        values = query.get("lag")
        state = query.get("replication_state")
        mode = query.get("mode", ["apply"])[-1] if readiness else "apply"
        if mode not in READINESS_MODES:
            raise ValueError(f"mode must be apply or write, got {mode[:40]!r}")
        return cls(lag=None if not values else parse_lag(values[-1]), replication_state=state[-1] if state else None,
                   tags=tuple((k[len("tag_"):], v[0]) for k, v in sorted(query.items()) if k.startswith("tag_")),
                   mode=mode)


def replica_check(s: NodeSnapshot, v: ClusterView | None, now: float, f: Filters) -> bool:
    """Patroni's /replica: a running standby (ours: streaming from the named
    primary) without the noloadbalance tag, within ?lag=, in ?replication_state=."""
    return (replica_ok(s, v, now, f.lag) and not _truthy(s.tags.get("noloadbalance"))
            and (f.replication_state is None or replication_state(s) == f.replication_state))


def _sync_replica(s: NodeSnapshot, v: ClusterView | None, now: float, f: Filters) -> bool:
    return replica_check(s, v, now, f) and sync_standby_here(s, v, now)


def _async_replica(s: NodeSnapshot, v: ClusterView | None, now: float, f: Filters) -> bool:
    # Patroni needs its DCS to tell sync from async: so do we (the arbiter's fresh status).
    return replica_check(s, v, now, f) and fresh_view(v, now) is not None and not sync_standby_here(s, v, now)


def _ready(s: NodeSnapshot, v: ClusterView | None, now: float, f: Filters) -> bool:
    """Patroni's /readiness: the primary, or a streaming standby within ?lag= of
    replayed WAL (?mode=write: of received WAL)."""
    return is_primary(s, v, now) or replica_ok(s, v, now, f.lag, replayed=f.mode == "apply")


Check = Callable[[NodeSnapshot, "ClusterView | None", float, Filters], bool]

# Leader paths ignore ?tag_ (as Patroni's do); the others need every tag to match.
LEADER_CHECKS: dict[str, Check] = {
    "primary": lambda s, v, now, f: is_primary(s, v, now),
    "standby-leader": lambda s, v, now, f: False,       # no standby clusters here
}
CHECKS: dict[str, Check] = {
    "replica": replica_check,
    "read-only": lambda s, v, now, f: is_primary(s, v, now) or replica_check(s, v, now, f),
    "sync": _sync_replica,
    "async": _async_replica,
    "read-only-sync": lambda s, v, now, f: is_primary(s, v, now) or _sync_replica(s, v, now, f),
    "quorum": lambda s, v, now, f: False,               # no quorum commit here
    "read-only-quorum": lambda s, v, now, f: is_primary(s, v, now),
    "health": lambda s, v, now, f: s.pg == PG_RUNNING,
    # Patroni's liveness: the HA loop turns (in pause a stuck loop is fine).
    "liveness": lambda s, v, now, f: is_live(s, now) or paused(s, v, now),
    "readiness": _ready,
}
ALIASES = {"": "primary", "master": "primary", "leader": "primary", "read-write": "primary",
           "standby_leader": "standby-leader", "standby": "replica", "synchronous": "sync",
           "asynchronous": "async", "read-only-synchronous": "read-only-sync"}


def check_for(path: str) -> Check | None:
    """The check a health path asks for (with ?tag_ filtering), or None for no such path."""
    name = path.strip("/")
    name = ALIASES.get(name, name)
    if name in LEADER_CHECKS:
        return LEADER_CHECKS[name]
    check = CHECKS.get(name)
    if check is None:
        return None
    return lambda s, v, now, f: check(s, v, now, f) and tags_match(s, f)


def tags_match(s: NodeSnapshot, f: Filters) -> bool:
    """Every ?tag_NAME=VALUE names a tag this node has, with that value
    (a non-string value compared as its lower-case text, as Patroni does)."""
    for name, wanted in f.tags:
        value = s.tags.get(name)
        if value is None:
            return False
        if (value if isinstance(value, str) else str(value).lower()) != wanted:
            return False
    return True


# -- JSON bodies ---------------------------------------------------------------

# The Patroni release whose REST API this one answers like (patroni.version, patroni_version):
# Patroni's tools gate on it (check_patroni reads the replica states "streaming" and "in archive
# recovery" only from 3.0.4; role "primary", not "master", is 4.0's). Our own is pgha.version.
PATRONI_VERSION = "4.0.0"


def _iso(epoch: float | None, sep: str = "T") -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(sep=sep)


def node_json(s: NodeSnapshot, view: ClusterView | None, now: float) -> dict[str, Any]:
    """GET /patroni and the health checks' body: this node, with Patroni's
    names and meanings; our own fields under "pgha" (and the few we had
    before beside Patroni's: lag_bytes, receiver, rows' flush_lsn)."""
    running = s.pg == PG_RUNNING
    facts = s.facts if running else None
    body: dict[str, Any] = {"state": s.pg}
    if facts is not None:
        body["postmaster_start_time"] = _iso(facts.postmaster_start_time, " ")
    body["role"] = {PRIMARY: "primary", STANDBY: "replica"}.get(s.running_as or "") if running else None
    if facts is not None:
        body["server_version"] = facts.server_version
    body["timeline"] = s.timeline if running else None
    if running and s.running_as == PRIMARY:
        body["xlog"] = {"location": s.lsn}
        body["replication"] = [_replication_row(s, r) for r in s.replication]
    elif running:
        body["xlog"] = {"received_location": s.receive_lsn, "replayed_location": s.lsn,
                        "replayed_timestamp": _iso(facts.replay_timestamp, " ") if facts else None,
                        "paused": facts.replay_paused if facts else False}
        body["replication_state"] = replication_state(s)
        body["receiver"] = s.receiver
        body["lag_bytes"] = standby_lag(s, view, now)
        if sync_standby_here(s, view, now):
            body["sync_standby"] = True
    if cluster_unlocked(view, now):
        body["cluster_unlocked"] = True
    if paused(s, view, now):
        body["pause"] = True
    if s.arbiter_last_seen is not None:
        body["dcs_last_seen"] = int(s.arbiter_last_seen)
    if s.tags:
        body["tags"] = dict(s.tags)
    if facts is not None:
        body["database_system_identifier"] = facts.system_identifier
        if facts.pending_restart:
            body["pending_restart"] = True
    body["patroni"] = {"version": PATRONI_VERSION, "scope": s.scope, "name": s.name}
    leases = lease_remaining(s, now)
    current = fresh_view(view, now)
    body["pgha"] = {
        "version": VERSION,
        "writable_primary": is_primary(s, view, now),
        "streaming_standby": is_streaming_standby(s),
        "sync_standby": s.sync_standby if running and s.running_as == PRIMARY else None,   # the name it waits for
        "epoch": s.acted_epoch,
        "instruction": None if s.instruction_role is None else {
            "role": s.instruction_role, "epoch": s.instruction_epoch, "primary": s.primary,
            "reason": s.instruction_reason, "paused": s.instruction_paused},
        "lease_remaining": {k: round(v, 3) for k, v in leases.items()} if s.acting_primary else None,
        "grant_remaining": round(s.grant_remaining, 3),
        "arbiter_reachable": s.arbiter_reachable,
        "heartbeat_rtt": None if s.heartbeat_rtt is None else round(s.heartbeat_rtt, 4),
        "clock_skew": {k: None if v is None else round(v, 1) for k, v in s.clock_skew.items()},
        "last_action": s.last_action,
        "snapshot_age": round(now - s.taken_at, 3),
        "failovers": s.failovers,
        "fences": s.fences,
        "promotable": None if current is None else current.promotable,
        "pause": None if current is None else current.paused,
        "disk": None if s.disk is None else disk_json(s.disk),
    }
    return body


def disk_json(d: DiskUse) -> dict[str, Any]:
    def fs(f: Filesystem) -> dict[str, Any]:
        return {"size_bytes": f.total_bytes, "free_bytes": f.free_bytes, "used_percent": round(100 * f.used_share, 1)}
    return {"data": fs(d.data), "wal": fs(d.wal), "wal_directory_bytes": d.wal_bytes,
            "warnings": d.warnings()}


def _replication_row(s: NodeSnapshot, r: ReplicationRow) -> dict[str, Any]:
    sender = s.facts.sender(r.name) if s.facts else None
    return {"usename": sender.usename if sender else None, "application_name": r.name,
            "client_addr": sender.client_addr if sender else None, "state": r.state, "sync_state": r.sync_state,
            "sync_priority": sender.sync_priority if sender else None,
            "flush_lsn": r.flush_lsn, "lag_bytes": max(0, s.lsn - r.flush_lsn), "reply_age": r.reply_age}


def config_json(s: NodeSnapshot, view: ClusterView | None, now: float) -> dict[str, Any]:
    """GET /config: the settings Patroni keeps in its dynamic configuration
    that this node has (its timings as the arbiter gave them; synchronous
    replication is always on and strict here; the cluster-wide PostgreSQL
    parameters, pgha-ctl edit-config)."""
    body: dict[str, Any] = {"ttl": s.lease_time, "loop_wait": s.heartbeat_interval,
                            "synchronous_mode": True, "synchronous_mode_strict": True,
                            "postgresql": {"parameters": dict(s.cluster_parameters)}}
    if paused(s, view, now):
        body["pause"] = True
    return body


def history_json(s: NodeSnapshot, view: ClusterView | None = None) -> list[list[Any]]:
    """GET /history in Patroni's shape: [timeline, lsn, reason, timestamp,
    new_leader] per timeline switch, from PostgreSQL's timeline history files
    (dated by the next timeline's file); new_leader, the member that made the
    next timeline, from the arbiter's status (left out when not known, as
    Patroni leaves it out)."""
    switches = s.facts.history if s.facts else ()
    leaders = view.timelines if view is not None else {}
    return [[t.timeline, t.lsn, t.reason, _iso(t.at)] + ([leaders[t.timeline + 1]] if t.timeline + 1 in leaders else [])
            for t in switches]


def cluster_json(s: NodeSnapshot, view: ClusterView | None, now: float) -> dict[str, Any]:
    """GET /cluster in Patroni's shape (members with name, role, state,
    host, port, timeline, lag; scope; pause; scheduled_switchover) from the
    arbiter's last status (fetched at most every few seconds in the
    background), or this node alone; our own fields beside them."""
    if view is None:
        return {"source": "this node only: the arbiter's status is not known yet", "scope": s.scope,
                "members": [{"name": s.name, "role": _member_role(s.running_as, False, False),
                             "state": s.pg, "timeline": s.timeline, **({"tags": dict(s.tags)} if s.tags else {})}]}
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
        if r and r.api_url:
            entry["api_url"] = r.api_url
        restart = view.scheduled_restarts.get(m.name)
        if restart:     # Patroni's member scheduled_restart
            entry["scheduled_restart"] = {"schedule": restart.get("at"), "restart_pending": restart.get("pending")}
        tags = s.tags if m.name == s.name else r.tags if r else None     # ours as they are now
        if tags:
            entry["tags"] = dict(tags)
        if m.name != view.primary:
            if r and running_as == STANDBY and primary_lsn is not None:
                entry["receive_lag"] = max(0, primary_lsn - r.receive_lsn)
                entry["replay_lag"] = max(0, primary_lsn - r.lsn)
                entry["lag"] = max(0, primary_lsn - max(r.lsn, r.receive_lsn))
            else:
                entry["lag"] = "unknown"      # Patroni's word when the leader's position or ours is not known
        if r and r.lease_remaining is not None:
            entry["lease_remaining"] = dict(r.lease_remaining)
        members.append(entry)
    body: dict[str, Any] = {"members": members, "scope": s.scope}
    if view.scheduled_switchover is not None:
        body["scheduled_switchover"] = {"at": view.scheduled_switchover.get("at"), "from": view.primary,
                                        "to": view.scheduled_switchover.get("to")}
    body.update({"source": "arbiter", "age": round(now - view.fetched_at, 3), "epoch": view.epoch,
                 "primary": view.primary, "promotable": view.promotable, "pause": view.paused})
    return body


def _member_role(running_as: str | None, named_primary: bool, named_sync: bool) -> str:
    """Patroni's member roles: leader (the arbiter's primary), sync_standby, replica."""
    if named_primary:
        return "leader"
    if running_as == PRIMARY:
        return "primary"        # running as primary without the arbiter's word (a demoting old primary)
    return "sync_standby" if named_sync and running_as == STANDBY else "replica"


def role_history_json(events: tuple[RoleChange, ...]) -> list[dict[str, Any]]:
    """GET /pgha/history: this node's role changes (in memory)."""
    return [{"time": datetime.datetime.fromtimestamp(e.at, datetime.timezone.utc).isoformat(timespec="milliseconds"),
             "epoch": e.epoch, "from": e.old, "to": e.new, "reason": e.reason} for e in events]
