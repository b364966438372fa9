"""The arbiter's decision rules (pgha/decision.py), table-driven.

Two nodes, "a" (the primary unless a test says otherwise) and "b". Timings are
pinned here: heartbeat 0.5 s, lease 3 s, margin 1 s (so a silent primary may
be replaced after 4 s), sync stall 1.5 s, standby reply timeout 2 s; any
other timing keeps the default of arbiter_settings.py.
"""
import random
from dataclasses import replace
from pathlib import Path

import pytest

from pgha import settings
from pgha.decision import ClusterState, Memory, Timings, on_heartbeat, request_switchover
from pgha.messages import Address, Instruction, Report, ReplicationRow
from pgha.topology import Topology
from testsuite import helpers

TOPOLOGY = Topology(("a", "b"))


def marked(promotable):
    """The tables say yes/no for the pair's standby "b" (the primary is "a")."""
    return frozenset({"b"}) if promotable else frozenset()
NODES = TOPOLOGY.members
DEFAULT_SETTINGS = Path(__file__).resolve().parents[2] / "arbiter_settings.py"


def pinned_timings(**overrides):
    """The timings these tables are written for, on top of the user's defaults."""
    defaults = Timings.from_settings(settings.load(DEFAULT_SETTINGS, settings.ARBITER_SPECS))
    pinned = dict(heartbeat_interval=0.5, lease_time=3.0, failover_margin=1.0, sync_stall_timeout=1.5,
                  standby_reply_timeout=2.0, strict_sync=False)
    return replace(defaults, **{**pinned, **overrides})


T = pinned_timings()
STRICT = pinned_timings(strict_sync=True)
LEASE_PLUS_MARGIN = T.lease_time + T.failover_margin   # 4.0
NOW = 100.0


# -- building blocks: the shared wire reports, parsed as the arbiter parses them ----------

def address(name):
    return Address.from_wire(helpers.address(name))


def row(**fields):
    return ReplicationRow.from_wire(helpers.row(**fields))


def _wire_rows(replication):
    return replication if replication == "default" else [r.to_wire() for r in replication]


def primary_report(replication="default", **fields):
    return Report.from_wire(helpers.primary_report(replication=_wire_rows(replication), **fields))


def standby_report(**fields):
    return Report.from_wire(helpers.standby_report(**fields))


def steady_memory(primary_seen_at=NOW, standby_seen_at=NOW, primary="a", **fields):
    """Both nodes have reported: the primary a healthy sync standby, the standby no grant."""
    standby = TOPOLOGY.standby_of(primary)
    return Memory(last_seen={primary: primary_seen_at, standby: standby_seen_at},
                  reports={primary: primary_report(name=primary, replication=[row(name=standby)],
                                                   sync_standby=standby),
                           standby: standby_report(name=standby)},
                  primary_seen_at=primary_seen_at, **fields)


def failover_events(outcome):
    return [text for level, text in outcome.events if level == "failover"]


def assert_no_failover(before, outcome):
    assert outcome.state.epoch == before.epoch
    assert outcome.state.primary == before.primary
    assert failover_events(outcome) == []


def assert_failover(before, outcome, new_primary):
    assert outcome.state == ClusterState(epoch=before.epoch + 1, primary=new_primary)
    [event] = failover_events(outcome)
    assert f"epoch {before.epoch + 1}" in event and new_primary in event


# -- standby heartbeats: the failover rule (invariants 1 and 2) ------------------

FAILOVER_TABLE = [
    # id, promotable, seconds the primary has been silent, standby report, node epoch, promote?
    ("promotable-silent-past-lease-no-grant", True, 4.5, standby_report(), 3, True),
    ("exactly-lease-plus-margin", True, LEASE_PLUS_MARGIN, standby_report(), 3, True),
    ("long-silence", True, 600.0, standby_report(), 3, True),
    ("node-epoch-older-is-fine", True, 4.5, standby_report(), 1, True),
    ("not-promotable", False, 600.0, standby_report(), 3, False),
    ("primary-silent-less-than-lease", True, 2.0, standby_report(), 3, False),
    ("primary-silent-past-lease-within-margin", True, 3.9, standby_report(), 3, False),
    ("primary-just-heard", True, 0.0, standby_report(), 3, False),
    ("standby-still-grants-a-lease", True, 600.0, standby_report(grant_remaining=0.4), 3, False),
    ("standby-grant-tiny", True, 600.0, standby_report(grant_remaining=0.001), 3, False),
    ("standby-pg-stopped", True, 600.0, standby_report(pg="stopped"), 3, False),
    ("standby-pg-starting", True, 600.0, standby_report(pg="starting"), 3, False),
    ("standby-runs-as-primary", True, 600.0, standby_report(role="primary"), 3, False),
    ("node-epoch-newer-than-arbiter", True, 600.0, standby_report(), 4, False),
]


@pytest.mark.parametrize("promotable, silent, report, node_epoch, promote",
                         [case[1:] for case in FAILOVER_TABLE], ids=[case[0] for case in FAILOVER_TABLE])
def test_standby_heartbeat_failover_rule(promotable, silent, report, node_epoch, promote):
    state = ClusterState(epoch=3, primary="a", promotable=marked(promotable))
    memory = steady_memory(primary_seen_at=NOW - silent, standby_seen_at=NOW - 0.5)
    outcome = on_heartbeat(state, memory, TOPOLOGY, "b", node_epoch, report, NOW, T)

    if promote:
        assert_failover(state, outcome, "b")
        i = outcome.instruction
        assert (i.role, i.epoch, i.standby, i.relinquish) == ("primary", 4, "a", False)
        assert i.sync_standby is None          # nothing known about the old primary yet
        assert i.standby_address == address("a")
        assert outcome.memory.primary_seen_at == NOW   # the new primary's lease starts now
    else:
        assert outcome.state == state
        assert failover_events(outcome) == []
        if node_epoch > state.epoch:
            assert outcome.instruction.role == "wait"
            assert "state lost" in outcome.instruction.reason
            assert [level for level, _ in outcome.events] == ["error"]
        else:
            i = outcome.instruction
            assert (i.role, i.epoch, i.primary) == ("standby", 3, "a")
            assert i.primary_address == address("a")
    # The heartbeat is remembered either way.
    assert outcome.memory.last_seen["b"] == NOW and outcome.memory.reports["b"] == report


def test_standby_instruction_carries_timings():
    outcome = on_heartbeat(ClusterState(1, "a"), steady_memory(), TOPOLOGY, "b", 1, standby_report(), NOW, T)
    assert outcome.instruction.lease_time == T.lease_time
    assert outcome.instruction.heartbeat_interval == T.heartbeat_interval


def test_switchover_target_is_told_to_hurry_until_promoted():
    state = ClusterState(1, "a", promotable={"b"})
    plain = on_heartbeat(state, steady_memory(), TOPOLOGY, "b", 1, standby_report(), NOW, T)
    assert not plain.instruction.hurry
    memory, error = request_switchover(state, steady_memory(), TOPOLOGY, "b")
    assert error is None
    hurried = on_heartbeat(state, memory, TOPOLOGY, "b", 1, standby_report(), NOW, T)
    assert hurried.instruction.hurry
    assert Instruction.from_wire(hurried.instruction.to_wire()).hurry


