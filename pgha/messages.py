"""Typed messages: what a node reports and what the arbiter instructs.

The wire carries JSON objects (protocol.py frames them). They are parsed
here once, at the boundary, into frozen dataclasses; the rules on both sides
(decision.py, node_rules.py) take and return these values, never wire dicts.
A field of the wrong type is a ProtocolError naming it; unknown fields are
ignored, so a newer node can talk to an older arbiter.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from pgha import cluster_config, clusters
from pgha.settings import tags_problem
from pgha.errors import ProtocolError

# PostgreSQL as the node sees it.
PG_RUNNING, PG_STARTING, PG_STOPPED = "running", "starting", "stopped"
STEADY_RECEIVER = 1.0     # s a WAL receiver must have run to count as streaming (PgStatus.streams_steadily)
# Roles, of a running PostgreSQL and of an instruction.
PRIMARY, STANDBY, WAIT = "primary", "standby", "wait"


@dataclass(frozen=True)
class Address:
    """Where the other members reach a node."""
    host: str
    pg_port: int
    peer_port: int
    slot: str

    @classmethod
    def from_wire(cls, wire: Any, where: str = "address") -> Address:
        _require_object(wire, where)
        return cls(host=_field(wire, "host", str, where, required=True),
                   pg_port=_field(wire, "pg_port", int, where, required=True),
                   peer_port=_field(wire, "peer_port", int, where, required=True),
                   slot=_field(wire, "slot", str, where, required=True))

    def to_wire(self) -> dict:
        return {"host": self.host, "pg_port": self.pg_port, "peer_port": self.peer_port, "slot": self.slot}


@dataclass(frozen=True)
class ReplicationRow:
    """One row of the primary's pg_stat_replication."""
    name: str | None
    state: str | None = None
    sync_state: str | None = None
    flush_lsn: int = 0
    reply_age: float = float("inf")     # seconds since the standby last answered

    @classmethod
    def from_wire(cls, wire: Any, where: str = "report.replication[]") -> ReplicationRow:
        _require_object(wire, where)
        return cls(name=_field(wire, "name", OPTIONAL_STR, where),
                   state=_field(wire, "state", OPTIONAL_STR, where),
                   sync_state=_field(wire, "sync_state", OPTIONAL_STR, where),
                   flush_lsn=_field(wire, "flush_lsn", int, where, default=0),
                   reply_age=float(_field(wire, "reply_age", NUMBER, where, default=float("inf"))))

    def to_wire(self) -> dict:
        return {"name": self.name, "state": self.state, "sync_state": self.sync_state,
                "flush_lsn": self.flush_lsn, "reply_age": self.reply_age}


@dataclass(frozen=True)
class PgStatus:
    """The local PostgreSQL as one status query saw it (postgres.Postgres.status);
    the node's Report is built from it (Report.from_status), never by hand."""
    pg: str = PG_STOPPED                    # running | starting | stopped
    role: str | None = None                 # primary | standby, when running
    lsn: int = 0                            # current (primary) or replayed (standby) WAL position
    receive_lsn: int = 0
    timeline: int | None = None
    sync_standby: str | None = None         # the name in synchronous_standby_names
    receiver: str | None = None             # the standby's WAL receiver status
    receiver_age: float | None = None       # s since that WAL receiver started (None: none runs)
    syncrep_wait: float = 0.0               # longest wait of a commit for the sync standby, s
    replication: tuple[ReplicationRow, ...] = ()
    error: str | None = None                # why a running server did not answer (pg "starting")

    @property
    def running_as(self) -> str | None:
        """The role of a running PostgreSQL, else None."""
        return self.role if self.pg == PG_RUNNING else None

    @property
    def streams_steadily(self) -> bool:
        """The WAL receiver streams and has for a while: one the primary keeps
        refusing (its WAL is gone) is "streaming" for a moment at each retry."""
        return self.receiver == "streaming" and (self.receiver_age or 0.0) >= STEADY_RECEIVER


