"""The arbiter's I/O (pgha/arbiter.py): a real server on loopback, a fake clock,
the durable state file in tmp_path."""
import json
import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgha import arbiter as arbiter_server, protocol, settings, store
from pgha.arbiter import Arbiter, ArbiterServer, StateFileError
from pgha.arbiter_service import ArbiterService
from pgha.decision import ClusterState
from testsuite import helpers
from testsuite.helpers import FakeClock

P, S = "pgsql-1", "pgsql-2"


DEFAULT_SETTINGS = Path(__file__).resolve().parents[2] / "arbiter_settings.py"


def make_settings(state_file, **overrides):
    """The user's default settings, with the values these tests are written for."""
    values = vars(settings.load(DEFAULT_SETTINGS, settings.ARBITER_SPECS))
    values.update(nodes=[P, S], initial_primary=P, state_file=str(state_file), heartbeat_interval=0.5,
                  lease_time=3.0, failover_margin=1.0, strict_sync=False, sync_stall_timeout=1.5,
                  standby_reply_timeout=2.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def address(name):
    return helpers.address(name, host="127.0.0.1")


def primary_report(lsn=1000, flush=1000):
    return helpers.primary_report(name=P, standby=S, lsn=lsn, flush_lsn=flush, host="127.0.0.1")


def standby_report(grant_remaining=0.0):
    return helpers.standby_report(name=S, grant_remaining=grant_remaining, host="127.0.0.1")


def heartbeat(node, epoch, report):
    return {"type": "heartbeat", "node": node, "epoch": epoch, "report": report}


CLIENT_TIMEOUT = 5.0


class Client:
    """A raw connection, so a test can send anything and see when the server closes."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
        self.reader = protocol.FrameReader(self.sock)

    def send_bytes(self, data):
        try:
            self.sock.sendall(data)
        except OSError:           # the server may close before reading everything
            pass

    def send(self, message):
        self.send_bytes(protocol.encode(message))

    def receive(self):
        return self.reader.read_frame(CLIENT_TIMEOUT)

    def ask(self, message):
        self.send(message)
        return self.receive()

    def is_closed(self):
        try:
            self.sock.settimeout(CLIENT_TIMEOUT)
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


class Running:
    def __init__(self, tmp_path, verifier=None, **overrides):
        self.clock = FakeClock()
        self.state_file = tmp_path / "arbiter-state.json"
        self.settings = make_settings(self.state_file, **overrides)
        self.arbiter = Arbiter(self.settings, clock=self.clock, init=True)
        self.server = ArbiterServer(ArbiterService.single(self.arbiter), "127.0.0.1", 0, idle_timeout=10.0,
                                    verifier=verifier)
        self.address = self.server.server_address
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.clients = []

    def client(self):
        self.clients.append(Client(self.address))
        return self.clients[-1]

    def saved(self):
        return json.loads(self.state_file.read_text())

    def make_promotable(self, client):
        make_promotable(lambda report: client.ask(heartbeat(P, 1, report)), self.clock, self.arbiter)

    def stop(self):
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def make_promotable(primary_says, clock, arbiter):
    """Two primary reports (primary_says(report) -> the reply) with sync on
    and the standby caught up: the arbiter holds the standby promotable."""
    assert primary_says(primary_report(1000, 900))["sync_standby"] == S
    clock.advance(0.5)
    primary_says(primary_report(1100, 1000))
    assert arbiter.state.promotable


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path)
    yield r
    r.stop()


# -- serving ------------------------------------------------------------------------------

def test_heartbeats_and_status_over_the_wire(running):
    c = running.client()
    reply = c.ask(heartbeat(P, 0, primary_report()))
    assert (reply["type"], reply["role"], reply["epoch"], reply["standby"]) == ("instruction", "primary", 1, S)
    running.clock.advance(0.25)
    reply = c.ask(heartbeat(S, 0, standby_report()))
    assert (reply["role"], reply["primary"], reply["primary_address"]) == ("standby", P, address(P))
    status = c.ask({"type": "status"})
    assert (status["type"], status["epoch"], status["primary"], status["promotable"]) == ("status", 1, P, False)
    assert status["nodes"][P]["last_seen_ago"] == 0.25 and status["nodes"][S]["last_seen_ago"] == 0.0
    # The node's report, as a wire dict: every field it sent, with its value (parsing adds defaults).
    assert status["nodes"][S]["report"].items() >= standby_report().items()


BAD_CLIENTS = [
    ("malformed-json", b'{"v":1,"type":"status"\n', "not a JSON line"),
    ("invalid-utf8", b'{"v":1,"type":"\xff"}\n', "not a JSON line"),
    ("json-array", b"[1,2,3]\n", "JSON object"),
    ("wrong-version", b'{"v":9,"type":"status"}\n', "version 9"),
    ("oversized-frame", b'{"v":1,"type":"status","pad":"' + b"x" * (protocol.MAX_FRAME + 100) + b'"}\n',
     "exceeds"),
    ("unknown-type", protocol.encode({"type": "reboot"}), "unknown message type 'reboot'"),
    ("lease-sent-to-arbiter", protocol.encode({"type": "lease", "node": P, "epoch": 1}), "does not serve"),
    ("unknown-node", protocol.encode(heartbeat("pgsql-9", 1, standby_report())), "unknown node 'pgsql-9'"),
    ("epoch-not-int", protocol.encode(heartbeat(S, "1", standby_report())), "'epoch' must be int"),
    ("report-not-object", protocol.encode(heartbeat(S, 1, [])), "'report' must be dict"),
]


@pytest.mark.parametrize("data, problem", [c[1:] for c in BAD_CLIENTS], ids=[c[0] for c in BAD_CLIENTS])
def test_a_bad_client_gets_one_error_and_is_closed_while_others_are_served(running, data, problem):
    good = running.client()
    assert good.ask(heartbeat(P, 1, primary_report()))["role"] == "primary"

    bad = running.client()
    bad.send_bytes(data)
    reply = bad.receive()
    assert reply["type"] == "error" and problem in reply["error"]
    assert bad.is_closed()

    # The well-behaved client's connection is still open and served, and nothing changed.
    assert good.ask(heartbeat(P, 1, primary_report()))["role"] == "primary"
    status = good.ask({"type": "status"})
    assert (status["epoch"], status["primary"]) == (1, P)
    assert (running.saved()["epoch"], running.saved()["primary"]) == (1, P)


def test_many_clients_at_once(running):
    errors = []

    def work(n):
        try:
            conn = protocol.Connection(*running.address, timeout=5.0)
            for _ in range(20):
                node, report = (P, primary_report()) if n % 2 else (S, standby_report())
                if conn.request(heartbeat(node, 1, report))["type"] != "instruction":
                    errors.append(n)
            conn.close()
        except Exception as exc:          # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []


def test_switchover_over_the_wire(running):
    c = running.client()
    refused = c.ask({"type": "switchover"})
    assert refused["type"] == "error" and "not promotable" in refused["error"]
    running.make_promotable(c)
    assert c.ask({"type": "switchover", "to": S}) == {"v": 1, "type": "ok", "switchover_to": S}
    assert c.ask(heartbeat(P, 1, primary_report()))["relinquish"] is True
    c.ask(heartbeat(S, 1, standby_report()))
    stopped = {"pg": "stopped", "address": address(P), "relinquished": True, "grant_remaining": 0.0}
    reply = c.ask(heartbeat(P, 1, stopped))
    assert (reply["role"], reply["epoch"], reply["primary"]) == ("standby", 2, S)
    assert running.saved() == {"epoch": 2, "primary": S, "promotable": False}


# -- durability ---------------------------------------------------------------------------------

def test_first_start_writes_the_initial_state(tmp_path):
    state_file = tmp_path / "state.json"
    arbiter = Arbiter(make_settings(state_file, initial_primary=S), clock=FakeClock(), init=True)
    assert json.loads(state_file.read_text()) == {"epoch": 1, "primary": S, "promotable": False}
    assert (arbiter.state.epoch, arbiter.state.primary) == (1, S)
    # no temporary file left behind (the history file lives beside the state)
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.history.jsonl"]


def fail_over(running, client):
    running.make_promotable(client)
    running.clock.advance(4.5)                                 # primary silent past lease + margin
    return client.ask(heartbeat(S, 1, standby_report()))


def test_decisions_are_durable_and_reloaded(running, tmp_path):
    c = running.client()
    running.make_promotable(c)
    assert running.saved() == {"epoch": 1, "primary": P, "promotable": True, "promotable_members": [S]}
    assert Arbiter(running.settings, clock=FakeClock()).state == running.arbiter.state

    running.clock.advance(4.5)
    reply = c.ask(heartbeat(S, 1, standby_report()))
    assert (reply["role"], reply["epoch"]) == ("primary", 2)
    assert running.saved() == {"epoch": 2, "primary": S, "promotable": False}
    assert sorted(os.listdir(tmp_path)) == ["arbiter-state.json", "arbiter-state.json.history.jsonl"]

    # A restarted arbiter on the same file knows the failover; initial_primary no longer matters.
    restarted = Arbiter(running.settings, clock=FakeClock(5.0))
    assert (restarted.state.epoch, restarted.state.primary, restarted.state.promotable) == (2, S, frozenset())
    assert restarted.memory.primary_seen_at == 5.0            # waits a full lease before any failover


def test_the_state_file_is_written_only_when_the_decision_changes(running, monkeypatch):
    saves = []
    real_save = store.save_json
    monkeypatch.setattr(store, "save_json", lambda path, data: (saves.append(data), real_save(path, data)))
    c = running.client()
    for _ in range(3):
        c.ask(heartbeat(S, 1, standby_report()))
    assert saves == []
    running.make_promotable(c)
    assert saves == [{"epoch": 1, "primary": P, "promotable": True, "promotable_members": [S]}]


def test_a_failover_is_on_disk_before_the_reply_is_sent(running, monkeypatch):
    order = []
    real_save, real_send = store.save_json, arbiter_server._Handler._send

    def save(path, data):
        real_save(path, data)
        order.append(("saved", data["epoch"], json.loads(open(path).read())["epoch"]))

    def send(handler, message):
        order.append(("sent", message.get("epoch")))
        return real_send(handler, message)

    monkeypatch.setattr(store, "save_json", save)
    monkeypatch.setattr(arbiter_server._Handler, "_send", send)
    c = running.client()
    reply = fail_over(running, c)
    assert reply["epoch"] == 2
    first_sent_2 = order.index(("sent", 2))
    assert ("saved", 2, 2) in order[:first_sent_2]


def test_a_decision_that_cannot_be_saved_is_never_announced(running, monkeypatch):
    c = running.client()
    running.make_promotable(c)
    running.clock.advance(4.5)
    real_save = store.save_json

    def broken(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_json", broken)
    reply = c.ask(heartbeat(S, 1, standby_report()))
    assert reply == {"v": 1, "type": "error", "error": "arbiter cannot store its decision"}
    assert c.is_closed()
    assert (running.arbiter.state.epoch, running.arbiter.state.primary) == (1, P)
    assert running.saved()["epoch"] == 1

    monkeypatch.setattr(store, "save_json", real_save)      # the disk is back
    reply = running.client().ask(heartbeat(S, 1, standby_report()))
    assert (reply["role"], reply["epoch"]) == ("primary", 2)
    assert running.saved()["epoch"] == 2


# -- damaged or unusable state files -------------------------------------------------------------

DAMAGED = [
    ("not-json", "{", "cannot read state file"),
    ("empty", "", "cannot read state file"),
    ("binary", b"\xff\xfe\x00garbage", "cannot read state file"),
    ("a-list", "[1, 2]", "damaged"),
    ("a-string", '"epoch"', "damaged"),
    ("key-missing", '{"epoch": 3, "primary": "pgsql-1"}', "damaged"),
    ("epoch-not-a-number", '{"epoch": "three", "primary": "pgsql-1", "promotable": false}', "damaged"),
    ("unknown-primary", '{"epoch": 3, "primary": "pgsql-9", "promotable": false}', "not in 'nodes'"),
]


@pytest.mark.parametrize("content, problem", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_damaged_state_file_is_a_clear_error(tmp_path, content, problem):
    state_file = tmp_path / "state.json"
    if isinstance(content, bytes):
        state_file.write_bytes(content)
    else:
        state_file.write_text(content)
    before = state_file.read_bytes()
    with pytest.raises(StateFileError) as err:
        Arbiter(make_settings(state_file), clock=FakeClock())
    assert str(state_file) in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)
    assert state_file.read_bytes() == before                  # never overwritten


def test_state_file_that_is_a_folder(tmp_path):
    with pytest.raises(StateFileError, match="cannot read state file"):
        Arbiter(make_settings(tmp_path), clock=FakeClock())


def test_state_file_in_a_missing_folder(tmp_path):
    with pytest.raises(StateFileError, match="cannot write state file"):
        Arbiter(make_settings(tmp_path / "no" / "such" / "state.json"), clock=FakeClock(), init=True)


@pytest.mark.parametrize("content", [
    '{"epoch": 3, "primary": "pgsql-1", "promotable": "false"}',
    '{"epoch": 2.5, "primary": "pgsql-1", "promotable": false}',
    "null",
], ids=["promotable-string-false", "epoch-float", "json-null"])
def test_state_file_values_of_the_wrong_type_are_rejected(tmp_path, content):
    """Checked, not coerced: bool("false") is True, int(2.5) is 2, and null is not 'no file yet'."""
    state_file = tmp_path / "state.json"
    state_file.write_text(content)
    with pytest.raises(StateFileError):
        Arbiter(make_settings(state_file), clock=FakeClock())


# -- reports with wrongly typed contents ----------------------------------------------------------

def test_a_wrongly_typed_report_field_gets_an_error_reply(running):
    """Not a crash in decision.py with no reply and a traceback."""
    c = running.client()
    report = {**primary_report(), "syncrep_wait": "slow"}
    reply = c.ask(heartbeat(P, 1, report))
    assert reply is not None and reply["type"] == "error" and "syncrep_wait" in reply["error"]
    assert c.is_closed()
    assert running.client().ask(heartbeat(P, 1, primary_report()))["role"] == "primary"


def test_a_bad_report_from_one_node_does_not_break_the_other(running):
    """A stored bad 'address' must not make every later heartbeat of the primary crash."""
    c = running.client()
    c.ask(heartbeat(S, 1, {**standby_report(), "address": "127.0.0.1:5432"}))
    reply = running.client().ask(heartbeat(P, 1, primary_report()))
    assert reply is not None and reply["role"] == "primary"


# -- another writer on the same state -------------------------------------------------------------

def test_a_decision_refused_by_compare_and_set_is_never_announced(running):
    """Someone else stored a newer decision: the arbiter must not overwrite it nor announce its own."""
    c = running.client()
    running.make_promotable(c)
    store.FileStore(str(running.state_file)).save(
        ClusterState(epoch=5, primary=S), expected_epoch=1)
    running.clock.advance(4.5)
    reply = c.ask(heartbeat(S, 1, standby_report()))
    assert reply == {"v": 1, "type": "error", "error": "arbiter cannot store its decision"}
    assert (running.arbiter.state.epoch, running.arbiter.state.primary) == (1, P)
    assert running.saved() == {"epoch": 5, "primary": S, "promotable": False}


def test_the_arbiter_uses_any_state_store(tmp_path):
    class MemoryStore(store.StateStore):
        def __init__(self):
            self.saved = []

        def load(self):
            return self.saved[-1] if self.saved else None

        def save(self, new, expected_epoch):
            assert expected_epoch == (self.saved[-1].epoch if self.saved else None)
            self.saved.append(new)

        def append_event(self, event):
            self.events.append(event)

        def history(self, limit=None):
            return self.events[-limit:] if limit else list(self.events)

    memory_store = MemoryStore()
    memory_store.events = []
    arbiter = Arbiter(make_settings(tmp_path / "unused.json"), clock=FakeClock(), state_store=memory_store,
                      init=True)
    assert memory_store.saved == [arbiter.state] and arbiter.state.epoch == 1
    assert os.listdir(tmp_path) == []


def test_a_refusal_to_decide_is_logged_once_per_interval_not_every_heartbeat(running, caplog):
    """A state re-created with --init hears nodes that acted on a later epoch:
    it refuses every heartbeat (and says --rebuild), but logs it once per
    node per interval with the count held back (was two ERROR lines a second)."""
    c = running.client()
    with caplog.at_level("ERROR", logger=arbiter_server.log.name):
        for _ in range(10):
            reply = c.ask(heartbeat(S, 5, standby_report()))
            assert reply["role"] == "wait"
            running.clock.advance(0.5)
        running.clock.advance(30)
        c.ask(heartbeat(S, 5, standby_report()))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors
    assert "--rebuild" in errors[0] and "9 more like it held back" in errors[1]
    assert running.arbiter.state.epoch == 1


def test_a_restart_order_is_saved_first_one_at_a_time_and_flush_cancels_it(running):
    """pgha-ctl restart/flush restart over the real server: the standby's mark
    is off on disk before the order is answered; another member's order waits;
    flush restart cancels it, and history names both."""
    c = running.client()
    running.make_promotable(c)
    reply = c.ask({"type": "restart", "member": S})
    assert reply["type"] == "ok" and isinstance(reply["order"], int)
    assert running.saved()["promotable"] is False              # durable before the reply (invariant 3)
    refused = c.ask({"type": "restart", "member": P})
    assert refused["type"] == "error" and "restart of pgsql-2 is still pending" in refused["error"]
    cancelled = c.ask({"type": "flush", "what": "restart"})
    assert (cancelled["type"], cancelled["cancelled"]) == ("ok", {"restart": S, "scheduled": []})
    assert c.ask({"type": "flush", "what": "restart"})["error"] == \
        "flush refused: no restart is pending and none is scheduled"
    events = [e["event"] for e in c.ask({"type": "history", "limit": 10})["events"]]
    assert events[-2:] == ["restart_requested", "restart_cancelled"], events


def test_who_made_each_timeline_is_recorded_once_and_known_after_a_restart(running):
    """Patroni's /history names the new leader of each timeline: the primary's
    first report on a timeline is a durable history event, and status names
    it (also after the arbiter restarts, from that history)."""
    c = running.client()
    for _ in range(3):
        c.ask(heartbeat(P, 1, {**primary_report(), "timeline": 1}))
    c.ask(heartbeat(S, 1, {**standby_report(), "timeline": 1}))       # a standby makes no timeline
    events = [e for e in c.ask({"type": "history", "limit": 50})["events"] if e["event"] == "timeline"]
    assert [(e["timeline"], e["primary"], e["epoch"]) for e in events] == [(1, P, 1)]
    assert c.ask({"type": "status"})["timelines"] == {"1": P}
    assert Arbiter(running.settings, clock=running.clock).timelines == {1: P}


def test_a_timeline_the_history_cannot_take_never_fails_the_heartbeat(running, monkeypatch):
    """Only /history's new_leader waits for it: a new primary's heartbeat is
    answered (it may hold no standby lease yet), and a later one records it."""
    c = running.client()
    append = running.arbiter.store.append_event

    def failing(event):
        if event["event"] == "timeline":
            raise store.StateStoreError("disk full")
        append(event)
    monkeypatch.setattr(running.arbiter.store, "append_event", failing)
    assert c.ask(heartbeat(P, 1, {**primary_report(), "timeline": 1}))["role"] == "primary"
    assert running.arbiter.timelines == {}
    monkeypatch.setattr(running.arbiter.store, "append_event", append)
    c.ask(heartbeat(P, 1, {**primary_report(), "timeline": 1}))
    assert running.arbiter.timelines == {1: P}
