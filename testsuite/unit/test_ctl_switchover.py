"""pgha-ctl's switchover and failover as patronictl's (issue 21, item 5):
confirmation, waiting for the result, the durable scheduled switchover and
its cancellation (flush), history naming a switchover, stale members in
list, version and topology. The scheduled-switchover rules are pure
(pgha.decision) and table-tested here; the rest runs against the unit-test
arbiter server (test_ctl's Running, authentication on)."""
import io
import json

import pytest

from pgha import arbiter as arbiter_mod, ctl, decision, requests, store
from pgha.decision import ClusterState
from pgha.errors import ProtocolError
from pgha.topology import Topology
from testsuite.unit.test_arbiter import P, S, heartbeat, primary_report, standby_report
from testsuite.unit.test_arbiter_auth import Signed, credential
from testsuite.unit.test_ctl import as_who, promotable_cluster, run, running  # noqa: F401 (fixtures)

TOPOLOGY = Topology((P, S))
WALL = 1_700_000_000.0


# -- the scheduled-switchover rules (pure) -----------------------------------------------------

@pytest.mark.parametrize("state, target, at, replacing, error", [
    (ClusterState(3, P), S, WALL + 60, False, None),
    (ClusterState(3, P), None, WALL + 60, False, None),                  # to the standby
    (ClusterState(3, P), S, WALL, False, None),        # promotable is checked when due
    (ClusterState(3, P), "pgsql-9", WALL + 60, False, "unknown node"),
    (ClusterState(3, P), P, WALL + 60, False, "already the primary"),
    (ClusterState(3, P, paused=True), S, WALL + 60, False, "paused"),
    (ClusterState(3, P), S, WALL - 5, False, "5s in the past"),
    (ClusterState(3, P, scheduled_at=WALL + 9, scheduled_to=S), S, WALL + 60, False, "already scheduled"),
    (ClusterState(3, P, scheduled_at=WALL + 9, scheduled_to=S), None, WALL + 60, True, None),
], ids=["to-standby", "no-target", "not-promotable-yet", "unknown", "primary", "paused", "past", "twice",
        "replace"])
def test_schedule_switchover_rules(state, target, at, replacing, error):
    new, problem = decision.schedule_switchover(state, TOPOLOGY, target, at, WALL, replacing)
    if error:
        assert error in problem and new == state
        assert problem.count("\n") == 0
    else:
        assert problem is None and (new.scheduled_at, new.scheduled_to) == (at, target)
        assert (new.epoch, new.primary, new.promotable, new.paused) == \
            (state.epoch, state.primary, state.promotable, state.paused)


def test_cancel_due_and_pause_of_a_scheduled_switchover():
    scheduled = ClusterState(3, P, {S}, scheduled_at=WALL, scheduled_to=S)
    assert decision.cancel_scheduled_switchover(scheduled) == (ClusterState(3, P, {S}), None)
    assert "no switchover is scheduled" in decision.cancel_scheduled_switchover(ClusterState(3, P))[1]
    assert not decision.due_switchover(scheduled, WALL - 0.1) and decision.due_switchover(scheduled, WALL)
    assert not decision.due_switchover(ClusterState(3, P), WALL)
    paused, _ = decision.set_paused(scheduled, decision.Memory(), True)
    assert paused.paused and not paused.scheduled


# -- stored form: round trip, old files, damage ---------------------------------------------------

def test_a_scheduled_switchover_is_stored_and_loaded(tmp_path):
    file_store = store.FileStore(str(tmp_path / "state.json"))
    state = ClusterState(2, P, {S}, scheduled_at=WALL + 0.5, scheduled_to=None)
    file_store.save(state, None)
    assert json.loads((tmp_path / "state.json").read_text())["scheduled_switchover"] == {"at": WALL + 0.5,
                                                                                         "to": None}
    assert file_store.load() == state
    file_store.save(ClusterState(2, P, {S}), 2)
    assert "scheduled_switchover" not in (tmp_path / "state.json").read_text()     # as before the feature


@pytest.mark.parametrize("scheduled", [{"at": "soon"}, {"at": True}, {"at": float("nan")}, {"at": WALL, "to": 5},
                                       {"at": WALL, "to": ""}, {"at": WALL, "extra": 1}, [WALL], {"at": 1e300},
                                       {"at": -1.0}])
