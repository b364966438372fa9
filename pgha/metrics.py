"""GET /metrics: the node's snapshot in Prometheus' text exposition format
(version 0.0.4): a # HELP and a # TYPE line per family, base units in the
names (_bytes, _seconds), counters ending in _total. Every series carries
Patroni's `scope` and `name` labels. Our pgha_* families come first, then
Patroni's patroni_* families with Patroni's names and meanings (for its
dashboards and alerts); Patroni's few `counter` families that lack the
_total suffix are typed gauge here, which promtool accepts."""
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
    base = {"scope": s.scope or "", "name": s.name}     # Patroni's labels, on every series

    def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return      # unknown: leave the family out rather than invent a value
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            lines.append(f"{name}{suffix}{_labels({**base, **labels})} {_number(value)}")

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
    family("pgha_clock_skew_seconds", "gauge",
           "Wall clock of the arbiter or the other node minus ours (signed messages are stamped on the receiver's).",
           [("", {"with": k}, v) for k, v in s.clock_skew.items() if v is not None])
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
    disks = [] if s.disk is None else [("data", s.disk.data), ("wal", s.disk.wal)]
    family("pgha_disk_size_bytes", "gauge", "Size of the filesystem holding the data directory or pg_wal.",
           [("", {"disk": what}, fs.total_bytes) for what, fs in disks])
    family("pgha_disk_free_bytes", "gauge", "Bytes free to PostgreSQL on the data directory's or pg_wal's filesystem.",
           [("", {"disk": what}, fs.free_bytes) for what, fs in disks])
    family("pgha_disk_warning", "gauge", "1 while a disk is past disk_warning_percent full.",
           [("", {}, bool(s.disk.warnings()))] if s.disk else [])
    family("pgha_wal_directory_bytes", "gauge", "What the files in pg_wal take.",
           [("", {}, s.disk.wal_bytes)] if s.disk else [])
    for name, help_text, value in patroni_values(s, view, now):
        family(name, "gauge", help_text, [("", {}, value)])
    return "\n".join(lines) + "\n"


# Patroni's patroni_postgres_state numbers for our PostgreSQL states.
POSTGRES_STATES = {"running": 5, "starting": 6, "stopped": 12}


def patroni_values(s: NodeSnapshot, view: ClusterView | None, now: float) -> list[tuple[str, str, float]]:
    """Patroni's metric families as (name, help, value), with its meanings:
    0 where Patroni says 0 for unknown or not applicable."""
    running = s.pg == PG_RUNNING
    facts = s.facts if running else None
    replica = running and s.running_as == STANDBY
    primary = health.is_primary(s, view, now)
    major, minor, patch = (health.PATRONI_VERSION.split(".") + ["0", "0"])[:3]
    return [
        ("patroni_version", "Patroni semver without periods (the Patroni release this API answers like).",
         int(major) * 10000 + int(minor) * 100 + int(patch)),
        ("patroni_postgres_running", "Value is 1 if Postgres is running, 0 otherwise.", running),
        ("patroni_postmaster_start_time", "Epoch seconds since Postgres started.",
         facts.postmaster_start_time if facts else 0),
        ("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise.", primary),
        ("patroni_xlog_location", "Current location of the Postgres transaction log, 0 if this node is not "
         "the leader.", s.lsn if running and s.running_as == PRIMARY else 0),
        ("patroni_standby_leader", "Value is 1 if this node is the standby_leader, 0 otherwise.", 0),
        ("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise.", replica),
        ("patroni_sync_standby", "Value is 1 if this node is a sync standby replica, 0 otherwise.",
         health.sync_standby_here(s, view, now)),
        ("patroni_quorum_standby", "Value is 1 if this node is a quorum standby replica, 0 otherwise.", 0),
        ("patroni_xlog_received_location", "Current location of the received Postgres transaction log, 0 if "
         "this node is not a replica.", s.receive_lsn if replica else 0),
        ("patroni_xlog_replayed_location", "Current location of the replayed Postgres transaction log, 0 if "
         "this node is not a replica.", s.lsn if replica else 0),
        ("patroni_xlog_replayed_timestamp", "Current timestamp of the replayed Postgres transaction log, 0 if "
         "null.", facts.replay_timestamp or 0 if facts and replica else 0),
        ("patroni_xlog_paused", "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
         bool(facts and replica and facts.replay_paused)),
        ("patroni_postgres_streaming", "Value is 1 if Postgres is streaming, 0 otherwise.",
         replica and s.receiver == "streaming"),
        ("patroni_postgres_in_archive_recovery", "Value is 1 if Postgres is replicating from archive, "
         "0 otherwise.", 0),
        ("patroni_postgres_server_version", "Version of Postgres (if running), 0 otherwise.",
         facts.server_version if facts else 0),
        ("patroni_cluster_unlocked", "Value is 1 if the cluster is unlocked (the arbiter names no primary), "
         "0 if locked.", bool(health.cluster_unlocked(view, now))),
        ("patroni_failsafe_mode_is_active", "Value is 1 if failsafe mode is active, 0 if inactive.", 0),
        ("patroni_postgres_timeline", "Postgres timeline of this node (if running), 0 otherwise.",
         s.timeline or 0 if running else 0),
        ("patroni_dcs_last_seen", "Epoch timestamp when the arbiter (Patroni's DCS) was last contacted "
         "successfully.", int(s.arbiter_last_seen or 0)),
        ("patroni_pending_restart", "Value is 1 if the node needs a restart, 0 otherwise.",
         bool(facts and facts.pending_restart)),
        ("patroni_is_paused", "Value is 1 if auto failover is disabled, 0 otherwise.",
         health.paused(s, view, now)),
        ("patroni_postgres_state", "Numeric representation of Postgres state (Patroni's: 5=running, "
         "6=starting, 12=stopped).", POSTGRES_STATES.get(s.pg, 12)),
    ]


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
