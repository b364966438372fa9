"""Patroni-style writes on the node's REST API (pgha/patroni_requests.py,
api.PatroniWrites): HTTP Basic credentials as Patroni's
restapi.authentication, Patroni's bodies turned into our requests, signed
with the operator key and decided by the (unit-test) arbiter with real
signatures. The translation table is pure and tested alone first."""
import base64
import http.client
import json

import pytest

from pgha import api, arbiter as arbiter_mod, arbiter_link, patroni_requests
from pgha.node_state import NodeSnapshot, StatePublisher
from pgha.pg_facts import PgFacts
from testsuite.unit.test_api_relay import signed
from testsuite.unit.test_arbiter import P, S, Running
from testsuite.unit.test_arbiter_auth import KEYS, credential, promotable

GOOD = "Basic " + base64.b64encode(b"patroni:s3cret:with:colons").decode()


@pytest.mark.parametrize("method, path, body, ours", [
    ("POST", "/switchover", {"leader": P, "candidate": S}, [{"type": "switchover", "primary": P, "to": S}]),
    ("POST", "/switchover", {"leader": P, "scheduled_at": "2030-01-01T00:00:00+00:00"},
     [{"type": "switchover", "primary": P, "at": 1893456000.0}]),
    ("POST", "/failover", {"candidate": S}, [{"type": "failover", "to": S}]),
    ("DELETE", "/switchover", None, [{"type": "flush", "what": "switchover"}]),
    ("POST", "/restart", {}, [{"type": "restart", "member": S}]),
    ("POST", "/restart", {"schedule": "2030-01-01T00:00:00Z", "restart_pending": True},
     [{"type": "restart", "member": S, "at": 1893456000.0, "pending": True}]),
    ("DELETE", "/restart/", None, [{"type": "flush", "what": "restart", "member": S}]),   # this member's, as Patroni
    ("POST", "/reinitialize", {"force": True}, [{"type": "reinit", "member": S}]),
    ("POST", "/reload", None, [{"type": "reload"}]),
    ("PATCH", "/config", {"pause": True, "postgresql": {"parameters": {"work_mem": "8MB", "jit": None}}},
     [{"type": "config", "parameters": {"work_mem": "8MB", "jit": None}}, {"type": "pause"}]),
    ("PATCH", "/config", {"pause": None}, [{"type": "resume"}]),
])
def test_patronis_requests_as_ours(method, path, body, ours):
    assert list(patroni_requests.translate(method, path, body, S).requests) == ours


@pytest.mark.parametrize("method, path, body, says", [
    ("POST", "/switchover", ["x"], "JSON object"),
    ("POST", "/switchover", {"leader": P, "scheduled_at": "2030-01-01T00:00:00"}, "time zone"),
    ("POST", "/switchover", {"leader": P, "scheduled_at": "tomorrow"}, "not an ISO 8601"),
    ("POST", "/switchover", {"leader": 7}, "member's name"),
    ("POST", "/switchover", {}, "'leader' is required"),             # an empty or unread body: nothing done
    ("POST", "/switchover", {"candidate": S}, "'leader' is required"),
    ("PATCH", "/config", {"pause": True, "postgresql": {"parameters": {"archive_command": "x"}}}, "runs a program"),
    ("POST", "/switchover", {"leader": P, "member": S}, "'member' not served"),
    ("POST", "/failover", {}, "'candidate' is required"),
    ("POST", "/restart", {"schedule": "2030-01-01 00:00"}, "'schedule' must name its time zone"),
    ("POST", "/restart", {"role": "primary"}, "'role' not served"),
    ("POST", "/restart", {"restart_pending": "yes"}, "true or false"),
    ("PATCH", "/config", {"ttl": 30}, "'ttl' not served"),
    ("PATCH", "/config", {"postgresql": {"parameters": ["x"]}}, "name: value"),
    ("PATCH", "/config", {}, "nothing to change"),
    ("PUT", "/config", {}, "not a Patroni write"),
    ("POST", "/sync", {}, "not a Patroni write"),
])
def test_what_is_refused_with_one_line(method, path, body, says):
    with pytest.raises(patroni_requests.BadRequest, match=says):
        patroni_requests.translate(method, path, body, S)