def test_standby_waits_until_the_primary_has_reported():
    memory = Memory.at_start(NOW)
    outcome = on_heartbeat(ClusterState(1, "a"), memory, TOPOLOGY, "b", 1, standby_report(), NOW, T)
    assert outcome.instruction.role == "wait"
    assert outcome.instruction.epoch == 1
    assert "a" in outcome.instruction.reason


# -- arbiter restart ---------------------------------------------------------------

@pytest.mark.parametrize("after, promote", [(0.0, False), (1.0, False), (3.0, False), (3.99, False),
                                            (4.0, True), (10.0, True)],
                         ids=lambda v: str(v))
def test_restarted_arbiter_waits_a_full_lease_plus_margin(after, promote):
    start = 500.0
    state = ClusterState(epoch=7, primary="a", promotable={"b"})   # as read from disk
    memory = Memory.at_start(start)
    outcome = on_heartbeat(state, memory, TOPOLOGY, "b", 7, standby_report(), start + after, T)
    if promote:
        assert_failover(state, outcome, "b")
    else:
        assert_no_failover(state, outcome)


def test_restarted_arbiter_renews_the_primary_that_reports():
    state = ClusterState(epoch=7, primary="a", promotable={"b"})
    memory = Memory.at_start(500.0)
    memory = on_heartbeat(state, memory, TOPOLOGY, "a", 7, primary_report(), 503.0, T).memory
    outcome = on_heartbeat(state, memory, TOPOLOGY, "b", 7, standby_report(), 506.0, T)
    assert_no_failover(state, outcome)          # 3 s since the primary, not 4
    outcome = on_heartbeat(state, outcome.memory, TOPOLOGY, "b", 7, standby_report(), 507.0, T)
    assert_failover(state, outcome, "b")


# -- primary heartbeats: keeping and dropping sync (invariant 5) --------------------

SYNC_TABLE = [
    # id, timings, promotable before, primary report, promotable after, sync_standby, warning?
    ("healthy-sync", T, True, primary_report(), True, "b", False),
    ("wait-below-stall", T, True, primary_report(syncrep_wait=1.4), True, "b", False),
    ("reply-age-at-limit", T, True, primary_report(replication=[row(reply_age=2.0)]), True, "b", False),
    ("catchup", T, True, primary_report(replication=[row(state="catchup")]), False, None, True),
    ("row-absent", T, True, primary_report(replication=[]), False, None, True),
    ("row-of-another-name", T, True, primary_report(replication=[row(name="zz")]), False, None, True),
    ("reply-stale", T, True, primary_report(replication=[row(reply_age=2.5)]), False, None, True),
    ("wait-above-stall", T, True, primary_report(syncrep_wait=1.6), False, None, True),
    ("wait-at-stall", T, True, primary_report(syncrep_wait=1.5), False, None, True),
    ("strict-row-absent", STRICT, True, primary_report(replication=[]), True, "b", False),
    ("strict-stalled", STRICT, True, primary_report(syncrep_wait=30.0), True, "b", False),
    ("strict-reply-stale", STRICT, True, primary_report(replication=[row(reply_age=9)]), True, "b", False),
    ("primary-pg-stopped", T, True, primary_report(pg="stopped"), True, "b", False),
    ("primary-pg-starting", T, True, primary_report(pg="starting"), True, "b", False),
    ("primary-still-in-recovery", T, True, primary_report(role="standby"), True, "b", False),
    # Not promotable: sync is asked for whenever the standby streams.
    ("np-healthy-sync", T, False, primary_report(), False, "b", False),
    ("np-streaming-async", T, False, primary_report(sync_standby=None,
                                                     replication=[row(sync_state="async")]), False, "b", False),
    ("np-catchup", T, False, primary_report(replication=[row(state="catchup")]), False, None, False),
    ("np-row-absent", T, False, primary_report(replication=[]), False, None, False),
    ("np-reply-stale", T, False, primary_report(replication=[row(reply_age=5)]), False, None, False),
    ("np-strict-row-absent", STRICT, False, primary_report(replication=[]), False, "b", False),
    ("np-primary-pg-stopped", T, False, primary_report(pg="stopped"), False, None, False),
]


@pytest.mark.parametrize("timings, promotable, report, promotable_after, sync_standby, warning",
                         [case[1:] for case in SYNC_TABLE], ids=[case[0] for case in SYNC_TABLE])
def test_primary_heartbeat_sync_rules(timings, promotable, report, promotable_after, sync_standby, warning):
    state = ClusterState(epoch=2, primary="a", promotable=marked(promotable))
    memory = steady_memory(primary_seen_at=NOW - 0.5)
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 2, report, NOW, timings)

    assert outcome.state == replace(state, promotable=marked(promotable_after))
    i = outcome.instruction
    assert (i.role, i.epoch, i.standby, i.relinquish) == ("primary", 2, "b", False)
    assert i.sync_standby == sync_standby
    assert i.standby_address == address("b") and i.standby_slot == "slot_b"
    warnings = [text for level, text in outcome.events if level == "warning"]
    assert bool(warnings) == warning
    if warning:
        assert "not promotable" in warnings[0]
    assert outcome.memory.primary_seen_at == NOW      # the primary's lease is renewed
    assert failover_events(outcome) == []


def test_sync_is_never_dropped_while_promotable():
    """Over every row of the table: sync_standby None implies the (new, durable) state is not promotable."""
    for _, timings, promotable, report, *_ in SYNC_TABLE:
        state = ClusterState(epoch=2, primary="a", promotable=marked(promotable))
        outcome = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 2, report, NOW, timings)
        if outcome.instruction.sync_standby is None:
            assert not outcome.state.promotable and not timings.strict_sync


def test_stall_message_names_the_wait():
    state = ClusterState(epoch=2, primary="a", promotable={"b"})
    outcome = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 2, primary_report(syncrep_wait=2.0), NOW, T)
    [(level, text)] = outcome.events
    assert level == "warning" and "waited 2.0s" in text


@pytest.mark.parametrize("replication, why", [
    ([row(reply_age=2.5)], "it has not answered the primary for 2.5s"),
    ([row(state="catchup")], "it is not streaming"),
    ([], "it is not streaming"),
])
def test_the_not_promotable_message_says_which(replication, why):
    """A standby connected but silent is not called "not streaming" (issue 19:
    a skewed clock made a streaming standby look silent)."""
    state = ClusterState(epoch=2, primary="a", promotable={"b"})
    outcome = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 2, primary_report(replication=replication), NOW, T)
    [(level, text)] = outcome.events
    assert level == "warning" and f"not promotable ({why})" in text