@dataclass(frozen=True)
class Report(PgStatus):
    """A node's heartbeat report: its PostgreSQL's status and what the node adds, its leases."""
    address: Address | None = None
    relinquished: bool = False              # the primary stopped PostgreSQL to hand over
    grant_remaining: float = 0.0            # the standby's outstanding lease grant, s
    lease_remaining: Mapping[str, float] | None = None  # the primary's leases, s, by source
    last_action: str | None = None          # the node's last action (node_rules), for status
    clone_progress: Mapping[str, int] | None = None  # a clone under way: done_bytes, total_bytes, percent
    unfenced: bool = False                  # the daemon is stopping in pause, leaving its primary running unfenced
    disk: Mapping[str, int] | None = None   # disk use under PostgreSQL (pgha.disk.DiskUse.to_report), bytes
    reinit_done: int = 0                    # the last reinit order (Instruction.reinit) this node carried out
    restart_done: int = 0                   # the last restart order (Instruction.restart) this node carried out
    pending_restart: bool = False           # a changed parameter waits for a restart (pg_settings, the facts)
    api_url: str | None = None              # where its REST API answers (Patroni's member api_url)
    tags: Mapping[str, Any] | None = None   # its Patroni-style tags (settings.tags), for /cluster and list

    def replication_row(self, standby: str) -> ReplicationRow | None:
        return next((row for row in self.replication if row.name == standby), None)

    @classmethod
    def from_status(cls, status: PgStatus, *, address: Address, relinquished: bool, grant_remaining: float,
                    last_action: str | None, clone_progress: Mapping[str, int] | None,
                    lease_remaining: Mapping[str, float] | None, disk: Mapping[str, int] | None = None,
                    reinit_done: int = 0, restart_done: int = 0, pending_restart: bool = False,
                    api_url: str | None = None, tags: Mapping[str, Any] | None = None) -> Report:
        """The node's report: PostgreSQL's status and what the node adds."""
        return cls(**{f.name: getattr(status, f.name) for f in fields(PgStatus)},
                   address=address, relinquished=relinquished, grant_remaining=grant_remaining,
                   lease_remaining=lease_remaining, last_action=last_action, clone_progress=clone_progress,
                   disk=disk, reinit_done=reinit_done, restart_done=restart_done,
                   pending_restart=pending_restart, api_url=api_url, tags=tags or None)

    @classmethod
    def from_wire(cls, wire: Any) -> Report:
        where = "report"
        _require_object(wire, where)
        rows = _field(wire, "replication", list, where, default=[])
        if len(rows) > MAX_REPLICATION_ROWS:
            raise ProtocolError(f"report field 'replication' has {len(rows)} rows, "
                                f"at most {MAX_REPLICATION_ROWS}")
        address = wire.get("address")
        leases = _field(wire, "lease_remaining", (dict, type(None)), where)
        if leases is not None:
            if len(leases) > MAX_LEASE_SOURCES:
                raise ProtocolError(f"report field 'lease_remaining' has more than {MAX_LEASE_SOURCES} sources")
            if any(len(source) > MAX_STRING for source in leases):
                raise ProtocolError(f"report field 'lease_remaining' names a source longer than {MAX_STRING}")
            if not all(isinstance(v, NUMBER) and not isinstance(v, bool) and (isinstance(v, float) or abs(v) < INT_RANGE[1])
                       for v in leases.values()):
                raise ProtocolError("report field 'lease_remaining' must map sources to seconds")
            leases = {source: float(seconds) for source, seconds in leases.items()}
        clone, disk = (_small_int_map(wire, name, where) for name in ("clone_progress", "disk"))
        return cls(
            pg=_field(wire, "pg", str, where, default=PG_STOPPED),
            role=_field(wire, "role", OPTIONAL_STR, where),
            lsn=_field(wire, "lsn", int, where, default=0),
            receive_lsn=_field(wire, "receive_lsn", int, where, default=0),
            timeline=_field(wire, "timeline", (int, type(None)), where),
            sync_standby=_field(wire, "sync_standby", OPTIONAL_STR, where),
            receiver=_field(wire, "receiver", OPTIONAL_STR, where, text=True),
            syncrep_wait=float(_field(wire, "syncrep_wait", NUMBER, where, default=0.0)),
            replication=tuple(ReplicationRow.from_wire(row) for row in rows),
            address=None if address is None else Address.from_wire(address, "report.address"),
            relinquished=_field(wire, "relinquished", bool, where, default=False),
            grant_remaining=float(_field(wire, "grant_remaining", NUMBER, where, default=0.0)),
            lease_remaining=leases,
            error=_field(wire, "error", OPTIONAL_STR, where, text=True),
            last_action=_field(wire, "last_action", OPTIONAL_STR, where, text=True),
            clone_progress=clone,
            unfenced=_field(wire, "unfenced", bool, where, default=False),
            disk=disk,
            reinit_done=_field(wire, "reinit_done", int, where, default=0),
            restart_done=_field(wire, "restart_done", int, where, default=0),
            pending_restart=_field(wire, "pending_restart", bool, where, default=False),
            api_url=_field(wire, "api_url", OPTIONAL_STR, where),
            tags=_tags(wire, where),
        )

    def to_wire(self) -> dict:
        wire: dict[str, Any] = {"pg": self.pg, "relinquished": self.relinquished,
                                "grant_remaining": self.grant_remaining}
        if self.pg == PG_RUNNING:
            wire.update(role=self.role, lsn=self.lsn, receive_lsn=self.receive_lsn, timeline=self.timeline,
                        sync_standby=self.sync_standby, receiver=self.receiver,
                        syncrep_wait=self.syncrep_wait, replication=[r.to_wire() for r in self.replication])
        if self.address is not None:
            wire["address"] = self.address.to_wire()
        for name in ("lease_remaining", "error", "last_action", "clone_progress", "disk", "api_url", "tags"):
            value = getattr(self, name)
            if value is not None:
                wire[name] = dict(value) if isinstance(value, Mapping) else value
        for name in ("unfenced", "pending_restart"):
            if getattr(self, name):
                wire[name] = True
        for name in ("reinit_done", "restart_done"):
            if getattr(self, name):
                wire[name] = getattr(self, name)
        return wire


