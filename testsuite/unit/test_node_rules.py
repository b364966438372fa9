"""The node's rules (pgha/node_rules.py): one test per row of the table, then
a seeded random walk over node inputs that checks the node-side invariants."""
import random
from dataclasses import replace

import pytest

from pgha import node_rules
from pgha.messages import Address, Instruction
from pgha.node_rules import (CRASH_RESTART_WINDOW, READ_WRITE, STANDBY_STREAM_DEADLINE, TOUCHES_POSTGRES,
                             Action, DataDir, HandOver, NodeView, decide)

NOW = 10_000.0
A = Address("a.example", 5432, 5433, "slot_a")
B = Address("b.example", 5432, 5433, "slot_b")


def primary(epoch=3, sync="b", relinquish=False, standby_address=B):
    return Instruction(epoch=epoch, role="primary", standby="b", standby_address=standby_address,
                       sync_standby=sync, relinquish=relinquish, lease_time=3.0, heartbeat_interval=0.5)


def standby(epoch=3, address=A):
    return Instruction(epoch=epoch, role="standby", primary="a", primary_address=address,
                       lease_time=3.0, heartbeat_interval=0.5)


WAIT_FOR_IT = Instruction(epoch=3, role="wait", reason="waiting for a to report")


def view(instruction, **fields):
    base = dict(now=NOW, instruction=instruction, acted_epoch=3, pg="stopped")
    return NodeView(**{**base, **fields})


RUNNING_PRIMARY = dict(pg="running", running_as="primary", acting_primary=True, sync_standby="b",
                       slot_ensured="slot_b")
RUNNING_STANDBY = dict(pg="running", running_as="standby", upstream=A, streaming=True,
                       not_streaming_since=NOW - 1)

