"""The arbiter's decision rules, as pure functions (see shared/ha-model.md).

Nothing here does I/O or reads a clock: the server passes `now` (its
monotonic time) and gets back the new durable state, the new in-memory
observations and the instruction to send. Every rule that protects data is
here, so it can be tested table-driven without sockets or PostgreSQL.

Durable state (written before any instruction that depends on it is sent):
    epoch       bumped by every change of primary
    primary     the node that may run PostgreSQL as primary
    promotable  the standby holds every acknowledged commit (invariant 1)

Observations (memory only, rebuilt conservatively after an arbiter restart):
    when each node was last heard, its last report, and the bookkeeping of
    the synchronous-replication hand-shake.
"""
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Timings:
    heartbeat_interval: float = 0.5
    lease_time: float = 3.0
    failover_margin: float = 1.0
    sync_stall_timeout: float = 1.5
    standby_reply_timeout: float = 2.0
    strict_sync: bool = False

    @property
    def resync_holdoff(self):
        # After dropping sync, wait a lease before asking for it again, so a
        # flapping link cannot stall commits over and over.
        return self.lease_time


@dataclass(frozen=True)
class ClusterState:
    epoch: int
    primary: str
    promotable: bool = False


@dataclass(frozen=True)
class Memory:
    last_seen: dict = field(default_factory=dict)     # node -> arbiter time of last heartbeat
    reports: dict = field(default_factory=dict)       # node -> last report
    primary_seen_at: float = 0.0   # start of the primary's lease as the arbiter sees it
    sync_since_lsn: int | None = None  # primary LSN when sync was first seen on
    sync_dropped_at: float | None = None
    switchover_to: str | None = None

    @classmethod
    def at_start(cls, now):
        # After a (re)start the arbiter cannot know when the primary last
        # renewed its lease: assume it just did.
        return cls(primary_seen_at=now)


@dataclass(frozen=True)
class Outcome:
    state: ClusterState
    memory: Memory
    instruction: dict
    events: tuple = ()      # (level, text) for the log; level "failover" for role changes


def other(nodes, name):
    return nodes[1] if nodes[0] == name else nodes[0]


def on_heartbeat(state, memory, nodes, node, epoch, report, now, timings):
    """Decide what `node` must do, given the report it just sent."""
    memory = replace(memory,
                     last_seen={**memory.last_seen, node: now},
                     reports={**memory.reports, node: report})
    if epoch > state.epoch:
        # The node acted on a decision this arbiter does not remember: its
        # state file was lost or replaced. Refuse to decide anything.
        why = f"node has acted on epoch {epoch}, newer than the arbiter's {state.epoch}"
        return Outcome(state, memory, _wait(state, why + ": arbiter state lost?"),
                       (("error", f"{node}: {why}; refusing to decide (restore the arbiter's state file)"),))
    if node == state.primary:
        state, memory, events = _observe_primary(state, memory, nodes, node, report, now, timings)
    else:
        state, memory, events = _observe_standby(state, memory, nodes, node, now, timings)
    return Outcome(state, memory, instruction_for(state, memory, nodes, node, now, timings), events)


def _observe_primary(state, memory, nodes, node, report, now, timings):
    memory = replace(memory, primary_seen_at=now)
    standby = other(nodes, node)
    if report.get("relinquished"):
        blocker = failover_blocker(state, memory, standby, now, timings, primary_relinquished=True)
        if blocker is None:
            return _failover(state, memory, standby, now, f"{node} stopped PostgreSQL and handed over")
        # A switchover that cannot complete is dropped, so the primary restarts.
        memory = replace(memory, switchover_to=None)
        return state, memory, (("warning", f"{node} stopped PostgreSQL but {standby} cannot take over "
                                           f"({blocker}); {node} may start it again as primary"),)
    if report.get("pg") == "running" and report.get("role") == "primary":
        return _manage_sync(state, memory, standby, report, now, timings)
    return state, memory, ()


def _observe_standby(state, memory, nodes, node, now, timings):
    if failover_blocker(state, memory, node, now, timings) is None:
        silent = now - memory.primary_seen_at
        return _failover(state, memory, node, now, f"primary {state.primary} silent for {silent:.1f}s "
                                                   f"and its lease from {node} expired")
    return state, memory, ()


def instruction_for(state, memory, nodes, node, now, timings):
    if node == state.primary:
        standby = other(nodes, node)
        standby_address = memory.reports.get(standby, {}).get("address") or {}
        return {
            "type": "instruction", "epoch": state.epoch, "role": "primary",
            "standby": standby, "standby_slot": standby_address.get("slot"),
            "standby_address": standby_address or None,
            "sync_standby": desired_sync_standby(state, memory, standby, now, timings),
            "relinquish": memory.switchover_to == standby and state.promotable,
            **_timing_fields(timings),
        }
    address = memory.reports.get(state.primary, {}).get("address")
    if not address:
        return _wait(state, f"waiting for primary {state.primary} to report")
    return {
        "type": "instruction", "epoch": state.epoch, "role": "standby",
        "primary": state.primary, "primary_address": address,
        **_timing_fields(timings),
    }


