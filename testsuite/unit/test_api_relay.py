"""POST on the node's REST API relays the operator-signed request unchanged
to the arbiter (the unit-test arbiter server, real signatures) and answers
with the arbiter's reply."""
import http.client
import json

import pytest

from pgha import api, arbiter as arbiter_mod, auth, protocol
from pgha.node_state import StatePublisher
from testsuite.unit.test_arbiter import P, S, Running
from testsuite.unit.test_arbiter_auth import KEYS, WRONG, credential, promotable


@pytest.fixture
def setup(tmp_path):
    arbiter = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    server = api.start("127.0.0.1", 0, StatePublisher(P), relay=api.arbiter_relay([arbiter.address]))
    yield arbiter, server
    server.stop()
    arbiter.stop()


def post(server, path, body, headers=None):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data)


def signed(message, key=None):
    return json.dumps(credential("operator", key).sign({"v": 1, **message})).encode()


def test_a_signed_switchover_is_relayed(setup):
    arbiter, server = setup
    promotable(arbiter)
    status, reply = post(server, "/switchover", signed({"type": "switchover", "to": S}))
    assert status == 200 and reply["type"] == "ok" and reply["switchover_to"] == S
    assert arbiter.arbiter.memory.switchover_to == S


def test_the_reply_is_the_arbiters_signed_answer(setup):
    arbiter, server = setup
    arbiter.arbiter.settings_loader = lambda: arbiter.settings
    body = signed({"type": "reload"})
    status, reply = post(server, "/reload", body)
    assert status == 200 and reply["reload_generation"] == 1
    cred = credential("operator")
    assert cred.check_reply(reply, json.loads(body))["type"] == "ok"   # the operator can verify it


def test_a_wrong_signature_is_403_and_changes_nothing(setup):
    arbiter, server = setup
    promotable(arbiter)
    status, reply = post(server, "/switchover", signed({"type": "switchover", "to": S}, WRONG))
    assert status == 403 and reply["error"] == auth.FAILED
    unsigned = json.dumps({"v": 1, "type": "switchover", "to": S}).encode()
    assert post(server, "/switchover", unsigned)[0] == 403
    assert arbiter.arbiter.memory.switchover_to is None


def test_a_replayed_request_is_refused(setup):
    arbiter, server = setup
    promotable(arbiter)
    body = signed({"type": "switchover", "to": S})
    assert post(server, "/switchover", body)[0] == 200
    assert post(server, "/switchover", body)[0] == 403


def test_a_refusal_is_409(setup):
    arbiter, server = setup     # not promotable yet: the arbiter refuses the switchover
    status, reply = post(server, "/switchover", signed({"type": "switchover", "to": S}))
    assert status == 409 and "switchover refused" in reply["error"]


def test_bad_bodies(setup):
    _, server = setup
    assert post(server, "/switchover", b"not json")[0] == 400
    assert post(server, "/switchover", signed({"type": "reload"}))[0] == 400    # path and type differ
    assert post(server, "/switchover", b"")[0] == 411     # no request in the body
    assert post(server, "/switchover", b"x" * (protocol.MAX_FRAME + 1))[0] == 413
    assert post(server, "/nothing", signed({"type": "reload"}))[0] == 405


def test_arbiter_unreachable_is_503(tmp_path):
    server = api.start("127.0.0.1", 0, StatePublisher(P), relay=api.arbiter_relay([("127.0.0.1", 1)], timeout=1))
    try:
        assert post(server, "/reload", signed({"type": "reload"}))[0] == 503
    finally:
        server.stop()