@pytest.fixture
def setup(tmp_path):
    arbiter = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    state = StatePublisher(S)
    writes = api.PatroniWrites("patroni", "s3cret:with:colons", lambda message: arbiter_link.call(
        [arbiter.address], message, credential=credential("operator")), S)
    server = api.start("127.0.0.1", 0, state, relay=api.arbiter_relay([arbiter.address]), patroni=writes)
    yield arbiter, server, state
    server.stop()
    arbiter.stop()


def send(server, method, path, body=None, authorization=GOOD):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    headers = {"Authorization": authorization} if authorization else {}
    conn.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=headers)
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data, response.getheader("WWW-Authenticate")


def test_without_the_credentials_nothing_is_sent(setup):
    arbiter, server, _ = setup
    wrong = "Basic " + base64.b64encode(b"patroni:guess").decode()
    for authorization in (None, wrong, "Basic !!notbase64", "Bearer x"):
        status, reply, challenge = send(server, "PATCH", "/config", {"pause": True}, authorization)
        assert (status, challenge) == (401, 'Basic realm="pgha"') and "credentials" in reply["error"]
    assert not arbiter.arbiter.state.paused


def test_a_scheduled_switchover_config_and_pause_reach_the_arbiter(setup):
    arbiter, server, _ = setup
    status, reply, _ = send(server, "POST", "/switchover", {"leader": P, "candidate": S,
                                                            "scheduled_at": "2030-01-01T00:00:00+00:00"})
    assert status == 202, reply     # scheduled, as Patroni answers
    assert (arbiter.arbiter.state.scheduled_at, arbiter.arbiter.state.scheduled_to) == (1893456000.0, S)
    assert send(server, "DELETE", "/switchover")[0] == 200 and not arbiter.arbiter.state.scheduled
    status, reply, _ = send(server, "POST", "/restart", {"schedule": "2030-01-01T00:00:00+00:00",
                                                         "restart_pending": True})
    assert status == 202, reply
    assert [(r.member, r.at, r.pending) for r in arbiter.arbiter.state.scheduled_restarts] == [(S, 1893456000.0, True)]
    assert send(server, "DELETE", "/restart")[0] == 200 and not arbiter.arbiter.state.scheduled_restarts
    status, reply, _ = send(server, "PATCH", "/config", {"pause": True, "postgresql": {"parameters": {"work_mem": "8MB"}}})
    assert status == 200 and reply["config_version"] == 1, reply
    assert arbiter.arbiter.state.paused and dict(arbiter.arbiter.state.parameters) == {"work_mem": "8MB"}


def test_a_refusal_is_412_with_the_arbiters_reason_and_bad_input_400(setup):
    arbiter, server, _ = setup
    status, reply, _ = send(server, "POST", "/switchover", {"leader": S, "candidate": P})
    assert status == 412 and f"{S} is not the primary" in reply["error"], reply
    status, reply, _ = send(server, "PATCH", "/config", {"pause": True,
                                                        "postgresql": {"parameters": {"archive_command": "sh"}}})
    assert status == 400 and "runs a program" in reply["error"] and not arbiter.arbiter.state.paused
    status, reply, _ = send(server, "PATCH", "/config", {"postgresql": {"parameters": {"work_mem": "1MB"}}})
    assert status == 200
    status, reply, _ = send(server, "POST", "/failover", {})
    assert status == 400 and "candidate" in reply["error"]
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("POST", "/switchover", body=b"{not json", headers={"Authorization": GOOD})
    assert conn.getresponse().status == 400
    conn.close()
    assert dict(arbiter.arbiter.state.parameters) == {"work_mem": "1MB"} and not arbiter.arbiter.state.scheduled


