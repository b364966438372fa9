"""A scheduled restart (issue 21, item 4: pgha-ctl restart --at, Patroni's
POST /restart {"schedule"}): the pure rules (pgha.decision), the stored form
(pgha.store), and the arbiter turning a due one into an order over the
unit-test server (test_ctl's Running, authentication on): durable across an
arbiter restart, one order at a time with standbys first, skipped when
`pending` finds nothing waiting, shown in status and list, flushed."""
import json

import pytest

from pgha import arbiter as arbiter_mod, ctl, decision, requests, store
from pgha.cluster_state import ClusterState, ScheduledRestart
from pgha.errors import ProtocolError
from pgha.topology import Topology
from testsuite.unit.test_arbiter import P, S, heartbeat, primary_report, standby_report
from testsuite.unit.test_ctl import as_who, promotable_cluster, run, running  # noqa: F401 (fixtures)

TOPOLOGY = Topology((P, S))
WALL = 1_700_000_000.0


# -- the rules (pure) ------------------------------------------------------------------------------

@pytest.mark.parametrize("state, member, at, error", [
    (ClusterState(3, P), S, WALL + 60, None),
    (ClusterState(3, P), P, WALL, None),                               # now is not the past
    (ClusterState(3, P, paused=True), S, WALL + 60, None),             # allowed in pause, as a restart is
    (ClusterState(3, P), "pgsql-9", WALL + 60, "unknown member"),
    (ClusterState(3, P), S, WALL - 5, "5s in the past"),
    (ClusterState(3, P, scheduled_restarts=(ScheduledRestart(S, WALL + 9),)), S, WALL + 60, "already scheduled"),
], ids=["standby", "primary-now", "paused", "unknown", "past", "twice"])
def test_schedule_restart_rules(state, member, at, error):
    new, problem = decision.schedule_restart(state, TOPOLOGY, member, at, WALL, pending=True)
    if error:
        assert error in problem and new == state and problem.count("\n") == 0
    else:
        assert problem is None and ScheduledRestart(member, at, True) in new.scheduled_restarts
        assert [r.member for r in new.scheduled_restarts] == sorted(r.member for r in new.scheduled_restarts)


def test_due_restarts_go_one_at_a_time_standbys_first():
    both = ClusterState(3, P, scheduled_restarts=(ScheduledRestart(P, WALL), ScheduledRestart(S, WALL + 5)))
    idle = decision.Memory()
    assert decision.next_due_restart(both, idle, WALL - 1) is None
    assert decision.next_due_restart(both, idle, WALL).member == P           # only the primary's is due
    assert decision.next_due_restart(both, idle, WALL + 5).member == S       # both due: the standby first
    for busy in (decision.Memory(restart=(S, 7)), decision.Memory(reinit=(S, 7)), decision.Memory(switchover_to=S)):
        assert decision.next_due_restart(both, busy, WALL + 5) is None
    assert decision.without_scheduled_restart(both, S).scheduled_restarts == (ScheduledRestart(P, WALL),)
    assert decision.without_scheduled_restart(both).scheduled_restarts == ()


def test_a_pending_only_restart_waits_for_a_report_from_its_member():
    """A restarted (or newly leading) arbiter knows no report yet: it must
    not skip the restart as having nothing pending."""
    state = ClusterState(3, P, scheduled_restarts=(ScheduledRestart(S, WALL, pending=True),))
    assert decision.next_due_restart(state, decision.Memory(), WALL + 1) is None
    heard = decision.Memory(reports={S: decision.Report()})
    assert decision.next_due_restart(state, heard, WALL + 1).member == S


def test_a_failover_keeps_the_scheduled_restarts():
    state = ClusterState(3, P, {S}, scheduled_restarts=(ScheduledRestart(P, WALL), ScheduledRestart(S, WALL)))
    new_state, _, _ = decision._failover(state, decision.Memory(), S, 100.0, "test")
    assert new_state.epoch == 4 and new_state.scheduled_restarts == state.scheduled_restarts


# -- the request and the stored form -------------------------------------------------------------

def test_the_request_checks_its_fields():
    assert requests.parse({"type": "restart", "member": S, "at": WALL, "pending": True}) == \
        requests.Restart(None, S, WALL, True)
    with pytest.raises(ProtocolError, match="'pending' goes with 'at'"):
        requests.parse({"type": "restart", "member": S, "pending": True})
    with pytest.raises(ProtocolError, match="'at' must be a time"):
        requests.parse({"type": "restart", "member": S, "at": 1e300})


def test_scheduled_restarts_are_stored_and_loaded(tmp_path):
    file_store = store.FileStore(str(tmp_path / "state.json"))
    state = ClusterState(2, P, {S}, scheduled_restarts=(ScheduledRestart(P, WALL + 1, True),
                                                        ScheduledRestart(S, WALL + 0.5)))
    file_store.save(state, None)
    assert json.loads((tmp_path / "state.json").read_text())["scheduled_restarts"] == [
        {"member": P, "at": WALL + 1, "pending": True}, {"member": S, "at": WALL + 0.5, "pending": False}]
    assert file_store.load() == state
    file_store.save(ClusterState(2, P, {S}), 2)
    assert "scheduled_restarts" not in (tmp_path / "state.json").read_text()     # as before the feature


