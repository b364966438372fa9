"""The table of request kinds (pgha/requests.py): who may send what, the
leader gating, one handler per kind, and operator input in range."""
import json

import pytest

from pgha import api, auth, protocol, requests
from pgha.arbiter import Arbiter
from pgha.arbiter_leader import LeadingArbiter
from pgha.arbiter_service import ArbiterService
from pgha.errors import ProtocolError
from testsuite.helpers import FakeClock
from testsuite.unit.test_arbiter import P, S, Running, heartbeat, make_settings, primary_report


# -- the table as every reader sees it -----------------------------------------------------

def test_who_may_send_what_is_what_it_was_before_the_table():
    # The sets auth.py listed by hand: the table must not widen anyone's rights.
    assert auth.NODE_TYPES == {"heartbeat", "status", "history"}
    assert auth.OPERATOR_TYPES == {"status", "history", "switchover", "failover", "pause", "resume", "rebuild",
                                   "reload", "clusters", "flush", "reinit", "restart", "config"}   # the operator's only
    assert auth.READER_TYPES == {"status", "history", "clusters"}
    assert auth.PEER_TYPES == {"lease"} and auth.SELF_TYPES == {"heartbeat", "lease"}
    assert api.RELAYED == {"switchover", "reload", "pause", "resume", "failover", "config"}


def test_every_state_changing_kind_is_answered_by_the_leader_alone():
    # failover, pause and resume were missing from the hand-written list (issue 16).
    assert requests.LEADER_ONLY == {"heartbeat", "switchover", "failover", "pause", "resume", "rebuild", "reload",
                                    "flush", "reinit", "restart", "config"}
    assert all(k.leader_only for k in requests.KINDS.values() if k.changes_state)


def test_every_kind_parses_to_its_own_dataclass_and_has_a_handler(tmp_path):
    examples = {"heartbeat": heartbeat(P, 1, primary_report()), "lease": {"node": P, "epoch": 1},
                "switchover": {"to": S}, "failover": {"to": S}, "rebuild": {"epoch": 2, "primary": P},
                "history": {"limit": 5}, "flush": {"what": "switchover"}, "reinit": {"member": S},
                "restart": {"member": S}, "config": {"parameters": {"work_mem": "8MB"}}}
    arbiter = Arbiter(make_settings(tmp_path / "state.json"), clock=FakeClock(), init=True)
    service = ArbiterService.single(arbiter)
    for name, kind in requests.KINDS.items():
        request = requests.parse({**examples.get(name, {}), "type": name})
        assert type(request) is kind.request_type and requests.kind_of_request(request) is kind
        if name in ("lease", "rebuild"):      # the lease link's; rebuild mode's (refused out of it)
            continue
        # A kind without a handler raises ProtocolError ("does not serve"); a refusal is an answer.
        reply = service.handle(requests.parse({**examples.get(name, {}), "type": name}))
        assert isinstance(reply.get("type"), str), (name, reply)


# -- a non-leading arbiter never answers from its own memory ------------------------------------

class NotLeading:
    address = "127.0.0.1:2"
    store_problem = None

    def term(self):
        return None

    def leader_hint(self):
        return "127.0.0.1:1"


@pytest.mark.parametrize("message", [
    {"type": "pause"}, {"type": "resume"}, {"type": "failover", "to": S}, {"type": "failover", "to": S, "force": True},
    {"type": "switchover"}, {"type": "switchover", "to": S, "at": 2e9}, heartbeat(P, 1, primary_report()),
    {"type": "rebuild", "epoch": 2, "primary": P}, {"type": "flush", "what": "switchover"},
], ids=lambda m: m["type"] + ("-" + "-".join(sorted(set(m) - {"type"})) if len(m) > 1 else ""))
def test_a_follower_answers_not_the_leader_and_changes_nothing(tmp_path, message):
    state_file = tmp_path / "state.json"
    arbiter = Arbiter(make_settings(state_file), clock=FakeClock(), init=True)
    before, history = state_file.read_bytes(), arbiter.store.history()
    reply = LeadingArbiter(arbiter, NotLeading()).handle(protocol.validate_request({"v": 1, **message}))
    assert reply == {"type": "error", "error": "not the leader", "leader": "127.0.0.1:1"}
    assert state_file.read_bytes() == before and arbiter.store.history() == history
    assert not arbiter.state.scheduled and arbiter.memory.failover_to is None and arbiter.memory.switchover_to is None


def test_a_follower_refuses_a_reload_request_the_nodes_would_never_hear(tmp_path):
    arbiter = Arbiter(make_settings(tmp_path / "state.json"), clock=FakeClock(), init=True)
    arbiter.settings_loader = lambda: arbiter.settings
    leading = LeadingArbiter(arbiter, NotLeading())
    service = ArbiterService({arbiter.cluster.name: leading}, arbiter.cluster.name, deciders={
        arbiter.cluster.name: arbiter}, leadership=NotLeading())
    assert service.handle(requests.parse({"type": "reload"})) == {"type": "error", "error": "not the leader", "leader": "127.0.0.1:1"}
    assert arbiter.reload_generation == 0
    assert ArbiterService.single(arbiter).handle(requests.parse({"type": "reload"}))["reload_generation"] == 1    # one arbiter


