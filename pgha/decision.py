"""The arbiter's decision rules, as pure functions (see shared/ha-model.md).

Nothing here does I/O or reads a clock: the server passes `now` (its
monotonic time) and a parsed Report, and gets back the new durable state, the
new in-memory observations and the Instruction to send. Every rule that
protects data is here, so it can be tested table-driven without sockets or
PostgreSQL.

Durable state (written before any instruction that depends on it is sent):
    epoch       bumped by every change of primary
    primary     the node that may run PostgreSQL as primary
    promotable  the standby holds every acknowledged commit (invariant 1)
    paused      maintenance mode: no failover, no switchover; the nodes leave
                PostgreSQL alone (node_rules row M1); leases and fencing run on

Observations (memory only, rebuilt conservatively after an arbiter restart):
    when each node was last heard, its last report, and the bookkeeping of
    the synchronous-replication hand-shake.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from pgha.messages import PRIMARY, STANDBY, WAIT, Instruction, Report, ReplicationRow
from pgha.topology import Topology

Event = tuple[str, str]     # (level, text) for the log; level "failover" for role changes
Events = tuple[Event, ...]


@dataclass(frozen=True)
class Timings:
    """The cluster's timings. Their defaults live in one place, the arbiter's
    settings file (arbiter_settings.py); a timing added here, to the settings
    spec and to that file reaches the rules through from_settings()."""
    heartbeat_interval: float
    lease_time: float
    failover_margin: float
    sync_stall_timeout: float
    standby_reply_timeout: float
    strict_sync: bool

    @classmethod
    def from_settings(cls, settings: Any) -> Timings:
        """The timings from checked settings (any object with one attribute per field)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def resync_holdoff(self) -> float:
        # After dropping sync, wait a lease before asking for it again, so a
        # flapping link cannot stall commits over and over.
        return self.lease_time


@dataclass(frozen=True)
class ClusterState:
    epoch: int
    primary: str
    promotable: bool = False
    paused: bool = False


@dataclass(frozen=True)
class Memory:
    last_seen: dict[str, float] = field(default_factory=dict)   # node -> arbiter time of last heartbeat
    reports: dict[str, Report] = field(default_factory=dict)    # node -> last report
    primary_seen_at: float = 0.0   # start of the primary's lease as the arbiter sees it
    sync_since_lsn: int | None = None  # primary LSN when sync was first seen on
    sync_dropped_at: float | None = None
    switchover_to: str | None = None
    # The primary's PostgreSQL (re)started here: its standby is reconnecting,
    # which must not cost synchronous replication (until then, or a stall).
    reconnect_grace_until: float | None = None
    # A planned switchover left the old primary exactly at the hand-over point:
    # the new primary keeps it as synchronous standby from its first commit.
    handover_from: str | None = None
    handover_at: float = 0.0
    # An operator's failover to this node while the primary is silent
    # (request_failover); forced: even when it is not promotable.
    failover_to: str | None = None
    failover_forced: bool = False

    @classmethod
    def at_start(cls, now: float) -> Memory:
        # After a (re)start the arbiter cannot know when the primary last
        # renewed its lease: assume it just did.
        return cls(primary_seen_at=now)


@dataclass(frozen=True)
class Outcome:
    state: ClusterState
    memory: Memory
    instruction: Instruction
    events: Events = ()


def on_heartbeat(state: ClusterState, memory: Memory, topology: Topology, node: str, epoch: int,
                 report: Report, now: float, timings: Timings) -> Outcome:
    """Decide what `node` must do, given the report it just sent."""
    previous = memory.reports.get(node)
    memory = replace(memory,
                     last_seen={**memory.last_seen, node: now},
                     reports={**memory.reports, node: report})
    if epoch > state.epoch:
        # The node acted on a decision this arbiter does not remember: its
        # state file was lost or replaced. Refuse to decide anything.
        why = f"node has acted on epoch {epoch}, newer than the arbiter's {state.epoch}"
        return Outcome(state, memory, _wait(state, why + ": arbiter state lost?"),
                       (("error", f"{node}: {why}; refusing to decide (restore the arbiter's state file)"),))
    events: Events
    if node == state.primary:
        state, memory, events = _observe_primary(state, memory, topology, node, previous, report, now, timings)
    else:
        state, memory, events = _observe_standby(state, memory, node, now, timings)
    return Outcome(state, memory, instruction_for(state, memory, topology, node, now, timings), events)


