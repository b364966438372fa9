"""The node's rules: what to do with the local PostgreSQL this heartbeat.

Pure: no I/O, the clock is an input. node.py gathers a NodeView, calls
decide() and carries out the one Action it returns. The rows are tried in
order; the first that matches wins.

  Any instruction
    no answer from the arbiter ........................ NO_ANSWER (leases lapse; the watchdog fences)
    epoch older than the one acted on ................. IGNORE_OLD_EPOCH
    role wait ......................................... WAIT
    M1  paused, and the row below would start, stop,
        promote, demote, rewind or clone PostgreSQL ... PAUSED (maintenance mode: leave it alone;
                                                        keep reporting; leases and fencing run on)

  Primary at epoch E (a hand-over ends: the arbiter kept this node, so it starts again)
    P1  PostgreSQL starting ........................... AWAIT_START
    P2  stopped, data empty, not the first epoch ...... REFUSE_EMPTY (never a new cluster over an old one)
    P3  stopped, data empty ........................... BOOTSTRAP
    P4  stopped under us, restarted within the window . HAND_OVER
    P5  stopped under us .............................. RESTART_AFTER_CRASH, then P6-P8's start
    P6  stopped, data unreadable ...................... DATA_UNREADABLE (the error is logged)
    P7  stopped, data last ran as standby ............. PROMOTE_STOPPED_STANDBY
    P8  stopped ....................................... START_PRIMARY (HAND_OVER if it will not start)
    P9  running as standby ............................ PROMOTE_RUNNING_STANDBY
    P10 running, arbiter asks to hand over ............ RELINQUISH (switchover: a clean stop, then
                                                        PostgreSQL starts again in recovery as a
                                                        standby of the target, not yet promoted)
    P11 running, sync name differs .................... SET_SYNC (and the slot, when P12 is also due)
    P12 running, standby's slot not yet ensured ....... ENSURE_SLOT
    P13 running ....................................... STAY_PRIMARY

  Standby of X at epoch E (a hand-over ends: X is the new primary)
    S1  acting primary, or running as primary ......... DEMOTE
    S2  PostgreSQL starting ........................... AWAIT_START
    S3  running, following another address ............ FOLLOW
    S4  running, streaming ............................ STAY_STANDBY
    S5  running, not streaming past the deadline ...... RESTART_REJOIN
    S6  running ....................................... AWAIT_STREAMING
    S7  stopped, data empty ........................... CLONE
    S8  stopped, an earlier rejoin failed ............. CLONE (afresh)
    S9  stopped, data unreadable ...................... DATA_UNREADABLE
    S10 stopped cleanly for a planned switchover ...... START_STANDBY (no rewind: its WAL ends where
                                                        the new primary's timeline begins)
    S11 stopped, data last ran as primary ............. REWIND (pg_basebackup if rewind fails)
    S12 stopped ....................................... START_STANDBY

Every row from P3 on, except P4, and every standby row makes epoch E durable
(remember_epoch) before it acts, so a restarted node never obeys an older
decision. Only P3, P5, P7-P13 run PostgreSQL read-write, and only under a
primary instruction at an epoch not older than the one acted on; P10 leaves
it running read-only (in recovery), following the standby the arbiter named.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pgha.messages import PG_RUNNING, PG_STARTING, PRIMARY, STANDBY, Address, Instruction

CRASH_RESTART_WINDOW = 60.0     # one quick local restart of a crashed primary per window
STANDBY_STREAM_DEADLINE = 30.0  # a standby not streaming by then stops and rejoins again


class Action(Enum):
    NO_ANSWER = "no_answer"
    IGNORE_OLD_EPOCH = "ignore_old_epoch"
    WAIT = "wait"
    AWAIT_START = "await_start"
    REFUSE_EMPTY = "refuse_empty"
    BOOTSTRAP = "bootstrap"
    HAND_OVER = "hand_over"
    RESTART_AFTER_CRASH = "restart_after_crash"
    DATA_UNREADABLE = "data_unreadable"
    PROMOTE_STOPPED_STANDBY = "promote_stopped_standby"
    START_PRIMARY = "start_primary"
    PROMOTE_RUNNING_STANDBY = "promote_running_standby"
    RELINQUISH = "relinquish"
    SET_SYNC = "set_sync"
    ENSURE_SLOT = "ensure_slot"
    STAY_PRIMARY = "stay_primary"
    DEMOTE = "demote"
    FOLLOW = "follow"
    STAY_STANDBY = "stay_standby"
    RESTART_REJOIN = "restart_rejoin"
    AWAIT_STREAMING = "await_streaming"
    CLONE = "clone"
    REWIND = "rewind"
    START_STANDBY = "start_standby"
    PAUSED = "paused"


# What maintenance mode holds back: every action that starts, stops,
# promotes, demotes, rewinds or clones PostgreSQL. Reporting, sync and slot
# management (writes go on) and the steady states are left as they are.
TOUCHES_POSTGRES = frozenset({Action.BOOTSTRAP, Action.HAND_OVER, Action.RESTART_AFTER_CRASH,
                              Action.PROMOTE_STOPPED_STANDBY, Action.START_PRIMARY,
                              Action.PROMOTE_RUNNING_STANDBY, Action.RELINQUISH, Action.DEMOTE, Action.FOLLOW,
                              Action.RESTART_REJOIN, Action.CLONE, Action.REWIND, Action.START_STANDBY})


# Steady states: nothing changes. The node's report keeps the last other action.
IDLE = frozenset({Action.NO_ANSWER, Action.WAIT, Action.AWAIT_START, Action.STAY_PRIMARY,
                  Action.STAY_STANDBY, Action.AWAIT_STREAMING})
# Actions under which PostgreSQL runs (or keeps running) read-write.
READ_WRITE = frozenset({Action.BOOTSTRAP, Action.RESTART_AFTER_CRASH, Action.PROMOTE_STOPPED_STANDBY,
                        Action.START_PRIMARY, Action.PROMOTE_RUNNING_STANDBY, Action.SET_SYNC,
                        Action.ENSURE_SLOT, Action.STAY_PRIMARY})


class HandOver(Enum):
    """Whether this node stopped its primary PostgreSQL for the standby to take over."""
    NONE = "none"
    HANDED_OVER = "handed_over"     # reported to the arbiter until it answers primary or standby
    SWITCHED_OVER = "switched_over"  # the same, after a clean stop for a planned switchover


class DataDir(Enum):
    """A stopped PostgreSQL's data directory."""
    EMPTY = "empty"
    WAS_PRIMARY = "was_primary"     # last ran (or stopped) read-write
    WAS_STANDBY = "was_standby"     # last ran (or stopped) in recovery
    UNREADABLE = "unreadable"       # pg_controldata failed; NodeView.data_error says why