@pytest.mark.parametrize("report", [
    primary_report(sync_standby=None, replication=[row(sync_state="async")]),
    primary_report(sync_standby="zz", replication=[row(sync_state="async")]),
], ids=["names-cleared", "names-another-node"])
def test_primary_reporting_sync_off_revokes_promotable(report):
    """Invariant 1: a primary that no longer names the standby may commit without it."""
    state = ClusterState(epoch=2, primary="a", promotable={"b"})
    outcome = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 2, report, NOW, T)
    assert not outcome.state.promotable


# -- becoming promotable: sync seen on, then caught up (two reports) -----------------

def run_primary(state, memory, reports, start=NOW, timings=T, step=0.5):
    """Feed primary heartbeats; return the outcomes."""
    outcomes = []
    for n, report in enumerate(reports):
        outcome = on_heartbeat(state, memory, TOPOLOGY, "a", state.epoch, report, start + n * step, timings)
        outcomes.append(outcome)
        state, memory = outcome.state, outcome.memory
    return outcomes


def sync_report(lsn, flush, **kw):
    return primary_report(lsn=lsn, replication=[row(flush_lsn=flush, **kw.pop("row", {}))], **kw)


@pytest.mark.parametrize("timings", [T, STRICT], ids=["normal", "strict"])
def test_promotable_after_sync_seen_and_flush_reaches_recorded_lsn(timings):
    state = ClusterState(epoch=2, primary="a")
    outs = run_primary(state, Memory(), [sync_report(1000, 900), sync_report(1200, 999),
                                         sync_report(1300, 1000), sync_report(1400, 1400)], timings=timings)
    assert [bool(o.state.promotable) for o in outs] == [False, False, True, True]
    assert outs[0].memory.sync_since == {"b": 1000}    # the primary LSN when sync was first seen
    assert outs[1].memory.sync_since == {"b": 1000}    # not moved by later reports
    assert outs[2].memory.sync_since == {}
    assert [lvl for lvl, _ in outs[2].events] == ["info"] and "promotable" in outs[2].events[0][1]
    assert all(o.instruction.sync_standby == "b" for o in outs)


def test_one_report_is_never_enough():
    state = ClusterState(epoch=2, primary="a")
    [out] = run_primary(state, Memory(), [sync_report(1000, 1000)])
    assert not out.state.promotable and out.memory.sync_since == {"b": 1000}


INTERRUPTIONS = {
    "async": dict(row={"sync_state": "async"}),
    "names-not-set": dict(sync_standby=None),
    "catchup": dict(row={"state": "catchup"}),
    "reply-stale": dict(row={"reply_age": 3.0}),
    "stalled": dict(syncrep_wait=2.0),
}


@pytest.mark.parametrize("interruption", INTERRUPTIONS.values(), ids=INTERRUPTIONS.keys())
def test_interrupted_sync_restarts_the_handshake(interruption):
    state = ClusterState(epoch=2, primary="a")
    outs = run_primary(state, Memory(), [
        sync_report(1000, 1000),                 # sync seen on at LSN 1000
        sync_report(1100, 1050, **interruption),  # not sync and healthy: forget it
        sync_report(1200, 1100),                 # flush >= 1000, but the hand-shake starts again at 1200
        sync_report(1300, 1199),
        sync_report(1400, 1200),
    ])
    assert [bool(o.state.promotable) for o in outs] == [False, False, False, False, True]
    assert [o.memory.sync_since.get("b") for o in outs] == [1000, None, 1200, 1200, None]


def test_sync_on_for_another_standby_name_does_not_count():
    state = ClusterState(epoch=2, primary="a")
    outs = run_primary(state, Memory(), [sync_report(1000, 1000, sync_standby="zz")] * 3)
    assert not any(o.state.promotable for o in outs)


def test_after_a_drop_sync_is_held_off_for_a_lease():
    state = ClusterState(epoch=2, primary="a", promotable={"b"})
    dropped = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 2, primary_report(syncrep_wait=2.0), NOW, T)
    assert not dropped.state.promotable and dropped.memory.sync_dropped_at == NOW
    healthy = primary_report(sync_standby=None, replication=[row(sync_state="async")])
    for later, wanted in [(1.0, None), (T.lease_time - 0.01, None), (T.lease_time, "b"), (10.0, "b")]:
        outcome = on_heartbeat(dropped.state, dropped.memory, TOPOLOGY, "a", 2, healthy, NOW + later, T)
        assert outcome.instruction.sync_standby == wanted, later


# -- the primary hands over (relinquish) ---------------------------------------------

RELINQUISH_TABLE = [
    # id, promotable, seconds since the standby reported, standby report, hand over?
    ("promotable-standby-healthy", True, 0.5, standby_report(), True),
    ("standby-still-granting-is-fine", True, 0.5, standby_report(grant_remaining=2.0), True),
    ("standby-seen-at-lease-limit", True, T.lease_time, standby_report(), True),
    ("not-promotable", False, 0.5, standby_report(), False),
    ("standby-report-stale", True, T.lease_time + 0.1, standby_report(), False),
    ("standby-pg-stopped", True, 0.5, standby_report(pg="stopped"), False),
    ("standby-pg-starting", True, 0.5, standby_report(pg="starting"), False),
    ("standby-runs-as-primary", True, 0.5, standby_report(role="primary"), False),
    ("standby-never-reported", True, None, None, False),
]


@pytest.mark.parametrize("promotable, standby_age, report, handover",
                         [case[1:] for case in RELINQUISH_TABLE], ids=[case[0] for case in RELINQUISH_TABLE])
def test_relinquish_fails_over_at_once_only_to_a_healthy_promotable_standby(promotable, standby_age, report,
                                                                              handover):
    state = ClusterState(epoch=5, primary="a", promotable=marked(promotable))
    memory = steady_memory(primary_seen_at=NOW - 0.5, switchover_to="b")
    if report is None:
        memory = replace(memory, reports={"a": memory.reports["a"]}, last_seen={"a": NOW - 0.5})
    else:
        memory = replace(memory, reports={**memory.reports, "b": report},
                         last_seen={**memory.last_seen, "b": NOW - standby_age})
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 5, primary_report(pg="stopped", relinquished=True), NOW, T)

    assert outcome.memory.switchover_to is None
    if handover:
        assert_failover(state, outcome, "b")
        i = outcome.instruction
        assert (i.role, i.epoch, i.primary, i.primary_address) == ("standby", 6, "b", address("b"))
    else:
        assert outcome.state == state
        assert failover_events(outcome) == []
        [(level, text)] = outcome.events
        assert level == "warning" and "cannot take over" in text
        i = outcome.instruction
        assert (i.role, i.epoch, i.relinquish) == ("primary", 5, False)   # start again


