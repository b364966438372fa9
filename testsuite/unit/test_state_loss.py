"""State loss is never silent (issue 9, item 4): the arbiter starts from
nothing only with --init, rebuilds a lost state only on an operator's
confirmation of what the nodes report; a damaged node-state.json is one
clear line naming it."""
import json
import os
import subprocess
import sys

import pytest

from pgha import ctl, rebuild, store
from pgha.arbiter import Arbiter, StateFileError, StateMissingError
from pgha.decision import ClusterState
from pgha.messages import Report
from pgha.topology import Topology
from testsuite.helpers import FakeClock
from testsuite.unit.test_arbiter import P, S, Running, heartbeat, make_settings, primary_report, standby_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- --init ------------------------------------------------------------------------------------

def test_missing_state_without_init_is_refused(tmp_path):
    state_file = tmp_path / "state.json"
    with pytest.raises(StateMissingError) as err:
        Arbiter(make_settings(state_file), clock=FakeClock())
    message = str(err.value)
    assert str(state_file) in message and "--init" in message and "--rebuild" in message
    assert "\n" not in message
    assert not state_file.exists()


def test_init_creates_the_state_at_epoch_1(tmp_path):
    state_file = tmp_path / "state.json"
    arbiter = Arbiter(make_settings(state_file), clock=FakeClock(), init=True)
    assert json.loads(state_file.read_text()) == {"epoch": 1, "primary": P, "promotable": False}
    assert arbiter.state == ClusterState(epoch=1, primary=P)


def test_init_keeps_an_existing_state(tmp_path):
    state_file = tmp_path / "state.json"
    store.FileStore(str(state_file)).save(ClusterState(epoch=7, primary=S, promotable={P}), expected_epoch=None)
    arbiter = Arbiter(make_settings(state_file), clock=FakeClock(), init=True)
    assert arbiter.state == ClusterState(epoch=7, primary=S, promotable={P})
    assert json.loads(state_file.read_text()) == {"epoch": 7, "primary": S, "promotable": True,
                                                  "promotable_members": [P]}


def _arbiter_program(tmp_path, *flags):
    from pgha import keys
    if not (tmp_path / "keys").exists():
        keys.generate(str(tmp_path / "keys"), ["pgsql-1", "pgsql-2"])
    settings = tmp_path / "arbiter-settings.py"
    settings.write_text(f"state_file = {str(tmp_path / 'state.json')!r}\nlisten_port = 1\n"
                        f"key_file = {str(tmp_path / 'keys' / 'arbiter.keys')!r}\n")
    return subprocess.run([sys.executable, os.path.join(ROOT, "arbiter.py"), "--settings", str(settings),
                           *flags], capture_output=True, text=True, timeout=30, cwd=tmp_path)


