"""The arbiter's decision rules, as pure functions (see docs/ha-model.md).

Nothing here does I/O or reads a clock: the server passes `now` (its
monotonic time) and a parsed Report, and gets back the new durable state, the
new in-memory observations and the Instruction to send. Every rule that
protects data is here, so it can be tested table-driven without sockets or
PostgreSQL.

Durable state (written before any instruction that depends on it is sent):
    epoch       bumped by every change of primary
    primary     the node that may run PostgreSQL as primary
    promotable  the members known to hold every acknowledged commit (invariant 1):
                per member, though a pair has one standby to name
    paused      maintenance mode: no failover, no switchover; the nodes leave
                PostgreSQL alone (node_rules row M1); leases and fencing run on
    scheduled_at, scheduled_to
                an operator's scheduled switchover (pgha-ctl switchover --at):
                its wall-clock time and target (None: the standby); durable, so
                it survives an arbiter restart and a change of leading arbiter
    scheduled_restarts
                operators' scheduled restarts (pgha-ctl restart --at), one per
                member, each ordered when due (next_due_restart), durable likewise

Observations (memory only, rebuilt conservatively after an arbiter restart):
    when each node was last heard, its last report, and the bookkeeping of
    the synchronous-replication hand-shake.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from pgha import cluster_config
from pgha.cluster_state import ClusterState, ScheduledRestart
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
class Memory:
    last_seen: dict[str, float] = field(default_factory=dict)   # node -> arbiter time of last heartbeat
    reports: dict[str, Report] = field(default_factory=dict)    # node -> last report
    primary_seen_at: float = 0.0   # start of the primary's lease as the arbiter sees it
    # standby -> the primary's LSN when its sync was first seen on (it becomes
    # promotable once it has flushed that far)
    sync_since: Mapping[str, int] = field(default_factory=dict)
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
    # An operator's reinit order (request_reinit): (member, order id), until
    # the member reports that order carried out (Report.reinit_done).
    reinit: tuple[str, int] | None = None
    # An operator's restart order (request_restart): (member, order id), until
    # the member reports it carried out (Report.restart_done).
    restart: tuple[str, int] | None = None

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
    order = memory.reinit
    done = order is not None and order[0] == node and report.reinit_done == order[1]
    if done:
        memory = replace(memory, reinit=None)
    restart = memory.restart
    restarted = restart is not None and restart[0] == node and report.restart_done == restart[1]
    if restarted:
        memory = replace(memory, restart=None)
        if node == state.primary:
            # Its PostgreSQL restarted (in one step of the node's loop: no report
            # saw it down): the standby is reconnecting, as after a crash restart.
            memory = replace(memory, reconnect_grace_until=now + timings.standby_reply_timeout)
    if report.unfenced and not state.paused:
        report = replace(report, unfenced=False)    # outside pause its fencer stays armed (invariant 2)
    memory = replace(memory,
                     last_seen={**memory.last_seen, node: now},
                     reports={**memory.reports, node: report})
    if node == state.primary and epoch == state.epoch and report.unfenced != state.primary_unfenced:
        # Saved before the reply: the daemon disarms its fencer only once it is told "paused".
        state = replace(state, primary_unfenced=report.unfenced)
    if epoch > state.epoch:
        # The node acted on a decision this arbiter does not remember: its
        # state file was lost or replaced. Refuse to decide anything.
        why = f"node has acted on epoch {epoch}, newer than the arbiter's {state.epoch}"
        # Also what an arbiter started with --init on a cluster that already ran sees.
        return Outcome(state, memory, _wait(state, why + ": arbiter state lost?"),
                       (("error", f"{node}: {why}; refusing to decide: restore the arbiter's state file, or "
                                  "stop the arbiter, move its state file away and start it with --rebuild "
                                  "(a state re-created with --init is not this cluster's)"),))
    events: Events
    if node == state.primary:
        state, memory, events = _observe_primary(state, memory, topology, node, previous, report, now, timings)
    else:
        state, memory, events = _observe_standby(state, memory, node, now, timings)
    if done:
        events = (("info", f"{node}: reinit done (a fresh copy of {state.primary})"),) + tuple(events)
    if restarted:
        events = (("info", f"{node}: PostgreSQL restarted as the operator ordered"),) + tuple(events)
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
                   report_in=report_in(state, memory, topology, node, now, timings),
                   parameters=dict(state.parameters))


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
        if standby in state.promotable and not timings.strict_sync:
            row = report.replication_row(standby)
            waits = [timings.sync_stall_timeout - report.syncrep_wait] if report.syncrep_wait > 0 else []
            if row is not None and row.state == "streaming":
                waits.append(timings.standby_reply_timeout - row.reply_age)
            due = min(waits) if waits else None
    elif node in state.promotable or memory.failover_to == node:
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
            relinquish=memory.switchover_to == standby and standby in state.promotable and not state.paused,
            lease_time=timings.lease_time, heartbeat_interval=timings.heartbeat_interval,
            paused=state.paused, restart=memory.restart[1] if memory.restart and memory.restart[0] == node else 0)
    primary_report = memory.reports.get(state.primary)
    if primary_report is None or primary_report.address is None:
        return _wait(state, f"waiting for primary {state.primary} to report")
    # hurry: the target of a switchover heartbeats at once until promoted, so the
    # hand-over is not kept waiting up to a heartbeat interval.
    return Instruction(epoch=state.epoch, role=STANDBY, primary=state.primary,
                       primary_address=primary_report.address,
                       hurry=memory.switchover_to == node and node in state.promotable,
                       lease_time=timings.lease_time, heartbeat_interval=timings.heartbeat_interval,
                       paused=state.paused, reinit=standby_order_for(memory.reinit, primary_report, node, timings),
                       restart=standby_order_for(memory.restart, primary_report, node, timings))


def standby_order_for(order: tuple[str, int] | None, primary_report: Report, node: str, timings: Timings) -> int:
    """The operator's order (reinit, restart) `node`, a standby, is to carry
    out now, or 0: only once the primary no longer names it in
    synchronous_standby_names, so no commit waits for it meanwhile (in
    strict_sync mode commits wait for it, as the DBA asked)."""
    if order is None or order[0] != node:
        return 0
    return order[1] if timings.strict_sync or primary_report.sync_standby != node else 0


def ordered_off(memory: Memory, standby: str) -> bool:
    """An operator's order takes `standby` out of replication for a while
    (a reinit or a restart): off synchronous replication first."""
    return any(order is not None and order[0] == standby for order in (memory.reinit, memory.restart))


def failover_blocker(state: ClusterState, memory: Memory, standby: str, now: float, timings: Timings,
                     primary_relinquished: bool = False) -> str | None:
    """Why `standby` may not be promoted now, or None when it may (invariants 1 and 2).
    An operator's forced failover (memory.failover_forced) waives only
    invariant 1's check, never the lease checks of invariant 2."""
    if state.paused:
        return "the cluster is paused (maintenance mode)"
    if state.primary_unfenced and memory.failover_to != standby:
        return (f"{state.primary}'s daemon stopped in maintenance mode and left its PostgreSQL running, "
                "unfenced: start that daemon again, or stop that PostgreSQL and run pgha-ctl failover")
    forced = memory.failover_forced and memory.failover_to == standby
    if standby not in state.promotable and not forced:
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
    # Kept: pause, the cluster-wide parameters, scheduled restarts; dropped: the
    # promotable marks and a scheduled switchover (it named the old primary's standby).
    new_state = ClusterState(epoch=state.epoch + 1, primary=new_primary, paused=state.paused,
                             parameters=state.parameters, config_version=state.config_version,
                             scheduled_restarts=state.scheduled_restarts)
    # The new primary's lease starts now; the old primary is the standby-to-be,
    # about which nothing is known yet.
    new_memory = replace(memory, primary_seen_at=now, sync_since={}, sync_dropped_at=None,
                         switchover_to=None, reconnect_grace_until=None, handover_from=None,
                         failover_to=None, failover_forced=False, reinit=None, restart=None)
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

    promotable = standby in state.promotable
    if promotable and (not named or not timings.strict_sync and (stalled or not healthy and not reconnecting)):
        why = ("the primary does not name it in synchronous_standby_names" if not named
               else f"commits waited {report.syncrep_wait:.1f}s for it" if stalled
               else "it is not streaming" if row is None or row.state != "streaming"
               else f"it has not answered the primary for {row.reply_age:.1f}s")
        state = replace(state, promotable=state.promotable - {standby})
        # A pending switchover is dropped too: it must not fire much later.
        memory = replace(memory, sync_dropped_at=now, sync_since=_without(memory.sync_since, standby),
                         switchover_to=None)
        events.append(("warning", f"standby {standby} marked not promotable ({why}); "
                                  "primary may drop synchronous replication"))
    elif not promotable:
        since = memory.sync_since.get(standby)
        if ordered_off(memory, standby):
            # not promotable until it streams again (a fresh copy, a restarted server)
            memory = replace(memory, sync_since=_without(memory.sync_since, standby))
        elif row is not None and sync_on and healthy and not stalled:
            if since is None:
                memory = replace(memory, sync_since={**memory.sync_since, standby: report.lsn})
            elif row.flush_lsn >= since:
                state = replace(state, promotable=state.promotable | {standby})
                memory = replace(memory, sync_since=_without(memory.sync_since, standby), handover_from=None)
                events.append(("info", f"standby {standby} is synchronous and caught up: promotable"))
        else:
            memory = replace(memory, sync_since=_without(memory.sync_since, standby))
    return state, memory, tuple(events)