# (row, view, action, epoch made durable first)
TABLE = [
    ("no answer", view(None), Action.NO_ANSWER, None),
    ("old epoch", view(primary(epoch=2)), Action.IGNORE_OLD_EPOCH, None),
    ("old epoch, standby", view(standby(epoch=2), pg="running", running_as="primary"),
     Action.IGNORE_OLD_EPOCH, None),
    ("wait", view(WAIT_FOR_IT, **RUNNING_PRIMARY), Action.WAIT, None),
    ("P1", view(primary(), pg="starting"), Action.AWAIT_START, None),
    ("P2", view(primary(epoch=3), data=DataDir.EMPTY), Action.REFUSE_EMPTY, None),
    ("P2", view(primary(epoch=2), acted_epoch=0, data=DataDir.EMPTY, acting_primary=True),
     Action.REFUSE_EMPTY, None),
    ("P3", view(primary(epoch=1), acted_epoch=0, data=DataDir.EMPTY), Action.BOOTSTRAP, 1),
    # An unfinished bootstrap from a backup: never P9's promotion of its half-recovered copy.
    ("B1", view(primary(epoch=1), acted_epoch=1, bootstrap_unfinished=True, **RUNNING_STANDBY),
     Action.BOOTSTRAP, 1),
    ("B1", view(primary(epoch=1), acted_epoch=1, bootstrap_unfinished=True, data=DataDir.WAS_STANDBY),
     Action.BOOTSTRAP, 1),
    ("B2", view(primary(epoch=1), acted_epoch=1, data=DataDir.EMPTY, failed_rejoins=2,
                last_rejoin_failure=NOW - 0.5), Action.REJOIN_BACKOFF, None),
    ("P3", view(primary(epoch=1), acted_epoch=1, data=DataDir.EMPTY, acting_primary=True),
     Action.BOOTSTRAP, 1),
    ("P4", view(primary(), data=DataDir.WAS_PRIMARY, acting_primary=True,
                last_crash_restart=NOW - CRASH_RESTART_WINDOW + 1), Action.HAND_OVER, None),
    ("P5", view(primary(), data=DataDir.WAS_PRIMARY, acting_primary=True,
                last_crash_restart=NOW - CRASH_RESTART_WINDOW - 1), Action.RESTART_AFTER_CRASH, 3),
    ("P6", view(primary(), data=DataDir.UNREADABLE, data_error="pg_controldata failed"),
     Action.DATA_UNREADABLE, 3),
    ("P7", view(primary(), data=DataDir.WAS_STANDBY), Action.PROMOTE_STOPPED_STANDBY, 3),
    ("P8", view(primary(), data=DataDir.WAS_PRIMARY), Action.START_PRIMARY, 3),
    ("P8", view(primary(epoch=4), data=DataDir.WAS_PRIMARY, hand_over=HandOver.HANDED_OVER),
     Action.START_PRIMARY, 4),
    ("P9", view(primary(epoch=4), pg="running", running_as="standby"), Action.PROMOTE_RUNNING_STANDBY, 4),
    ("P10", view(primary(relinquish=True), **RUNNING_PRIMARY), Action.RELINQUISH, 3),
    ("P11", view(primary(sync=None), **RUNNING_PRIMARY), Action.SET_SYNC, 3),
    ("P11", view(primary(sync="b"), **{**RUNNING_PRIMARY, "sync_standby": None}), Action.SET_SYNC, 3),
    ("P12", view(primary(), **{**RUNNING_PRIMARY, "slot_ensured": None}), Action.ENSURE_SLOT, 3),
    ("P13", view(primary(), **RUNNING_PRIMARY), Action.STAY_PRIMARY, 3),
    ("P13", view(primary(standby_address=None), **{**RUNNING_PRIMARY, "slot_ensured": None}),
     Action.STAY_PRIMARY, 3),
    ("P13", view(primary(), **{**RUNNING_PRIMARY, "acting_primary": False}), Action.STAY_PRIMARY, 3),
    ("S1", view(standby(epoch=4), **RUNNING_PRIMARY), Action.DEMOTE, 4),
    ("S1", view(standby(), pg="starting", acting_primary=True), Action.DEMOTE, 3),
    ("S1", view(standby(), pg="stopped", acting_primary=True, data=DataDir.WAS_PRIMARY), Action.DEMOTE, 3),
    ("S1", view(standby(), pg="running", running_as="primary"), Action.DEMOTE, 3),
    ("S2", view(standby(epoch=4), pg="starting"), Action.AWAIT_START, 4),
    ("S3", view(standby(address=B), **RUNNING_STANDBY), Action.FOLLOW, 3),
    ("S3", view(standby(), **{**RUNNING_STANDBY, "upstream": None}), Action.FOLLOW, 3),
    ("S4", view(standby(), **{**RUNNING_STANDBY, "not_streaming_since": NOW - 1000}), Action.STAY_STANDBY, 3),
    ("S5", view(standby(), **{**RUNNING_STANDBY, "streaming": False,
                              "not_streaming_since": NOW - STANDBY_STREAM_DEADLINE - 1}),
     Action.RESTART_REJOIN, 3),
    ("S6", view(standby(), **{**RUNNING_STANDBY, "streaming": False,
                              "not_streaming_since": NOW - STANDBY_STREAM_DEADLINE + 1}),
     Action.AWAIT_STREAMING, 3),
    # An operator's reinit order not yet carried out: whatever PostgreSQL does, a fresh copy.
    ("R1", view(replace(standby(), reinit=9), **RUNNING_STANDBY), Action.REINIT, 3),
    ("R1", view(replace(standby(), reinit=9), data=DataDir.WAS_STANDBY, reinit_done=8), Action.REINIT, 3),
    ("S4", view(replace(standby(), reinit=9), **RUNNING_STANDBY, reinit_done=9), Action.STAY_STANDBY, 3),
    ("S7", view(replace(standby(), reinit=9), data=DataDir.WAS_STANDBY, failed_rejoins=1,
                last_rejoin_failure=NOW - 0.1), Action.REJOIN_BACKOFF, 3),
    ("S1", view(replace(standby(), reinit=9), pg="running", running_as="primary"), Action.DEMOTE, 3),
    # A rejoin that failed waits out its backoff (0.5 s, then 1 s, ... up to 30 s), then tries again.
    ("S7", view(standby(), data=DataDir.WAS_PRIMARY, failed_rejoins=1, last_rejoin_failure=NOW - 0.4),
     Action.REJOIN_BACKOFF, 3),
    ("S7", view(standby(), data=DataDir.EMPTY, failed_rejoins=7, last_rejoin_failure=NOW - 29),
     Action.REJOIN_BACKOFF, 3),
    ("S12", view(standby(), data=DataDir.WAS_PRIMARY, failed_rejoins=1, last_rejoin_failure=NOW - 0.5),
     Action.REWIND, 3),
    ("S8", view(standby(), data=DataDir.EMPTY, failed_rejoins=20, last_rejoin_failure=NOW - 30),
     Action.CLONE, 3),
    ("S8", view(standby(), data=DataDir.EMPTY, rejoin_failures=2), Action.CLONE, 3),
    ("S9", view(standby(), data=DataDir.WAS_STANDBY, rejoin_failures=1), Action.CLONE, 3),
    ("S9", view(standby(), data=DataDir.UNREADABLE, rejoin_failures=1), Action.CLONE, 3),
    ("S10", view(standby(), data=DataDir.UNREADABLE, data_error="no pg_control"), Action.DATA_UNREADABLE, 3),
    ("S11", view(standby(epoch=4), data=DataDir.WAS_PRIMARY, hand_over=HandOver.SWITCHED_OVER),
     Action.START_STANDBY, 4),
    ("S12", view(standby(), data=DataDir.WAS_PRIMARY), Action.REWIND, 3),
    ("S12", view(standby(epoch=4), data=DataDir.WAS_PRIMARY, hand_over=HandOver.HANDED_OVER),
     Action.REWIND, 4),
    ("S13", view(standby(epoch=5), data=DataDir.WAS_STANDBY), Action.START_STANDBY, 5),
    # Permanent slots due: made on the primary, copied on a streaming standby; in pause too.
    ("K1", view(primary(), **RUNNING_PRIMARY, slots_due=True), Action.SYNC_SLOTS, 3),
    ("K1", view(replace(primary(), paused=True), **RUNNING_PRIMARY, slots_due=True), Action.SYNC_SLOTS, 3),
    ("P12", view(primary(), **{**RUNNING_PRIMARY, "slot_ensured": None}, slots_due=True), Action.ENSURE_SLOT, 3),
    ("K2", view(standby(), **RUNNING_STANDBY, slots_due=True), Action.SYNC_SLOTS, 3),
    ("S6", view(standby(), **{**RUNNING_STANDBY, "streaming": False}, slots_due=True), Action.AWAIT_STREAMING, 3),
    # An operator's restart order not yet carried out: in place, on a running server; in pause too.
    ("O1", view(replace(primary(), restart=7), **RUNNING_PRIMARY), Action.RESTART_PRIMARY, 3),
    ("O1", view(replace(primary(), restart=7, paused=True), **RUNNING_PRIMARY), Action.RESTART_PRIMARY, 3),
    ("P13", view(replace(primary(), restart=7), **RUNNING_PRIMARY, restart_done=7), Action.STAY_PRIMARY, 3),
    ("P9", view(replace(primary(), restart=7), **RUNNING_STANDBY), Action.PROMOTE_RUNNING_STANDBY, 3),
    ("O2", view(replace(standby(), restart=7), **RUNNING_STANDBY), Action.RESTART_STANDBY, 3),
    ("O2", view(replace(standby(), restart=7, paused=True), **RUNNING_STANDBY), Action.RESTART_STANDBY, 3),
    ("S4", view(replace(standby(), restart=7), **RUNNING_STANDBY, restart_done=7), Action.STAY_STANDBY, 3),
    ("S13", view(replace(standby(), restart=7), data=DataDir.WAS_STANDBY), Action.START_STANDBY, 3),
    ("R1", view(replace(standby(), restart=7, reinit=9), **RUNNING_STANDBY), Action.REINIT, 3),
    # Maintenance mode (instruction.paused): PostgreSQL is left alone, nothing is made durable.
    ("M1", view(replace(primary(), paused=True), data=DataDir.WAS_PRIMARY, acting_primary=True,
                last_crash_restart=NOW - CRASH_RESTART_WINDOW - 1), Action.PAUSED, None),
    ("M1", view(replace(primary(), paused=True), **RUNNING_STANDBY), Action.PAUSED, None),
    ("M1", view(replace(standby(epoch=4), paused=True), **RUNNING_PRIMARY), Action.PAUSED, None),
    ("M1", view(replace(standby(), paused=True), data=DataDir.WAS_PRIMARY), Action.PAUSED, None),
    ("M1", view(replace(standby(), paused=True), data=DataDir.EMPTY), Action.PAUSED, None),
    ("P11", view(replace(primary(sync=None), paused=True), **RUNNING_PRIMARY), Action.SET_SYNC, 3),
    ("P13", view(replace(primary(), paused=True), **RUNNING_PRIMARY), Action.STAY_PRIMARY, 3),
    ("S4", view(replace(standby(), paused=True), **RUNNING_STANDBY), Action.STAY_STANDBY, 3),
]


