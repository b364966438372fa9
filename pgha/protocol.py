"""The wire protocol between nodes, the arbiter and tools.

One JSON object per line (UTF-8, ending in "\\n"), at most MAX_FRAME bytes.
Every message carries "v" (the protocol version) and "type".

node -> arbiter   {"v":1,"type":"heartbeat","node":NAME,"epoch":N,"report":{...}}
arbiter -> node   {"v":1,"type":"instruction","epoch":N,"role":...,...}
tool -> arbiter   {"v":1,"type":"status"} | {"v":1,"type":"switchover","to":NAME}
node -> node      {"v":1,"type":"lease","node":NAME,"epoch":N}
                  -> {"v":1,"type":"grant","granted":bool,"reason":...}
any error         {"v":1,"type":"error","error":TEXT}; the sender closes.
"""
import json
import socket

VERSION = 1
MAX_FRAME = 64 * 1024
REQUEST_TYPES = {"heartbeat", "status", "switchover", "lease"}


class ProtocolError(Exception):
    """A message that breaks the protocol: the connection is closed after it."""


def encode(message):
    data = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return data


def decode(line):
    """Parse one frame (without its newline) into a dict, or raise ProtocolError."""
    if len(line) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(line)} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r} (expected {VERSION})")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("a message needs a string 'type'")
    return message


def validate_request(message):
    """Check the fields a server relies on; raise ProtocolError naming the first problem."""
    kind = message["type"]
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    if kind in ("heartbeat", "lease"):
        _require(message, "node", str)
        _require(message, "epoch", int)
    if kind == "heartbeat":
        _require(message, "report", dict)
    if kind == "switchover" and message.get("to") is not None:
        _require(message, "to", str)
    return message


def _require(message, field, kind):
    value = message.get(field)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"field {field!r} must be {kind.__name__}, got {value!r}")


def read_frame(sock_file):
    """Read one line from a binary file object; None at a clean end of stream."""
    line = sock_file.readline(MAX_FRAME + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > MAX_FRAME:
            raise ProtocolError(f"frame exceeds the {MAX_FRAME}-byte limit")
        raise ProtocolError("connection closed in the middle of a frame")
    return decode(line[:-1])


class Connection:
    """A client connection that sends one request and reads one reply at a time.

    Reconnects lazily: any socket or protocol error closes it, and the next
    request opens a new one.
    """

    def __init__(self, host, port, timeout):
        self.address = (host, port)
        self.timeout = timeout
        self._sock = None
        self._file = None

    def request(self, message):
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._file = self._sock.makefile("rb")
            self._sock.sendall(encode(message))
            reply = read_frame(self._file)
            if reply is None:
                raise ConnectionError("closed by peer")
            return reply
        except (OSError, ProtocolError):
            self.close()
            raise

    def close(self):
        if self._sock is not None:
            try:
                self._file.close()
                self._sock.close()
            except OSError:
                pass
        self._sock = self._file = None


def call(host, port, message, timeout=3.0):
    """One request on a fresh connection (for tools and tests)."""
    conn = Connection(host, port, timeout)
    try:
        return conn.request(message)
    finally:
        conn.close()
