"""The arbiter port and the lease link with authentication on: forged,
replayed and mis-attributed messages get one "authentication failed", are
logged once per source and check, and change no state."""
import copy
import time
import logging
import re

import pytest

from pgha import arbiter as arbiter_mod, auth, protocol
from pgha.lease import GRANT_TAIL, Grants, PeerServer, peer_credential, peer_verifier
from testsuite.helpers import FakeClock, row, serving
from testsuite.unit.test_arbiter import P, S, Running, address, heartbeat, primary_report, standby_report

KEYS = {P: (b"\x01" * 32,), S: (b"\x02" * 32,), "operator": (b"\x03" * 32,), "reader": (b"\x04" * 32,)}
WRONG = b"\x09" * 32


def credential(identity, key=None):
    return auth.Credential(identity, (key,) if key else KEYS[identity])


@pytest.fixture
def secured(tmp_path):
    r = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    yield r
    r.stop()


class Signed:
    """A connection that signs with `cred` (the real client code)."""

    def __init__(self, running, cred):
        self.conn = protocol.Connection(*running.address, timeout=5.0, credential=cred)

    def ask(self, message):
        return self.conn.request(message)


def snapshot(running):
    a = running.arbiter
    return a.state, copy.deepcopy(a.memory), running.state_file.read_bytes()


def promotable(secured):
    node = Signed(secured, credential(P))
    assert node.ask(heartbeat(P, 1, primary_report(1000, 900)))["sync_standby"] == S
    secured.clock.advance(0.5)
    node.ask(heartbeat(P, 1, primary_report(1100, 1000)))
    Signed(secured, credential(S)).ask(heartbeat(S, 1, standby_report()))
    assert secured.arbiter.state.promotable
    return node


def assert_refused_and_nothing_changed(secured, raw_messages):
    before = snapshot(secured)
    for message in raw_messages:
        c = secured.client()
        c.send(message)
        assert c.receive() == {"v": 1, "type": "error", "error": auth.FAILED}
        assert c.is_closed()
    assert snapshot(secured) == before


def test_members_are_heard_and_replies_are_signed(secured):
    node = promotable(secured)
    reply = node.ask(heartbeat(P, 1, primary_report()))
    assert reply["type"] == "instruction" and reply["role"] == "primary" and "mac" not in reply
    operator = Signed(secured, credential("operator"))
    assert operator.ask({"type": "status"})["primary"] == P
    assert Signed(secured, credential("reader")).ask({"type": "status"})["epoch"] == 1
    assert operator.ask({"type": "switchover", "to": S}) == {"v": 1, "type": "ok", "switchover_to": S}


def test_a_switchover_without_the_operator_key_changes_nothing(secured):
    promotable(secured)
    now = auth.Credential("x", (WRONG,))
    assert_refused_and_nothing_changed(secured, [
        {"v": 1, "type": "switchover", "to": S},                                  # unsigned
        credential("operator", WRONG).sign({"v": 1, "type": "switchover"}),       # wrong key
        credential(P).sign({"v": 1, "type": "switchover", "to": S}),              # a node's key
        credential("reader").sign({"v": 1, "type": "switchover"}),                # read-only
        now.sign({"v": 1, "type": "switchover"}),                                 # unknown sender
    ])
    assert secured.arbiter.memory.switchover_to is None
    # Over the real client: the error is passed on, nothing else said.
    reply = Signed(secured, credential(P)).ask({"type": "switchover", "to": S})
    assert reply == {"v": 1, "type": "error", "error": auth.FAILED}


def test_the_forged_sequence_with_a_wrong_key_changes_nothing(secured):
    """sync off, a fake sync row, a hand-over: the sequence that once promoted
    the standby behind a live primary's back."""
    promotable(secured)
    forger = credential(P, WRONG)
    sync_off = primary_report(1200, 1000)
    sync_off.update(sync_standby=None, replication=[])
    fake_row = primary_report(1300, 1300)
    fake_row["replication"] = [row(name=S, flush_lsn=1300)]
    handed_over = {"pg": "stopped", "address": address(P), "relinquished": True, "grant_remaining": 0.0}
    messages = [forger.sign(protocol.decode(protocol.encode(heartbeat(P, 1, r))[:-1]))
                for r in (sync_off, fake_row, handed_over)]
    # ...and the same sent by pgsql-2 with its own valid key, in pgsql-1's name.
    messages += [credential(S).sign({"v": 1, **heartbeat(P, 1, r)}) for r in (sync_off, handed_over)]
    # ...and unsigned.
    messages += [{"v": 1, **heartbeat(P, 1, handed_over)}]
    assert_refused_and_nothing_changed(secured, messages)
    assert secured.arbiter.state.promotable and secured.arbiter.state.primary == P


def test_a_replayed_heartbeat_is_refused_and_changes_nothing(secured):
    promotable(secured)
    genuine = credential(P).sign({"v": 1, **heartbeat(P, 1, primary_report(1400, 1400))})
    c = secured.client()
    assert c.ask(genuine)["type"] == "instruction"
    secured.clock.advance(5)        # the arbiter's own clock: without the replay, P would look silent
    seen = secured.arbiter.memory.last_seen[P]
    assert_refused_and_nothing_changed(secured, [genuine, genuine])
    assert secured.arbiter.memory.last_seen[P] == seen