@pytest.mark.parametrize("row, situation, action, remember", TABLE,
                         ids=[f"{row}-{action.value}" for row, _, action, _ in TABLE])
def test_table_row(row, situation, action, remember):
    decision = decide(situation)
    assert decision.action is action
    assert decision.remember_epoch == remember
    if row[0] in "PSORK":
        assert decision.row == row


def test_every_action_is_reachable_from_the_table():
    assert {action for _, _, action, _ in TABLE} == set(Action)


@pytest.mark.parametrize("row, situation, action, remember", [r for r in TABLE if r[0][0] in "PS"],
                         ids=[f"{r[0]}-{r[2].value}" for r in TABLE if r[0][0] in "PS"])
def test_paused_leaves_postgres_alone_in_every_row(row, situation, action, remember):
    """Row M1 over the whole table: paused, no row starts, stops, promotes,
    demotes, rewinds or clones PostgreSQL, and one that would is held back
    without making its epoch durable; every other row is unchanged."""
    paused = replace(situation, instruction=replace(situation.instruction, paused=True))
    decision = decide(paused)
    if action in TOUCHES_POSTGRES:
        assert (decision.action, decision.row, decision.remember_epoch) == (Action.PAUSED, "M1", None)
        assert decision.hand_over is situation.hand_over
    else:
        assert decision == decide(situation)