def _without(per_member: Mapping[str, Any], member: str) -> dict[str, Any]:
    return {name: value for name, value in per_member.items() if name != member}


def desired_sync_standby(state: ClusterState, memory: Memory, standby: str, now: float,
                         timings: Timings) -> str | None:
    """The name the primary must put in synchronous_standby_names, or None."""
    if timings.strict_sync or standby in state.promotable:
        return standby
    if ordered_off(memory, standby):
        return None     # about to make a fresh copy or restart: off first, so no commit waits for it
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


def not_the_expected_primary(state: ClusterState, expected: str | None) -> str | None:
    """An operator named the primary they saw (pgha-ctl --primary): refused,
    under the arbiter's lock, when it is no longer the primary."""
    if expected is None or expected == state.primary:
        return None
    return f"{expected} is not the primary ({state.primary} is, at epoch {state.epoch})"


def request_switchover(state: ClusterState, memory: Memory, topology: Topology,
                       target: str | None, expect_primary: str | None = None) -> tuple[Memory, str | None]:
    """A planned switchover: the primary will be told to hand over."""
    wrong = not_the_expected_primary(state, expect_primary)
    if wrong:
        return memory, wrong
    target = target or topology.standby_of(state.primary)
    if target not in topology:
        return memory, f"unknown node {target!r}"
    if target == state.primary:
        return memory, f"{target} is already the primary"
    if state.paused:
        return memory, "the cluster is paused (maintenance mode): resume first"
    if target not in state.promotable:
        return memory, f"{target} is not promotable (not synchronous and caught up)"
    return replace(memory, switchover_to=target), None


