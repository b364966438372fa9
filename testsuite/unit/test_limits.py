"""Abusive clients (issue 9): pgha/limits.py, and the limits as a LineServer applies them."""
import json
import logging
import socket
import time

import pytest

from pgha import limits, protocol
from pgha.arbiter import Arbiter, ArbiterServer
from pgha.arbiter_service import ArbiterService
from pgha.limits import RateLimitedLog, Slots, clip
from pgha.messages import MAX_REPLICATION_ROWS, MAX_STRING, Address, Report, ReplicationRow
from pgha.settings import MAX_TAGS, tags_problem
from pgha.protocol import MAX_FRAME, ProtocolError, decode, nesting_depth
from testsuite.helpers import FakeClock, primary_report, serving


# -- clip ----------------------------------------------------------------------------

def test_clip_cuts_long_input_with_an_ellipsis():
    assert clip("x" * 61) == "x" * 60 + "…"
    assert clip("x" * 60) == "x" * 60
    assert clip("pgsql-9") == "pgsql-9"


def test_clip_escapes_line_breaks_and_lone_surrogates():
    assert clip("a\nb\rc") == "a\\nb\\rc"
    assert clip("\ud800").encode("utf-8")          # printable in a UTF-8 log


def test_clip_shows_non_strings_as_repr():
    assert clip(None) == "None" and clip([1] * 100).endswith("…")


# -- rate-limited warnings -------------------------------------------------------------------

