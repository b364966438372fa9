"""pgha/auth.py: signing and verifying requests and replies; keyrings
(pgha/keys.py); (refusals are logged through pgha.limits.RateLimitedLog, tested in test_limits.py)."""
import json
import os
import stat

import pytest

from pgha import auth, keys, protocol
from pgha.auth import AuthError, Credential, Verifier
from testsuite.helpers import FakeClock

P, S = "pgsql-1", "pgsql-2"
K_P, K_S, K_OP, K_RD, K_PAIR = (bytes([n]) * 32 for n in range(1, 6))
RING = {P: (K_P,), S: (K_S,), "operator": (K_OP,), "reader": (K_RD,)}
NOW = 1_700_000_000.0


@pytest.fixture
def clock():
    return FakeClock(NOW)


@pytest.fixture
def verifier(clock):
    return Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=clock)


def cred(identity, key, clock, server="arbiter"):
    return Credential(identity, (key,) if isinstance(key, bytes) else key, server=server, clock=clock)


def wire(message):
    """What the receiver parses: the message through the real framing."""
    return protocol.decode(protocol.encode(message)[:-1])


def heartbeat(node=P, epoch=1, report=None):
    return {"v": 1, "type": "heartbeat", "node": node, "epoch": epoch,
            "report": report or {"pg": "running", "lsn": 1.5, "name": "ü\n"}}


def refused(verifier, message, check):
    with pytest.raises(AuthError) as caught:
        verifier.verify(wire(message))
    assert caught.value.check == check, str(caught.value)
    return str(caught.value)


# -- requests ----------------------------------------------------------------------------------

def test_a_signed_request_verifies_and_names_its_sender(verifier, clock):
    signed = cred(P, K_P, clock).sign(heartbeat())
    assert set(signed) >= {"from", "ts", "nonce", "mac"} and signed["from"] == P
    sender = verifier.verify(wire(signed))
    assert sender.identity == P and sender.key == K_P and sender.nonce == signed["nonce"]
    assert K_P.hex() not in repr(sender) and K_P.hex() not in repr(cred(P, K_P, clock))


def test_every_field_is_covered_by_the_mac(verifier, clock):
    signed = cred(P, K_P, clock).sign(heartbeat())
    for field, value in [("epoch", 2), ("report", {"pg": "stopped"}), ("ts", NOW + 1), ("nonce", "ab" * 16),
                         ("type", "heartbeat"), ("extra", 1)]:
        tampered = {**signed, field: value}
        if tampered == signed:
            continue
        refused(verifier, tampered, "bad mac")


def test_wrong_key_is_refused(verifier, clock):
    refused(verifier, cred(P, K_S, clock).sign(heartbeat()), "bad mac")
    refused(verifier, {**heartbeat(), "from": P, "ts": NOW, "nonce": "ab" * 16}, "bad mac")   # no mac


def test_unknown_or_missing_sender_is_refused(verifier, clock):
    refused(verifier, cred("pgsql-9", K_P, clock).sign(heartbeat("pgsql-9")), "unknown sender")
    refused(verifier, heartbeat(), "malformed")
    refused(verifier, cred("arbiter", K_P, clock).sign({"v": 1, "type": "status"}), "unknown sender")


def test_a_node_speaks_only_as_itself(verifier, clock):
    # pgsql-2 signs (validly, with its own key) a heartbeat in pgsql-1's name.
    text = refused(verifier, cred(S, K_S, clock).sign(heartbeat(P)), "mis-attributed")
    assert "in the name of 'pgsql-1'" in text


@pytest.mark.parametrize("identity, key, message", [
    (P, K_P, {"type": "switchover", "to": S}),
    (P, K_P, {"type": "rebuild", "epoch": 2, "primary": P}),
    ("reader", K_RD, {"type": "switchover"}),
    ("reader", K_RD, heartbeat()),
    ("operator", K_OP, heartbeat()),
    ("operator", K_OP, {"type": "lease", "node": "operator", "epoch": 1}),
], ids=["node-switchover", "node-rebuild", "reader-switchover", "reader-heartbeat", "operator-heartbeat",
        "operator-lease"])
def test_senders_may_send_only_their_types(verifier, clock, identity, key, message):
    refused(verifier, cred(identity, key, clock).sign({"v": 1, **message}), "not permitted")