@pytest.mark.parametrize("fields, handover", [
    (dict(pg="stopped"), True),
    (dict(pg="starting"), True),                     # starting again, as the target's standby
    (dict(pg="running", role="standby"), True),      # in recovery, following the target
    (dict(pg="running", role="primary"), False),     # still takes commits: no hand-over
], ids=["stopped", "starting", "running-in-recovery", "running-read-write"])
def test_a_hand_over_counts_only_while_the_old_primary_takes_no_commit(fields, handover):
    state = ClusterState(epoch=5, primary="a", promotable={"b"})
    memory = steady_memory(primary_seen_at=NOW - 0.5, switchover_to="b")
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 5, primary_report(relinquished=True, **fields), NOW, T)
    if handover:
        assert_failover(state, outcome, "b")
    else:
        assert outcome.state == state and failover_events(outcome) == []


# -- switchover requests -------------------------------------------------------------

@pytest.mark.parametrize("promotable, target, error", [
    (False, None, "not promotable"),
    (False, "b", "not promotable"),
    (True, "zz", "unknown node"),
    (True, "a", "already the primary"),
], ids=["not-promotable-default", "not-promotable-named", "unknown-node", "already-primary"])
def test_switchover_refused(promotable, target, error):
    memory = steady_memory()
    new_memory, problem = request_switchover(ClusterState(3, "a", marked(promotable)), memory, TOPOLOGY, target)
    assert error in problem
    assert new_memory == memory
    primary = on_heartbeat(ClusterState(3, "a", marked(promotable)), new_memory, TOPOLOGY, "a", 3, primary_report(),
                           NOW, T)
    assert primary.instruction.relinquish is False


@pytest.mark.parametrize("target", [None, "b"], ids=["default-target", "named-target"])
def test_switchover_accepted_leads_to_relinquish_and_handover(target):
    state = ClusterState(3, "a", promotable={"b"})
    memory, problem = request_switchover(state, steady_memory(), TOPOLOGY, target)
    assert problem is None and memory.switchover_to == "b"

    standby = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW + 0.1, T)
    assert standby.instruction.role == "standby" and "relinquish" not in standby.instruction.to_wire()
    primary = on_heartbeat(state, standby.memory, TOPOLOGY, "a", 3, primary_report(), NOW + 0.2, T)
    assert primary.instruction.relinquish is True
    assert primary.state == state                                  # nothing changes yet

    done = on_heartbeat(primary.state, primary.memory, TOPOLOGY, "a", 3,
                        primary_report(pg="stopped", relinquished=True), NOW + 0.7, T)
    assert_failover(state, done, "b")
    assert done.memory.switchover_to is None


def test_switchover_relinquish_withdrawn_when_promotable_drops():
    state = ClusterState(3, "a", promotable={"b"})
    memory, _ = request_switchover(state, steady_memory(), TOPOLOGY, "b")
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 3, primary_report(replication=[]), NOW, T)
    assert not outcome.state.promotable
    assert outcome.instruction.relinquish is False


# -- a node whose epoch is newer than the arbiter's -------------------------------------

@pytest.mark.parametrize("node, report", [("a", primary_report()), ("b", standby_report())],
                         ids=["primary", "standby"])
def test_node_epoch_newer_than_arbiter_refuses_to_decide(node, report):
    state = ClusterState(epoch=2, primary="a", promotable={"b"})
    memory = steady_memory(primary_seen_at=NOW - 50)
    outcome = on_heartbeat(state, memory, TOPOLOGY, node, 3, report, NOW, T)
    assert outcome.state == state
    assert outcome.instruction == Instruction(epoch=2, role="wait", reason=outcome.instruction.reason)
    [(level, text)] = outcome.events
    assert level == "error" and "epoch 3" in text and "state file" in text
    assert "--rebuild" in text      # issue 19: after a wrong --init, the way out is named
    # Not a lease renewal: a primary claiming an unknown epoch is not heard.
    assert outcome.memory.primary_seen_at == NOW - 50


# -- randomised walk: invariants over thousands of steps ---------------------------------

def _random_report(rng, node, state, lsn, chaos):
    """A report from `node`; `chaos` is the chance of each thing going wrong."""
    def bad():
        return rng.random() < chaos

    standby = TOPOLOGY.standby_of(node)
    pg = rng.choice(["stopped", "starting"]) if bad() else "running"
    report = Report(pg=pg, address=address(node), relinquished=bad() and rng.random() < 0.3,
                    grant_remaining=rng.choice([0.2, 2.5]) if bad() else 0.0)
    if pg != "running":
        return report
    is_primary = node == state.primary
    role = ("primary" if is_primary else "standby") if not bad() else rng.choice(["primary", "standby"])
    report = replace(report, role=role, lsn=lsn, syncrep_wait=rng.choice([1.4, 1.5, 3.0]) if bad() else 0.0,
                     sync_standby=None if bad() else standby, replication=())
    if role == "primary" and not bad():
        report = replace(report, replication=(
            row(name=standby,
                state="catchup" if bad() else "streaming",
                sync_state="async" if bad() else "sync",
                flush_lsn=lsn - rng.choice([0, 0, 10, 300]),
                reply_age=rng.choice([2.1, 60.0]) if bad() else rng.choice([0.0, 0.5, 1.9])),))
    return report


def _sync_healthy(report, standby, timings):
    rows = [r for r in report.replication if r.name == standby]
    return (report.pg == "running" and report.role == "primary" and bool(rows)
            and rows[0].state == "streaming" and rows[0].sync_state == "sync"
            and rows[0].reply_age <= timings.standby_reply_timeout
            and report.sync_standby == standby
            and report.syncrep_wait < timings.sync_stall_timeout)