def test_one_warning_per_source_and_reason_per_interval(caplog):
    clock = FakeClock()
    rl = RateLimitedLog(logging.getLogger("t"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert rl.warning("10.0.0.1", "protocol", "first")
        assert not rl.warning("10.0.0.1", "protocol", "second")
        assert not rl.warning("10.0.0.1", "protocol", "third")
        assert rl.warning("10.0.0.1", "deadline", "another reason")
        assert rl.warning("10.0.0.2", "protocol", "another source")
        clock.advance(10.0)
        assert rl.warning("10.0.0.1", "protocol", "later")
    assert [r.getMessage() for r in caplog.records] == [
        "first", "another reason", "another source", "later (2 more like it held back)"]


def test_rate_limit_memory_is_bounded():
    clock = FakeClock()
    rl = RateLimitedLog(logging.getLogger("t"), interval=10.0, clock=clock, max_keys=4)
    assert all(rl.allow(f"h{n}", "r")[0] for n in range(4))
    # Full of fresh keys: new sources share one key per reason.
    assert rl.allow("h5", "r")[0] and not rl.allow("h6", "r")[0]
    assert len(rl._last) <= 5
    clock.advance(11)
    assert rl.allow("h7", "r")[0] and len(rl._last) <= 5


# -- slots --------------------------------------------------------------------------------

def admit(slots, source, now, talking=False):
    return slots.admit(source, now, lambda: None, talking)


def test_strangers_share_a_pool_and_the_least_one_is_dropped_first():
    slots = Slots(member_slots=2, stranger_slots=4, per_source=3)
    slots.grace = 100.0
    a = [admit(slots, "A", t)[0] for t in range(3)]
    a[0].talking = True
    slot, evicted = admit(slots, "A", 3)            # A's share is full: its silent oldest goes
    assert slot is not None and evicted == [a[1]] and a[1].evicted
    b, evicted = admit(slots, "B", 4)
    assert evicted == []                            # the pool has 4 now
    c, evicted = admit(slots, "C", 5)               # pool full: taken from the busiest source (A)
    assert evicted == [a[2]]
    assert slots.counts() == (0, 4)


def test_a_silent_newcomer_is_refused_when_only_young_talkers_could_make_room():
    slots = Slots(stranger_slots=2, per_source=2, grace=1.0)
    talkers = [admit(slots, "A", 5 + t / 10, talking=True)[0] for t in range(2)]
    assert admit(slots, "A", 5.5) == (None, [])
    slot, evicted = admit(slots, "A", 5.6, talking=True)     # a talker takes the oldest talker's place
    assert slot is not None and evicted == [talkers[0]]
    # Past its grace a talker (too slow, or answered and idle) makes room for anyone.
    slot, evicted = admit(slots, "A", 7.0)
    assert slot is not None and evicted == [talkers[1]]


def test_without_silent_eviction_only_a_whole_request_takes_a_place():
    """The REST API (silent_evict False): a slow-loris newcomer never pushes
    anyone out, so a flood of them cannot churn out a health check; a client
    whose whole request is here takes the least one's place."""
    slots = Slots(stranger_slots=2, per_source=2, grace=1.0, silent_evict=False)
    slow = [admit(slots, "A", t)[0] for t in range(2)]
    assert admit(slots, "A", 10.0) == (None, [])                # long past grace: still refused
    slot, evicted = admit(slots, "A", 10.1, talking=True)       # a health check with its request
    assert slot is not None and evicted == [slow[0]]


def test_members_keep_their_slots_whatever_strangers_do():
    slots = Slots(member_slots=2, stranger_slots=2, per_source=2)
    member = admit(slots, "A", 0)[0]
    assert slots.promote(member) and member.member
    for t in range(1, 50):
        _, evicted = admit(slots, "A", t, talking=True)
        assert member not in evicted
    assert slots.counts() == (1, 2)
    slots.release(member)
    assert slots.counts() == (0, 2)


def test_member_slots_are_capped_and_an_evicted_stranger_cannot_become_a_member():
    slots = Slots(member_slots=1, stranger_slots=1, per_source=1)
    first = admit(slots, "A", 0)[0]
    second, evicted = admit(slots, "A", 1)
    assert evicted == [first] and not slots.promote(first)
    assert slots.promote(second)
    third = admit(slots, "A", 2)[0]
    assert not slots.promote(third) and slots.counts() == (1, 1)


def test_open_files_soft_limit_is_raised_to_the_hard_limit():
    import resource
    assert limits.raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- decode: nesting and numbers ---------------------------------------------------------------

def test_deep_nesting_is_refused_before_json_recurses():
    with pytest.raises(ProtocolError, match="nested deeper than 32"):
        decode(b'{"v":1,"type":"status","x":' + b"[" * 30000 + b"]" * 30000 + b"}")
    decode(b'{"v":1,"type":"status","x":' + b"[" * 30 + b"]" * 30 + b"}")     # 31 levels are fine


def test_brackets_inside_strings_do_not_count():
    line = json.dumps({"v": 1, "type": "status", "x": "[{" * 100 + '\\"[' * 50}).encode()
    assert nesting_depth(line) <= 1
    decode(line)


def test_the_depth_scan_stays_linear_on_an_unterminated_string():
    line = b'"' + b'\\"' * 30000 + b"\\" + b"[" * 40
    started = time.monotonic()
    assert nesting_depth(line) == 0
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("line", [b'{"v":1,"type":"status","x":NaN}', b'{"v":1,"type":"status","x":' + b"9" * 5000 + b"}"],
                         ids=["nan", "huge-int"])
def test_numbers_json_would_take_but_the_rules_cannot_are_refused(line):
    with pytest.raises(ProtocolError):
        decode(line)
    decode(b'{"v":1,"type":"status","x":Infinity}')     # a standby that never answered


# -- reports are bounded so the status reply fits the frame -------------------------------------

def test_report_strings_and_rows_are_bounded():
    with pytest.raises(ProtocolError, match="rows"):
        Report.from_wire({"replication": [{"name": "b"}] * (MAX_REPLICATION_ROWS + 1)})
    with pytest.raises(ProtocolError, match="longer than"):
        Report.from_wire({"sync_standby": "x" * (MAX_STRING + 1)})
    with pytest.raises(ProtocolError, match="64-bit"):
        Report.from_wire({"lsn": 2 ** 64})
    with pytest.raises(ProtocolError, match="source"):
        Report.from_wire({"lease_remaining": {"x" * 1000: 1.0}})
    with pytest.raises(ProtocolError, match="tags"):
        Report.from_wire({"tags": {str(n): "v" * 200 for n in range(11)}})     # 2 KB of JSON at most
    with pytest.raises(ProtocolError, match="tags"):
        Report.from_wire({"tags": {str(n): n for n in range(MAX_TAGS + 1)}})
    with pytest.raises(ProtocolError, match="tag 'x'"):
        Report.from_wire({"tags": {"x": [1]}})
    with pytest.raises(ProtocolError, match="tag 'x'"):
        Report.from_wire({"tags": {"x": "\x1b[31mred"}})       # never printed into an operator's terminal
    with pytest.raises(ProtocolError, match="not a tag name"):
        Report.from_wire({"tags": {"a\nb": 1}})
    with pytest.raises(ProtocolError, match="api_url"):
        Report.from_wire({"api_url": 8008})
    report = Report.from_wire({"error": "e" * 60000})
    assert report.error is not None and len(report.error) == MAX_STRING


def test_a_status_reply_of_maximal_reports_fits_the_frame():
    s = "x" * MAX_STRING
    big = 2 ** 64 - 1
    address = Address(host=s, pg_port=big, peer_port=big, slot=s)
    row = ReplicationRow(name=s, state=s, sync_state=s, flush_lsn=big, reply_age=float("inf"))
    report = Report(pg="running", role=s, lsn=big, receive_lsn=big, timeline=big, sync_standby=s, receiver=s,
                    syncrep_wait=1e308, replication=(row,) * MAX_REPLICATION_ROWS, address=address,
                    lease_remaining={s[:-1] + str(n): 1e308 for n in range(8)}, error=s, last_action=s,
                    api_url="\u20ac" * MAX_STRING, tags={"\u20ac" * 64: "\u20ac" * 85, "t" * 64: 2 ** 63 - 1})
    assert tags_problem(report.tags) is None
    assert Report.from_wire(json.loads(json.dumps(report.to_wire()))) == report
    reply = {"type": "status", "epoch": big, "primary": s, "promotable": True, "switchover_to": s,
             "nodes": {f"{s[:-1]}{n}": {"last_seen_ago": 1e308, "report": report.to_wire()} for n in range(2)}}
    assert len(protocol.encode(reply)) < MAX_FRAME // 2


# -- a server under abuse ----------------------------------------------------------------------

class Settings:
    nodes = ["pgsql-1", "pgsql-2"]
    initial_primary = "pgsql-1"
    heartbeat_interval = 0.5
    lease_time = 4.0
    failover_margin = 1.0
    sync_stall_timeout = 5.0
    standby_reply_timeout = 2.0
    strict_sync = False

    def __init__(self, state_file):
        self.state_file = str(state_file)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MESSAGE_DEADLINE", 0.5)
    monkeypatch.setattr(protocol.limits, "MESSAGE_DEADLINE", 0.5)
    srv = ArbiterServer(ArbiterService.single(Arbiter(Settings(tmp_path / "state.json"), init=True)), "127.0.0.1", 0,
                        idle_timeout=10.0)
    srv.slots = Slots(member_slots=4, stranger_slots=8, per_source=8)
    with serving(srv):
        yield srv


def heartbeat(node="pgsql-1"):
    return {"type": "heartbeat", "node": node, "epoch": 1, "report": primary_report("pgsql-1", "pgsql-2")}


def closed(sock, timeout=3.0):
    sock.settimeout(timeout)
    try:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    except ConnectionResetError:
        return b""


def test_backlog_is_sized_for_floods(server):
    assert server.request_queue_size == limits.LISTEN_BACKLOG >= 1024


def test_a_slow_client_is_cut_off_after_the_message_deadline(server):
    sock = socket.create_connection(server.server_address)
    started = time.monotonic()
    try:
        sock.sendall(b'{"v":1,')
        time.sleep(0.3)
        sock.sendall(b'"type"')            # a byte now and then does not extend the deadline
        reply = closed(sock)
    finally:
        sock.close()
    assert b"not complete within" in reply and time.monotonic() - started < 2.0


def test_a_member_waits_idle_between_messages_while_a_silent_stranger_is_dropped(server):
    member = protocol.Connection(*server.server_address, timeout=3.0)
    silent = socket.create_connection(server.server_address)
    try:
        assert member.request(heartbeat())["type"] == "instruction"
        time.sleep(1.0)                    # twice the (patched) message deadline
        assert member.request(heartbeat())["type"] == "instruction"     # same connection
        assert b"not complete within" in closed(silent)
    finally:
        member.close()
        silent.close()


def test_a_flood_of_strangers_never_takes_a_members_connection(server):
    member = protocol.Connection(*server.server_address, timeout=3.0)
    flood = []
    try:
        assert member.request(heartbeat())["type"] == "instruction"
        for _ in range(60):
            flood.append(socket.create_connection(server.server_address))
        for _ in range(20):
            started = time.monotonic()
            assert member.request(heartbeat())["type"] == "instruction"
            assert time.monotonic() - started < 1.0
        assert server.slots.counts()[0] == 1
        # A tool's fresh request still gets in: it takes a silent stranger's place.
        assert protocol.call(*server.server_address, {"type": "status"})["type"] == "status"
    finally:
        member.close()
        for sock in flood:
            sock.close()


def test_a_stranger_speaking_for_an_unknown_node_is_not_a_member(server):
    conn = protocol.Connection(*server.server_address, timeout=3.0)
    with pytest.raises((OSError, ProtocolError)):
        reply = conn.request(heartbeat("pgsql-9"))
        assert reply["type"] == "error"
        conn.request(heartbeat("pgsql-9"))
    conn.request({"type": "status"})
    assert server.slots.counts()[0] == 0
    conn.close()


def test_an_unexpected_exception_gets_one_error_reply_and_one_line(server, monkeypatch, caplog):
    def broken(message):
        raise KeyError("boom")
    monkeypatch.setattr(server.service, "handle", broken)
    with caplog.at_level(logging.WARNING):
        sock = socket.create_connection(server.server_address)
        sock.sendall(protocol.encode({"type": "status"}))
        reply = closed(sock)
        sock.close()
    assert json.loads(reply)["error"] == "internal error"
    lines = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert len(lines) == 1 and "KeyError" in lines[0] and "\n" not in lines[0]


def test_a_huge_unknown_node_name_is_refused_and_logged_clipped(server, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sock = socket.create_connection(server.server_address)
            sock.sendall(protocol.encode({"type": "heartbeat", "node": "n" * 60000, "epoch": 1, "report": {}}))
            reply = json.loads(closed(sock))
            sock.close()
            assert reply["type"] == "error" and len(reply["error"]) <= 201
    messages = [r.getMessage() for r in caplog.records if "closing connection" in r.getMessage()]
    assert len(messages) == 1                       # rate-limited per source and reason
    assert all(len(m) < 400 for m in messages)