@dataclass(frozen=True)
class NodeView:
    """Everything the rules look at, gathered once per heartbeat."""
    now: float
    instruction: Instruction | None         # None: the arbiter did not answer
    acted_epoch: int                        # the newest epoch this node made durable
    pg: str                                 # running | starting | stopped
    running_as: str | None = None           # primary | standby, when running
    data: DataDir | None = None             # read only when stopped and the instruction may act on it
    data_error: str | None = None
    acting_primary: bool = False            # PostgreSQL runs read-write under our leases
    hand_over: HandOver = HandOver.NONE
    last_crash_restart: float = float("-inf")
    rejoin_failures: int = 0                # rejoins that did not end streaming
    upstream: Address | None = None         # the address the running standby follows
    streaming: bool = False                 # the standby's WAL receiver streams
    not_streaming_since: float | None = None  # last time the standby was (re)pointed or streamed
    slot_ensured: str | None = None         # the standby's slot made on this primary
    sync_standby: str | None = None         # the name synchronous_standby_names holds now


@dataclass(frozen=True)
class Decision:
    action: Action
    row: str                                # the table row that chose it, e.g. "P8"
    remember_epoch: int | None = None       # made durable before acting
    hand_over: HandOver = HandOver.NONE     # the hand-over state once the instruction is taken
    then: Action | None = None              # RESTART_AFTER_CRASH: the start that follows
    sync_standby: str | None = None         # SET_SYNC, starts and promotions: the sync name
    slot: str | None = None                 # SET_SYNC, ENSURE_SLOT: the standby's slot to ensure
    primary: str | None = None              # standby rows, RELINQUISH: whom to follow, and where
    address: Address | None = None
    why: str = ""                           # for the log line (DATA_UNREADABLE: the error)


def decide(view: NodeView) -> Decision:
    instruction = view.instruction
    if instruction is None:
        return Decision(Action.NO_ANSWER, "-", hand_over=view.hand_over)
    if instruction.epoch < view.acted_epoch:
        return Decision(Action.IGNORE_OLD_EPOCH, "-", hand_over=view.hand_over)
    if instruction.role == PRIMARY:
        chosen = _as_primary(view, instruction)
    elif instruction.role == STANDBY:
        chosen = _as_standby(view, instruction)
    else:
        return Decision(Action.WAIT, "-", hand_over=view.hand_over, why=instruction.reason or "")
    if instruction.paused and chosen.action in TOUCHES_POSTGRES:
        # Nothing is made durable and the hand-over state is kept: on resume
        # the same row is chosen again.
        return Decision(Action.PAUSED, "M1", hand_over=view.hand_over,
                        why=f"{chosen.row} {chosen.action.value} held back")
    return chosen