def test_a_follower_still_answers_status_and_history(tmp_path):
    arbiter = Arbiter(make_settings(tmp_path / "state.json"), clock=FakeClock(), init=True)
    leading = LeadingArbiter(arbiter, NotLeading())
    status = leading.handle(requests.parse({"type": "status"}))
    assert status["arbiter"]["leader"] is False and status["primary"] == P
    assert leading.handle(requests.parse({"type": "history"}))["type"] == "history"


# -- operator input in range (issue 19 item 5) ----------------------------------------------------

OUT_OF_RANGE = [
    ("at-far-future", {"type": "switchover", "at": 1.7e9 + 99999999 * 3600}, "'at' must be a time between"),
    ("at-far-past", {"type": "switchover", "at": -1e18}, "'at' must be a time between"),
    ("at-infinity", {"type": "switchover", "at": float("inf")}, "'at' must be a time between"),
    ("at-string", {"type": "switchover", "at": "+1h"}, "'at' must be int or float"),
    ("limit-zero", {"type": "history", "limit": 0}, "'limit' must be from 1 to 1000"),
    ("limit-huge", {"type": "history", "limit": 10 ** 9}, "'limit' must be from 1 to 1000"),
    ("to-control", {"type": "failover", "to": "pgsql-2\x1b[2J"}, "'to' must be a node name"),
    ("to-empty", {"type": "switchover", "to": ""}, "'to' must be a node name"),
    ("to-long", {"type": "switchover", "to": "x" * 300}, "'to'"),
    ("primary-space", {"type": "rebuild", "epoch": 2, "primary": "pgsql 1"}, "'primary' must be a node name"),
    ("epoch-zero", {"type": "rebuild", "epoch": 0, "primary": P}, "'epoch' must be from 1"),
    ("force-string", {"type": "failover", "to": S, "force": "yes"}, "'force' must be bool"),
]


@pytest.mark.parametrize("message, problem", [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE])
def test_operator_input_out_of_range_is_refused_in_one_line(message, problem):
    with pytest.raises(ProtocolError) as err:
        protocol.validate_request({"v": 1, **message})
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_in_range_input_still_passes():
    for message in ({"type": "switchover", "at": 1.7e9}, {"type": "switchover", "at": 1_700_000_000},
                    {"type": "history", "limit": 1000}, {"type": "history", "limit": 1},
                    {"type": "failover", "to": "pgsql_2.b-c"}, {"type": "rebuild", "epoch": 1, "primary": P}):
        protocol.validate_request({"v": 1, **message})


@pytest.mark.parametrize("at", [1.7e9 + 99999999 * 3600, -1e18])
def test_a_switchover_at_an_impossible_time_is_refused_and_nothing_sticks(tmp_path, at):
    """Before: +99999999h answered "internal error", kept the schedule, and
    every status after it answered "internal error"; -1e18 closed the
    connection without a reply."""
    running = Running(tmp_path)
    try:
        client = running.client()
        reply = client.ask({"type": "switchover", "at": at})
        assert reply["type"] == "error" and "'at' must be a time between" in reply["error"]
        assert not running.arbiter.state.scheduled
        status = running.client().ask({"type": "status"})
        assert status["type"] == "status" and status["switchover_scheduled"] is None
        assert [e["event"] for e in running.arbiter.store.history()] == ["initialised"]
        json.dumps(status)
    finally:
        running.stop()


def test_ctl_refuses_an_impossible_time_before_sending(capsys, monkeypatch):
    from pgha import ctl, keys
    from testsuite.unit.test_arbiter_auth import credential
    monkeypatch.setattr(keys, "client_credential", lambda path: credential("operator"))
    sent = []
    code = ctl.main(["--key-file", "operator.keys", "switchover", "--at", "+99999999h"],
                    call=lambda *a, **k: sent.append(a) or {"type": "ok"})
    err = capsys.readouterr().err
    assert code == 2 and sent == [] and err.count("\n") == 1 and "'at' must be a time between" in err


@pytest.mark.parametrize("argv, problem", [
    (["failover", "--to", "pgsql-2\x1b[2J"], "'to' must be a node name"),
    (["history", "--limit", "5000"], "'limit' must be from 1 to 1000"),
    (["rebuild", "--confirm", "--epoch", "0", "--primary", P], "'epoch' must be from 1"),
], ids=["control-characters", "limit", "epoch"])
def test_ctl_checks_every_request_at_the_table_before_sending(capsys, monkeypatch, argv, problem):
    from pgha import ctl, keys
    from testsuite.unit.test_arbiter_auth import credential
    monkeypatch.setattr(keys, "client_credential", lambda path: credential("operator"))
    sent = []
    assert ctl.main(["--key-file", "operator.keys", *argv], call=lambda *a, **k: sent.append(a)) == 2
    err = capsys.readouterr().err
    assert sent == [] and err.count("\n") == 1 and problem in err