@pytest.mark.parametrize("restarts", [
    {"member": S, "at": WALL, "pending": False},                         # not a list
    [{"member": S, "at": "soon", "pending": False}],
    [{"member": S, "at": WALL, "pending": "no"}],
    [{"member": "", "at": WALL, "pending": False}],
    [{"member": S, "at": WALL}],
    [{"member": S, "at": WALL, "pending": False, "extra": 1}],
    [{"member": S, "at": WALL, "pending": False}, {"member": S, "at": WALL + 1, "pending": False}],   # twice
    [{"member": S, "at": WALL, "pending": False}, {"member": P, "at": WALL, "pending": False}],       # unsorted
])
def test_damaged_scheduled_restarts_are_a_damaged_state(tmp_path, restarts):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"epoch": 2, "primary": P, "promotable": False, "scheduled_restarts": restarts}))
    with pytest.raises(store.StateStoreError, match="damaged"):
        store.FileStore(str(path)).load()


# -- through the arbiter ---------------------------------------------------------------------------

def test_a_scheduled_restart_is_durable_shown_ordered_when_due_and_flushed(running, as_who, capsys, monkeypatch):
    primary, standby = promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "restart", "--at", "+60s", "--force") == 0        # every member
    out = capsys.readouterr().out
    assert out.count("scheduled at 2023-11-14T22:14:20Z") == 2 and "flush restart" in out
    assert running.saved()["scheduled_restarts"] == [{"member": P, "at": running.wall[0] + 60, "pending": False},
                                                     {"member": S, "at": running.wall[0] + 60, "pending": False}]
    assert run(running, "restart", S, "--at", "+90s", "--force") == 1
    err = capsys.readouterr().err
    assert f"a restart of {S} is already scheduled" in err and err.count("\n") == 1
    assert run(running, "list") == 0
    assert f"restart of {S} scheduled at 2023-11-14T22:14:20Z" in capsys.readouterr().out
    assert run(running, "status") == 0
    assert f"restart of {P} scheduled at 2023-11-14T22:14:20Z (in 60.0s" in capsys.readouterr().out

    # A restarted arbiter still has both; when due it orders the standby's first, the primary's after it.
    wall = [running.wall[0] + 61]
    restarted = arbiter_mod.Arbiter(running.settings, clock=running.clock, wall=lambda: wall[0])
    assert [r.member for r in restarted.state.scheduled_restarts] == [P, S]
    reply = restarted.handle(requests.parse(heartbeat(P, 1, primary_report(1200, 1200))))
    assert restarted.memory.restart[0] == S and [r.member for r in restarted.state.scheduled_restarts] == [P]
    assert not restarted.state.promotable          # the standby's mark off first, and saved
    assert running.saved()["promotable"] is False and len(running.saved()["scheduled_restarts"]) == 1
    restarted.handle(requests.parse(heartbeat(P, 1, primary_report(1200, 1200))))
    assert restarted.memory.restart[0] == S, "the primary's must wait until the standby's is done"
    order = restarted.memory.restart[1]
    restarted.handle(requests.parse(heartbeat(S, 1, {**standby_report(), "restart_done": order})))
    restarted.handle(requests.parse(heartbeat(P, 1, primary_report(1200, 1200))))
    assert restarted.memory.restart[0] == P and restarted.state.scheduled_restarts == ()
    assert reply["role"] == "primary"
    events = [(e["event"], e.get("member"), e.get("scheduled_for")) for e in restarted.store.history()]
    assert events[-2:] == [("restart_requested", S, "2023-11-14T22:14:20Z"),
                           ("restart_requested", P, "2023-11-14T22:14:20Z")]

    # Flush cancels scheduled ones and a pending order (a member's alone when named); then nothing is left.
    running.arbiter.state = decision.schedule_restart(running.arbiter.state, TOPOLOGY, S, running.wall[0] + 5,
                                                      running.wall[0], False)[0]
    assert run(running, "flush", "restart", S) == 0
    assert f"scheduled restarts of {S} cancelled" in capsys.readouterr().out
    assert [r.member for r in running.arbiter.state.scheduled_restarts] == [P]
    assert run(running, "flush", "restart", S) == 1
    assert f"none is scheduled for {S}" in capsys.readouterr().err
    running.arbiter.state = decision.schedule_restart(running.arbiter.state, TOPOLOGY, S, running.wall[0] + 5,
                                                      running.wall[0], False)[0]
    assert run(running, "flush", "restart") == 0
    assert f"scheduled restarts of {P}, {S} cancelled" in capsys.readouterr().out
    assert not running.arbiter.state.scheduled_restarts and "scheduled_restarts" not in running.saved()
    assert run(running, "flush", "restart") == 1
    assert "no restart is pending and none is scheduled" in capsys.readouterr().err


def test_a_pending_only_restart_is_skipped_when_nothing_waits(running, as_who, capsys, monkeypatch):
    primary, standby = promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "restart", S, "--at", "+10s", "--pending", "--force") == 0
    assert "(if a parameter then waits for it)" in capsys.readouterr().out
    running.wall[0] += 11
    standby.ask(heartbeat(S, 1, standby_report()))       # no pending_restart in its report
    assert running.arbiter.memory.restart is None and not running.arbiter.state.scheduled_restarts
    assert running.arbiter.store.history()[-1]["event"] == "restart_skipped"
    assert running.arbiter.state.promotable            # nothing was done to the standby

    assert run(running, "restart", S, "--at", "+10s", "--pending", "--force") == 0
    waiting = {**standby_report(), "pending_restart": True}
    standby.ask(heartbeat(S, 1, waiting))    # the arbiter judges by the last report it has when due
    running.wall[0] += 11
    standby.ask(heartbeat(S, 1, waiting))
    assert running.arbiter.memory.restart[0] == S