def test_refusals_are_logged_once_per_source_and_check_without_telling_the_client(secured, caplog):
    secured.server.warnings._last.clear()
    forged = credential(P, WRONG)
    with caplog.at_level(logging.WARNING, logger="protocol"):
        for _ in range(5):
            c = secured.client()
            c.send(forged.sign({"v": 1, **heartbeat(P, 1, standby_report())}))
            assert c.receive()["error"] == "authentication failed"
        c = secured.client()
        c.send({"v": 1, "type": "switchover"})
        c.receive()
    lines = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "bad MAC" in lines[0] and "no sender" in lines[1]
    assert all(WRONG.hex() not in line for line in lines)


# -- the lease link --------------------------------------------------------------------------------

PAIR = (b"\x05" * 32,)


@pytest.fixture
def standby_link():
    grants = Grants(FakeClock())
    grants.follow(P, 4)
    server = PeerServer("127.0.0.1", 0, grants, lambda: 3.0, verifier=peer_verifier(S, PAIR))
    with serving(server):
        yield server, grants


def lease_reply(server, message):
    return protocol.call(*server.server_address, message)


def test_the_standby_grants_only_to_the_primary_with_the_pair_key(standby_link):
    server, grants = standby_link
    lease = {"type": "lease", "node": P, "epoch": 4}
    for forged in ([lease,                                                          # unsigned
                    peer_credential(P, (WRONG,)).sign({"v": 1, **lease}),           # wrong key
                    auth.Credential(P, KEYS[P]).sign({"v": 1, **lease}),            # its arbiter key
                    peer_credential(S, PAIR).sign({"v": 1, **lease, "node": S}),    # the standby's own name
                    peer_credential(S, PAIR).sign({"v": 1, **lease})]):             # mis-attributed
        assert lease_reply(server, forged) == {"v": 1, "type": "error", "error": auth.FAILED}
        assert grants.remaining_for_report() == 0.0
    grants.follow(P, 4)     # remaining_for_report() paused grants
    reply = protocol.call(*server.server_address, lease, credential=peer_credential(P, PAIR))
    assert reply == {"v": 1, "type": "grant", "granted": True, "reason": None}
    assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)


@pytest.fixture
def bound_link():
    grants = Grants(FakeClock())
    grants.follow(P, 4)
    server = PeerServer("127.0.0.1", 0, grants, lambda: 3.0, verifier=peer_verifier(S, PAIR, grants.allowed_primary))
    with serving(server):
        yield server, grants


def test_a_pair_key_holder_is_heard_only_as_the_primary_the_arbiter_named(bound_link):
    """Issue 19: the pair key is shared, so a holder could claim any node
    name on the lease link and be heard (and its refusals logged) as that
    member. Bound to the arbiter's primary: any other name is an unknown sender."""
    server, grants = bound_link
    for claimed in ("pgsql-3", "pgsql-9"):
        lease = {"type": "lease", "node": claimed, "epoch": 4}
        assert lease_reply(server, peer_credential(claimed, PAIR).sign({"v": 1, **lease})) == \
            {"v": 1, "type": "error", "error": auth.FAILED}
    lease = {"type": "lease", "node": P, "epoch": 4}
    grants.follow(P, 4)
    reply = protocol.call(*server.server_address, lease, credential=peer_credential(P, PAIR))
    assert reply == {"v": 1, "type": "grant", "granted": True, "reason": None}
    assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)


# -- a member whose wall clock is off (auth.ServerClock) ---------------------------------------------

@pytest.mark.parametrize("offset", [-3600.0, -20.0, 60.0])
def test_a_member_whose_clock_is_off_is_heard_at_once_and_its_skew_shown(tmp_path, caplog, offset):
    """The arbiter's verifier runs on the real clock, like the node's
    credential; the node's wall clock is `offset` off. Its first request is
    refused with a signed clock refusal, the Connection learns the arbiter's
    time and sends again: one request() call, heard. A restarted arbiter
    (which refuses stamps before its start) hears it at once too."""
    running = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    skewed = auth.Credential(P, KEYS[P], clock=lambda: time.time() + offset)
    node = protocol.Connection(*running.address, timeout=5.0, credential=skewed, name="the arbiter")
    try:
        with caplog.at_level(logging.INFO):
            assert node.request(heartbeat(P, 1, primary_report()))["type"] == "instruction"
        # Generous: a request's time in flight on a loaded machine counts into what each side measures.
        assert node.clock.skew == pytest.approx(-offset, abs=2.0)
        status = Signed(running, credential("operator")).ask({"type": "status"})
        assert status["nodes"][P]["clock_skew"] == pytest.approx(offset, abs=2.0)
        assert status["nodes"][S]["clock_skew"] is None
        text = caplog.text
        # Each side rounds to 0.1 s what it measured: on a loaded machine 60.0 may be said as 59.9.
        said = re.search(r"clock skew of ([-+][0-9.]+) s with the arbiter", text)
        assert said and float(said.group(1)) == pytest.approx(-offset, abs=2.0), text
        said = re.search(rf"clock skew of ([-+][0-9.]+) s with {P}", text)
        assert "told it our time" in text and said and float(said.group(1)) == pytest.approx(offset, abs=2.0), text
    finally:
        running.stop()
    restarted = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    try:
        node.close()
        node.address = restarted.address
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert node.request(heartbeat(P, 1, primary_report()))["type"] == "instruction"
        assert "told it our time" not in caplog.text       # stamped on its clock: heard at the first try
    finally:
        restarted.stop()