@pytest.mark.parametrize("timings", [T, STRICT], ids=["normal", "strict"])
def test_random_walk_keeps_the_invariants(timings):
    rng = random.Random(0x5EED + timings.strict_sync)
    state = ClusterState(epoch=1, primary="a")
    now = 0.0
    memory = Memory.at_start(now)
    primary_heard = now         # our own record of when the primary's lease was last renewed
    handshake_lsn = None        # our own record of the sync hand-shake: LSN when sync was first seen
    handshake_reports = 0
    failovers = {}
    became_promotable = 0
    lsn = 1000

    for step in range(4000):
        if step % 100 == 0:
            chaos = rng.choice([0.01, 0.05, 0.2, 0.5])
        now += rng.choice([0.0, 0.1, 0.5, 0.5, 0.5, 1.0, 2.0, 4.5])
        lsn += rng.choice([0, 10, 100])
        if rng.random() < 0.01:                          # the arbiter restarts
            memory = Memory.at_start(now)
            primary_heard, handshake_lsn, handshake_reports = now, None, 0
        if rng.random() < 0.02:
            memory, _ = request_switchover(state, memory, TOPOLOGY, rng.choice([None, "a", "b", "zz"]))
        node = rng.choice(NODES)
        node_epoch = state.epoch + rng.choices([0, -1, 1], [0.9, 0.08, 0.02])[0]
        report = _random_report(rng, node, state, lsn, chaos)

        before = state
        outcome = on_heartbeat(state, memory, TOPOLOGY, node, node_epoch, report, now, timings)
        state, memory = outcome.state, outcome.memory
        where = f"step {step}: {node} epoch {node_epoch} at {now}: {before} -> {state}"

        # The epoch never goes back; it moves only with the primary, by exactly one.
        assert state.epoch >= before.epoch, where
        fo = failover_events(outcome)
        if state.epoch != before.epoch:
            assert state.epoch == before.epoch + 1, where
            assert state.primary != before.primary, where
            assert before.promotable, "promoted a standby that was not promotable: " + where
            assert not state.promotable, where
            assert len(fo) == 1, where
            failovers[state.epoch] = failovers.get(state.epoch, 0) + 1
            if node == before.primary:                  # a hand-over
                assert report.relinquished, where
            else:                                       # the primary went silent
                assert node == state.primary, where
                assert now - primary_heard >= timings.lease_time + timings.failover_margin, where
                assert report.grant_remaining == 0, where
                assert (report.pg, report.role) == ("running", "standby"), where
            primary_heard, handshake_lsn, handshake_reports = now, None, 0
        else:
            assert state.primary == before.primary and fo == [], where
            if node == state.primary and node_epoch <= state.epoch:
                primary_heard = now
                # Our own model of the sync hand-shake.
                if report.relinquished:
                    pass
                elif before.promotable:
                    handshake_lsn, handshake_reports = None, 0
                elif _sync_healthy(report, TOPOLOGY.standby_of(node), timings):
                    if handshake_lsn is None:
                        handshake_lsn, handshake_reports = report.lsn, 1
                    else:
                        handshake_reports += 1
                elif report.pg == "running" and report.role == "primary":
                    handshake_lsn, handshake_reports = None, 0
            if state.promotable and not before.promotable:
                became_promotable += 1
                assert node == state.primary and handshake_reports >= 2, where
                assert report.replication[0].flush_lsn >= handshake_lsn, where
                handshake_lsn, handshake_reports = None, 0

        # Sync is off only when the durable state says not promotable (never in strict mode).
        i = outcome.instruction
        if i.role == "primary":
            assert i.epoch == state.epoch and node == state.primary, where
            if i.sync_standby is None:
                assert not state.promotable and not timings.strict_sync, where
            if timings.strict_sync:
                assert i.sync_standby == TOPOLOGY.standby_of(node), where
            if i.relinquish:
                assert state.promotable, where
        elif i.role == "standby":
            assert i.epoch == state.epoch and i.primary == state.primary != node, where

    assert all(count == 1 for count in failovers.values())
    # The walk must actually have exercised the interesting paths.
    assert len(failovers) >= 20 and became_promotable >= 20, (failovers, became_promotable)


# -- no commit without a synchronous standby after a local restart or a switchover --------

def restarted_primary(state, seconds_later, replication=(), syncrep_wait=0.0):
    """The primary's PostgreSQL was down at NOW and runs again `seconds_later`."""
    down = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", state.epoch, primary_report(pg="starting"), NOW, T)
    assert down.state == state
    up = on_heartbeat(state, down.memory, TOPOLOGY, "a", state.epoch,
                      primary_report(replication=list(replication), syncrep_wait=syncrep_wait),
                      NOW + 0.5, T)
    if seconds_later <= 0.5:
        return up
    return on_heartbeat(up.state, up.memory, TOPOLOGY, "a", state.epoch,
                        primary_report(replication=list(replication), syncrep_wait=syncrep_wait),
                        NOW + seconds_later, T)


@pytest.mark.parametrize("seconds_later", [0.5, 1.5, 2.4])
def test_a_restarted_primary_keeps_sync_while_its_standby_reconnects(seconds_later):
    state = ClusterState(4, "a", promotable={"b"})
    outcome = restarted_primary(state, seconds_later)
    assert outcome.state.promotable
    assert outcome.instruction.sync_standby == "b"


def test_a_restarted_primary_whose_standby_stays_away_drops_sync_after_the_grace():
    state = ClusterState(4, "a", promotable={"b"})
    outcome = restarted_primary(state, 0.5 + T.standby_reply_timeout + 0.1)
    assert not outcome.state.promotable


def test_stalled_commits_end_the_reconnect_grace_at_once():
    state = ClusterState(4, "a", promotable={"b"})
    outcome = restarted_primary(state, 0.5, syncrep_wait=T.sync_stall_timeout)
    assert not outcome.state.promotable


def test_without_a_restart_a_vanished_standby_is_dropped_at_once():
    state = ClusterState(4, "a", promotable={"b"})
    outcome = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 4, primary_report(replication=[]), NOW, T)
    assert not outcome.state.promotable


def switched_over(planned=True):
    """a handed over to b (planned, or after a crash) and b reports as primary for the first time."""
    state = ClusterState(3, "a", promotable={"b"})
    memory = steady_memory(switchover_to="b" if planned else None)
    done = on_heartbeat(state, memory, TOPOLOGY, "a", 3, primary_report(pg="stopped", relinquished=True), NOW, T)
    assert_failover(state, done, "b")
    return done


@pytest.mark.parametrize("planned, sync", [(True, "a"), (False, None)], ids=["planned", "crash-hand-over"])
def test_after_a_planned_switchover_the_new_primary_waits_for_the_old_one(planned, sync):
    done = switched_over(planned)
    promoting = on_heartbeat(done.state, done.memory, TOPOLOGY, "b", 3, standby_report(), NOW + 0.1, T)
    assert promoting.instruction.role == "primary"
    assert promoting.instruction.sync_standby == sync
    running = on_heartbeat(promoting.state, promoting.memory, TOPOLOGY, "b", 4,
                           primary_report(name="b", sync_standby=sync, replication=[]), NOW + 0.6, T)
    assert running.instruction.sync_standby == sync


def test_after_a_switchover_the_old_primary_rejoining_makes_it_promotable():
    done = switched_over()
    memory = done.memory
    for i, flush in enumerate((1000, 1000, 1000)):
        outcome = on_heartbeat(done.state, memory, TOPOLOGY, "b", 4,
                               primary_report(name="b", standby="a", sync_standby="a",
                                              replication=[row(name="a", flush_lsn=flush)]),
                               NOW + 0.5 * (i + 1), T)
        memory, done = outcome.memory, outcome
    assert done.state.promotable and memory.handover_from is None


def test_an_old_primary_that_does_not_rejoin_costs_sync_only_after_a_stall_or_a_lease():
    done = switched_over()
    stalled = on_heartbeat(done.state, done.memory, TOPOLOGY, "b", 4,
                           primary_report(name="b", sync_standby="a", replication=[],
                                          syncrep_wait=T.sync_stall_timeout), NOW + 1.0, T)
    assert stalled.instruction.sync_standby is None
    assert any("did not rejoin" in text for _, text in stalled.events)
    quiet = on_heartbeat(done.state, done.memory, TOPOLOGY, "b", 4,
                         primary_report(name="b", sync_standby="a", replication=[]), NOW + T.lease_time + 0.1, T)
    assert quiet.instruction.sync_standby is None


# -- maintenance mode (paused) ----------------------------------------------------------

from pgha.decision import failover_blocker, request_failover, set_paused  # noqa: E402
from pgha.errors import ProtocolError  # noqa: E402