def test_the_program_stops_with_one_clear_line_without_state(tmp_path):
    result = _arbiter_program(tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "--init" in lines[0], result.stderr
    assert not (tmp_path / "state.json").exists()


def test_the_program_refuses_init_with_rebuild(tmp_path):
    result = _arbiter_program(tmp_path, "--init", "--rebuild")
    assert result.returncode == 2 and "exclude" in result.stderr


# -- the proposal (pure) ------------------------------------------------------------------------

TOPOLOGY = Topology((P, S))


def heard(epoch, role=None, at=100.0):
    report = Report.from_wire({"pg": "running", "role": role} if role else {"pg": "stopped"})
    return rebuild.Heard(epoch=epoch, report=report, at=at)


@pytest.mark.parametrize("nodes, expected, problem", [
    ({}, None, "no node has reported"),
    ({P: heard(3, "primary"), S: heard(3, "standby")}, (3, P), None),
    ({P: heard(2, "standby"), S: heard(4, "primary")}, (4, S), None),
    ({P: heard(5, "primary")}, (5, P), None),                              # the standby's host is down
    ({P: heard(0), S: heard(0)}, None, "--init"),
    ({P: heard(3), S: heard(3, "standby")}, None, "no node runs PostgreSQL as primary"),
    ({P: heard(3, "primary"), S: heard(3, "primary")}, None, "both"),
    ({P: heard(3, "primary"), S: heard(4, "standby")}, None, "acted on epoch 3"),   # P may be a stale primary
    ({P: heard(3, "primary", at=90.0), S: heard(3, "standby")}, None, "no node runs"),  # P's report is stale
])
def test_the_proposal(nodes, expected, problem):
    """(started long ago: a node not heard from is taken as down)"""
    proposal, why = rebuild.propose(TOPOLOGY, nodes, now=100.0, fresh_within=3.0, started_at=0.0)
    if expected is None:
        assert proposal is None and problem in why
    else:
        assert (proposal.epoch, proposal.primary) == expected and why is None


# -- rebuild over the wire ----------------------------------------------------------------------

@pytest.fixture
def rebuilding(tmp_path, monkeypatch):
    monkeypatch.setattr(Arbiter, "__init__", _rebuild_init)
    r = Running(tmp_path)
    yield r
    r.stop()


_real_init = Arbiter.__init__


def _rebuild_init(self, settings, clock, **_):
    _real_init(self, settings, clock=clock, rebuild=True)


def test_a_node_not_heard_from_is_waited_for_a_lease_time():
    nodes = {P: heard(3, "primary", at=100.0)}
    proposal, why = rebuild.propose(TOPOLOGY, nodes, now=100.0, fresh_within=3.0, started_at=98.0)
    assert proposal is None and f"waiting up to 3s for {S}" in why
    proposal, _ = rebuild.propose(TOPOLOGY, nodes, now=101.0, fresh_within=3.0, started_at=98.0)
    assert proposal == rebuild.Proposal(epoch=3, primary=P)


def test_rebuild_answers_wait_proposes_and_saves_only_a_matching_confirmation(rebuilding):
    r = rebuilding
    assert not r.state_file.exists()
    c = r.client()
    reply = c.ask(heartbeat(P, 2, primary_report()))
    assert reply["role"] == "wait" and "rebuilding" in reply["reason"]
    assert c.ask({"type": "status"})["proposal"] is None        # pgsql-2 not heard from yet
    assert c.ask(heartbeat(S, 2, standby_report()))["role"] == "wait"
    status = c.ask({"type": "status"})
    assert status["rebuilding"] is True and status["proposal"] == {"epoch": 2, "primary": P}
    assert status["nodes"][S]["acted_epoch"] == 2
    assert c.ask({"type": "switchover", "to": S})["type"] == "error"

    for epoch, primary in ((3, P), (2, S), (1, P)):
        refused = c.ask({"type": "rebuild", "epoch": epoch, "primary": primary})
        assert refused["type"] == "error" and "does not match the proposal" in refused["error"]
    assert not r.state_file.exists()

    assert c.ask({"type": "rebuild", "epoch": 2, "primary": P}) == {"v": 1, "type": "ok", "epoch": 2,
                                                                      "primary": P}
    assert r.saved() == {"epoch": 2, "primary": P, "promotable": False}
    # normal service from here: the primary is told to stay primary at epoch 2
    reply = c.ask(heartbeat(P, 2, primary_report()))
    assert (reply["role"], reply["epoch"]) == ("primary", 2)
    assert c.ask({"type": "rebuild", "epoch": 2, "primary": P})["type"] == "error"   # not rebuilding now


def test_a_rebuild_keeps_the_primary_its_standby_still_leases(rebuilding):
    """Issue 19: --rebuild answered the primary "wait", so it stopped renewing
    its standby lease and its fencer stopped PostgreSQL a lease later (writes
    down until the state was restored by hand). The primary its standby still
    leases is told to stay primary (same epoch, standby and synchronous
    standby) and the standby to stay its standby; nothing is saved, and the
    operator's confirmation is still needed."""
    c = rebuilding.client()
    assert c.ask(heartbeat(P, 2, primary_report()))["role"] == "wait"      # the standby not heard yet
    reply = c.ask(heartbeat(S, 2, standby_report(grant_remaining=1.5)))
    assert (reply["role"], reply["epoch"], reply["primary"]) == ("standby", 2, P)
    reply = c.ask(heartbeat(P, 2, primary_report()))
    assert (reply["role"], reply["epoch"], reply["standby"], reply["sync_standby"]) == ("primary", 2, S, S)
    assert reply["standby_address"]["peer_port"] and not reply["relinquish"]
    assert not rebuilding.state_file.exists()
    assert c.ask({"type": "status"})["rebuilding"] is True
    # a standby that no longer leases it, or that acted on a later epoch: "wait", as before
    c.ask(heartbeat(S, 2, standby_report(grant_remaining=0.0)))
    assert c.ask(heartbeat(P, 2, primary_report()))["role"] == "wait"
    c.ask(heartbeat(S, 3, standby_report(grant_remaining=1.5)))
    assert c.ask(heartbeat(P, 2, primary_report()))["role"] == "wait"


def test_no_confirmation_without_a_proposal(rebuilding):
    c = rebuilding.client()
    c.ask(heartbeat(S, 3, standby_report()))
    rebuilding.clock.advance(3.0)           # pgsql-1 silent for a lease time: down
    c.ask(heartbeat(S, 3, standby_report()))
    reply = c.ask({"type": "rebuild", "epoch": 3, "primary": S})
    assert reply["type"] == "error" and "no proposal" in reply["error"]
    assert not rebuilding.state_file.exists()


def test_rebuild_refuses_an_existing_state(tmp_path):
    state_file = tmp_path / "state.json"
    store.FileStore(str(state_file)).save(ClusterState(epoch=4, primary=S), expected_epoch=None)
    with pytest.raises(StateFileError, match="refusing to replace it"):
        Arbiter(make_settings(state_file), clock=FakeClock(), rebuild=True)


def test_ctl_rebuild_and_status(rebuilding, capsys, monkeypatch):
    # The rebuild commands' wording and checks; signing is test_auth's and test_security's.
    from pgha import keys
    monkeypatch.setattr(keys, "client_credential", lambda path: None)
    monkeypatch.setenv("PGHA_OPERATOR_KEY_FILE", "operator.keys")
    c = rebuilding.client()
    c.ask(heartbeat(P, 1, primary_report()))
    c.ask(heartbeat(S, 1, standby_report()))
    where = "%s:%s" % rebuilding.address
    assert ctl.main(["--arbiter", where, "status"]) == 0
    out = capsys.readouterr().out
    assert "REBUILDING" in out and "--epoch 1 --primary pgsql-1" in out
    assert ctl.main(["--arbiter", where, "rebuild", "--confirm", "--epoch", "1", "--primary", S]) == 1
    assert "does not match" in capsys.readouterr().err
    assert ctl.main(["--arbiter", where, "rebuild", "--confirm", "--epoch", "1", "--primary", P]) == 0
    assert rebuilding.saved() == {"epoch": 1, "primary": P, "promotable": False}


# -- the node's own state file -------------------------------------------------------------------

@pytest.mark.parametrize("content", ['{"acted_epoch": 3', "", '{"acted_epoch": "3"}', "[]", '{"acted_epoch": -1}',
                                     "\x00\x00"])
def test_a_damaged_node_state_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "node-state.json"
    path.write_text(content)
    with pytest.raises(store.NodeStateError) as err:
        store.load_node_state(str(path)).acted_epoch
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_node_state_file_read(tmp_path):
    path = tmp_path / "node-state.json"
    assert store.load_node_state(str(path)).acted_epoch == 0
    path.write_text('{"acted_epoch": 4}')
    assert store.load_node_state(str(path)).acted_epoch == 4


def test_the_node_stops_with_one_line_on_a_truncated_state_file(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "node-state.json").write_text('{"acted_ep')
    from pgha import keys
    keys.generate(str(tmp_path / "keys"), ["pgsql-1", "pgsql-2"])
    settings = tmp_path / "node-settings.py"
    settings.write_text(f"pgdata = {str(tmp_path / 'data')!r}\nstate_dir = {str(state_dir)!r}\n"
                        "admin_password = 'a'\nreplication_password = 'b'\napp_password = 'c'\narbiter_port = 1\n"
                        f"key_file = {str(tmp_path / 'keys' / 'pgsql-1.keys')!r}\n")
    os.chmod(settings, 0o600)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "node.py"), "--settings", str(settings)],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    if "PostgreSQL binaries" in result.stderr:
        pytest.skip("PostgreSQL binaries not installed")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(state_dir / "node-state.json") in lines[0], result.stderr
    assert "Traceback" not in result.stderr