def test_restart_after_crash_names_the_start_its_data_needs():
    crashed = view(primary(), acting_primary=True, last_crash_restart=NOW - CRASH_RESTART_WINDOW - 1)
    assert decide(replace(crashed, data=DataDir.WAS_PRIMARY)).then is Action.START_PRIMARY
    assert decide(replace(crashed, data=DataDir.WAS_STANDBY)).then is Action.PROMOTE_STOPPED_STANDBY
    unreadable = decide(replace(crashed, data=DataDir.UNREADABLE, data_error="boom"))
    assert (unreadable.then, unreadable.why) == (Action.DATA_UNREADABLE, "boom")


def test_set_sync_carries_the_slot_when_it_is_also_due():
    decision = decide(view(primary(sync=None), **{**RUNNING_PRIMARY, "slot_ensured": None}))
    assert (decision.action, decision.sync_standby, decision.slot) == (Action.SET_SYNC, None, "slot_b")
    decision = decide(view(primary(sync=None), **RUNNING_PRIMARY))
    assert (decision.action, decision.slot) == (Action.SET_SYNC, None)


def test_standby_rows_carry_the_primary_to_follow():
    decision = decide(view(standby(address=B), data=DataDir.WAS_PRIMARY))
    assert (decision.primary, decision.address) == ("a", B)


