"""The arbiter's durable decision for one cluster (docs/ha-model.md): what the
state stores keep (pgha.store, pgha.etcd_store) and the rules (pgha.decision)
read and return. Its own module, so a store needs no rules to hold it.

    epoch       bumped by every change of primary
    primary     the node that may run PostgreSQL as primary
    promotable  the members known to hold every acknowledged commit (invariant 1)
    paused      maintenance mode (node_rules row M1)
    parameters  the cluster-wide PostgreSQL parameters (pgha.cluster_config),
                config_version grows at each change of them
    primary_unfenced, scheduled_at, scheduled_to, scheduled_restarts: see below
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pgha.cluster_config import Parameters, frozen


@dataclass(frozen=True)
class ScheduledRestart:
    member: str
    at: float               # wall-clock seconds
    pending: bool = False   # only if a parameter then waits for a restart (Patroni's restart_pending)

    def view(self, wall_now: float) -> dict[str, Any]:
        """For status, list and /cluster."""
        return {"member": self.member, "at": iso(self.at), "in": round(self.at - wall_now, 1),
                "pending": self.pending}


def iso(wall: float) -> str:
    """A wall-clock time as the operator reads it: ISO 8601, UTC, to the second."""
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ClusterState:
    epoch: int
    primary: str
    promotable: frozenset[str] = frozenset()     # members known to hold every acknowledged commit
    paused: bool = False
    # The primary's daemon stopped in pause and left its PostgreSQL running
    # with the fencer disarmed: no lease bounds that server, so no automatic
    # failover until the daemon reports again (failover_blocker), and an
    # operator's failover only with primary_stopped (request_failover).
    # Durable, so a restarted arbiter or a new etcd leader holds it back too.
    primary_unfenced: bool = False
    scheduled_at: float | None = None   # wall-clock seconds
    scheduled_to: str | None = None
    # Restarts an operator scheduled (pgha-ctl restart --at): one per member,
    # sorted by member; each becomes an order when due (decision.next_due_restart).
    scheduled_restarts: tuple[ScheduledRestart, ...] = ()
    parameters: Parameters = ()         # sorted (name, value) pairs; a dict is taken too
    config_version: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.promotable, (set, list, tuple)):     # any collection of names: one type, hashable
            object.__setattr__(self, "promotable", frozenset(self.promotable))
        if isinstance(self.parameters, dict):
            object.__setattr__(self, "parameters", frozen(self.parameters))

    def config_view(self) -> dict[str, Any]:
        """The cluster-wide configuration as status, show-config and GET /config show it."""
        return {"parameters": dict(self.parameters), "config_version": self.config_version}

    @property
    def scheduled(self) -> bool:
        return self.scheduled_at is not None

    def promotable_view(self) -> dict[str, Any]:
        """For status and history: "promotable" yes/no as before (a pair's
        standby), and the members it names."""
        return {"promotable": bool(self.promotable), "promotable_members": sorted(self.promotable)}