def request_reinit(state: ClusterState, memory: Memory, topology: Topology, member: str,
                   order: int) -> tuple[ClusterState, Memory, str | None]:
    """An operator's order: `member`, a standby, makes a fresh copy of the
    primary (pg_basebackup; its old data is kept until the copy is complete).
    It is not promotable from now on (saved before the order is announced),
    the primary is told to drop it from synchronous replication, and the
    order reaches it once the primary has (standby_order_for). `order`: a
    fresh id, so an order given before an arbiter restart is not taken as
    this one. An order still pending for the same member is replaced."""
    if member not in topology:
        return state, memory, f"unknown member {member!r} (members: {', '.join(topology.members)})"
    if member == state.primary:
        return state, memory, f"{member} is the primary: switch over first (pgha-ctl switchover), then reinit it"
    if state.paused:
        return state, memory, "the cluster is paused (maintenance mode: nodes leave PostgreSQL alone): resume first"
    if memory.switchover_to == member:
        return state, memory, f"a switchover to {member} is under way"
    return (replace(state, promotable=state.promotable - {member}),
            replace(memory, reinit=(member, order), sync_since=_without(memory.sync_since, member),
                    switchover_to=None), None)


def request_restart(state: ClusterState, memory: Memory, topology: Topology, member: str,
                    order: int) -> tuple[ClusterState, Memory, str | None]:
    """An operator's order: `member` restarts its PostgreSQL in place (a
    parameter that needs a restart). A standby is first made not promotable
    (saved before the order is announced) and dropped from synchronous
    replication, and the order reaches it once the primary has
    (standby_order_for), so no commit waits on it while it restarts. The
    primary restarts at once: writes stop for the restart (switch over first
    to avoid that). Allowed in maintenance mode (Patroni's restart is too).
    An order still pending for the same member is replaced; one for another
    member is refused until it is done or cancelled (cancel_restart)."""
    if member not in topology:
        return state, memory, f"unknown member {member!r} (members: {', '.join(topology.members)})"
    if memory.restart is not None and memory.restart[0] != member:
        return state, memory, (f"a restart of {memory.restart[0]} is still pending: wait until it is done, or "
                               "cancel it (pgha-ctl flush restart)")
    if memory.switchover_to is not None:
        return state, memory, f"a switchover to {memory.switchover_to} is under way"
    if memory.reinit is not None and memory.reinit[0] == member:
        return state, memory, f"a reinit of {member} is under way (it starts PostgreSQL afresh anyway)"
    memory = replace(memory, restart=(member, order))
    if member == state.primary:
        return state, memory, None
    return (replace(state, promotable=state.promotable - {member}),
            replace(memory, sync_since=_without(memory.sync_since, member)), None)