def test_a_relinquish_names_the_target_to_follow_once_stopped():
    decision = decide(view(primary(relinquish=True), **RUNNING_PRIMARY))
    assert (decision.action, decision.primary, decision.address) == (Action.RELINQUISH, "b", B)


@pytest.mark.parametrize("instruction, action", [
    (standby(epoch=4, address=B), Action.AWAIT_START),          # the decision: keep starting
    (primary(), Action.AWAIT_START),                            # kept primary: then P9 promotes
])
def test_a_switched_over_node_starting_as_the_targets_standby_is_left_to_start(instruction, action):
    decision = decide(view(instruction, pg="starting", hand_over=HandOver.SWITCHED_OVER))
    assert decision.action is action and decision.action not in READ_WRITE
    running = decide(view(instruction, pg="running", running_as="standby", upstream=B, streaming=True,
                          hand_over=HandOver.SWITCHED_OVER, not_streaming_since=NOW))
    assert running.action is (Action.STAY_STANDBY if instruction.role == "standby"
                              else Action.PROMOTE_RUNNING_STANDBY)


@pytest.mark.parametrize("instruction, kept", [
    (primary(), HandOver.NONE),         # the arbiter kept this node: it starts again
    (standby(), HandOver.NONE),         # the arbiter has a new primary
    (WAIT_FOR_IT, HandOver.HANDED_OVER),
    (primary(epoch=2), HandOver.HANDED_OVER),   # an old instruction changes nothing
    (None, HandOver.HANDED_OVER),
])
def test_a_hand_over_lasts_until_the_arbiter_answers_primary_or_standby(instruction, kept):
    decision = decide(view(instruction, data=DataDir.WAS_PRIMARY, hand_over=HandOver.HANDED_OVER))
    assert decision.hand_over is kept


def test_a_hand_over_answered_primary_starts_postgres_again():
    decision = decide(view(primary(), data=DataDir.WAS_PRIMARY, hand_over=HandOver.HANDED_OVER))
    assert decision.action is Action.START_PRIMARY


# -- random walk -----------------------------------------------------------------

DESTROYS_DATA = {Action.CLONE}      # pg_basebackup swaps a new copy in, replacing the old
TOUCHES_DATA = DESTROYS_DATA | {Action.REWIND, Action.BOOTSTRAP}


def random_instruction(rng, acted):
    roll = rng.random()
    if roll < 0.1:
        return None
    epoch = max(1, acted + rng.choice([-2, -1, 0, 0, 0, 1]))
    if roll < 0.2:
        return Instruction(epoch=epoch, role="wait", reason="test")
    order = rng.choice([0, 0, 0, 7])        # an operator's restart order, now and then
    if roll < 0.6:
        return replace(primary(epoch=epoch, sync=rng.choice([None, "b"]), relinquish=rng.random() < 0.1,
                               standby_address=rng.choice([None, B])), restart=order)
    return replace(standby(epoch=epoch, address=rng.choice([A, B])), restart=order)


