"""The deterministic simulation of the real rules (harness/sim.py): thousands
of seeded schedules of faults keep every invariant, a seed replays exactly,
and each planted bug (the real rule wrapped by monkeypatch, pgha/ untouched)
is found."""
from dataclasses import replace

import pytest

from harness import sim
from pgha import decision, lease, node_rules

CI_SCHEDULES = 4000
BUG_SCHEDULES = 1500


def test_the_rules_keep_every_invariant_over_thousands_of_schedules():
    failures, failovers = sim.run_seeds(0, CI_SCHEDULES)
    assert failures == [], failures[:5]
    assert failovers > CI_SCHEDULES // 10, "too few schedules reach a failover to mean anything"


def test_a_stale_arbiter_never_makes_a_node_act_on_an_older_epoch(monkeypatch):
    # The epoch check alone (a stale arbiter can still give two primaries
    # for a lease: docs/ha-model.md, "Found by the checks", 3).
    monkeypatch.setattr(sim, "STALE_ARBITER_FAULT", True)
    failures, _ = sim.run_seeds(0, BUG_SCHEDULES)
    assert not [m for _, m in failures if "epoch" in m], failures[:3]


def test_a_seed_replays_exactly():
    first, second = sim.run_seed(7), sim.run_seed(7)
    assert first.trace == second.trace and len(first.trace) > 0


def test_reproduction_a_restarted_standby_daemon_reports_no_grant_too_early(monkeypatch):
    """Today's Grants after a daemon restart (pgha/lease.py; the Spin model's
    TODAY_GRANTS_AT_RESTART): the standby's daemon restarts while the
    primary, cut off from the arbiter, still holds its grant; it reports
    "no grant" at once and is promoted while the old primary writes."""
    monkeypatch.setattr(sim, "RESTARTED_GRANTS_ASSUME_A_GRANT", False)
    with pytest.raises(sim.InvariantBroken, match="two read-write primaries"):
        sim.run_seed(3019)
    monkeypatch.setattr(sim, "RESTARTED_GRANTS_ASSUME_A_GRANT", True)
    sim.run_seed(3019)


def _promote_without_the_promotable_mark(monkeypatch):
    real = decision.failover_blocker
    monkeypatch.setattr(decision, "failover_blocker",
                        lambda state, memory, standby, *a, **k:
                        real(replace(state, promotable=state.promotable | {standby}), memory, standby, *a, **k))


def _fence_after_the_lease(monkeypatch):
    real = lease.Leases.deadline
    monkeypatch.setattr(lease.Leases, "deadline", lambda self: real(self) + 1.0)


def _ignore_the_standbys_grant(monkeypatch):
    # The arbiter counts the standby as "no grant" while its grant to the
    # old primary may still run (two members: the standby is the quorum).
    real = decision.failover_blocker
    monkeypatch.setattr(decision, "failover_blocker",
                        lambda state, memory, standby, *a, **k: real(
                            state, replace(memory, reports={**memory.reports, standby: replace(
                                memory.reports[standby], grant_remaining=0.0)}
                                if standby in memory.reports else memory.reports), standby, *a, **k))


def _forget_the_epoch(monkeypatch):
    # The node's rules see no epoch acted on (as after losing node-state.json),
    # and the arbiter is restored from an old copy: an older decision arrives.
    monkeypatch.setattr(sim, "STALE_ARBITER_FAULT", True)
    real = node_rules.decide
    monkeypatch.setattr(node_rules, "decide", lambda view: real(replace(view, acted_epoch=0)))


@pytest.mark.parametrize("plant, broken", [
    (_forget_the_epoch, "older epoch"),
    (_promote_without_the_promotable_mark, "without acknowledged commits"),
    (_fence_after_the_lease, "two read-write primaries"),
    (_ignore_the_standbys_grant, "two read-write primaries"),
])
def test_a_planted_bug_is_found(monkeypatch, plant, broken):
    plant(monkeypatch)
    failures, _ = sim.run_seeds(0, BUG_SCHEDULES)
    assert failures, "the simulation missed a planted bug"
    assert any(broken in message for _, message in failures), failures[:3]
    seed = failures[0][0]
    with pytest.raises(sim.InvariantBroken):
        sim.run_seed(seed)              # the failing seed fails again: it replays