def test_operator_and_reader_are_heard_for_their_types(verifier, clock):
    assert verifier.verify(wire(cred("operator", K_OP, clock).sign({"v": 1, "type": "switchover"}))).identity \
        == "operator"
    assert verifier.verify(wire(cred("operator", K_OP, clock).sign({"v": 1, "type": "status"})))
    assert verifier.verify(wire(cred("reader", K_RD, clock).sign({"v": 1, "type": "status"}))).identity == "reader"


def test_no_reader_key_no_reader(clock):
    v = Verifier("arbiter", auth.arbiter_lookup({**RING, "reader": ()}, [P, S]), clock=clock)
    with pytest.raises(AuthError):
        v.verify(wire(cred("reader", K_RD, clock).sign({"v": 1, "type": "status"})))


def test_a_replay_is_refused_within_the_window(verifier, clock):
    signed = cred(P, K_P, clock).sign(heartbeat())
    verifier.verify(wire(signed))
    clock.advance(5)
    refused(verifier, signed, "replay")
    # A fresh message from the same sender still passes.
    verifier.verify(wire(cred(P, K_P, clock).sign(heartbeat())))


@pytest.mark.parametrize("offset", [-30.5, 30.5, -3600, 1e9])
def test_a_timestamp_outside_the_window_is_refused(verifier, clock, offset):
    signer = cred(P, K_P, FakeClock(NOW + offset))
    refused(verifier, signer.sign(heartbeat()), "stale")


def test_a_replay_after_the_window_is_refused_by_its_timestamp(verifier, clock):
    signed = cred(P, K_P, clock).sign(heartbeat())
    verifier.verify(wire(signed))
    clock.advance(31)
    refused(verifier, signed, "stale")


def test_nonces_are_forgotten_once_their_timestamp_is_out_of_the_window(verifier, clock):
    for _ in range(10):
        verifier.verify(wire(cred(P, K_P, clock).sign(heartbeat())))
        clock.advance(5)
    assert len(verifier._seen) <= 7      # only those still inside the window


def test_a_restarted_server_refuses_messages_stamped_before_it_started(clock):
    signed = cred(P, K_P, clock).sign(heartbeat())
    clock.advance(2)
    fresh = Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=clock)   # lost its nonce cache
    refused(fresh, signed, "stale")
    fresh.verify(wire(cred(P, K_P, clock).sign(heartbeat())))


def test_a_full_replay_cache_refuses_rather_than_forgets(clock):
    v = Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=clock, max_nonces=3)
    for _ in range(3):
        v.verify(wire(cred(P, K_P, clock).sign(heartbeat())))
    refused(v, cred(P, K_P, clock).sign(heartbeat()), "cache full")


def test_an_unauthenticated_message_is_not_remembered(verifier, clock):
    forged = cred(P, K_S, clock).sign(heartbeat())
    refused(verifier, forged, "bad mac")
    assert forged["nonce"] not in verifier._seen


def test_malformed_authenticators_are_refused(verifier, clock):
    good = cred(P, K_P, clock).sign(heartbeat())
    refused(verifier, {**good, "ts": "now"}, "malformed")
    refused(verifier, {**good, "ts": True}, "malformed")
    refused(verifier, {**good, "nonce": "x"}, "malformed")
    refused(verifier, {**good, "from": ["pgsql-1"]}, "malformed")


# -- replies -------------------------------------------------------------------------------------

def test_a_reply_is_signed_with_the_requesters_key_and_bound_to_its_request(verifier, clock):
    client = cred(P, K_P, clock)
    request = client.sign(heartbeat())
    sender = verifier.verify(wire(request))
    reply = wire(verifier.sign_reply({"v": 1, "type": "instruction", "epoch": 1}, sender))
    assert reply["re"] == request["nonce"] and reply["from"] == "arbiter"
    assert client.check_reply(reply, request) == {"v": 1, "type": "instruction", "epoch": 1}
    # Replayed to another request: refused.
    other = client.sign(heartbeat())
    with pytest.raises(AuthError, match="does not answer this request"):
        client.check_reply(reply, other)
    # Another member cannot check it (it was signed with pgsql-1's key).
    with pytest.raises(AuthError, match="no valid MAC"):
        cred(S, K_S, clock).check_reply(reply, {**request})