def carry_out(node, decision, rng):
    """A crude model of node.py's effects, so the walk visits reachable states."""
    action = decision.then if decision.action is Action.RESTART_AFTER_CRASH else decision.action
    if decision.action is Action.RESTART_AFTER_CRASH:
        node["last_crash_restart"] = node["now"]
    node["hand_over"] = decision.hand_over
    if action in (Action.BOOTSTRAP, Action.START_PRIMARY, Action.PROMOTE_STOPPED_STANDBY,
                  Action.PROMOTE_RUNNING_STANDBY):
        if action is Action.START_PRIMARY and rng.random() < 0.1:   # will not start: hand over
            node.update(acting_primary=False, pg="stopped", hand_over=HandOver.HANDED_OVER)
        else:
            node.update(pg="running", running_as="primary", acting_primary=True, slot_ensured=None,
                        data=DataDir.WAS_PRIMARY)
    elif action is Action.HAND_OVER:
        node.update(pg="stopped", acting_primary=False, hand_over=HandOver.HANDED_OVER)
    elif action is Action.RELINQUISH:
        node.update(pg="stopped", acting_primary=False, hand_over=HandOver.SWITCHED_OVER)
        if decision.address is not None and rng.random() < 0.8:    # starts again as the target's standby
            node.update(pg="starting", running_as="standby", upstream=decision.address,
                        not_streaming_since=node["now"])
    elif action in (Action.SET_SYNC, Action.ENSURE_SLOT, Action.STAY_PRIMARY):
        node["acting_primary"] = True
        if decision.action is Action.SET_SYNC:
            node["sync_standby"] = decision.sync_standby
        if decision.slot:
            node["slot_ensured"] = decision.slot
    elif action is Action.DEMOTE:
        node.update(pg="stopped", acting_primary=False)
    elif action is Action.FOLLOW:
        node.update(upstream=decision.address, not_streaming_since=node["now"])
    elif action is Action.STAY_STANDBY:
        node.update(not_streaming_since=node["now"], rejoin_failures=0)
    elif action is Action.RESTART_REJOIN:
        node.update(pg="stopped", rejoin_failures=node["rejoin_failures"] + 1)
    elif action in (Action.CLONE, Action.REWIND, Action.START_STANDBY):
        if rng.random() < 0.2:      # could not start
            node["rejoin_failures"] += 1
        else:
            node.update(pg="running", running_as="standby", upstream=decision.address,
                        not_streaming_since=node["now"], data=DataDir.WAS_STANDBY)
    if decision.remember_epoch is not None:
        node["acted_epoch"] = max(node["acted_epoch"], decision.remember_epoch)


def perturb(node, rng):
    """Faults and the passing of time."""
    node["now"] += rng.choice([0.5, 0.5, 0.5, 5.0, 40.0])
    roll = rng.random()
    if roll < 0.08 and node["pg"] == "running":
        node["pg"] = "stopped"          # PostgreSQL crashed (acting_primary stays as it was)
    elif roll < 0.10:
        node["pg"] = "starting"
    elif roll < 0.12 and node["pg"] == "starting":
        node["pg"] = "running"
    elif roll < 0.14 and node["pg"] == "stopped":
        node["data"] = rng.choice(list(DataDir))
    elif roll < 0.16:
        node["acting_primary"] = False   # the watchdog fenced it
        node["pg"] = "stopped"
    node["streaming"] = rng.random() < 0.6
    node["sync_standby"] = node["sync_standby"] if rng.random() < 0.9 else rng.choice([None, "b"])


def as_view(node, instruction):
    running = node["pg"] == "running"
    return NodeView(
        now=node["now"], instruction=instruction, acted_epoch=node["acted_epoch"], pg=node["pg"],
        running_as=node["running_as"] if running else None, data=None if running else node["data"],
        data_error="unreadable" if node["data"] is DataDir.UNREADABLE else None,
        acting_primary=node["acting_primary"], hand_over=node["hand_over"],
        last_crash_restart=node["last_crash_restart"], rejoin_failures=node["rejoin_failures"],
        upstream=node["upstream"], streaming=node["streaming"],
        not_streaming_since=node["not_streaming_since"], slot_ensured=node["slot_ensured"],
        sync_standby=node["sync_standby"] if running else None)


