"""The node's memory between heartbeats: one frozen value, written by the HA loop alone.

Node.memory is replaced, never changed in place, and only on the HA loop's
thread: by the loop as it takes an instruction and a decision, by the
actions through Changes (pgha/node_actions.py, on the loop's thread), and
from the results other threads hand over (pgha/node_inbox.py), which the
loop applies with after(). Any thread may read Node.memory: one attribute,
so a reader always sees one consistent value (the watchdog and the lease
renewer read the acting term, the timings and the instruction).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pgha import settings as settings_mod
from pgha.messages import Address, Instruction
from pgha.node_inbox import Fenced, FollowingTarget, HandOverPrepared, Result
from pgha.node_rules import CRASH_RESTART_WINDOW, IDLE, Decision, HandOver


@dataclass(frozen=True)
class NodeMemory:
    acted_epoch: int = 0                    # the newest epoch made durable (the state file)
    instruction: Instruction | None = None  # the last instruction taken
    # The cluster's timings: the last ones the arbiter sent (the lease is
    # remembered in the state file), else the defaults.
    lease_time: float = settings_mod.LEASE_TIME
    heartbeat_interval: float = settings_mod.HEARTBEAT_INTERVAL
    # The term PostgreSQL runs read-write under our leases (None: not acting
    # as primary); a new one each time it starts acting, so a fence of an
    # earlier term (node_inbox.Fenced) never ends a later one.
    acting_term: int | None = None
    terms: int = 0                          # acting terms begun
    hand_over: HandOver = HandOver.NONE     # HANDED_OVER: we stopped PostgreSQL for the standby; reported
    last_crash_restart: float = -CRASH_RESTART_WINDOW
    upstream: Address | None = None         # primary address the running standby follows
    standby_since: float | None = None      # last time the standby was (re)pointed or streamed
    rejoin_failures: int = 0                # rejoins that did not end streaming: next one clones afresh
    failed_rejoins: int = 0                 # rejoin actions that raised, in a row (node_rules row S7)
    reinit_done: int = 0                    # the last reinit order carried out (reported to the arbiter)
    restart_done: int = 0                   # the last restart order carried out (reported to the arbiter)
    last_rejoin_failure: float = float("-inf")
    slot_ensured: str | None = None         # the standby's slot made on this primary
    # Permanent slots (setting permanent_slots): the names made on this primary
    # since it started acting, and when they were last made or copied (a standby
    # copies them every SLOT_COPY_INTERVAL; a failed try waits as long).
    permanent_ensured: frozenset[str] = frozenset()
    slots_synced_at: float = float("-inf")
    prepared_upstream: Address | None = None  # the switchover target our slot was made on before the hand-over
    hand_over_prepared: HandOverPrepared | None = None  # a switchover's preparation, done, not yet used
    preparing: int | None = None    # the serial of the preparation a RELINQUISH started and awaits
    last_action: str | None = None          # the last action other than a steady one (node_rules.IDLE)
    failovers: int = 0                      # promotions carried out

    @property
    def acting_primary(self) -> bool:
        return self.acting_term is not None

    def acting(self, acting: bool) -> NodeMemory:
        """PostgreSQL runs read-write under our leases (a new term if it did not), or no longer."""
        if not acting:
            return replace(self, acting_term=None) if self.acting_term is not None else self
        if self.acting_term is not None:
            return self
        return replace(self, acting_term=self.terms + 1, terms=self.terms + 1)

    def decided(self, decision: Decision) -> NodeMemory:
        """This memory once the rules decided: the hand-over state they keep
        or end (a decision that acts on nothing keeps it as it was), and the
        last action that is not a steady one."""
        last_action = self.last_action if decision.action in IDLE else decision.action.value
        return replace(self, hand_over=decision.hand_over, last_action=last_action)

    def after(self, result: Result) -> NodeMemory:
        """This memory once another thread's result is taken."""
        if isinstance(result, Fenced):
            return self.acting(False) if result.term == self.acting_term else self
        if isinstance(result, FollowingTarget):
            return replace(self, prepared_upstream=None, upstream=result.address, standby_since=result.at)
        if isinstance(result, HandOverPrepared):
            if result.serial != self.preparing:
                return self     # for a switchover that went another way: a later one prepares afresh
            return replace(self, hand_over_prepared=result, prepared_upstream=result.slot_on, preparing=None)
        raise TypeError(f"not a node result: {result!r}")


class Changes:
    """What one action changes of the memory. The action sets; the HA loop
    takes .memory afterwards, also when the action raised part-way (what it
    changed until then stands, as a failed start counts a failed rejoin)."""

    def __init__(self, memory: NodeMemory) -> None:
        self.memory = memory

    def set(self, **fields: Any) -> None:
        self.memory = replace(self.memory, **fields)

    def acting(self, acting: bool) -> None:
        self.memory = self.memory.acting(acting)