def test_forged_replies_are_refused(clock):
    client = cred(P, K_P, clock)
    request = client.sign(heartbeat())
    forger = Verifier("arbiter", lambda s: ((K_S,), frozenset({"heartbeat"})), clock=clock)
    forged = forger.sign_reply({"v": 1, "type": "instruction"}, auth.Sender(P, K_S, request["nonce"]))
    with pytest.raises(AuthError, match="no valid MAC"):
        client.check_reply(wire(forged), request)
    with pytest.raises(AuthError, match="not from arbiter"):
        client.check_reply({**forged, "from": "pgsql-2"}, request)
    with pytest.raises(AuthError):      # unsigned, not an error
        client.check_reply({"v": 1, "type": "instruction", "epoch": 9}, request)


def test_an_unsigned_error_reply_is_an_error(clock):
    client = cred(P, K_P, clock)
    assert client.check_reply({"v": 1, "type": "error", "error": auth.FAILED}, client.sign(heartbeat())) == \
        {"v": 1, "type": "error", "error": auth.FAILED}


def test_peer_link_hears_only_the_other_node_as_itself(clock):
    standby = Verifier(S, auth.peer_lookup(S, (K_PAIR,)), clock=clock)
    primary = cred(P, K_PAIR, clock, server=None)
    request = primary.sign({"v": 1, "type": "lease", "node": P, "epoch": 3})
    sender = standby.verify(wire(request))
    grant = wire(standby.sign_reply({"v": 1, "type": "grant", "granted": True}, sender))
    assert primary.check_reply(grant, request)["granted"] is True
    # The standby's own name, a reserved name, another's name, another type, or the wrong key: refused.
    refused(standby, cred(S, K_PAIR, clock, None).sign({"v": 1, "type": "lease", "node": S, "epoch": 3}),
            "unknown sender")
    refused(standby, cred("operator", K_PAIR, clock, None).sign({"v": 1, "type": "lease", "node": "operator",
                                                                 "epoch": 3}), "unknown sender")
    refused(standby, cred(P, K_PAIR, clock, None).sign({"v": 1, "type": "lease", "node": "pgsql-3", "epoch": 3}),
            "mis-attributed")
    refused(standby, cred(P, K_PAIR, clock, None).sign({"v": 1, "type": "status"}), "not permitted")
    refused(standby, cred(P, K_P, clock, None).sign({"v": 1, "type": "lease", "node": P, "epoch": 3}), "bad mac")
    # A reply "from" the primary itself (a reflection) is refused.
    with pytest.raises(AuthError):
        primary.check_reply({**grant, "from": P}, request)


def test_rotation_accepts_either_key_and_replies_with_the_one_that_verified(clock):
    old, new = K_P, bytes([9]) * 32
    v = Verifier("arbiter", auth.arbiter_lookup({**RING, P: (old, new)}, [P, S]), clock=clock)
    for client in (cred(P, old, clock), cred(P, (new, old), clock)):
        request = client.sign(heartbeat())
        sender = v.verify(wire(request))
        assert sender.key == client.keys[0]
        assert client.check_reply(wire(v.sign_reply({"v": 1, "type": "x"}, sender)), request)["type"] == "x"
    # A node already on the new key alone is heard by an arbiter that still lists (old, new).
    assert v.verify(wire(cred(P, new, clock).sign(heartbeat())))


def test_canonical_form_ignores_key_order_and_the_mac():
    a = {"b": 1, "a": [1.5, "é"], "mac": "x"}
    assert auth.canonical(a) == auth.canonical({"a": [1.5, "é"], "b": 1}) == b'{"a":[1.5,"\\u00e9"],"b":1}'


# -- key files -----------------------------------------------------------------------------------

def test_generate_writes_one_0600_keyring_per_member(tmp_path):
    folder = tmp_path / "keys"
    written = keys.generate(str(folder), [P, S])
    assert sorted(os.path.basename(p) for p in written) == sorted(
        ["arbiter.keys", "operator.keys", "reader.keys", f"{P}.keys", f"{S}.keys"])
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    arbiter = keys.arbiter_keys(str(folder / "arbiter.keys"), [P, S])
    credential, pair = keys.node_keys(str(folder / f"{P}.keys"), P)
    _, pair2 = keys.node_keys(str(folder / f"{S}.keys"), S)
    assert credential.keys == arbiter[P] and pair == pair2 and pair[0] not in arbiter.values()
    assert keys.client_credential(str(folder / "operator.keys")).identity == "operator"
    assert keys.client_credential(str(folder / "reader.keys")).identity == "reader"
    assert "operator" not in keys.load(str(folder / f"{P}.keys"))    # nodes never hold the operator key
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.generate(str(folder), [P, S])