def test_a_damaged_scheduled_switchover_is_a_damaged_state(tmp_path, scheduled):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"epoch": 2, "primary": P, "promotable": True, "scheduled_switchover": scheduled}))
    with pytest.raises(store.StateStoreError, match="damaged"):
        store.FileStore(str(path)).load()


# -- the request table ------------------------------------------------------------------------

@pytest.mark.parametrize("message, problem", [
    ({"type": "flush", "what": "reinit"}, "'what' must be one of switchover, restart"),
    ({"type": "flush"}, "'what' must be one of switchover, restart"),
    ({"type": "switchover", "replace": True}, "'replace' goes with 'at'"),
    ({"type": "switchover", "at": 2e9, "replace": "yes"}, "replace"),
])
def test_flush_and_replace_are_checked_at_the_table(message, problem):
    with pytest.raises(ProtocolError, match=problem):
        requests.parse(message)
    assert requests.parse({"type": "switchover", "at": 2e9, "replace": True}).replace is True


# -- confirmation -------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def sent_kinds(monkeypatch, argv, status=None):
    """ctl.main with a stand-in arbiter; the kinds of the requests it sent."""
    from pgha import keys
    monkeypatch.setattr(keys, "client_credential", lambda path: credential("operator"))
    sent = []

    def call(host, port, message, **kw):
        sent.append(message["type"])
        if message["type"] == "status":
            return status or {"type": "status", "epoch": 1, "primary": P, "promotable": True, "nodes": {},
                              "switchover_to": None}
        return {"type": "ok", "switchover_to": S, "at": "2030-01-01T00:00:00Z", "how": "switchover"}
    return ctl.main(["--key-file", "operator.keys", *argv], call=call), sent


@pytest.mark.parametrize("argv", [["switchover"], ["failover", "--to", S], ["switchover", "--at", "+5m"]])
def test_without_a_terminal_and_without_force_nothing_is_sent(monkeypatch, capsys, argv):
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))     # a pipe, even one that says yes
    code, sent = sent_kinds(monkeypatch, argv)
    err = capsys.readouterr().err
    assert code == 2 and sent == ["status"] and err.count("\n") == 1 and "pass --force" in err


@pytest.mark.parametrize("answer, code, sends", [("y\n", 0, True), ("yes\n", 0, True), ("n\n", 1, False),
                                                  ("\n", 1, False), ("", 1, False)])
def test_on_a_terminal_it_asks(monkeypatch, capsys, answer, code, sends):
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    got, sent = sent_kinds(monkeypatch, ["switchover", "--to", S, "--no-wait"])
    out = capsys.readouterr()
    assert got == code and ("switchover" in sent) == sends
    assert f"Switch over from {P} to {S} now? [y/N]" in out.out
    if not sends:
        assert "not confirmed: nothing sent" in out.err and out.err.count("\n") == 1


def test_force_skips_the_question(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, sent = sent_kinds(monkeypatch, ["switchover", "--force", "--no-wait"])
    assert code == 0 and sent == ["status", "switchover"] and "[y/N]" not in capsys.readouterr().out


# -- waiting for the result: each check reads one status snapshot ------------------------------

def snapshot(epoch, primary, pending=S, target_running=False, acted=None, paused=False):
    report = {"pg": "running", "role": "primary" if target_running else "standby"}
    return {"type": "status", "epoch": epoch, "primary": primary, "promotable": True, "paused": paused,
            "switchover_to": pending, "failover_to": None,
            "nodes": {S: {"report": report, "epoch": acted if acted is not None else epoch, "last_seen_ago": 0.1},
                      P: {"report": None, "epoch": 1, "last_seen_ago": 0.1}}}


@pytest.mark.parametrize("status, outcome", [
    (snapshot(1, P), None),
    (snapshot(2, S), "deciding"),                                   # decided, not yet running as primary
    (snapshot(2, S, target_running=True, acted=1), "deciding"),     # running, has not acted on epoch 2 yet
    (snapshot(2, S, target_running=True), "done"),
    (snapshot(2, P), "promoted instead"),
    (snapshot(1, P, pending=None), "dropped the request"),
    (snapshot(1, P, paused=True), "paused"),
])
def test_switch_outcome(status, outcome):
    found = ctl.switch_outcome(status, 1, S)
    assert found == outcome if outcome in (None, "done", "deciding") else outcome in found


def scripted(statuses, events=()):
    asked = []

    def ask(message):
        asked.append(message["type"])
        if message["type"] == "history":
            return {"events": list(events)}
        return statuses.pop(0) if len(statuses) > 1 else statuses[0]
    return ask, asked


def test_wait_prints_the_new_primary(monkeypatch, capsys):
    monkeypatch.setattr(ctl.time, "sleep", lambda s: None)
    ask, _ = scripted([snapshot(1, P), snapshot(2, S), snapshot(2, S, target_running=True)])
    args = ctl.build_parser().parse_args(["switchover", "--force"])
    assert ctl.wait_for_new_primary(args, ask, snapshot(1, P), S, "switchover") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"switchover done: {S} is the primary at epoch 2 (") and "| Member" in out