@dataclass(frozen=True)
class Instruction:
    """The arbiter's answer to a heartbeat: what the node must be now."""
    epoch: int
    role: str                               # primary | standby | wait
    reason: str | None = None               # why "wait"
    primary: str | None = None              # standby: whom to follow
    primary_address: Address | None = None
    standby: str | None = None              # primary: its standby, and where it is
    standby_address: Address | None = None
    sync_standby: str | None = None         # primary: the name synchronous_standby_names must hold
    relinquish: bool = False                # primary: stop PostgreSQL and hand over (switchover)
    hurry: bool = False                     # standby: a switchover to you is under way: heartbeat at once
    lease_time: float | None = None         # the cluster's timings, for the node's leases
    heartbeat_interval: float | None = None
    # Report again within this many seconds (if sooner than the heartbeat):
    # the arbiter expects a decision to be due by then (decision.report_in).
    report_in: float | None = None
    paused: bool = False                    # maintenance mode: leave PostgreSQL alone (node_rules M1)
    reload_generation: int = 0              # a node seeing it grow re-reads its settings (pgha.ctl reload)
    reinit: int = 0                         # standby: an operator's reinit order to carry out (its id), 0: none
    restart: int = 0                        # an operator's order to restart PostgreSQL in place (its id), 0: none
    cluster: str | None = None              # the cluster it is for (echoes the heartbeat's)
    # The cluster-wide PostgreSQL parameters (pgha.cluster_config); None: not
    # said (the node keeps what it has), {}: none.
    parameters: Mapping[str, Any] | None = None

    @property
    def standby_slot(self) -> str | None:
        return self.standby_address.slot if self.standby_address else None

    @classmethod
    def from_wire(cls, wire: Any) -> Instruction:
        where = "instruction"
        _require_object(wire, where)
        if wire.get("type") != "instruction":
            raise ProtocolError(f"expected an instruction, got {str(wire.get('type'))[:40]!r}")
        role = _field(wire, "role", str, where, required=True)
        if role not in (PRIMARY, STANDBY, WAIT):
            raise ProtocolError(f"instruction field 'role' must be primary, standby or wait, got {role[:40]!r}")
        primary_address = wire.get("primary_address")
        standby_address = wire.get("standby_address")
        instruction = cls(
            epoch=_field(wire, "epoch", int, where, required=True),
            role=role,
            reason=_field(wire, "reason", OPTIONAL_STR, where, text=True),
            primary=_field(wire, "primary", OPTIONAL_STR, where),
            primary_address=None if primary_address is None
            else Address.from_wire(primary_address, "instruction.primary_address"),
            standby=_field(wire, "standby", OPTIONAL_STR, where),
            standby_address=None if standby_address is None
            else Address.from_wire(standby_address, "instruction.standby_address"),
            sync_standby=_field(wire, "sync_standby", OPTIONAL_STR, where),
            relinquish=_field(wire, "relinquish", bool, where, default=False),
            hurry=_field(wire, "hurry", bool, where, default=False),
            lease_time=_positive(wire, "lease_time", where),
            heartbeat_interval=_positive(wire, "heartbeat_interval", where),
            report_in=_positive(wire, "report_in", where),
            paused=_field(wire, "paused", bool, where, default=False),
            reload_generation=_field(wire, "reload_generation", int, where, default=0),
            reinit=_field(wire, "reinit", int, where, default=0),
            restart=_field(wire, "restart", int, where, default=0),
            cluster=parse_cluster(wire.get("cluster"), where),
            parameters=_parameters(wire.get("parameters")),
        )
        if role == STANDBY and (instruction.primary is None or instruction.primary_address is None):
            raise ProtocolError("a standby instruction must name the primary and its address")
        return instruction

    def to_wire(self) -> dict:
        wire: dict[str, Any] = {"type": "instruction", "epoch": self.epoch, "role": self.role}
        if self.cluster is not None:
            wire["cluster"] = self.cluster
        if self.paused:
            wire["paused"] = True
        if self.reload_generation:
            wire["reload_generation"] = self.reload_generation
        if self.parameters is not None:
            wire["parameters"] = dict(self.parameters)
        if self.role == WAIT:
            wire["reason"] = self.reason
            return wire
        if self.role == PRIMARY:
            wire.update(standby=self.standby, standby_slot=self.standby_slot,
                        standby_address=self.standby_address.to_wire() if self.standby_address else None,
                        sync_standby=self.sync_standby, relinquish=self.relinquish)
        else:
            wire.update(primary=self.primary,
                        primary_address=self.primary_address.to_wire() if self.primary_address else None)
            if self.hurry:
                wire["hurry"] = True
            if self.reinit:
                wire["reinit"] = self.reinit
        if self.restart:
            wire["restart"] = self.restart
        wire.update(lease_time=self.lease_time, heartbeat_interval=self.heartbeat_interval)
        if self.report_in is not None:
            wire["report_in"] = self.report_in
        return wire