def _as_primary(view: NodeView, ins: Instruction) -> Decision:
    epoch, sync = ins.epoch, ins.sync_standby

    def row(name: str, action: Action, remember: bool = True, then: Action | None = None,
            slot: str | None = None, why: str = "", follow: str | None = None,
            address: Address | None = None) -> Decision:
        return Decision(action, name, remember_epoch=epoch if remember else None, then=then,
                        sync_standby=sync, slot=slot, why=why, primary=follow, address=address)

    if view.pg == PG_STARTING:
        return row("P1", Action.AWAIT_START, remember=False)
    if view.pg != PG_RUNNING:
        if view.data is DataDir.EMPTY:
            if epoch != 1 or view.acted_epoch > 1:
                return row("P2", Action.REFUSE_EMPTY, remember=False)
            return row("P3", Action.BOOTSTRAP)
        if view.acting_primary:     # PostgreSQL died under us: one quick restart, else hand over
            if view.now - view.last_crash_restart < CRASH_RESTART_WINDOW:
                return row("P4", Action.HAND_OVER, remember=False,
                           why="PostgreSQL crashed again within %.0fs" % CRASH_RESTART_WINDOW)
            return row("P5", Action.RESTART_AFTER_CRASH, then=_start_for(view.data), why=view.data_error or "")
        if view.data is DataDir.UNREADABLE:
            return row("P6", Action.DATA_UNREADABLE, why=view.data_error or "")
        if view.data is DataDir.WAS_STANDBY:
            return row("P7", Action.PROMOTE_STOPPED_STANDBY)
        return row("P8", Action.START_PRIMARY)
    if view.running_as == STANDBY:
        return row("P9", Action.PROMOTE_RUNNING_STANDBY)
    if ins.relinquish:
        # Whom to follow once stopped: the target, still a standby (None: only stop).
        return row("P10", Action.RELINQUISH, why=ins.standby or "", follow=ins.standby,
                   address=ins.standby_address)
    slot = ins.standby_slot if ins.standby_slot and ins.standby_slot != view.slot_ensured else None
    if view.sync_standby != sync:
        return row("P11", Action.SET_SYNC, slot=slot)
    if slot:
        return row("P12", Action.ENSURE_SLOT, slot=slot)
    return row("P13", Action.STAY_PRIMARY)


def _start_for(data: DataDir | None) -> Action:
    """P6-P8: how a stopped, non-empty data directory starts as primary."""
    if data is DataDir.UNREADABLE:
        return Action.DATA_UNREADABLE
    if data is DataDir.WAS_STANDBY:
        # A stopped standby becomes primary on a new timeline: start it in
        # recovery and promote it, never just start it read-write.
        return Action.PROMOTE_STOPPED_STANDBY
    return Action.START_PRIMARY


def _as_standby(view: NodeView, ins: Instruction) -> Decision:
    assert ins.primary is not None and ins.primary_address is not None     # Instruction.from_wire checks

    def row(name: str, action: Action, why: str = "", hand_over: HandOver = HandOver.NONE) -> Decision:
        return Decision(action, name, remember_epoch=ins.epoch, primary=ins.primary,
                        address=ins.primary_address, why=why, hand_over=hand_over)

    if view.acting_primary or view.pg == PG_RUNNING and view.running_as == PRIMARY:
        return row("S1", Action.DEMOTE)
    if view.pg == PG_STARTING:
        # A clean hand-over is remembered until PostgreSQL is started as a standby.
        return row("S2", Action.AWAIT_START, hand_over=view.hand_over)
    if view.pg == PG_RUNNING:
        if view.upstream != ins.primary_address:
            return row("S3", Action.FOLLOW)
        if view.streaming:
            return row("S4", Action.STAY_STANDBY)
        if view.not_streaming_since is not None and \
                view.now - view.not_streaming_since > STANDBY_STREAM_DEADLINE:
            return row("S5", Action.RESTART_REJOIN)
        return row("S6", Action.AWAIT_STREAMING)
    if view.data is DataDir.EMPTY:
        return row("S7", Action.CLONE, why="empty")
    if view.rejoin_failures:
        return row("S8", Action.CLONE, why="retry")
    if view.data is DataDir.UNREADABLE:
        return row("S9", Action.DATA_UNREADABLE, why=view.data_error or "")
    if view.data is DataDir.WAS_PRIMARY and view.hand_over is HandOver.SWITCHED_OVER:
        # A fast shutdown waits until the standby has flushed all WAL,
        # the shutdown checkpoint included: nothing to rewind.
        return row("S10", Action.START_STANDBY, why="switchover")
    if view.data is not DataDir.WAS_STANDBY:
        return row("S11", Action.REWIND)
    return row("S12", Action.START_STANDBY)