@pytest.mark.parametrize("case", [c for c in FAILOVER_TABLE if c[5]], ids=[c[0] for c in FAILOVER_TABLE if c[5]])
def test_paused_no_failover_in_any_row_that_would_promote(case):
    """Every row of the failover table that promotes does not while paused;
    the standby is told to stay a standby, with paused=True."""
    _, promotable, silent, report, node_epoch, _ = case
    state = ClusterState(epoch=3, primary="a", promotable=marked(promotable), paused=True)
    memory = steady_memory(primary_seen_at=NOW - silent, standby_seen_at=NOW - 0.5)
    outcome = on_heartbeat(state, memory, TOPOLOGY, "b", node_epoch, report, NOW, T)
    assert_no_failover(state, outcome)
    i = outcome.instruction
    assert (i.role, i.epoch, i.paused) == ("standby", 3, True)
    assert i.to_wire()["paused"] is True


def test_paused_primary_keeps_managing_sync_and_its_instruction_says_paused():
    state = ClusterState(epoch=3, primary="a", promotable={"b"}, paused=True)
    memory = steady_memory()
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 3, primary_report(replication=[]), NOW, T)
    assert outcome.state == replace(state, promotable=frozenset())     # invariant 5 still runs: writes go on
    assert outcome.state.paused and outcome.instruction.paused
    assert outcome.instruction.sync_standby is None


def test_paused_relinquish_does_not_hand_over():
    state = ClusterState(epoch=5, primary="a", promotable={"b"}, paused=True)
    memory = steady_memory(primary_seen_at=NOW - 0.5, switchover_to="b")
    outcome = on_heartbeat(state, memory, TOPOLOGY, "a", 5, primary_report(pg="stopped", relinquished=True), NOW, T)
    assert_no_failover(state, outcome)


def test_pause_drops_a_pending_switchover_and_refuses_new_ones():
    state = ClusterState(3, "a", promotable={"b"})
    memory, _ = request_switchover(state, steady_memory(), TOPOLOGY, "b")
    paused, memory = set_paused(state, memory, True)
    assert paused.paused and memory.switchover_to is None
    primary = on_heartbeat(paused, memory, TOPOLOGY, "a", 3, primary_report(), NOW, T)
    assert primary.instruction.relinquish is False
    assert "paused" in request_switchover(paused, memory, TOPOLOGY, "b")[1]
    assert "paused" in request_failover(paused, memory, TOPOLOGY, "b", True, NOW, T)[1]


def test_resume_lets_the_held_back_failover_happen():
    state = ClusterState(epoch=3, primary="a", promotable={"b"}, paused=True)
    memory = steady_memory(primary_seen_at=NOW - 60, standby_seen_at=NOW - 0.5)
    held = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert_no_failover(state, held)
    resumed, memory = set_paused(held.state, held.memory, False)
    outcome = on_heartbeat(resumed, memory, TOPOLOGY, "b", 3, standby_report(), NOW + 0.5, T)
    assert_failover(resumed, outcome, "b")
    assert outcome.instruction.paused is False


def test_a_primary_left_unfenced_in_pause_holds_back_the_failover_after_resume():
    """Issue 21: the primary's daemon stopped in pause and said so (unfenced):
    its PostgreSQL runs on with no lease, so a resume fails nothing over until
    that daemon reports again; an operator's failover is the way past it."""
    state = ClusterState(epoch=3, primary="a", promotable={"b"}, paused=True)
    farewell = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 3, replace(primary_report(), unfenced=True), NOW, T)
    assert farewell.instruction.paused and farewell.state.primary_unfenced     # saved before the reply
    resumed, memory = set_paused(farewell.state, farewell.memory, False)
    later = NOW + 60
    memory = replace(memory, last_seen={**memory.last_seen, "b": later})
    held = on_heartbeat(resumed, memory, TOPOLOGY, "b", 3, standby_report(), later, T)
    assert_no_failover(resumed, held)
    assert "unfenced" in failover_blocker(resumed, held.memory, "b", later, T)
    # The daemon back: it reports without the mark, and the rules are the usual ones again.
    back = on_heartbeat(resumed, held.memory, TOPOLOGY, "a", 3, primary_report(), later, T)
    assert not back.state.primary_unfenced
    assert failover_blocker(back.state, back.memory, "b", later, T) is not None    # it is alive: no failover
    # Or the operator's failover, once they say that server is stopped: promoted once the lease wait is over.
    assert "pass --primary-stopped" in request_failover(resumed, held.memory, TOPOLOGY, "b", False, later, T)[1]
    memory, problem, how = request_failover(resumed, held.memory, TOPOLOGY, "b", False, later, T,
                                            primary_stopped=True)
    assert problem is None and how == "failover"
    assert_failover(resumed, on_heartbeat(resumed, memory, TOPOLOGY, "b", 3, standby_report(), later, T), "b")


def test_unfenced_is_heard_only_in_pause():
    """Outside pause the daemon keeps its fencer armed (it disarms only on a
    paused answer), so the mark must not hold back a failover."""
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    farewell = on_heartbeat(state, steady_memory(), TOPOLOGY, "a", 3, replace(primary_report(), unfenced=True), NOW, T)
    assert not farewell.instruction.paused and not farewell.state.primary_unfenced
    later = NOW + 60
    memory = replace(farewell.memory, last_seen={**farewell.memory.last_seen, "b": later})
    assert_failover(state, on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), later, T), "b")


def test_unfenced_report_round_trips_on_the_wire():
    report = replace(primary_report(), unfenced=True)
    assert report.unfenced and report.to_wire()["unfenced"] is True
    assert "unfenced" not in primary_report().to_wire()
    assert Report.from_wire(report.to_wire()) == report
    with pytest.raises(ProtocolError):
        Report.from_wire({**report.to_wire(), "unfenced": "yes"})


# -- manual failover (pgha.ctl failover --to) -----------------------------------------

@pytest.mark.parametrize("promotable, silent, force, error, how", [
    (True, 0.5, False, None, "switchover"),
    (True, 0.5, True, None, "switchover"),
    (False, 0.5, False, "primary a is alive", ""),
    (False, 0.5, True, "primary a is alive", ""),       # force never drops commits of a live primary
    (True, 10.0, False, None, "failover"),
    (False, 10.0, False, "--allow-data-loss", ""),
    (False, 10.0, True, None, "failover"),
], ids=["live-promotable", "live-promotable-forced", "live-not-promotable", "live-not-promotable-forced",
        "silent-promotable", "silent-not-promotable", "silent-not-promotable-forced"])
def test_manual_failover_request(promotable, silent, force, error, how):
    state = ClusterState(3, "a", marked(promotable))
    memory = steady_memory(primary_seen_at=NOW - silent)
    new_memory, problem, kind = request_failover(state, memory, TOPOLOGY, "b", force, NOW, T)
    if error:
        assert error in problem and new_memory == memory
    else:
        assert problem is None and kind == how
        if how == "switchover":
            assert new_memory.switchover_to == "b" and new_memory.failover_to is None
        else:
            assert new_memory.failover_to == "b" and new_memory.failover_forced == (force and not promotable)


