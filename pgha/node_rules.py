"""The node's rules: what to do with the local PostgreSQL this heartbeat.

Pure: no I/O, the clock is an input. node.py gathers a NodeView, calls
decide() and has node_actions.py carry out the one Action it returns.
decide() first reads the wire Instruction as its role's own type (orders():
AsPrimary, AsStandby, Wait). The rows are tried in order; the first that
matches wins.

  Any instruction
    no answer from the arbiter ........................ NO_ANSWER (leases lapse; the watchdog fences)
    epoch older than the one acted on ................. IGNORE_OLD_EPOCH
    role wait ......................................... WAIT
    M1  paused, and the row below would start, stop,
        promote, demote, rewind or clone PostgreSQL ... PAUSED (maintenance mode: leave it alone;
                                                        keep reporting; leases and fencing run on)

  Primary at epoch E (a hand-over ends: the arbiter kept this node, so it starts again)
    B1  a bootstrap from a backup left unfinished ..... BOOTSTRAP (its copy set aside first: never
                                                        promoted short of its recovery's end)
    P1  PostgreSQL starting ........................... AWAIT_START
    P2  stopped, data empty, not the first epoch ...... REFUSE_EMPTY (never a new cluster over an old one)
    B2  stopped, data empty, the last bootstrap failed
        moments ago ................................... REJOIN_BACKOFF (S7's wait)
    P3  stopped, data empty ........................... BOOTSTRAP
    P4  stopped under us, restarted within the window . HAND_OVER
    P5  stopped under us .............................. RESTART_AFTER_CRASH, then P6-P8's start
    P6  stopped, data unreadable ...................... DATA_UNREADABLE (the error is logged)
    P7  stopped, data last ran as standby ............. PROMOTE_STOPPED_STANDBY
    P8  stopped ....................................... START_PRIMARY (HAND_OVER if it will not start)
    P9  running as standby ............................ PROMOTE_RUNNING_STANDBY
    O1  running, the arbiter orders a restart not yet
        carried out ................................... RESTART_PRIMARY (in place: a fast stop, then
                                                        START_PRIMARY's start; also in pause)
    P10 running, arbiter asks to hand over ............ RELINQUISH (switchover: a clean stop, then
                                                        PostgreSQL starts again in recovery as a
                                                        standby of the target, not yet promoted)
    P11 running, sync name differs .................... SET_SYNC (and the slot, when P12 is also due)
    P12 running, standby's slot not yet ensured ....... ENSURE_SLOT
    K1  running, permanent slots due .................. SYNC_SLOTS (made where missing; also in pause)
    P13 running ....................................... STAY_PRIMARY

  Standby of X at epoch E (a hand-over ends: X is the new primary)
    S1  acting primary, or running as primary ......... DEMOTE
    S2  PostgreSQL starting ........................... AWAIT_START
    R1  the arbiter orders a reinit not yet carried out REINIT (stop, a fresh pg_basebackup, the old
                                                        data kept until it is complete; S7's backoff
                                                        after a failed one)
    O2  running, the arbiter orders a restart not yet
        carried out ................................... RESTART_STANDBY (a fast stop and a start;
                                                        also in pause)
    S3  running, following another address ............ FOLLOW
    K2  running, streaming, permanent slots due ....... SYNC_SLOTS (physical ones copied and moved up to
                                                        the primary's; logical ones dropped here)
    S4  running, streaming ............................ STAY_STANDBY
    S5  running, not streaming past the deadline ...... RESTART_REJOIN
    S6  running ....................................... AWAIT_STREAMING
    S7  stopped, the last rejoin failed moments ago ... REJOIN_BACKOFF (the next try waits
                                                        rejoin_backoff(): 0.5 s, doubling to 30 s)
    S8  stopped, data empty ........................... CLONE
    S9  stopped, an earlier rejoin failed ............. CLONE (afresh)
    S10  stopped, data unreadable ...................... DATA_UNREADABLE
    S11 stopped cleanly for a planned switchover ...... START_STANDBY (no rewind: its WAL ends where
                                                        the new primary's timeline begins)
    S12 stopped, data last ran as primary ............. REWIND (pg_basebackup if rewind fails)
    S13 stopped ....................................... START_STANDBY

Every row from P3 on, except P4, and every standby row makes epoch E durable
(remember_epoch) before it acts, so a restarted node never obeys an older
decision. Only P3, P5, P7-P13 run PostgreSQL read-write, and only under a
primary instruction at an epoch not older than the one acted on; P10 leaves
it running read-only (in recovery), following the standby the arbiter named.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from pgha.messages import PG_RUNNING, PG_STARTING, PRIMARY, STANDBY, Address, Instruction

CRASH_RESTART_WINDOW = 60.0     # one quick local restart of a crashed primary per window
STANDBY_STREAM_DEADLINE = 30.0  # a standby not streaming by then stops and rejoins again
REJOIN_BACKOFF_FIRST = 0.5      # s before retrying a rejoin (rewind, clone, start) that failed once
REJOIN_BACKOFF_MAX = 30.0       # ... doubling per failure in a row, up to this: a clone that cannot
                                # succeed (a full disk) must not cost the new primary a checkpoint a second


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
    SYNC_SLOTS = "sync_slots"
    STAY_PRIMARY = "stay_primary"
    DEMOTE = "demote"
    FOLLOW = "follow"
    STAY_STANDBY = "stay_standby"
    RESTART_REJOIN = "restart_rejoin"
    AWAIT_STREAMING = "await_streaming"
    REINIT = "reinit"
    RESTART_PRIMARY = "restart_primary"
    RESTART_STANDBY = "restart_standby"
    REJOIN_BACKOFF = "rejoin_backoff"
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
                              Action.RESTART_REJOIN, Action.CLONE, Action.REWIND, Action.START_STANDBY,
                              Action.REINIT})


# Steady states: nothing changes. The node's report keeps the last other action.
IDLE = frozenset({Action.NO_ANSWER, Action.WAIT, Action.AWAIT_START, Action.STAY_PRIMARY,
                  Action.STAY_STANDBY, Action.AWAIT_STREAMING, Action.REJOIN_BACKOFF,
                  Action.SYNC_SLOTS})     # a standby's periodic copy: its own line says what changed
# The standby's ways back; one that raises counts a failed rejoin (the backoff of row S7).
REJOINS = frozenset({Action.CLONE, Action.REWIND, Action.START_STANDBY, Action.REINIT})
# Actions under which PostgreSQL runs (or keeps running) read-write.
READ_WRITE = frozenset({Action.BOOTSTRAP, Action.RESTART_AFTER_CRASH, Action.PROMOTE_STOPPED_STANDBY,
                        Action.START_PRIMARY, Action.PROMOTE_RUNNING_STANDBY, Action.SET_SYNC,
                        Action.ENSURE_SLOT, Action.STAY_PRIMARY, Action.RESTART_PRIMARY})


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


# The arbiter's instruction as its role's own type: what the rules read of
# it. decide() parses the wire Instruction (one bag of optional fields) into
# one of these first; the wire format stays as it is.

@dataclass(frozen=True)
class AsPrimary:
    epoch: int
    sync_standby: str | None                # the name synchronous_standby_names must hold
    standby: str | None                     # our standby, and where it is
    standby_address: Address | None
    relinquish: bool                        # stop PostgreSQL and hand over (switchover)
    paused: bool
    restart: int = 0                        # an operator's restart order (its id), 0: none

    @property
    def standby_slot(self) -> str | None:
        return self.standby_address.slot if self.standby_address else None


@dataclass(frozen=True)
class AsStandby:
    epoch: int
    primary: str                            # whom to follow, and where
    primary_address: Address
    paused: bool
    reinit: int = 0                         # an operator's reinit order (its id), 0: none
    restart: int = 0                        # an operator's restart order (its id), 0: none


@dataclass(frozen=True)
class Wait:
    epoch: int
    reason: str
    paused: bool


Orders = AsPrimary | AsStandby | Wait


def orders(instruction: Instruction) -> Orders:
    """The instruction as its role's type. Instruction.from_wire checked the
    role and what a standby needs; a standby instruction naming no primary
    is a ValueError here (a bug in whoever made it)."""
    epoch, paused = instruction.epoch, instruction.paused
    if instruction.role == PRIMARY:
        return AsPrimary(epoch, instruction.sync_standby, instruction.standby, instruction.standby_address,
                         instruction.relinquish, paused, instruction.restart)
    if instruction.role == STANDBY:
        if instruction.primary is None or instruction.primary_address is None:
            raise ValueError(f"standby instruction at epoch {epoch} names no primary")
        return AsStandby(epoch, instruction.primary, instruction.primary_address, paused, instruction.reinit,
                         instruction.restart)
    return Wait(epoch, instruction.reason or "", paused)


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
    failed_rejoins: int = 0                 # rejoin actions (REJOINS) that raised, in a row
    reinit_done: int = 0                    # the last reinit order carried out
    restart_done: int = 0                   # the last restart order carried out
    last_rejoin_failure: float = float("-inf")
    upstream: Address | None = None         # the address the running standby follows
    streaming: bool = False                 # the standby's WAL receiver streams
    not_streaming_since: float | None = None  # last time the standby was (re)pointed or streamed
    slot_ensured: str | None = None         # the standby's slot made on this primary
    slots_due: bool = False                 # permanent slots to make (primary) or copy (standby) now
    sync_standby: str | None = None         # the name synchronous_standby_names holds now
    bootstrap_unfinished: bool = False      # a bootstrap from a backup started and did not end


@dataclass(frozen=True)
class Decision:
    action: Action
    row: str                                # the table row that chose it, e.g. "P8"
    remember_epoch: int | None = None       # made durable before acting
    hand_over: HandOver = HandOver.NONE     # the hand-over state once the instruction is taken
    then: Action | None = None              # RESTART_AFTER_CRASH: the start that follows
    sync_standby: str | None = None         # SET_SYNC, starts and promotions: the sync name
    reinit: int = 0                         # REINIT: the order carried out
    restart: int = 0                        # RESTART_PRIMARY, RESTART_STANDBY: the order carried out
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
    ordered = orders(instruction)
    if isinstance(ordered, AsPrimary):
        chosen = _as_primary(view, ordered)
    elif isinstance(ordered, AsStandby):
        chosen = _as_standby(view, ordered)
    else:
        return Decision(Action.WAIT, "-", hand_over=view.hand_over, why=ordered.reason)
    if ordered.paused and chosen.action in TOUCHES_POSTGRES:
        # Nothing is made durable and the hand-over state is kept: on resume
        # the same row is chosen again.
        return Decision(Action.PAUSED, "M1", hand_over=view.hand_over,
                        why=f"{chosen.row} {chosen.action.value} held back")
    return chosen


def _as_primary(view: NodeView, ins: AsPrimary) -> Decision:
    epoch, sync = ins.epoch, ins.sync_standby

    def row(name: str, action: Action, remember: bool = True, then: Action | None = None,
            slot: str | None = None, why: str = "", follow: str | None = None,
            address: Address | None = None) -> Decision:
        return Decision(action, name, remember_epoch=epoch if remember else None, then=then,
                        sync_standby=sync, slot=slot, why=why, primary=follow, address=address)

    if view.bootstrap_unfinished and epoch == 1:
        return row("B1", Action.BOOTSTRAP)
    if view.pg == PG_STARTING:
        return row("P1", Action.AWAIT_START, remember=False)
    if view.pg != PG_RUNNING:
        if view.data is DataDir.EMPTY:
            if epoch != 1 or view.acted_epoch > 1:
                return row("P2", Action.REFUSE_EMPTY, remember=False)
            if _backing_off(view):
                return row("B2", Action.REJOIN_BACKOFF, remember=False)
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
    if ins.restart and ins.restart != view.restart_done:
        return replace(row("O1", Action.RESTART_PRIMARY), restart=ins.restart)
    if ins.relinquish:
        # Whom to follow once stopped: the target, still a standby (None: only stop).
        return row("P10", Action.RELINQUISH, why=ins.standby or "", follow=ins.standby,
                   address=ins.standby_address)
    slot = ins.standby_slot if ins.standby_slot and ins.standby_slot != view.slot_ensured else None
    if view.sync_standby != sync:
        return row("P11", Action.SET_SYNC, slot=slot)
    if slot:
        return row("P12", Action.ENSURE_SLOT, slot=slot)
    if view.slots_due:
        return row("K1", Action.SYNC_SLOTS)
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


def _as_standby(view: NodeView, ins: AsStandby) -> Decision:
    def row(name: str, action: Action, why: str = "", hand_over: HandOver = HandOver.NONE) -> Decision:
        return Decision(action, name, remember_epoch=ins.epoch, primary=ins.primary,
                        address=ins.primary_address, why=why, hand_over=hand_over)

    if view.acting_primary or view.pg == PG_RUNNING and view.running_as == PRIMARY:
        return row("S1", Action.DEMOTE)
    if view.pg == PG_STARTING:
        # A clean hand-over is remembered until PostgreSQL is started as a standby.
        return row("S2", Action.AWAIT_START, hand_over=view.hand_over)
    if ins.reinit and ins.reinit != view.reinit_done:
        if _backing_off(view):
            return row("S7", Action.REJOIN_BACKOFF)
        return replace(row("R1", Action.REINIT), reinit=ins.reinit)
    if view.pg == PG_RUNNING:
        if ins.restart and ins.restart != view.restart_done:
            return replace(row("O2", Action.RESTART_STANDBY), restart=ins.restart)
        if view.upstream != ins.primary_address:
            return row("S3", Action.FOLLOW)
        if view.streaming:
            return row("K2", Action.SYNC_SLOTS) if view.slots_due else row("S4", Action.STAY_STANDBY)
        if view.not_streaming_since is not None and \
                view.now - view.not_streaming_since > STANDBY_STREAM_DEADLINE:
            return row("S5", Action.RESTART_REJOIN)
        return row("S6", Action.AWAIT_STREAMING)
    if _backing_off(view):
        return row("S7", Action.REJOIN_BACKOFF)
    if view.data is DataDir.EMPTY:
        return row("S8", Action.CLONE, why="empty")
    if view.rejoin_failures:
        return row("S9", Action.CLONE, why="retry")
    if view.data is DataDir.UNREADABLE:
        return row("S10", Action.DATA_UNREADABLE, why=view.data_error or "")
    if view.data is DataDir.WAS_PRIMARY and view.hand_over is HandOver.SWITCHED_OVER:
        # A fast shutdown waits until the standby has flushed all WAL,
        # the shutdown checkpoint included: nothing to rewind.
        return row("S11", Action.START_STANDBY, why="switchover")
    if view.data is not DataDir.WAS_STANDBY:
        return row("S12", Action.REWIND)
    return row("S13", Action.START_STANDBY)


def _backing_off(view: NodeView) -> bool:
    """A rejoin or bootstrap failed moments ago: the next try waits (rejoin_backoff)."""
    return bool(view.failed_rejoins) and view.now - view.last_rejoin_failure < rejoin_backoff(view.failed_rejoins)


def rejoin_backoff(failed_in_a_row: int) -> float:
    """Seconds a standby waits after its `failed_in_a_row`-th failed rejoin (or a primary after a failed bootstrap)."""
    return min(REJOIN_BACKOFF_MAX, REJOIN_BACKOFF_FIRST * 2 ** max(0, failed_in_a_row - 1))
