"""Every request kind, declared once.

A KIND says of one request "type": the parser that checks its fields and
makes its own dataclass, who may send it (a node's key, the operator's, the
reader's, or the pair key on the lease link), whether only the leading
arbiter may answer it, whether it changes the decision, and whether a node's
REST API relays it (POST /<name>). Everything else reads this table:

    protocol.validate_request   the parser (an unknown type is refused there)
    auth                        who may send what (NODE_TYPES, OPERATOR_TYPES, ...)
    api.RELAYED                 the operator's POST paths on a node
    arbiter / arbiter_service   the dispatch (one handler per kind)
    arbiter_leader              the leader gating (leader_only)
    ctl                         the operator's input, checked before sending

Operator input is checked here to be in range (a time, a count, a name), so
a bad value is one line of refusal and nothing is stored. Adding a kind: its
dataclass and parser, one line in KINDS, one handler (docs/architecture.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from pgha import cluster_config, clusters
from pgha.errors import ProtocolError
from pgha.limits import clip
from pgha.messages import Report, check_type, parse_cluster

# Who holds the key a request is signed with.
NODE, OPERATOR, READER, PEER = "node", "operator", "reader", "peer"

HISTORY_MAX = 1000              # events one history request may ask for
# Wall-clock seconds a scheduled time may name: 2000-01-01 to 9999-12-31
# (what a date can show; beyond it the arbiter could not even print it).
AT_RANGE = (946684800.0, 253402300799.0)
EPOCH_MAX = 2 ** 63 - 1


# -- one dataclass per kind ------------------------------------------------------------------

@dataclass(frozen=True)
class Heartbeat:
    cluster: str | None
    node: str
    epoch: int
    report: Report


@dataclass(frozen=True)
class Lease:
    node: str
    epoch: int


@dataclass(frozen=True)
class AboutCluster:
    """A request that names only its cluster (None: the arbiter's home cluster)."""
    cluster: str | None


class Status(AboutCluster):
    pass


class Pause(AboutCluster):
    pass


class Resume(AboutCluster):
    pass


class Reload(AboutCluster):
    pass


@dataclass(frozen=True)
class History:
    cluster: str | None
    limit: int | None


@dataclass(frozen=True)
class Switchover:
    cluster: str | None
    to: str | None
    at: float | None        # wall-clock seconds: a scheduled switchover
    replace: bool = False   # with at: replaces one already scheduled (else that is refused)
    expect_primary: str | None = None   # refused unless this is the primary (pgha-ctl --primary)


@dataclass(frozen=True)
class Failover:
    cluster: str | None
    to: str
    force: bool
    primary_stopped: bool = False   # the operator says the primary left unfenced in pause is stopped
    expect_primary: str | None = None   # refused unless this is the primary (pgha-ctl --primary)


@dataclass(frozen=True)
class Rebuild:
    """An operator's confirmation of the rebuild proposal (pgha.rebuild)."""
    cluster: str | None
    epoch: int
    primary: str


@dataclass(frozen=True)
class Clusters:
    pass


@dataclass(frozen=True)
class Reinit:
    """An operator's order: this standby makes a fresh copy of the primary."""
    cluster: str | None
    member: str


@dataclass(frozen=True)
class Restart:
    """An operator's order: this member restarts its PostgreSQL in place
    (a changed parameter that needs a restart; pgha-ctl restart), now or,
    with `at`, when that wall-clock time comes (kept in the arbiter's state);
    `pending`: only if a parameter then waits for a restart."""
    cluster: str | None
    member: str
    at: float | None = None
    pending: bool = False


@dataclass(frozen=True)
class Config:
    """An operator's change of the cluster-wide PostgreSQL parameters
    (pgha-ctl edit-config, PATCH /config): a value sets, null removes."""
    cluster: str | None
    parameters: Mapping[str, Any]
    version: int | None     # the config_version it was made against (None: whatever it is now)


FLUSHABLE = ("switchover", "restart")     # what `flush` cancels: a scheduled switchover; scheduled and pending restarts


@dataclass(frozen=True)
class Flush:
    """Cancel something scheduled (pgha-ctl flush switchover), as patronictl
    flush; for restarts, those of `member` alone when it is named."""
    cluster: str | None
    what: str
    member: str | None = None


Request = Union[Heartbeat, Lease, Status, History, Switchover, Failover, Pause, Resume, Rebuild, Reload, Clusters,
                Reinit, Restart, Flush, Config]


# -- field checks: one line naming the field and what it must be -----------------------------

def member_name(message: dict[str, Any], field: str, required: bool = True) -> str | None:
    """A node name as the settings allow it (clusters.is_name): an operator's
    typo or a control character never reaches the decision or the history."""
    value = message.get(field)
    if value is None and not required:
        return None
    check_type(value, str, field)
    if not clusters.is_name(value):
        raise ProtocolError(f"message field {field!r} must be a node name (1 to {clusters.MAX_NAME} letters, "
                            f"digits, '_-.'), got {clip(repr(value), 40)}")
    return value


def wall_time(value: Any, field: str = "at") -> float:
    """A wall-clock time an operator names: a finite number of seconds within AT_RANGE."""
    check_type(value, (int, float), field)
    if not math.isfinite(value) or not AT_RANGE[0] <= value <= AT_RANGE[1]:
        raise ProtocolError(f"message field {field!r} must be a time between 2000-01-01 and 9999-12-31, "
                            f"got {clip(repr(value), 40)}")
    return float(value)


def count(value: Any, field: str, low: int, high: int) -> int:
    check_type(value, int, field)
    if not low <= value <= high:
        raise ProtocolError(f"message field {field!r} must be from {low} to {high}, got {clip(repr(value), 40)}")
    return int(value)


def _cluster(message: dict[str, Any]) -> str | None:
    return parse_cluster(message.get("cluster"))


# -- the parsers -----------------------------------------------------------------------------

def _heartbeat(m: dict[str, Any]) -> Heartbeat:
    node, epoch = check_type(m.get("node"), str, "node"), check_type(m.get("epoch"), int, "epoch")
    return Heartbeat(_cluster(m), node, epoch, Report.from_wire(check_type(m.get("report"), dict, "report")))


def _lease(m: dict[str, Any]) -> Lease:
    return Lease(check_type(m.get("node"), str, "node"), check_type(m.get("epoch"), int, "epoch"))


def _history(m: dict[str, Any]) -> History:
    limit = m.get("limit")
    return History(_cluster(m), None if limit is None else count(limit, "limit", 1, HISTORY_MAX))


def _switchover(m: dict[str, Any]) -> Switchover:
    at, replacing = m.get("at"), flag(m, "replace")
    if replacing and at is None:
        raise ProtocolError("message field 'replace' goes with 'at' (it replaces a scheduled switchover)")
    return Switchover(_cluster(m), member_name(m, "to", required=False), None if at is None else wall_time(at),
                      replacing, member_name(m, "primary", required=False))


def flag(m: dict[str, Any], field: str) -> bool:
    """An optional true/false field (absent: false)."""
    value = m.get(field)
    if value is not None:
        check_type(value, bool, field)
    return bool(value)


def _flush(m: dict[str, Any]) -> Flush:
    what = m.get("what")
    if what not in FLUSHABLE:
        raise ProtocolError(f"message field 'what' must be one of {', '.join(FLUSHABLE)}, got {clip(repr(what), 40)}")
    member = member_name(m, "member", required=False)
    if member is not None and what != "restart":
        raise ProtocolError("message field 'member' goes with what = restart (a member's restarts)")
    return Flush(_cluster(m), what, member)


def _reinit(m: dict[str, Any]) -> Reinit:
    return Reinit(_cluster(m), str(member_name(m, "member")))


def _restart(m: dict[str, Any]) -> Restart:
    at, pending = m.get("at"), flag(m, "pending")
    if pending and at is None:
        raise ProtocolError("message field 'pending' goes with 'at' (a scheduled restart that only happens "
                            "if a parameter then waits for one)")
    return Restart(_cluster(m), str(member_name(m, "member")), None if at is None else wall_time(at), pending)


def _config(m: dict[str, Any]) -> Config:
    changes = m.get("parameters")
    problem = cluster_config.parameters_problem(changes, removing=True)
    if problem:
        raise ProtocolError(f"message field 'parameters': {problem}")
    version = m.get("version")
    return Config(_cluster(m), dict(check_type(changes, dict, "parameters")), None if version is None else count(version, "version", 0, EPOCH_MAX))


def _failover(m: dict[str, Any]) -> Failover:
    return Failover(_cluster(m), str(member_name(m, "to")), flag(m, "force"), flag(m, "primary_stopped"),
                    member_name(m, "primary", required=False))


def _rebuild(m: dict[str, Any]) -> Rebuild:
    return Rebuild(_cluster(m), count(m.get("epoch"), "epoch", 1, EPOCH_MAX), str(member_name(m, "primary")))


@dataclass(frozen=True)
class Kind:
    name: str
    request_type: type      # the dataclass its parser makes
    parse: Callable[[dict[str, Any]], Request]    # raises ProtocolError naming the first problem
    senders: frozenset[str]
    leader_only: bool = False   # only the leading arbiter answers (it changes or decides from the memory)
    changes_state: bool = False
    own_name: bool = False      # sent only in the sender's own name (message "node" == signer)
    relayed: bool = False       # POST /<name> on a node's REST API relays it to the arbiter


def _kind(name: str, request_type: type, parse: Callable[[dict[str, Any]], Request], *senders: str,
          **flags: bool) -> Kind:
    return Kind(name, request_type, parse, frozenset(senders), **flags)


KINDS: dict[str, Kind] = {k.name: k for k in (
    _kind("heartbeat", Heartbeat, _heartbeat, NODE, leader_only=True, changes_state=True, own_name=True),
    _kind("lease", Lease, _lease, PEER, own_name=True),                                # node -> node
    # Every arbiter answers status (a follower: the stored decision and where the leader is).
    _kind("status", Status, lambda m: Status(_cluster(m)), NODE, OPERATOR, READER),
    _kind("history", History, _history, NODE, OPERATOR, READER),                       # the stored history
    _kind("clusters", Clusters, lambda m: Clusters(), OPERATOR, READER),
    _kind("switchover", Switchover, _switchover, OPERATOR, leader_only=True, changes_state=True, relayed=True),
    _kind("failover", Failover, _failover, OPERATOR, leader_only=True, changes_state=True, relayed=True),
    _kind("pause", Pause, lambda m: Pause(_cluster(m)), OPERATOR, leader_only=True, changes_state=True,
          relayed=True),
    _kind("resume", Resume, lambda m: Resume(_cluster(m)), OPERATOR, leader_only=True, changes_state=True,
          relayed=True),
    _kind("flush", Flush, _flush, OPERATOR, leader_only=True, changes_state=True),
    _kind("reinit", Reinit, _reinit, OPERATOR, leader_only=True, changes_state=True),
    _kind("restart", Restart, _restart, OPERATOR, leader_only=True, changes_state=True),
    _kind("rebuild", Rebuild, _rebuild, OPERATOR, leader_only=True, changes_state=True),
    _kind("config", Config, _config, OPERATOR, leader_only=True, changes_state=True, relayed=True),
    # The leader re-reads its settings and raises the generation the nodes hear from it (a
    # follower's would reach no node); every arbiter process re-reads its own on SIGHUP.
    _kind("reload", Reload, lambda m: Reload(_cluster(m)), OPERATOR, leader_only=True, changes_state=True,
          relayed=True),
)}


def kind_of(message: dict[str, Any]) -> Kind:
    name = message.get("type")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ProtocolError(f"unknown message type {clip(repr(message.get('type')))}")
    return kind


def parse(message: dict[str, Any]) -> Request:
    """The request as its kind's dataclass, or ProtocolError naming the first problem."""
    return kind_of(message).parse(message)


_BY_TYPE = {k.request_type: k for k in KINDS.values()}


def kind_of_request(request: Request) -> Kind:
    """The kind a parsed request is of."""
    return _BY_TYPE[type(request)]


def sent_by(sender: str) -> frozenset[str]:
    """The kinds a sender (NODE, OPERATOR, READER, PEER) may send."""
    return frozenset(k.name for k in KINDS.values() if sender in k.senders)


LEADER_ONLY = frozenset(k.name for k in KINDS.values() if k.leader_only)
RELAYED = frozenset(k.name for k in KINDS.values() if k.relayed)
OWN_NAME = frozenset(k.name for k in KINDS.values() if k.own_name)