def _observe_primary(state: ClusterState, memory: Memory, topology: Topology, node: str,
                     previous: Report | None, report: Report, now: float,
                     timings: Timings) -> tuple[ClusterState, Memory, Events]:
    # A primary that reports is alive: an operator's pending failover is void.
    memory = replace(memory, primary_seen_at=now, failover_to=None, failover_forced=False)
    standby = topology.standby_of(node)
    # Relinquished: its PostgreSQL stopped, or runs again only in recovery
    # (a switchover's old primary, following the target): no commit is
    # acknowledged there any more. Read-write, it is no hand-over (yet).
    if report.relinquished and report.running_as == PRIMARY:
        return state, memory, ()
    if report.relinquished:
        blocker = failover_blocker(state, memory, standby, now, timings, primary_relinquished=True)
        if blocker is None:
            planned = memory.switchover_to == standby
            state, memory, events = _failover(state, memory, standby, now,
                                              f"{node} stopped PostgreSQL and handed over")
            if planned:
                memory = replace(memory, handover_from=node, handover_at=now)
            return state, memory, events
        # A switchover that cannot complete is dropped, so the primary restarts.
        memory = replace(memory, switchover_to=None)
        return state, memory, (("warning", f"{node} stopped PostgreSQL but {standby} cannot take over "
                                           f"({blocker}); {node} may start it again as primary"),)
    if report.running_as == PRIMARY:
        if previous is not None and previous.running_as != PRIMARY:
            memory = replace(memory, reconnect_grace_until=now + timings.standby_reply_timeout)
        return _manage_sync(state, memory, standby, report, now, timings)
    return state, memory, ()


def _observe_standby(state: ClusterState, memory: Memory, node: str, now: float,
                     timings: Timings) -> tuple[ClusterState, Memory, Events]:
    if failover_blocker(state, memory, node, now, timings) is None:
        silent = now - memory.primary_seen_at
        manual = ("" if memory.failover_to != node else
                  "operator's forced failover: " if memory.failover_forced else "operator's failover: ")
        return _failover(state, memory, node, now, f"{manual}primary {state.primary} silent for {silent:.1f}s "
                                                   f"and its lease from {node} expired")
    return state, memory, ()


def instruction_for(state: ClusterState, memory: Memory, topology: Topology, node: str, now: float,
                    timings: Timings) -> Instruction:
    return replace(_instruction_for(state, memory, topology, node, now, timings),
                   report_in=report_in(state, memory, topology, node, now, timings))


# A hinted report comes this much after the moment a decision falls due, so
# that it finds it due (the node's clock and its report lag the arbiter's).
REPORT_SLACK = 0.02


def report_in(state: ClusterState, memory: Memory, topology: Topology, node: str, now: float,
              timings: Timings) -> float | None:
    """When `node` should report again because a decision about it falls due
    sooner than its next heartbeat, or None (the heartbeat is soon enough).

    Only while something is pending, so an idle cluster beats at the
    heartbeat interval: on the primary, a commit waiting on the standby (or
    a silent standby) that would reach sync_stall_timeout
    (standby_reply_timeout) before the next heartbeat; on a promotable
    standby, the silent primary's lease + margin or its own grant running
    out. The node still never decides anything from it: it only reports."""
    due: float | None = None
    report = memory.reports.get(node)
    if report is None or state.paused:
        return None
    if node == state.primary:
        standby = topology.standby_of(node)
        if state.promotable and not timings.strict_sync:
            row = report.replication_row(standby)
            waits = [timings.sync_stall_timeout - report.syncrep_wait] if report.syncrep_wait > 0 else []
            if row is not None and row.state == "streaming":
                waits.append(timings.standby_reply_timeout - row.reply_age)
            due = min(waits) if waits else None
    elif state.promotable or memory.failover_to == node:
        due = max(memory.primary_seen_at + timings.lease_time + timings.failover_margin - now,
                  report.grant_remaining)
    if due is None or due <= 0 or due + REPORT_SLACK >= timings.heartbeat_interval:
        return None
    return round(due + REPORT_SLACK, 3)


