"""Property-based tests of the rules (hypothesis): arbitrary well-formed
reports, times and switchover requests, in any interleaving of the two
nodes, never make the arbiter break an invariant of docs/ha-model.md; no
NodeView makes a node run PostgreSQL read-write without a current primary
instruction."""
from dataclasses import replace

from hypothesis import HealthCheck, given, settings, strategies as st

from pgha import node_rules
from pgha.decision import ClusterState, Memory, Timings, on_heartbeat, request_switchover
from pgha.messages import PRIMARY, STANDBY, WAIT, Address, Instruction, Report, ReplicationRow
from pgha.node_rules import DataDir, HandOver, NodeView
from pgha.topology import Topology

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOPOLOGY = Topology(("a", "b"))
TIMINGS = Timings(heartbeat_interval=0.5, lease_time=3.0, failover_margin=1.0, sync_stall_timeout=1.5,
                  standby_reply_timeout=2.0, strict_sync=False)
ADDRESSES = {n: Address(host=f"{n}.example", pg_port=5432, peer_port=5433, slot=f"slot_{n}") for n in "ab"}

names = st.sampled_from(["a", "b", None])
lsns = st.integers(min_value=0, max_value=5000)
rows = st.builds(ReplicationRow, name=names, state=st.sampled_from(["streaming", "catchup", None]),
                 sync_state=st.sampled_from(["sync", "async", "potential", None]), flush_lsn=lsns,
                 reply_age=st.sampled_from([0.0, 0.1, 1.9, 2.5, float("inf")]))


@st.composite
def reports(draw, node):
    return Report(pg=draw(st.sampled_from(["running", "starting", "stopped"])),
                  role=draw(st.sampled_from([PRIMARY, STANDBY, None])), lsn=draw(lsns), receive_lsn=draw(lsns),
                  sync_standby=draw(names), syncrep_wait=draw(st.sampled_from([0.0, 0.5, 1.5, 10.0])),
                  replication=tuple(draw(st.lists(rows, max_size=2))),
                  address=draw(st.sampled_from([ADDRESSES[node], None])), relinquished=draw(st.booleans()),
                  grant_remaining=draw(st.sampled_from([0.0, 0.0, 1.0, 3.0])))


def heartbeats(node):
    return st.tuples(st.just("heartbeat"), st.just(node), st.integers(min_value=-1, max_value=1), reports(node),
                     st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 4.5]))


switchovers = st.tuples(st.just("switchover"), names, st.just(0), st.none(), st.sampled_from([0.0, 0.5]))
steps = st.lists(heartbeats("a") | heartbeats("b") | switchovers, min_size=1, max_size=60)


@FAST
@given(steps, st.booleans())
def test_the_arbiter_never_breaks_an_invariant(sequence, strict):
    timings = replace(TIMINGS, strict_sync=strict)
    now = 100.0
    state, memory = ClusterState(epoch=1, primary="a"), Memory.at_start(now)
    primaries_by_epoch: dict[int, set[str]] = {}
    for kind, node, epoch_offset, report, dt in sequence:
        now += dt
        if kind == "switchover":
            memory, _ = request_switchover(state, memory, TOPOLOGY, node)
            continue
        before_state, before_memory = state, memory
        outcome = on_heartbeat(state, memory, TOPOLOGY, node, max(0, state.epoch + epoch_offset), report, now,
                               timings)
        state, memory = outcome.state, outcome.memory
        assert state.epoch >= before_state.epoch, "the epoch went back"
        if state.primary != before_state.primary or state.epoch != before_state.epoch:
            new = state.primary
            assert state.epoch == before_state.epoch + 1 and new != before_state.primary
            # Invariant 1: only a standby known to hold every acknowledged commit.
            assert new in before_state.promotable, "promoted a standby that was not promotable"
            standby_report = memory.reports[new]
            assert standby_report.running_as == STANDBY
            assert now - memory.last_seen[new] <= timings.lease_time
            # Invariant 2: the old primary handed over, or its leases have run out.
            handed_over = node == before_state.primary and report.relinquished
            silent = now - before_memory.primary_seen_at
            assert handed_over or (silent >= timings.lease_time + timings.failover_margin
                                   and standby_report.grant_remaining == 0), "promoted under a live lease"
        if outcome.instruction.role == PRIMARY:
            assert node == state.primary and outcome.instruction.epoch == state.epoch
            primaries_by_epoch.setdefault(outcome.instruction.epoch, set()).add(node)
            assert len(primaries_by_epoch[outcome.instruction.epoch]) == 1, "two primaries at one epoch"


# -- the node's rules ---------------------------------------------------------------------------

addresses = st.sampled_from([ADDRESSES["a"], ADDRESSES["b"], None])
instructions = st.none() | st.builds(
    Instruction, epoch=st.integers(min_value=1, max_value=5), role=st.sampled_from([PRIMARY, STANDBY, WAIT]),
    reason=st.none(), primary=st.sampled_from(["a", "b"]), primary_address=st.sampled_from(list(ADDRESSES.values())),
    standby=st.sampled_from(["a", "b", None]), standby_address=addresses, sync_standby=st.sampled_from(["a", "b", None]),
    relinquish=st.booleans(), lease_time=st.just(3.0), heartbeat_interval=st.just(0.5),
    restart=st.sampled_from([0, 7]), reinit=st.sampled_from([0, 9]))
views = st.builds(
    NodeView, now=st.floats(min_value=0, max_value=1000), instruction=instructions,
    acted_epoch=st.integers(min_value=0, max_value=6), pg=st.sampled_from(["running", "starting", "stopped"]),
    running_as=st.sampled_from([PRIMARY, STANDBY, None]), data=st.sampled_from(list(DataDir) + [None]),
    data_error=st.sampled_from([None, "boom"]), acting_primary=st.booleans(),
    hand_over=st.sampled_from(list(HandOver)), last_crash_restart=st.sampled_from([float("-inf"), 0.0, 990.0]),
    rejoin_failures=st.integers(min_value=0, max_value=2), upstream=addresses, streaming=st.booleans(),
    not_streaming_since=st.sampled_from([None, 0.0, 990.0]), slot_ensured=st.sampled_from([None, "slot_a", "slot_b"]),
    sync_standby=st.sampled_from(["a", "b", None]), slots_due=st.booleans(), restart_done=st.sampled_from([0, 7]))


@settings(max_examples=2000, deadline=None)
@given(views)
def test_a_node_runs_read_write_only_under_a_current_primary_instruction(view):
    decision = node_rules.decide(view)
    if decision.action in node_rules.READ_WRITE or decision.then in node_rules.READ_WRITE:
        ins = view.instruction
        assert ins is not None and ins.role == PRIMARY and ins.epoch >= view.acted_epoch
        assert decision.action is not node_rules.Action.BOOTSTRAP or ins.epoch == 1