def test_a_dropped_switchover_is_a_failure_with_the_arbiters_reason(monkeypatch):
    monkeypatch.setattr(ctl.time, "sleep", lambda s: None)
    reason = f"{P} stopped PostgreSQL but {S} cannot take over (the standby has not reported recently)"
    ask, _ = scripted([snapshot(1, P, pending=None)], [{"event": "switchover_failed", "epoch": 1, "reason": reason}])
    args = ctl.build_parser().parse_args(["switchover", "--force"])
    with pytest.raises(ctl.Refused, match="arbiter dropped the request.*cannot take over"):
        ctl.wait_for_new_primary(args, ask, snapshot(1, P), S, "switchover")


def test_no_result_within_wait_is_a_failure(monkeypatch):
    clock = iter(range(0, 1000))
    monkeypatch.setattr(ctl.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(ctl.time, "sleep", lambda s: None)
    ask, asked = scripted([snapshot(1, P)])
    args = ctl.build_parser().parse_args(["switchover", "--force", "--wait", "5"])
    with pytest.raises(ctl.Refused, match=f"no result after 5s \\({P} is still the primary at epoch 1\\)"):
        ctl.wait_for_new_primary(args, ask, snapshot(1, P), S, "switchover")
    assert 3 <= asked.count("status") <= 6


# -- the durable scheduled switchover through the arbiter ------------------------------------

def test_scheduled_switchover_is_durable_refused_twice_replaced_shown_and_flushed(running, as_who, capsys,
                                                                                   monkeypatch):
    primary, standby = promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "switchover", "--at", "+60s", "--force") == 0
    assert "cancel with `pgha-ctl flush switchover`" in capsys.readouterr().out
    assert running.saved()["scheduled_switchover"] == {"at": running.wall[0] + 60, "to": None}

    assert run(running, "switchover", "--to", S, "--at", "+90s", "--force") == 1
    err = capsys.readouterr().err
    assert "already scheduled" in err and "flush switchover" in err and err.count("\n") == 1
    assert run(running, "switchover", "--to", S, "--at", "+90s", "--force", "--replace") == 0
    assert "replacing the one at" in capsys.readouterr().out
    assert running.saved()["scheduled_switchover"] == {"at": running.wall[0] + 90, "to": S}

    assert run(running, "list") == 0
    assert f"switchover to {S} scheduled at 2023-11-14T22:14:50Z" in capsys.readouterr().out
    assert run(running, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["switchover_scheduled"]["to"] == S

    # A restarted arbiter still has it, and it fires when due.
    restarted = arbiter_mod.Arbiter(running.settings, clock=running.clock, wall=lambda: running.wall[0] + 90)
    assert (restarted.state.scheduled_at, restarted.state.scheduled_to) == (running.wall[0] + 90, S)
    assert restarted._status()["switchover_scheduled"]["to"] == S
    restarted.handle(requests.parse(heartbeat(P, 1, primary_report(1200, 1200))))
    restarted.handle(requests.parse(heartbeat(S, 1, standby_report())))
    assert restarted.handle(requests.parse(heartbeat(P, 1, primary_report(1200, 1200))))["relinquish"] is True
    assert not restarted.state.scheduled and "scheduled_switchover" not in running.saved()

    # Flush: on the running arbiter (which still holds its own copy), then nothing left to flush.
    running.arbiter.state = store.FileStore(str(running.settings.state_file)).load()
    running.arbiter.state = decision.schedule_switchover(running.arbiter.state, TOPOLOGY, S, running.wall[0] + 5,
                                                         running.wall[0], False)[0]
    assert run(running, "flush", "switchover") == 0
    assert f"scheduled switchover to {S}" in capsys.readouterr().out and not running.arbiter.state.scheduled
    assert run(running, "flush", "switchover") == 1
    err = capsys.readouterr().err
    assert "no switchover is scheduled" in err and err.count("\n") == 1
    kinds = [e["event"] for e in running.arbiter.store.history()]
    assert kinds.count("switchover_scheduled") == 2 and kinds[-1] == "switchover_cancelled"


def test_flush_is_the_operators(running, as_who, capsys):
    assert run(running, "flush", "switchover", who="reader") == 1
    assert "authentication failed" in capsys.readouterr().err


# -- history names a switchover a switchover ----------------------------------------------------

def test_a_planned_switchover_is_a_switchover_in_the_history(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    assert run(running, "switchover", "--force", "--no-wait") == 0
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["relinquish"] is True
    stopped = {**primary_report(1200, 1200), "pg": "stopped", "relinquished": True}
    for key in ("role", "lsn", "sync_standby", "syncrep_wait", "replication"):
        stopped.pop(key)
    primary.ask(heartbeat(P, 1, stopped))
    assert running.arbiter.state.epoch == 2
    assert run(running, "history") == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| 2 " in line]
    assert len(rows) == 1 and "| switchover " in rows[0] and "failover" not in rows[0].split("|")[3]


# -- list: a report too old is unknown, with its age ----------------------------------------

def test_a_member_silent_for_three_heartbeats_is_unknown_with_its_age(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    for _ in range(4):       # the standby falls silent for 2 s (4 heartbeats of 0.5 s)
        running.clock.advance(0.5)
        primary.ask(heartbeat(P, 1, primary_report(1200, 1000)))
    assert run(running, "list", "--json") == 0
    members = {m["member"]: m for m in json.loads(capsys.readouterr().out)["members"]}
    assert members[S]["stale"] and members[S]["state"] == "unknown (report 2.0s old)"
    assert members[S]["role"] == "unknown" and members[S]["lag_bytes"] is None
    assert not members[P]["stale"] and members[P]["role"] == "Leader"
    assert run(running, "list") == 0
    assert "unknown (report 2.0s old)" in capsys.readouterr().out


# -- version, topology ------------------------------------------------------------------------

def test_version_names_both(running, as_who, capsys):
    from pgha import version
    assert run(running, "version", who="reader") == 0
    assert capsys.readouterr().out == f"pgha-ctl version {version.VERSION}\narbiter version {version.VERSION}\n"


def test_topology_puts_the_standby_under_the_primary_it_streams_from(running, as_who, capsys):
    promotable_cluster(running)
    assert run(running, "topology") == 0
    out = capsys.readouterr().out.splitlines()
    members = [line.split("|")[1].strip() for line in out[4:-1]]
    assert members == [P, f"+ {S}"]


def test_a_follower_shows_the_stored_scheduled_switchover(tmp_path):
    """An arbiter that does not lead answers status from the store: the scheduled switchover is there."""
    from pgha.arbiter import Arbiter
    from pgha.arbiter_leader import LeadingArbiter
    from testsuite.helpers import FakeClock
    from testsuite.unit.test_arbiter import make_settings
    from testsuite.unit.test_requests import NotLeading
    arbiter = Arbiter(make_settings(tmp_path / "state.json"), clock=FakeClock(), init=True, wall=lambda: WALL)
    arbiter.store.save(ClusterState(1, P, scheduled_at=WALL + 30, scheduled_to=S), 1)
    reply = LeadingArbiter(arbiter, NotLeading()).handle(requests.Status(None))
    assert reply["switchover_scheduled"] == {"at": "2023-11-14T22:13:50Z", "in": 30.0, "to": S}


def test_patronictl_spellings_and_a_wrong_primary(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, sent = sent_kinds(monkeypatch, ["switchover", "--candidate", S, "--scheduled", "+5m", "--force"])
    assert code == 0 and sent == ["status", "switchover"]
    code, sent = sent_kinds(monkeypatch, ["switchover", "--primary", S, "--force"])
    err = capsys.readouterr().err
    assert code == 1 and sent == ["status"] and f"{S} is not the primary ({P} is" in err and err.count("\n") == 1
    code, sent = sent_kinds(monkeypatch, ["failover", "--to", S, "--leader", P, "--force", "--no-wait"])
    assert code == 0 and sent == ["status", "failover"]
    code, sent = sent_kinds(monkeypatch, ["switchover", "--force", "--wait", "-1"])
    assert code == 2 and sent == ["status"]


def test_a_failover_drops_the_scheduled_switchover_and_says_so(running, as_who, capsys, monkeypatch):
    from testsuite.unit.test_ctl import kill_primary_and_wait
    primary, standby = promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "switchover", "--at", "+1h", "--force") == 0
    kill_primary_and_wait(running, standby)
    assert running.arbiter.state.epoch == 2 and not running.arbiter.state.scheduled
    assert "scheduled_switchover" not in running.saved()
    failover = running.arbiter.store.history()[-1]
    assert failover["event"] == "failover" and failover["scheduled_switchover_dropped"] == "2023-11-14T23:13:20Z"


def test_status_shows_the_scheduled_switchover(running, as_who, capsys, monkeypatch):
    promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "switchover", "--at", "+60s", "--force") == 0
    capsys.readouterr()
    assert run(running, "status") == 0
    assert "switchover to the standby scheduled at 2023-11-14T22:14:20Z (in 60.0s; cancel: pgha-ctl flush " \
           "switchover)" in capsys.readouterr().out


# -- query: which member, and one line when it cannot run --------------------------------------

def member_status(p_role="primary", s_role="standby", s_pg="running"):
    def node(role, port, pg="running"):
        return {"report": {"pg": pg, "role": role, "address": {"host": "127.0.0.1", "pg_port": port}},
                "last_seen_ago": 0.1, "epoch": 1}
    return {"type": "status", "epoch": 1, "primary": P, "nodes": {P: node(p_role, 5001), S: node(s_role, 5002, s_pg)}}


@pytest.mark.parametrize("status, member, role, found", [
    (member_status(), None, "primary", P),
    (member_status(), None, "standby", S),
    (member_status(), None, "any", P),                      # the primary first
    (member_status(), S, "primary", S),                     # a named member: whatever it runs as
    (member_status(s_pg="stopped"), None, "standby", "no member runs as standby"),
    (member_status(p_role="standby"), None, "primary", "no member runs as primary"),     # not yet promoted
    (member_status(), "pgsql-9", "primary", "no member 'pgsql-9'"),
])
def test_query_target(status, member, role, found):
    if found in (P, S):
        assert ctl.query_target(status, member, role) == (found, "127.0.0.1", 5001 if found == P else 5002)
    else:
        with pytest.raises(ctl.Refused, match=found):
            ctl.query_target(status, member, role)


def test_query_that_cannot_connect_is_one_line_exit_1(monkeypatch, capsys, tmp_path):
    import socket
    with socket.socket() as closed:         # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    status = member_status()
    status["nodes"][P]["report"]["address"]["pg_port"] = port
    code, sent = sent_kinds(monkeypatch, ["query", "-c", "SELECT 1"], status=status)
    err = capsys.readouterr().err
    assert code == 1 and sent == ["status"] and err.count("\n") == 1
    assert err.startswith(f"ctl: query on {P} (127.0.0.1:{port}): ")
    code, _ = sent_kinds(monkeypatch, ["query", "-f", str(tmp_path / "missing.sql")], status=status)
    assert code == 2 and "missing.sql" in capsys.readouterr().err


def test_a_primary_left_unfenced_is_never_unknown_only_old():
    """A daemon stopped in pause reports no more: its last report (PostgreSQL
    left running, unfenced) stays what list shows, with its age."""
    status = {"epoch": 1, "primary": "a", "heartbeat_interval": 0.5, "nodes": {
        "a": {"report": {"pg": "running", "role": "primary", "unfenced": True}, "last_seen_ago": 30.0},
        "b": {"report": {"pg": "running", "role": "standby"}, "last_seen_ago": 30.0}}}
    rows = {r["member"]: r for r in ctl.list_rows(status)}
    assert rows["a"]["state"] == "running, daemon stopped, unfenced (report 30.0s old)" and not rows["a"]["stale"]
    assert rows["a"]["role"] == "Leader"
    assert rows["b"]["state"] == "unknown (report 30.0s old)" and rows["b"]["stale"]


def test_an_unfenced_primary_is_named_from_the_stored_decision_after_an_arbiter_restart():
    """Review: a restarted arbiter (or a new etcd leader) has no report from
    that primary, but the mark is in the stored decision (primary_unfenced)."""
    status = {"epoch": 1, "primary": "a", "heartbeat_interval": 0.5, "primary_unfenced": True, "nodes": {
        "a": {"report": None, "last_seen_ago": None},
        "b": {"report": {"pg": "running", "role": "standby"}, "last_seen_ago": 0.2}}}
    rows = {r["member"]: r for r in ctl.list_rows(status)}
    assert rows["a"]["state"] == "running, daemon stopped, unfenced" and not rows["a"]["stale"]