# -- field checks -------------------------------------------------------------

NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))
# What a report may carry, so that the arbiter's status reply (every node's
# last report) always fits protocol.MAX_FRAME: a maximal report is ~10 KB.
MAX_STRING = 200
MAX_REPLICATION_ROWS = 8
MAX_LEASE_SOURCES = 8


def _tags(wire: dict[str, Any], where: str) -> dict[str, Any] | None:
    value = _field(wire, "tags", (dict, type(None)), where)
    problem = None if value is None else tags_problem(value)
    if problem:
        raise ProtocolError(f"{where} field 'tags' {problem}")
    return value


def _small_int_map(wire: dict[str, Any], name: str, where: str) -> dict[str, int] | None:
    """A report field that maps a few short names to integers (clone_progress, disk), or None."""
    value = _field(wire, name, (dict, type(None)), where)
    if value is not None and (len(value) > MAX_LEASE_SOURCES or any(len(k) > MAX_STRING for k in value) or not all(
            isinstance(v, int) and not isinstance(v, bool) and abs(v) < INT_RANGE[1] for v in value.values())):
        raise ProtocolError(f"{where} field {name!r} must map a few names to integers")
    return value
INT_RANGE = (-2 ** 63, 2 ** 64)      # LSNs are unsigned 64-bit; nothing else is larger


def _parameters(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    problem = cluster_config.parameters_problem(value, policy=False)     # the node applies its own policy
    if problem:
        raise ProtocolError(f"instruction field 'parameters': {problem}")
    return dict(value)


def _require_object(wire: Any, where: str) -> None:
    if not isinstance(wire, dict):
        raise ProtocolError(f"{where} must be an object")


def _field(wire: Mapping[str, Any], name: str, kind: Any, where: str, required: bool = False,
           default: Any = None, text: bool = False) -> Any:
    """wire[name] checked to be of `kind`; strings at most MAX_STRING long (free
    `text` is cut to it, anything else refused), integers within 64 bits."""
    if name not in wire:
        if required:
            raise ProtocolError(f"{where} needs field {name!r}")
        return default
    value = wire[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ProtocolError(f"{where} field {name!r} must be {names}, got {shown}")
    if isinstance(value, str) and len(value) > MAX_STRING:
        if not text:
            raise ProtocolError(f"{where} field {name!r} is longer than {MAX_STRING} characters")
        value = value[:MAX_STRING - 1] + "…"
    if isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value < INT_RANGE[1]:
        raise ProtocolError(f"{where} field {name!r} is out of the 64-bit range")
    return value


def _positive(wire: Mapping[str, Any], name: str, where: str) -> float | None:
    value = _field(wire, name, (int, float, type(None)), where)
    if value is not None and not value > 0:
        raise ProtocolError(f"{where} field {name!r} must be greater than 0")
    return None if value is None else float(value)


def parse_cluster(value: Any, where: str = "message") -> str | None:
    """A message's "cluster" (which of the arbiter's clusters it is about):
    None when absent, else a name as the settings allow it (clusters.is_name)."""
    if value is None:
        return None
    if not clusters.is_name(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ProtocolError(f"{where} field 'cluster' must be a cluster name (letters, digits, '_-.'), got {shown}")
    return value


def check_type(value: Any, kind: Any, name: str, where: str = "message") -> Any:
    """The same check for a request's own fields (node, epoch, to)."""
    return _field({name: value}, name, kind, where, required=True)