def test_generate_refuses_bad_node_names(tmp_path):
    for nodes in ([P], [P, P], [P, "operator"], [P, "a b"]):
        with pytest.raises(keys.KeyFileError):
            keys.generate(str(tmp_path / "k"), nodes)


def test_loading_refuses_unsafe_missing_or_malformed_files(tmp_path):
    keys.generate(str(tmp_path), [P, S])
    path = tmp_path / f"{P}.keys"
    os.chmod(path, 0o640)
    with pytest.raises(keys.KeyFileError, match=r"readable by group or others \(mode 0640\): chmod 600"):
        keys.load(str(path))
    os.chmod(path, 0o604)
    with pytest.raises(keys.KeyFileError, match="readable by group or others"):
        keys.load(str(path))
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.load(str(tmp_path / "nope.keys"))
    for body in ("not json", "[]", '{"a": "00"}', '{"a": ["zz"]}', '{"a": ["00"]}', '{"a": []}'):
        bad = tmp_path / "bad.keys"
        bad.unlink(missing_ok=True)
        fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body.encode())
        os.close(fd)
        with pytest.raises(keys.KeyFileError) as caught:
            keys.load(str(bad))
        assert "\n" not in str(caught.value)
    with pytest.raises(keys.KeyFileError, match="holds no key for 'pair'"):
        keys.node_keys(str(tmp_path / "operator.keys"), "operator")


def test_rotate_then_retire(tmp_path, clock):
    keys.generate(str(tmp_path), [P, S])
    old = keys.load(str(tmp_path / f"{P}.keys"))[P]
    changed = keys.rotate(str(tmp_path), P)
    assert sorted(os.path.basename(p) for p in changed) == ["arbiter.keys", f"{P}.keys"]
    both = keys.load(str(tmp_path / "arbiter.keys"))[P]
    assert both[0] == old[0] and len(both) == 2
    assert stat.S_IMODE(os.stat(tmp_path / "arbiter.keys").st_mode) == 0o600
    with pytest.raises(keys.KeyFileError, match="already has a next key"):
        keys.rotate(str(tmp_path), P)
    keys.retire(str(tmp_path), P)
    assert keys.load(str(tmp_path / f"{P}.keys"))[P] == (both[1],) == keys.load(str(tmp_path / "arbiter.keys"))[P]
    keys.rotate(str(tmp_path), "pair")
    assert keys.load(str(tmp_path / f"{P}.keys"))["pair"] == keys.load(str(tmp_path / f"{S}.keys"))["pair"]


def test_keys_command_line(tmp_path, capsys):
    assert keys.main(["generate", "--dir", str(tmp_path / "k"), "--nodes", f"{P},{S}"]) == 0
    assert keys.main(["generate", "--dir", str(tmp_path / "k"), "--nodes", f"{P},{S}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pgha-keys: ")
    secret = json.loads((tmp_path / "k" / "operator.keys").read_text())["operator"][0]
    assert secret not in capsys.readouterr().out


# -- clocks that disagree (auth.ServerClock, auth.ClockRefused) ------------------------------------

def test_an_authentic_message_outside_the_window_is_a_clock_refusal_that_names_the_skew(verifier, clock):
    with pytest.raises(auth.ClockRefused) as caught:
        verifier.verify(wire(cred(P, K_P, FakeClock(NOW + 60)).sign(heartbeat())))
    assert caught.value.check == "stale" and caught.value.sender.identity == P
    assert caught.value.sender.skew == 60.0                         # said in the refusal's log line
    assert caught.value.sender.nonce not in verifier._seen and P not in verifier.skews    # nothing remembered


def test_a_forged_or_replayed_message_outside_the_window_gets_no_clock_refusal(verifier, clock):
    forged = cred(P, K_S, FakeClock(NOW - 60)).sign(heartbeat())
    with pytest.raises(AuthError) as caught:
        verifier.verify(wire(forged))
    assert not isinstance(caught.value, auth.ClockRefused) and P not in verifier.skews
    signed = cred(P, K_P, clock).sign(heartbeat())
    verifier.verify(wire(signed))
    assert verifier.skews[P] == 0.0
    clock.advance(31)
    with pytest.raises(auth.ClockRefused):          # told our time, never heard
        verifier.verify(wire(signed))
    assert verifier.skews[P] == 0.0                 # a replay does not set the skew shown


def server_clock(wall, mono):
    return auth.ServerClock(wall=wall, monotonic=mono)


def test_a_client_stamps_on_the_servers_clock_once_it_heard_it_whatever_its_own_wall_clock_does(clock):
    own_wall, mono = FakeClock(NOW + 60), FakeClock(5.0)       # our wall clock is 60 s ahead
    server = server_clock(own_wall, mono)
    signer = cred(P, K_P, own_wall)
    assert signer.sign(heartbeat(), server)["ts"] == NOW + 60   # not heard yet: our own
    server.learn({"ts": NOW}, server.marks(), server.marks())           # a verified reply's "ts"
    assert server.skew == -60.0
    own_wall.advance(-3600 + 2)                                 # our wall clock steps: no matter
    mono.advance(2)
    clock.advance(2)
    signed = signer.sign(heartbeat(), server)
    assert signed["ts"] == NOW + 2 and signed["wall"] == NOW + 60 - 3600 + 2
    v = Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=clock)   # a server just restarted
    assert v.verify(wire(signed)).skew == -3540.0
    refused(v, signed, "replay")
    server.learn({"ts": "soon"}, server.marks(), server.marks())        # not a time: ignored
    assert signer.sign(heartbeat(), server)["ts"] == NOW + 2