def test_forced_failover_waits_for_the_lease_and_then_promotes_a_non_promotable_standby():
    state = ClusterState(3, "a")
    memory = steady_memory(primary_seen_at=NOW - 3.5, standby_seen_at=NOW - 0.5)
    memory, problem, how = request_failover(state, memory, TOPOLOGY, "b", True, NOW, T)
    assert problem is None and how == "failover"
    early = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW, T)    # 3.5 s < lease + margin
    assert_no_failover(state, early)
    granting = on_heartbeat(state, early.memory, TOPOLOGY, "b", 3, standby_report(grant_remaining=0.5), NOW + 1, T)
    assert_no_failover(state, granting)                                                 # invariant 2 holds
    done = on_heartbeat(state, granting.memory, TOPOLOGY, "b", 3, standby_report(), NOW + 1.5, T)
    assert_failover(state, done, "b")
    assert "forced" in failover_events(done)[0]
    assert done.memory.failover_to is None and not done.memory.failover_forced


def test_a_primary_that_reports_voids_a_pending_manual_failover():
    state = ClusterState(3, "a")
    memory = steady_memory(primary_seen_at=NOW - 10)
    memory, _, _ = request_failover(state, memory, TOPOLOGY, "b", True, NOW, T)
    back = on_heartbeat(state, memory, TOPOLOGY, "a", 3, primary_report(), NOW + 0.1, T)
    assert back.memory.failover_to is None and not back.memory.failover_forced
    later = on_heartbeat(back.state, back.memory, TOPOLOGY, "b", 3, standby_report(), NOW + 20, T)
    assert_no_failover(state, later)


# -- report_in: a decision due before the next heartbeat is reported for in time -----------

REPORT_IN_TABLE = [
    # id, node, promotable, primary silent for, primary report, standby report, strict, expected
    ("idle-primary", "a", True, 0.0, primary_report(), standby_report(), False, None),
    ("short-commit-wait", "a", True, 0.0, primary_report(syncrep_wait=0.3), standby_report(), False, None),
    ("commit-wait-near-the-stall", "a", True, 0.0, primary_report(syncrep_wait=1.2), standby_report(), False,
     1.5 - 1.2 + 0.02),
    ("stalled-already", "a", True, 0.0, primary_report(syncrep_wait=1.6), standby_report(), False, None),
    ("not-promotable-waits-nothing", "a", False, 0.0, primary_report(syncrep_wait=1.2), standby_report(), False,
     None),
    ("strict-sync-never-drops", "a", True, 0.0, primary_report(syncrep_wait=1.2), standby_report(), True, None),
    ("standby-reply-near-timeout", "a", True, 0.0, primary_report(replication=[row(reply_age=1.8)]),
     standby_report(), False, 2.0 - 1.8 + 0.02),
    ("standby-primary-heard", "b", True, 0.4, primary_report(), standby_report(), False, None),
    ("standby-primary-silent-near-lease-plus-margin", "b", True, 3.7, primary_report(), standby_report(), False,
     4.0 - 3.7 + 0.02),
    ("standby-grant-runs-out-later", "b", True, 3.7, primary_report(), standby_report(grant_remaining=0.4),
     False, 0.42),
    ("standby-grant-runs-out-past-the-heartbeat", "b", True, 3.7, primary_report(),
     standby_report(grant_remaining=0.6), False, None),
    ("standby-not-promotable", "b", False, 3.7, primary_report(), standby_report(), False, None),
    ("standby-already-due", "b", True, 4.5, primary_report(), standby_report(), False, None),
]


@pytest.mark.parametrize("node, promotable, silent, p_report, s_report, strict, expected",
                         [case[1:] for case in REPORT_IN_TABLE], ids=[case[0] for case in REPORT_IN_TABLE])
def test_report_in_asks_for_a_report_only_when_a_decision_falls_due_first(node, promotable, silent, p_report,
                                                                          s_report, strict, expected):
    from pgha.decision import report_in
    timings = STRICT if strict else T
    memory = replace(steady_memory(primary_seen_at=NOW - silent), reports={"a": p_report, "b": s_report})
    state = ClusterState(epoch=3, primary="a", promotable=marked(promotable))
    got = report_in(state, memory, TOPOLOGY, node, NOW, timings)
    assert got == (None if expected is None else pytest.approx(expected))
    assert report_in(replace(state, paused=True), memory, TOPOLOGY, node, NOW, timings) is None