def _instruction_for(state: ClusterState, memory: Memory, topology: Topology, node: str, now: float,
                     timings: Timings) -> Instruction:
    if node == state.primary:
        standby = topology.standby_of(node)
        standby_report = memory.reports.get(standby)
        return Instruction(
            epoch=state.epoch, role=PRIMARY, standby=standby,
            standby_address=standby_report.address if standby_report else None,
            sync_standby=desired_sync_standby(state, memory, standby, now, timings),
            relinquish=memory.switchover_to == standby and state.promotable and not state.paused,
            lease_time=timings.lease_time, heartbeat_interval=timings.heartbeat_interval,
            paused=state.paused)
    primary_report = memory.reports.get(state.primary)
    if primary_report is None or primary_report.address is None:
        return _wait(state, f"waiting for primary {state.primary} to report")
    # hurry: the target of a switchover heartbeats at once until promoted, so the
    # hand-over is not kept waiting up to a heartbeat interval.
    return Instruction(epoch=state.epoch, role=STANDBY, primary=state.primary,
                       primary_address=primary_report.address,
                       hurry=memory.switchover_to == node and state.promotable,
                       lease_time=timings.lease_time, heartbeat_interval=timings.heartbeat_interval,
                       paused=state.paused)


def failover_blocker(state: ClusterState, memory: Memory, standby: str, now: float, timings: Timings,
                     primary_relinquished: bool = False) -> str | None:
    """Why `standby` may not be promoted now, or None when it may (invariants 1 and 2).
    An operator's forced failover (memory.failover_forced) waives only
    invariant 1's check, never the lease checks of invariant 2."""
    if state.paused:
        return "the cluster is paused (maintenance mode)"
    forced = memory.failover_forced and memory.failover_to == standby
    if not state.promotable and not forced:
        return "the standby is not known to hold every acknowledged commit"
    report = memory.reports.get(standby)
    seen = memory.last_seen.get(standby)
    if report is None or seen is None or now - seen > timings.lease_time:
        return "the standby has not reported recently"
    if report.running_as != STANDBY:
        return "the standby's PostgreSQL is not running in recovery"
    if primary_relinquished:
        return None
    silent_for = now - memory.primary_seen_at
    if silent_for < timings.lease_time + timings.failover_margin:
        return f"the primary's lease may still be valid (silent for {silent_for:.1f}s)"
    if report.grant_remaining > 0:
        return "the standby still grants the primary a lease (they can talk)"
    return None


def _failover(state: ClusterState, memory: Memory, new_primary: str, now: float,
              why: str) -> tuple[ClusterState, Memory, Events]:
    new_state = ClusterState(epoch=state.epoch + 1, primary=new_primary, promotable=False, paused=state.paused)
    # The new primary's lease starts now; the old primary is the standby-to-be,
    # about which nothing is known yet.
    new_memory = replace(memory, primary_seen_at=now, sync_since_lsn=None, sync_dropped_at=None,
                         switchover_to=None, reconnect_grace_until=None, handover_from=None,
                         failover_to=None, failover_forced=False)
    event = ("failover", f"epoch {new_state.epoch}: promoting {new_primary} "
                         f"(was standby of {state.primary}): {why}")
    return new_state, new_memory, (event,)


def _manage_sync(state: ClusterState, memory: Memory, standby: str, report: Report, now: float,
                 timings: Timings) -> tuple[ClusterState, Memory, Events]:
    """Invariant 5: drop sync only after the standby is durably not promotable;
    make it promotable again only once it is synchronous and caught up."""
    events: list[Event] = []
    row = report.replication_row(standby)
    healthy = _streaming(row, timings)
    stalled = report.syncrep_wait >= timings.sync_stall_timeout
    named = report.sync_standby == standby
    sync_on = row is not None and row.sync_state == "sync" and named
    reconnecting = memory.reconnect_grace_until is not None and now < memory.reconnect_grace_until
    if memory.handover_from == standby and stalled:
        # The old primary did not come back in time: commits go on without it
        # (it is not promotable, so nothing is at risk), and sync is held off.
        memory = replace(memory, handover_from=None, sync_dropped_at=now)
        events.append(("warning", f"{standby} did not rejoin after the switchover "
                                  f"(commits waited {report.syncrep_wait:.1f}s): synchronous replication off"))

    if state.promotable and (not named or not timings.strict_sync and (stalled or not healthy and not reconnecting)):
        why = ("the primary does not name it in synchronous_standby_names" if not named
               else f"commits waited {report.syncrep_wait:.1f}s for it" if stalled
               else "it is not streaming")
        state = replace(state, promotable=False)
        # A pending switchover is dropped too: it must not fire much later.
        memory = replace(memory, sync_dropped_at=now, sync_since_lsn=None, switchover_to=None)
        events.append(("warning", f"standby {standby} marked not promotable ({why}); "
                                  "primary may drop synchronous replication"))
    elif not state.promotable:
        if row is not None and sync_on and healthy and not stalled:
            if memory.sync_since_lsn is None:
                memory = replace(memory, sync_since_lsn=report.lsn)
            elif row.flush_lsn >= memory.sync_since_lsn:
                state = replace(state, promotable=True)
                memory = replace(memory, sync_since_lsn=None, handover_from=None)
                events.append(("info", f"standby {standby} is synchronous and caught up: promotable"))
        else:
            memory = replace(memory, sync_since_lsn=None)
    return state, memory, tuple(events)