def test_the_wall_field_is_covered_and_must_be_a_time(verifier, clock):
    server = server_clock(clock, clock)
    signed = cred(P, K_P, clock).sign(heartbeat(), server)
    refused(verifier, {**signed, "wall": signed["wall"] + 1}, "bad mac")
    refused(verifier, {**signed, "wall": "now"}, "malformed")


def test_skew_text_says_who_is_ahead():
    assert auth.skew_text(60, "the arbiter") == \
        "clock skew of +60.0 s with the arbiter (its clock is ahead of ours)"
    assert "behind" in auth.skew_text(-20.04, "pgsql-1") and "-20.0 s" in auth.skew_text(-20.04, "pgsql-1")


def test_a_restarted_server_hears_a_request_carrying_its_instance_id_even_stamped_before_its_start(clock):
    """Its own wall clock stepped back after it started: a request stamped on
    it is "before the start", but one that echoes this instance's "sid" was
    signed after its sender heard this instance, so it is no replay from before."""
    v = Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=clock)
    server = server_clock(clock, clock)
    first = cred(P, K_P, clock).sign(heartbeat(), server)
    reply = v.sign_reply({"type": "instruction"}, v.verify(wire(first)))
    assert reply["sid"] == v.sid
    clock.advance(-20)                                   # the server's wall clock steps back
    old = cred(P, K_P, clock).sign(heartbeat(), server)  # no sid heard yet
    refused(v, old, "stale")
    server.learn(reply, server.marks(), server.marks())
    signed = cred(P, K_P, clock).sign(heartbeat(), server)
    assert signed["sid"] == v.sid and v.verify(wire(signed)).identity == P
    other = Verifier("arbiter", auth.arbiter_lookup(RING, [P, S]), clock=FakeClock(NOW + 5))   # another start
    refused(other, signed, "stale")


def test_an_unsigned_clock_refusal_does_not_make_the_client_send_again():
    """Review: anyone on the path could swallow the real reply and inject an
    unsigned "timestamp outside the window": the client must not resend (a
    switchover would be carried out twice); a signed one is resent once."""
    import socket
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                reader = protocol.FrameReader(conn)
                while True:
                    try:
                        frame = reader.read_frame(5)
                    except (OSError, protocol.ProtocolError):
                        break
                    if frame is None:
                        break
                    received.append(frame)
                    conn.sendall(protocol.encode({"v": 1, "type": "error", "error": auth.CLOCK_REFUSED}))
    threading.Thread(target=serve, daemon=True).start()
    try:
        connection = protocol.Connection("127.0.0.1", listener.getsockname()[1], 5.0,
                                         credential=Credential("operator", (b"k" * 32,), server="arbiter"))
        reply = connection.request({"type": "switchover"})
        assert reply.get("error") == auth.CLOCK_REFUSED and len(received) == 1
    finally:
        listener.close()
