"""GET /metrics: the node's snapshot in Prometheus' text exposition format
(version 0.0.4): a # HELP and a # TYPE line per family, base units in the
names (_bytes, _seconds), counters ending in _total."""
from __future__ import annotations

from typing import Iterable

from pgha import health
from pgha.messages import PG_RUNNING, PRIMARY, STANDBY
from pgha.node_state import ClusterView, NodeSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("primary", "standby", "none")

Sample = tuple[str, dict[str, str], float]     # name suffix ("" or "_sum"...), labels, value


def render(s: NodeSnapshot, view: ClusterView | None, now: float) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return      # unknown: leave the family out rather than invent a value
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    primary = health.is_primary(s, view, now)
    role = "primary" if primary else "standby" if s.pg == PG_RUNNING and s.running_as == STANDBY else "none"
    current = health.fresh_view(view, now)
    running = s.pg == PG_RUNNING

    family("pgha_up", "gauge", "1 while the node daemon answers.", [("", {}, 1)])
    family("pgha_info", "gauge", "The node's name and software version.",
           [("", {"name": s.name, "version": health.VERSION}, 1)])
    family("pgha_postgres_running", "gauge", "1 when PostgreSQL runs and answers queries.",
           [("", {}, running)])
    family("pgha_role", "gauge",
           "This node's role: primary (writable, under a lease), standby (in recovery) or none.",
           [("", {"role": r}, r == role) for r in ROLES])
    family("pgha_streaming", "gauge", "1 when this standby streams from the primary the arbiter names.",
           [("", {}, health.is_streaming_standby(s))])
    family("pgha_epoch", "gauge", "The highest arbiter epoch this node acted on.", [("", {}, s.acted_epoch)])
    family("pgha_timeline", "gauge", "PostgreSQL's timeline.",
           [("", {}, s.timeline)] if running and s.timeline is not None else [])
    family("pgha_wal_position_bytes", "gauge",
           "Current WAL position (primary) or replayed position (standby), bytes from 0/0.",
           [("", {}, s.lsn)] if running else [])
    family("pgha_replication_lag_bytes", "gauge",
           "WAL bytes a standby is behind the primary (on the primary, per standby it sees).",
           _lag_samples(s, view, now))
    family("pgha_sync_standby", "gauge",
           "1 on a primary whose named synchronous standby streams as sync.",
           [("", {}, health.sync_streaming(s))] if running and s.running_as == PRIMARY else [])
    family("pgha_promotable", "gauge", "1 when the arbiter holds the standby promotable (its last status).",
           [("", {}, current.promotable)] if current is not None else [])
    leases = health.lease_remaining(s, now)
    family("pgha_lease_remaining_seconds", "gauge",
           "Seconds left on each of the primary's leases (0 when not acting as primary).",
           [("", {"source": k}, v if s.acting_primary else 0.0) for k, v in leases.items()])
    family("pgha_lease_grant_remaining_seconds", "gauge",
           "Seconds left on the lease this standby granted the primary.", [("", {}, s.grant_remaining)])
    family("pgha_arbiter_reachable", "gauge", "1 when the last heartbeat was answered.",
           [("", {}, s.arbiter_reachable)])
    family("pgha_heartbeat_rtt_seconds", "gauge", "Round trip of the last answered heartbeat.",
           [("", {}, s.heartbeat_rtt)] if s.heartbeat_rtt is not None else [])
    family("pgha_failovers_total", "counter", "Promotions to primary this daemon carried out.",
           [("", {}, s.failovers)])
    family("pgha_fences_total", "counter", "Times this daemon fenced PostgreSQL when its leases ran out.",
           [("", {}, s.fences)])
    family("pgha_ha_loop_duration_seconds", "summary", "Time one HA loop turn (a heartbeat and its action) took.",
           [("_count", {}, s.loop.count), ("_sum", {}, s.loop.total)])
    family("pgha_ha_loop_last_duration_seconds", "gauge", "Time the last HA loop turn took.",
           [("", {}, s.loop.last)])
    family("pgha_snapshot_age_seconds", "gauge", "Seconds since the HA loop last finished a turn.",
           [("", {}, max(0.0, now - s.taken_at))])
    return "\n".join(lines) + "\n"


def _lag_samples(s: NodeSnapshot, view: ClusterView | None, now: float) -> list[Sample]:
    if s.pg != PG_RUNNING:
        return []
    if s.running_as == PRIMARY:
        return [("", {"standby": r.name or ""}, max(0, s.lsn - r.flush_lsn)) for r in s.replication]
    lag = health.standby_lag(s, view, now)
    return [] if lag is None else [("", {"standby": s.name}, lag)]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | bool | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(round(float(value), 6))