@pytest.mark.parametrize("seed", range(4))
def test_random_walk_keeps_the_node_invariants(seed):
    rng = random.Random(seed)
    seen = set()
    for step in range(3000):
        if step % 250 == 0:     # now and then a new node on an empty data directory
            node = dict(now=1000.0 + step, acted_epoch=0, pg="stopped", running_as=None, data=DataDir.EMPTY,
                        acting_primary=False, hand_over=HandOver.NONE, last_crash_restart=-CRASH_RESTART_WINDOW,
                        rejoin_failures=0, upstream=None, streaming=False, not_streaming_since=None,
                        slot_ensured=None, sync_standby=None)
        instruction = random_instruction(rng, node["acted_epoch"])
        situation = as_view(node, instruction)
        decision = decide(situation)
        action = decision.action
        effective = decision.then if action is Action.RESTART_AFTER_CRASH else action
        seen.add(action)
        where = f"seed {seed} step {step}: {situation} -> {decision}"
        current = instruction is not None and instruction.epoch >= situation.acted_epoch
        # Read-write PostgreSQL only under a current primary instruction.
        if action in READ_WRITE:
            assert current and instruction.role == "primary", where
        # Promotion only when told to be primary.
        if effective in (Action.PROMOTE_RUNNING_STANDBY, Action.PROMOTE_STOPPED_STANDBY):
            assert instruction is not None and instruction.role == "primary", where
        # Nothing at all on no answer, an old epoch or a wait.
        if not current or instruction.role == "wait":
            assert action in (Action.NO_ANSWER, Action.IGNORE_OLD_EPOCH, Action.WAIT), where
            assert decision.remember_epoch is None and decision.hand_over is situation.hand_over, where
        # Data is replaced only when there is none, or an earlier rejoin failed,
        # and never under a running PostgreSQL.
        if action in DESTROYS_DATA:
            assert situation.data is DataDir.EMPTY or situation.rejoin_failures > 0, where
        if action in TOUCHES_DATA:
            assert situation.pg == "stopped" and not situation.acting_primary, where
        if action is Action.REWIND:
            assert situation.data is DataDir.WAS_PRIMARY, where
        if action is Action.BOOTSTRAP:
            assert situation.data is DataDir.EMPTY and instruction.epoch == 1 \
                and situation.acted_epoch <= 1, where
        # Epochs acted on never go down; a standby instruction never leaves us primary.
        if decision.remember_epoch is not None:
            assert decision.remember_epoch == instruction.epoch >= situation.acted_epoch, where
        if current and instruction.role == "standby" and (situation.acting_primary or
                                                          situation.running_as == "primary"):
            assert action is Action.DEMOTE, where
        before = node["acted_epoch"]
        carry_out(node, decision, rng)
        assert node["acted_epoch"] >= before
        perturb(node, rng)
    # The walk is worth something only if it went through the interesting rows.
    assert {Action.BOOTSTRAP, Action.START_PRIMARY, Action.DEMOTE, Action.CLONE, Action.REWIND,
            Action.PROMOTE_RUNNING_STANDBY, Action.HAND_OVER, Action.RELINQUISH} <= seen, seen


def test_an_instruction_reaches_the_rules_as_its_roles_own_type():
    from pgha.node_rules import AsPrimary, AsStandby, Wait, orders
    there = Address(host="10.0.0.2", pg_port=5432, peer_port=5433, slot="rep2")
    assert orders(Instruction(epoch=4, role="primary", standby="b", standby_address=there, sync_standby="b",
                              relinquish=True, paused=True)) == \
        AsPrimary(epoch=4, sync_standby="b", standby="b", standby_address=there, relinquish=True, paused=True)
    assert orders(Instruction(epoch=4, role="standby", primary="a", primary_address=there)) == \
        AsStandby(epoch=4, primary="a", primary_address=there, paused=False)
    assert orders(Instruction(epoch=4, role="wait", reason="no primary yet")) == \
        Wait(epoch=4, reason="no primary yet", paused=False)
    with pytest.raises(ValueError, match="names no primary"):
        orders(Instruction(epoch=4, role="standby", primary="a"))


def test_the_rejoin_backoff_doubles_from_half_a_second_to_thirty():
    assert [node_rules.rejoin_backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