def cancel_restart(memory: Memory, member: str | None = None) -> tuple[Memory, str | None]:
    """pgha-ctl flush restart: a restart order that is not carried out (its
    node away, or older than the order) would keep a standby out of
    synchronous replication for ever. Cancelled, that standby becomes
    promotable again by the usual hand-shake. `member`: only its order."""
    if memory.restart is None or member not in (None, memory.restart[0]):
        return memory, "no restart is pending"
    return replace(memory, restart=None), None


def primary_alive(memory: Memory, now: float, timings: Timings) -> bool:
    """The primary reported within a lease: its leases may still run."""
    return now - memory.primary_seen_at < timings.lease_time


def request_failover(state: ClusterState, memory: Memory, topology: Topology, target: str, force: bool,
                     now: float, timings: Timings, primary_stopped: bool = False,
                     expect_primary: str | None = None) -> tuple[Memory, str | None, str]:
    """An operator's manual failover to `target`: (memory, error, how).

    With a live primary it is a switchover (how "switchover"): the primary
    hands over cleanly, and only to a promotable standby. With a silent one
    (how "failover") the standby is promoted once the primary's lease has
    run out, like the automatic failover; `force` waives invariant 1 (the
    standby may lack acknowledged commits), never the lease wait of
    invariant 2. A primary left unfenced (its daemon stopped in pause) has no
    lease to wait for: the operator must say it is stopped (`primary_stopped`)."""
    wrong = not_the_expected_primary(state, expect_primary)
    if wrong:
        return memory, wrong, ""
    if target not in topology:
        return memory, f"unknown node {target!r}", ""
    if target == state.primary:
        return memory, f"{target} is already the primary", ""
    if state.paused:
        return memory, "the cluster is paused (maintenance mode): resume first", ""
    if state.primary_unfenced and not primary_stopped:
        return memory, (f"{state.primary}'s daemon stopped in maintenance mode and left its PostgreSQL running "
                        "with nothing to fence it: stop that PostgreSQL, then pass --primary-stopped"), ""
    promotable = target in state.promotable
    if primary_alive(memory, now, timings):
        if not promotable:
            return memory, (f"{target} is not promotable (not synchronous and caught up) and the primary "
                            f"{state.primary} is alive: a failover now could lose acknowledged commits; "
                            "wait until it is synchronous"), ""
        return replace(memory, switchover_to=target), None, "switchover"
    if not promotable and not force:
        return memory, (f"{target} is not promotable: it may lack acknowledged commits; "
                        "force it (pgha-ctl failover --allow-data-loss) to promote it anyway (data loss)"), ""
    return replace(memory, failover_to=target, failover_forced=force and not promotable), None, "failover"


def set_paused(state: ClusterState, memory: Memory, paused: bool) -> tuple[ClusterState, Memory]:
    """Maintenance mode on or off. Pausing drops any pending or scheduled
    switchover and any manual failover, so none fires at the resume."""
    if paused:
        memory = replace(memory, switchover_to=None, failover_to=None, failover_forced=False)
        state = replace(state, scheduled_at=None, scheduled_to=None)
    return replace(state, paused=paused), memory