def test_report_in_reaches_the_node_and_is_sooner_than_the_heartbeat():
    memory = steady_memory(primary_seen_at=NOW - 3.7)
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    outcome = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert outcome.state == state
    wire = outcome.instruction.to_wire()
    assert 0 < wire["report_in"] < T.heartbeat_interval
    assert Instruction.from_wire({**wire, "v": 1}).report_in == wire["report_in"]
    idle = on_heartbeat(state, steady_memory(), TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert "report_in" not in idle.instruction.to_wire()


def test_the_unfenced_mark_is_durable_and_a_new_epoch_drops_it():
    """Issue 21: the mark is part of the stored state, so an arbiter
    restarted (or a new etcd leader) while that daemon is away holds the
    failover back too; the operator's failover ends it with the epoch."""
    from pgha import store
    state = ClusterState(epoch=3, primary="a", promotable={"b"}, paused=True, primary_unfenced=True)
    assert store.check_state(store.state_to_stored(state)) == state
    assert "primary_unfenced" not in store.state_to_stored(replace(state, primary_unfenced=False))
    assert store.check_state({**store.state_to_stored(state), "primary_unfenced": "yes"}) is None
    resumed = replace(state, paused=False)
    fresh = Memory.at_start(NOW)        # an arbiter restarted: no report from "a" in its memory
    later = NOW + 60
    fresh = replace(fresh, last_seen={"b": later})
    held = on_heartbeat(resumed, fresh, TOPOLOGY, "b", 3, standby_report(), later, T)
    assert_no_failover(resumed, held)
    memory, problem, _ = request_failover(resumed, held.memory, TOPOLOGY, "b", False, later, T, primary_stopped=True)
    assert problem is None
    promoted = on_heartbeat(resumed, memory, TOPOLOGY, "b", 3, standby_report(), later, T)
    assert_failover(resumed, promoted, "b")
    assert not promoted.state.primary_unfenced


# -- an operator's reinit order (issue 21 item 4) -----------------------------------------------

from pgha.decision import request_reinit  # noqa: E402


def test_reinit_is_refused_for_the_primary_an_unknown_member_and_in_pause():
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    assert "switch over first" in request_reinit(state, steady_memory(), TOPOLOGY, "a", 5)[2]
    assert "unknown member 'x'" in request_reinit(state, steady_memory(), TOPOLOGY, "x", 5)[2]
    assert "paused" in request_reinit(replace(state, paused=True), steady_memory(), TOPOLOGY, "b", 5)[2]


@pytest.mark.parametrize("kind", ["reinit", "restart"])
def test_a_standby_order_drops_sync_first_then_reaches_it_and_holds_promotable_until_done(kind):
    """reinit and restart (pgha-ctl): not promotable (saved first), the primary
    drops the standby from sync, only then is it told; it reports it done."""
    from pgha.decision import request_reinit, request_restart
    rule = {"reinit": request_reinit, "restart": request_restart}[kind]
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    state, memory, error = rule(state, steady_memory(), TOPOLOGY, "b", 5)
    assert error is None and not state.promotable and getattr(memory, kind) == ("b", 5)
    # The primary still names b: b is not told yet; the primary is told to drop it.
    told = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert getattr(told.instruction, kind) == 0
    primary = on_heartbeat(state, told.memory, TOPOLOGY, "a", 3, primary_report(), NOW, T)
    assert primary.instruction.sync_standby is None and not primary.state.promotable   # still streaming: held
    assert primary.instruction.restart == 0
    # Once the primary reports it off, b gets the order.
    dropped = on_heartbeat(state, primary.memory, TOPOLOGY, "a", 3, primary_report(sync_standby=None), NOW, T)
    told = on_heartbeat(state, dropped.memory, TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert getattr(told.instruction, kind) == 5 and told.instruction.to_wire()[kind] == 5
    # b reports it done: the order ends, and b can become promotable again as usual.
    done = on_heartbeat(state, told.memory, TOPOLOGY, "b", 3, replace(standby_report(), **{f"{kind}_done": 5}),
                        NOW, T)
    assert getattr(done.memory, kind) is None and getattr(done.instruction, kind) == 0
    assert any(("reinit done" if kind == "reinit" else "restarted") in text for _, text in done.events)
    again = on_heartbeat(done.state, done.memory, TOPOLOGY, "a", 3, primary_report(), NOW, T)
    assert again.instruction.sync_standby == "b"


def test_in_strict_sync_the_order_does_not_wait_for_sync_to_be_dropped():
    state, memory, _ = request_reinit(ClusterState(epoch=3, primary="a", promotable={"b"}), steady_memory(),
                                      TOPOLOGY, "b", 5)
    told = on_heartbeat(state, memory, TOPOLOGY, "b", 3, standby_report(), NOW, STRICT)
    assert told.instruction.reinit == 5


def test_a_request_naming_another_primary_is_refused_under_the_arbiters_lock():
    """Review: pgha-ctl --primary was checked only on a status read before the
    prompt; the arbiter now refuses when the primary it names is not the one."""
    from pgha.decision import request_switchover
    state = ClusterState(epoch=4, primary="b", promotable={"a"})
    assert request_switchover(state, steady_memory(primary="b"), TOPOLOGY, "a", "a")[1] == \
        "a is not the primary (b is, at epoch 4)"
    assert request_switchover(state, steady_memory(primary="b"), TOPOLOGY, "a", "b")[1] is None
    assert request_failover(state, steady_memory(primary="b"), TOPOLOGY, "a", False, NOW, T,
                            expect_primary="a")[1] == "a is not the primary (b is, at epoch 4)"


def test_a_scheduled_switchover_naming_another_primary_is_refused_too():
    from pgha.decision import schedule_switchover
    state = ClusterState(epoch=4, primary="b", promotable={"a"})
    assert schedule_switchover(state, TOPOLOGY, None, NOW + 60, NOW, False, "a")[1] == \
        "a is not the primary (b is, at epoch 4)"
    assert schedule_switchover(state, TOPOLOGY, None, NOW + 60, NOW, False, "b")[1] is None


# -- restart orders (pgha-ctl restart) -----------------------------------------------------------

def test_a_primary_restart_is_ordered_at_once_and_changes_no_promotable_mark():
    from pgha.decision import request_restart
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    new_state, memory, error = request_restart(state, steady_memory(), TOPOLOGY, "a", 4)
    assert error is None and new_state == state
    told = on_heartbeat(state, memory, TOPOLOGY, "a", 3, primary_report(), NOW, T)
    assert told.instruction.restart == 4 and told.instruction.sync_standby == "b"
    assert on_heartbeat(state, told.memory, TOPOLOGY, "b", 3, standby_report(), NOW, T).instruction.restart == 0


def test_a_restarted_primary_keeps_its_standby_promotable_while_it_reconnects():
    """Review: the restart happens within one step of the node's loop, so no
    report saw the primary down: without the reconnect grace its first report
    (no replication row yet) revoked the standby's mark and dropped sync."""
    from pgha.decision import request_restart
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    _, memory, _ = request_restart(state, steady_memory(), TOPOLOGY, "a", 4)
    back = replace(primary_report(replication=()), restart_done=4)      # the standby not reconnected yet
    after = on_heartbeat(state, memory, TOPOLOGY, "a", 3, back, NOW, T)
    assert after.state.promotable == frozenset({"b"}) and after.instruction.sync_standby == "b", after.events
    assert after.memory.restart is None
    later = on_heartbeat(after.state, after.memory, TOPOLOGY, "a", 3, primary_report(replication=()),
                         NOW + T.standby_reply_timeout + 0.1, T)
    assert not later.state.promotable       # still not back after the grace: revoked as usual


def test_restart_refusals_and_a_failover_voids_the_order():
    from pgha.decision import cancel_restart, ordered_off, request_reinit, request_restart
    state = ClusterState(epoch=3, primary="a", promotable={"b"})
    assert "unknown member 'x'" in request_restart(state, steady_memory(), TOPOLOGY, "x", 5)[2]
    assert "switchover" in request_restart(state, replace(steady_memory(), switchover_to="b"), TOPOLOGY, "b", 5)[2]
    _, reinit, _ = request_reinit(state, steady_memory(), TOPOLOGY, "b", 5)
    assert "reinit" in request_restart(state, reinit, TOPOLOGY, "b", 6)[2]
    assert request_restart(replace(state, paused=True), steady_memory(), TOPOLOGY, "b", 5)[2] is None
    _, pending, _ = request_restart(state, steady_memory(), TOPOLOGY, "b", 5)
    assert "restart of b is still pending" in request_restart(state, pending, TOPOLOGY, "a", 6)[2]
    assert request_restart(state, pending, TOPOLOGY, "b", 6)[1].restart == ("b", 6)   # the same member: replaced
    cancelled, error = cancel_restart(pending)
    assert error is None and cancelled.restart is None and not ordered_off(cancelled, "b")
    assert cancel_restart(cancelled)[1] == "no restart is pending"
    _, ordered, _ = request_restart(state, steady_memory(), TOPOLOGY, "a", 5)     # the primary's order
    silent = replace(ordered, primary_seen_at=NOW - 60)
    failed_over = on_heartbeat(state, silent, TOPOLOGY, "b", 3, standby_report(), NOW, T)
    assert failed_over.state.primary == "b" and failed_over.memory.restart is None