def test_restart_pending_asks_this_members_facts(setup):
    arbiter, server, state = setup
    promotable(arbiter)
    status, reply, _ = send(server, "POST", "/restart", {"restart_pending": True})
    assert status == 503 and "restart conditions are not satisfied" in reply["error"]
    facts = PgFacts(server_version=150000, postmaster_start_time=0.0, system_identifier="1", pending_restart=True,
                    replay_timestamp=None, replay_paused=False, senders=(), history=())
    state.publish(NodeSnapshot(name=S, taken_at=0.0, facts=facts))
    status, reply, _ = send(server, "POST", "/restart", {"restart_pending": True})
    assert status == 200, reply
    assert arbiter.arbiter.memory.restart and arbiter.arbiter.memory.restart[0] == S


def test_signed_bodies_are_still_relayed_without_credentials(setup):
    arbiter, server, _ = setup
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("POST", "/pause", body=signed({"type": "pause"}))
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["paused"] is True
    conn.close()


def running_as(node, role):
    return {node: {"report": {"role": role}}}


def test_a_switchover_now_answers_once_the_new_primary_runs_as_one():
    epochs = iter([{"type": "status", "epoch": 1, "primary": P}, {"type": "ok"},
                   {"type": "status", "epoch": 1, "primary": P, "switchover_to": S},
                   {"type": "status", "epoch": 2, "primary": S, "nodes": running_as(S, "standby")},
                   {"type": "status", "epoch": 2, "primary": S, "nodes": running_as(S, "primary")}])
    sent = []

    def ask(message):
        sent.append(message["type"])
        return next(epochs)
    writes = api.PatroniWrites("u", "p", ask, S, poll=0)
    code, body = writes.carry_out(patroni_requests.translate("POST", "/switchover", {"leader": P}, S))
    assert (code, body["message"]) == (200, f'Successfully switched over to "{S}"')
    assert sent == ["status", "switchover", "status", "status", "status"]
    dropped = iter([{"type": "status", "epoch": 1, "primary": P}, {"type": "ok"},
                    {"type": "status", "epoch": 1, "primary": P}])
    writes = api.PatroniWrites("u", "p", lambda message: next(dropped), S, poll=0)
    code, body = writes.carry_out(patroni_requests.translate("POST", "/switchover", {"leader": P}, S))
    assert code == 503 and "dropped" in body["error"]
    # The arbiter's state unreadable first (a follower, an error): nothing is sent, no false success.
    unread = iter([{"type": "error", "error": "not the leader"}])
    writes = api.PatroniWrites("u", "p", lambda message: next(unread), S, poll=0)
    code, body = writes.carry_out(patroni_requests.translate("POST", "/switchover", {"leader": P}, S))
    assert code == 503 and "nothing sent" in body["error"]


def test_hostile_bodies_get_400_not_a_dropped_connection(setup):
    arbiter, server, _ = setup
    for raw, headers in ((b"[" * 30000, {}), (b'{"leader": NaN}', {}), (b"\xff\xfe", {}),
                         (b"[" * 30000, {"Authorization": GOOD})):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        conn.request("POST", "/switchover", body=raw, headers={"Authorization": GOOD, **headers})
        response = conn.getresponse()
        assert response.status == 400, (raw[:20], response.status)
        conn.close()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest("POST", "/switchover")
    conn.putheader("Authorization", GOOD)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    assert conn.getresponse().status == 411
    conn.close()
    assert arbiter.arbiter.memory.switchover_to is None


def test_a_few_writes_at_a_time(setup):
    arbiter, server, _ = setup
    writes = server.patroni
    for _ in range(api.PATRONI_WRITERS):
        writes.writing.acquire()
    try:
        status, reply, _ = send(server, "PATCH", "/config", {"pause": True})
        assert status == 503 and "under way" in reply["error"] and not arbiter.arbiter.state.paused
    finally:
        for _ in range(api.PATRONI_WRITERS):
            writes.writing.release()