def failover_blocker(state, memory, standby, now, timings, primary_relinquished=False):
    """Why `standby` may not be promoted now, or None when it may (invariants 1 and 2)."""
    if not state.promotable:
        return "the standby is not known to hold every acknowledged commit"
    report = memory.reports.get(standby)
    seen = memory.last_seen.get(standby)
    if report is None or seen is None or now - seen > timings.lease_time:
        return "the standby has not reported recently"
    if report.get("pg") != "running" or report.get("role") != "standby":
        return "the standby's PostgreSQL is not running in recovery"
    if primary_relinquished:
        return None
    silent_for = now - memory.primary_seen_at
    if silent_for < timings.lease_time + timings.failover_margin:
        return f"the primary's lease may still be valid (silent for {silent_for:.1f}s)"
    if report.get("grant_remaining", 0) > 0:
        return "the standby still grants the primary a lease (they can talk)"
    return None


def _failover(state, memory, new_primary, now, why):
    new_state = ClusterState(epoch=state.epoch + 1, primary=new_primary, promotable=False)
    # The new primary's lease starts now; the old primary is the standby-to-be,
    # about which nothing is known yet.
    new_memory = replace(memory, primary_seen_at=now, sync_since_lsn=None,
                         sync_dropped_at=None, switchover_to=None)
    event = ("failover", f"epoch {new_state.epoch}: promoting {new_primary} "
                         f"(was standby of {state.primary}): {why}")
    return new_state, new_memory, (event,)


def _manage_sync(state, memory, standby, report, now, timings):
    """Invariant 5: drop sync only after the standby is durably not promotable;
    make it promotable again only once it is synchronous and caught up."""
    events = []
    row = _replication_row(report, standby)
    healthy = _streaming(row, timings)
    stalled = report.get("syncrep_wait", 0.0) >= timings.sync_stall_timeout
    sync_on = bool(row) and row.get("sync_state") == "sync" and report.get("sync_standby") == standby

    named = report.get("sync_standby") == standby
    if state.promotable and (not named or not timings.strict_sync and (not healthy or stalled)):
        why = ("the primary does not name it in synchronous_standby_names" if not named
               else f"commits waited {report['syncrep_wait']:.1f}s for it" if stalled
               else "it is not streaming")
        state = replace(state, promotable=False)
        # A pending switchover is dropped too: it must not fire much later.
        memory = replace(memory, sync_dropped_at=now, sync_since_lsn=None, switchover_to=None)
        events.append(("warning", f"standby {standby} marked not promotable ({why}); "
                                  "primary may drop synchronous replication"))
    elif not state.promotable:
        if sync_on and healthy and not stalled:
            if memory.sync_since_lsn is None:
                memory = replace(memory, sync_since_lsn=report.get("lsn", 0))
            elif row.get("flush_lsn", -1) >= memory.sync_since_lsn:
                state = replace(state, promotable=True)
                memory = replace(memory, sync_since_lsn=None)
                events.append(("info", f"standby {standby} is synchronous and caught up: promotable"))
        else:
            memory = replace(memory, sync_since_lsn=None)
    return state, memory, tuple(events)


def desired_sync_standby(state, memory, standby, now, timings):
    """The name the primary must put in synchronous_standby_names, or None."""
    if timings.strict_sync or state.promotable:
        return standby
    row = _replication_row(memory.reports.get(state.primary, {}), standby)
    held_off = memory.sync_dropped_at is not None and now - memory.sync_dropped_at < timings.resync_holdoff
    return standby if _streaming(row, timings) and not held_off else None


def _replication_row(primary_report, standby):
    return next((r for r in primary_report.get("replication", []) if r.get("name") == standby), None)


def _streaming(row, timings):
    return bool(row) and row.get("state") == "streaming" \
        and row.get("reply_age", float("inf")) <= timings.standby_reply_timeout


def _timing_fields(timings):
    return {"lease_time": timings.lease_time, "heartbeat_interval": timings.heartbeat_interval}


def _wait(state, reason):
    return {"type": "instruction", "epoch": state.epoch, "role": "wait", "reason": reason}


def request_switchover(state, memory, nodes, target):
    """A planned switchover: the primary will be told to hand over."""
    target = target or other(nodes, state.primary)
    if target not in nodes:
        return memory, f"unknown node {target!r}"
    if target == state.primary:
        return memory, f"{target} is already the primary"
    if not state.promotable:
        return memory, f"{target} is not promotable (not synchronous and caught up)"
    return replace(memory, switchover_to=target), None