def desired_sync_standby(state: ClusterState, memory: Memory, standby: str, now: float,
                         timings: Timings) -> str | None:
    """The name the primary must put in synchronous_standby_names, or None."""
    if timings.strict_sync or state.promotable:
        return standby
    if memory.handover_from == standby and now - memory.handover_at < timings.lease_time:
        return standby
    primary_report = memory.reports.get(state.primary)
    row = primary_report.replication_row(standby) if primary_report else None
    held_off = memory.sync_dropped_at is not None and now - memory.sync_dropped_at < timings.resync_holdoff
    return standby if _streaming(row, timings) and not held_off else None


def _streaming(row: ReplicationRow | None, timings: Timings) -> bool:
    return row is not None and row.state == "streaming" and row.reply_age <= timings.standby_reply_timeout


def _wait(state: ClusterState, reason: str) -> Instruction:
    return Instruction(epoch=state.epoch, role=WAIT, reason=reason)


def request_switchover(state: ClusterState, memory: Memory, topology: Topology,
                       target: str | None) -> tuple[Memory, str | None]:
    """A planned switchover: the primary will be told to hand over."""
    target = target or topology.standby_of(state.primary)
    if target not in topology:
        return memory, f"unknown node {target!r}"
    if target == state.primary:
        return memory, f"{target} is already the primary"
    if state.paused:
        return memory, "the cluster is paused (maintenance mode): resume first"
    if not state.promotable:
        return memory, f"{target} is not promotable (not synchronous and caught up)"
    return replace(memory, switchover_to=target), None


def primary_alive(memory: Memory, now: float, timings: Timings) -> bool:
    """The primary reported within a lease: its leases may still run."""
    return now - memory.primary_seen_at < timings.lease_time


def request_failover(state: ClusterState, memory: Memory, topology: Topology, target: str, force: bool,
                     now: float, timings: Timings) -> tuple[Memory, str | None, str]:
    """An operator's manual failover to `target`: (memory, error, how).

    With a live primary it is a switchover (how "switchover"): the primary
    hands over cleanly, and only to a promotable standby. With a silent one
    (how "failover") the standby is promoted once the primary's lease has
    run out, like the automatic failover; `force` waives invariant 1 (the
    standby may lack acknowledged commits), never the lease wait of
    invariant 2."""
    if target not in topology:
        return memory, f"unknown node {target!r}", ""
    if target == state.primary:
        return memory, f"{target} is already the primary", ""
    if state.paused:
        return memory, "the cluster is paused (maintenance mode): resume first", ""
    if primary_alive(memory, now, timings):
        if not state.promotable:
            return memory, (f"{target} is not promotable (not synchronous and caught up) and the primary "
                            f"{state.primary} is alive: a failover now could lose acknowledged commits; "
                            "wait until it is synchronous"), ""
        return replace(memory, switchover_to=target), None, "switchover"
    if not state.promotable and not force:
        return memory, (f"{target} is not promotable: it may lack acknowledged commits; "
                        "use --force to promote it anyway (data loss)"), ""
    return replace(memory, failover_to=target, failover_forced=force and not state.promotable), None, "failover"


def set_paused(state: ClusterState, memory: Memory, paused: bool) -> tuple[ClusterState, Memory]:
    """Maintenance mode on or off. Pausing drops any pending switchover or
    manual failover, so none fires at the resume."""
    if paused:
        memory = replace(memory, switchover_to=None, failover_to=None, failover_forced=False)
    return replace(state, paused=paused), memory