def change_parameters(state: ClusterState, changes: Mapping[str, Any], expected_version: int | None
                      ) -> tuple[ClusterState, str | None]:
    """An operator's edit of the cluster-wide parameters (pgha-ctl edit-config,
    PATCH /config): a value sets, None removes. Refused when the
    configuration changed since the operator read expected_version (two
    edits at once: the second would undo the first unseen), or when the
    result breaks a limit. Unchanged parameters keep the version."""
    if expected_version is not None and expected_version != state.config_version:
        return state, (f"the configuration changed since you read it (you read version {expected_version}, "
                       f"it is now {state.config_version}): read it again")
    parameters = cluster_config.changed(state.parameters, changes)
    problem = cluster_config.parameters_problem(parameters)
    if problem:
        return state, problem
    if cluster_config.frozen(parameters) == state.parameters:
        return state, None
    return replace(state, parameters=cluster_config.frozen(parameters), config_version=state.config_version + 1), None


# -- a scheduled switchover (durable: part of ClusterState) ----------------------------------

def schedule_switchover(state: ClusterState, topology: Topology, target: str | None, at: float, wall_now: float,
                        replacing: bool, expect_primary: str | None = None) -> tuple[ClusterState, str | None]:
    """An operator's switchover at wall-clock time `at`: (new state, error).
    Refused: a primary other than the one the operator named, an unknown
    target or the primary itself, a paused cluster, a time in the past, or
    one already scheduled unless `replacing` it. A standby not promotable yet
    is no refusal: it is checked again when due."""
    wrong = not_the_expected_primary(state, expect_primary)
    if wrong:
        return state, wrong
    if target is not None and target not in topology:
        return state, f"unknown node {target!r}"
    if target == state.primary:
        return state, f"{target} is already the primary"
    if state.paused:
        return state, "the cluster is paused (maintenance mode): resume first"
    if at < wall_now:
        return state, f"the time is {wall_now - at:.0f}s in the past (by the arbiter's clock)"
    if state.scheduled and not replacing:
        return state, ("a switchover is already scheduled (to " + (state.scheduled_to or "the standby") +
                       "): cancel it with `pgha-ctl flush switchover`, or pass --replace")
    return replace(state, scheduled_at=float(at), scheduled_to=target), None


def cancel_scheduled_switchover(state: ClusterState) -> tuple[ClusterState, str | None]:
    """pgha-ctl flush switchover: (new state, error when none is scheduled)."""
    if not state.scheduled:
        return state, "no switchover is scheduled"
    return replace(state, scheduled_at=None, scheduled_to=None), None


def due_switchover(state: ClusterState, wall_now: float) -> bool:
    """The scheduled switchover's time has come."""
    return state.scheduled_at is not None and wall_now >= state.scheduled_at


# -- scheduled restarts (durable: part of ClusterState) --------------------------------------

def schedule_restart(state: ClusterState, topology: Topology, member: str, at: float, wall_now: float,
                     pending: bool) -> tuple[ClusterState, str | None]:
    """An operator's restart of `member` at wall-clock time `at` (pgha-ctl
    restart --at, Patroni's scheduled restart): (new state, error). One per
    member; refused for an unknown member or a time in the past."""
    if member not in topology:
        return state, f"unknown member {member!r} (members: {', '.join(topology.members)})"
    if at < wall_now:
        return state, f"the time is {wall_now - at:.0f}s in the past (by the arbiter's clock)"
    if any(r.member == member for r in state.scheduled_restarts):
        return state, f"a restart of {member} is already scheduled: cancel it with `pgha-ctl flush restart`"
    restarts = sorted((*state.scheduled_restarts, ScheduledRestart(member, float(at), pending)),
                      key=lambda r: r.member)
    return replace(state, scheduled_restarts=tuple(restarts)), None


def next_due_restart(state: ClusterState, memory: Memory, wall_now: float) -> ScheduledRestart | None:
    """The scheduled restart to order now, or None. One order at a time (as
    request_restart allows), never during a switchover, a reinit or another
    restart, and standbys before the primary: restarts due together run one
    after another with a standby ready to take over, not all at once. One
    with `pending` waits until its member has reported since this arbiter
    started (a restarted or new leading arbiter knows no report yet: it
    must not skip it as having nothing pending)."""
    if memory.restart is not None or memory.reinit is not None or memory.switchover_to is not None:
        return None
    due = [r for r in state.scheduled_restarts if r.at <= wall_now and (not r.pending or r.member in memory.reports)]
    return min(due, key=lambda r: (r.member == state.primary, r.at, r.member), default=None)


def without_scheduled_restart(state: ClusterState, member: str | None = None) -> ClusterState:
    """The state without `member`'s scheduled restart (None: without all of them)."""
    return replace(state, scheduled_restarts=tuple(r for r in state.scheduled_restarts
                                                   if member is not None and r.member != member))
