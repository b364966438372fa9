"""The JSON-line wire protocol (pgha/protocol.py)."""
import json
import socket
import threading

import pytest

from pgha import protocol, requests
from pgha.messages import Report
from pgha.protocol import MAX_FRAME, VERSION, FrameReader, ProtocolError, decode, encode, validate_request

HEARTBEAT = {"type": "heartbeat", "node": "pgsql-1", "epoch": 3, "report": {"pg": "running", "lsn": 12}}


# -- encode / decode ----------------------------------------------------------------

class Stream:
    """Bytes as a peer would send them, then the end of the stream: what
    FrameReader reads (recv, settimeout), without a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def settimeout(self, timeout) -> None:
        pass


def read_frame(stream):
    return FrameReader(stream).read_frame()


@pytest.mark.parametrize("message", [
    HEARTBEAT,
    {"type": "status"},
    {"type": "switchover", "to": "pgsql-2"},
    {"type": "lease", "node": "pgsql-1", "epoch": 1},
    {"type": "grant", "granted": False, "reason": "pâté ☃ \n newline inside"},
], ids=["heartbeat", "status", "switchover", "lease", "unicode-and-newline"])
def test_round_trip(message):
    data = encode(message)
    assert data.endswith(b"\n") and data.count(b"\n") == 1     # one line, even with "\n" in a value
    assert decode(data[:-1]) == {"v": VERSION, **message}
    assert read_frame(Stream(data)) == {"v": VERSION, **message}


def test_encode_sets_the_version():
    assert json.loads(encode({"type": "status"}))["v"] == VERSION


@pytest.mark.parametrize("line, problem", [
    (b'{"v":2,"type":"status"}', "unsupported protocol version 2"),
    (b'{"v":0,"type":"status"}', "unsupported protocol version 0"),
    (b'{"v":"1","type":"status"}', "unsupported protocol version '1'"),
    (b'{"type":"status"}', "unsupported protocol version None"),
    (b'[1,2]', "must be a JSON object"),
    (b'"status"', "must be a JSON object"),
    (b'42', "must be a JSON object"),
    (b'null', "must be a JSON object"),
    (b'{"v":1,"type":"stat', "not a JSON line"),
    (b'{"v":1} trailing', "not a JSON line"),
    (b'', "not a JSON line"),
    (b'\xff\xfe{"v":1}', "not a JSON line"),
    (b'{"v":1,"type":"\xc3("}', "not a JSON line"),
    (b'{"v":1}', "string 'type'"),
    (b'{"v":1,"type":7}', "string 'type'"),
], ids=["version-2", "version-0", "version-string", "version-missing", "array", "string", "number",
        "null", "truncated-json", "trailing-garbage", "empty", "invalid-utf8-bom", "invalid-utf8-inside",
        "type-missing", "type-not-string"])
def test_decode_rejects(line, problem):
    with pytest.raises(ProtocolError) as err:
        decode(line)
    assert problem in str(err.value)


# -- frame size ------------------------------------------------------------------------

def message_of_size(size):
    """A status message whose encoded frame (newline included) is exactly `size` bytes."""
    base = len(encode({"type": "status", "pad": ""}))
    message = {"type": "status", "pad": "x" * (size - base)}
    assert len(encode(message)) == size
    return message


def test_encode_accepts_a_frame_of_exactly_max_frame():
    data = encode(message_of_size(MAX_FRAME))
    assert read_frame(Stream(data))["pad"] == "x" * (MAX_FRAME - len(encode({"type": "status", "pad": ""})))


def test_encode_refuses_an_oversized_frame():
    with pytest.raises(ProtocolError, match="exceeds the 65536-byte frame limit"):
        encode({"type": "status", "pad": "x" * MAX_FRAME})
    with pytest.raises(ProtocolError):
        encode({"type": "status", "pad": "x" * (MAX_FRAME - len(encode({"type": "status", "pad": ""})) + 1)})


def test_decode_refuses_an_oversized_line():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b" " * (MAX_FRAME + 1))


@pytest.mark.parametrize("tail", [b"\n", b"", b'"}\n'], ids=["with-newline", "no-newline", "more-after"])
def test_read_frame_refuses_an_oversized_frame(tail):
    line = b'{"v":1,"type":"status","pad":"' + b"x" * MAX_FRAME + tail
    with pytest.raises(ProtocolError, match="exceeds"):
        read_frame(Stream(line))


def test_read_frame_reads_consecutive_frames_then_none():
    stream = FrameReader(Stream(encode({"type": "status"}) + encode(HEARTBEAT)))
    assert stream.read_frame()["type"] == "status"
    assert stream.read_frame()["type"] == "heartbeat"
    assert stream.read_frame() is None
    assert stream.read_frame() is None


@pytest.mark.parametrize("data", [b'{"v":1,"type":"status"}', b'{"v":1,', b"x"],
                         ids=["complete-json-no-newline", "half-json", "one-byte"])
def test_read_frame_on_a_truncated_frame(data):
    with pytest.raises(ProtocolError, match="closed in the middle of a frame"):
        read_frame(Stream(data))


def test_read_frame_rejects_bad_content():
    with pytest.raises(ProtocolError, match="not a JSON line"):
        read_frame(Stream(b"hello\n"))


# -- request validation ------------------------------------------------------------------

def without(message, field):
    return {k: v for k, v in message.items() if k != field}


LEASE = {"type": "lease", "node": "pgsql-1", "epoch": 1}

BAD_REQUESTS = [
    ("heartbeat-node-missing", without(HEARTBEAT, "node"), "'node'"),
    ("heartbeat-node-int", {**HEARTBEAT, "node": 1}, "'node' must be str"),
    ("heartbeat-node-null", {**HEARTBEAT, "node": None}, "'node' must be str"),
    ("heartbeat-epoch-missing", without(HEARTBEAT, "epoch"), "'epoch' must be int"),
    ("heartbeat-epoch-string", {**HEARTBEAT, "epoch": "3"}, "'epoch' must be int"),
    ("heartbeat-epoch-float", {**HEARTBEAT, "epoch": 3.0}, "'epoch' must be int"),
    ("heartbeat-epoch-bool", {**HEARTBEAT, "epoch": True}, "'epoch' must be int"),
    ("heartbeat-report-missing", without(HEARTBEAT, "report"), "'report' must be dict"),
    ("heartbeat-report-list", {**HEARTBEAT, "report": []}, "'report' must be dict"),
    ("heartbeat-report-string", {**HEARTBEAT, "report": "ok"}, "'report' must be dict"),
    ("lease-node-missing", without(LEASE, "node"), "'node' must be str"),
    ("lease-epoch-missing", without(LEASE, "epoch"), "'epoch' must be int"),
    ("lease-epoch-bool", {**LEASE, "epoch": False}, "'epoch' must be int"),
    ("switchover-to-int", {"type": "switchover", "to": 2}, "'to' must be str"),
    ("switchover-to-list", {"type": "switchover", "to": ["pgsql-2"]}, "'to' must be str"),
    ("unknown-type", {"type": "reboot"}, "unknown message type 'reboot'"),
    ("reply-type-is-not-a-request", {"type": "instruction", "epoch": 1}, "unknown message type"),
]


@pytest.mark.parametrize("message, problem", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_validate_request_rejects(message, problem):
    with pytest.raises(ProtocolError) as err:
        validate_request({"v": VERSION, **message})
    assert problem in str(err.value)


@pytest.mark.parametrize("message", [
    HEARTBEAT, {**HEARTBEAT, "epoch": 0, "report": {}}, LEASE, {"type": "status"},
    {"type": "switchover"}, {"type": "switchover", "to": None}, {"type": "switchover", "to": "pgsql-2"},
], ids=["heartbeat", "heartbeat-empty-report", "lease", "status", "switchover-default",
        "switchover-to-null", "switchover-named"])
def test_validate_request_accepts(message):
    request = validate_request({"v": VERSION, **message})
    assert requests.kind_of_request(request).name == message["type"]


def test_a_wire_message_through_decode_and_validate():
    validate_request(decode(encode(HEARTBEAT)[:-1]))
    with pytest.raises(ProtocolError):
        validate_request(decode(encode({**HEARTBEAT, "epoch": "x"})[:-1]))


# -- Connection against a real socket server -------------------------------------------------

class TinyServer:
    """Answers each frame with {"type": "echo", "got": message, "conn": n}.

    `close_after` replies per connection, then the server closes that connection;
    `reply` can be overridden to send raw bytes instead.
    """

    def __init__(self, close_after=None, raw_reply=None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.close_after = close_after
        self.raw_reply = raw_reply
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                reader = FrameReader(conn)
                replies = 0
                while self.close_after is None or replies < self.close_after:
                    try:
                        message = reader.read_frame()
                    except (OSError, ProtocolError):
                        break
                    if message is None:
                        break
                    data = self.raw_reply or encode({"type": "echo", "got": message, "conn": self.connections})
                    conn.sendall(data)
                    replies += 1

    def close(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes the thread blocked in accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def server_factory():
    servers = []

    def make(**kw):
        servers.append(TinyServer(**kw))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def test_connection_request_reply_on_one_connection(server_factory):
    server = server_factory()
    conn = protocol.Connection("127.0.0.1", server.port, timeout=2.0)
    try:
        for n in range(3):
            reply = conn.request({"type": "status", "n": n})
            assert reply["type"] == "echo" and reply["got"] == {"v": VERSION, "type": "status", "n": n}
            assert reply["conn"] == 1
        assert server.connections == 1
    finally:
        conn.close()


def test_connection_reconnects_after_the_server_closes(server_factory):
    server = server_factory(close_after=1)
    conn = protocol.Connection("127.0.0.1", server.port, timeout=2.0)
    try:
        assert conn.request({"type": "status"})["conn"] == 1
        # The server has closed its end: this request fails, once, and drops the socket...
        with pytest.raises(OSError):
            conn.request({"type": "status"})
        assert conn._sock is None
        # ...and the next one opens a fresh connection.
        assert conn.request({"type": "status"})["conn"] == 2
        assert server.connections == 2
    finally:
        conn.close()


def test_connection_closes_on_a_garbled_reply(server_factory):
    server = server_factory(raw_reply=b"this is not json\n")
    conn = protocol.Connection("127.0.0.1", server.port, timeout=2.0)
    with pytest.raises(ProtocolError):
        conn.request({"type": "status"})
    assert conn._sock is None
    conn.close()          # closing twice is harmless


def test_connection_times_out_when_nobody_answers():
    listener = socket.create_server(("127.0.0.1", 0))     # accepts (backlog) but never answers
    try:
        conn = protocol.Connection("127.0.0.1", listener.getsockname()[1], timeout=0.2)
        with pytest.raises(OSError):                        # socket.timeout is an OSError
            conn.request({"type": "status"})
        assert conn._sock is None
    finally:
        listener.close()


def test_connection_refused_raises_oserror():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, not listening: connections are refused
        with pytest.raises(OSError):
            protocol.Connection("127.0.0.1", port, timeout=1.0).request({"type": "status"})


def test_connection_refuses_to_send_an_oversized_message(server_factory):
    server = server_factory()
    conn = protocol.Connection("127.0.0.1", server.port, timeout=2.0)
    with pytest.raises(ProtocolError):
        conn.request({"type": "status", "pad": "x" * MAX_FRAME})
    assert conn.request({"type": "status"})["type"] == "echo"
    conn.close()


def test_call_uses_a_fresh_connection_each_time(server_factory):
    server = server_factory()
    assert protocol.call("127.0.0.1", server.port, {"type": "status"})["conn"] == 1
    assert protocol.call("127.0.0.1", server.port, {"type": "status"})["conn"] == 2


# -- a heartbeat's report is parsed at the boundary ----------------------------------------

def test_validate_request_parses_a_heartbeats_report():
    request = validate_request({"v": VERSION, **HEARTBEAT, "report": {"pg": "running", "role": "primary",
                                                                      "lsn": 12, "unknown": 1}})
    assert request.report == Report(pg="running", role="primary", lsn=12)


@pytest.mark.parametrize("report, problem", [
    ({"syncrep_wait": "slow"}, "'syncrep_wait' must be int or float"),
    ({"lsn": 1.5}, "'lsn' must be int"),
    ({"relinquished": 1}, "'relinquished' must be bool"),
    ({"address": "127.0.0.1:5432"}, "report.address must be an object"),
    ({"address": {"host": "h", "pg_port": 1, "peer_port": 2}}, "needs field 'slot'"),
    ({"replication": [1]}, "report.replication[] must be an object"),
    ({"replication": [{"name": "b", "flush_lsn": "0/0"}]}, "'flush_lsn' must be int"),
    ({"lease_remaining": {"arbiter": "soon"}}, "'lease_remaining'"),
], ids=["number-as-string", "int-as-float", "bool-as-int", "address-string", "address-incomplete",
        "row-not-object", "row-field", "lease-map"])
def test_validate_request_rejects_a_badly_typed_report(report, problem):
    with pytest.raises(ProtocolError) as err:
        validate_request({"v": VERSION, **HEARTBEAT, "report": report})
    assert problem in str(err.value)
