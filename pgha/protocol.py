"""The wire protocol between nodes, the arbiter and tools.

One JSON object per line (UTF-8, ending in "\\n"), at most MAX_FRAME bytes.
Every message carries "v" (the protocol version) and "type".

node -> arbiter   {"v":1,"type":"heartbeat","node":NAME,"epoch":N,"report":{...}}
arbiter -> node   {"v":1,"type":"instruction","epoch":N,"role":...,...}
tool -> arbiter   {"v":1,"type":"status"} | {"v":1,"type":"switchover","to":NAME}
node -> node      {"v":1,"type":"lease","node":NAME,"epoch":N}
                  -> {"v":1,"type":"grant","granted":bool,"reason":...}
any error         {"v":1,"type":"error","error":TEXT}; after a protocol error
                  (malformed, oversized, unknown) the server closes the connection.
"""
import json
import socket
import socketserver

from pgha import logs
from pgha.errors import ProtocolError

log = logs.get("protocol")

VERSION = 1
MAX_FRAME = 64 * 1024
REQUEST_TYPES = {"heartbeat", "status", "switchover", "lease"}


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
    if type(message.get("v")) is not int or message["v"] != VERSION:   # not True, not 1.0
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
        validate_report(message["report"])
    if kind == "switchover" and message.get("to") is not None:
        _require(message, "to", str)
    return message


NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))
REPORT_FIELDS = {
    "pg": str, "role": OPTIONAL_STR, "lsn": int, "receive_lsn": int, "timeline": (int, type(None)),
    "sync_standby": OPTIONAL_STR, "receiver": OPTIONAL_STR, "syncrep_wait": NUMBER, "replication": list,
    "address": dict, "relinquished": bool, "grant_remaining": NUMBER, "lease_remaining": dict, "error": str,
    "last_action": OPTIONAL_STR,
}
ADDRESS_FIELDS = {"host": str, "pg_port": int, "peer_port": int, "slot": str}
REPLICATION_FIELDS = {"name": OPTIONAL_STR, "state": OPTIONAL_STR, "sync_state": OPTIONAL_STR,
                      "flush_lsn": int, "reply_age": NUMBER}


def validate_report(report):
    """A node's report: known fields must have the right types (unknown ones are ignored)."""
    _check_fields(report, REPORT_FIELDS, "report")
    if "address" in report:
        _check_fields(report["address"], ADDRESS_FIELDS, "report.address", required=True)
    for row in report.get("replication", []):
        if not isinstance(row, dict):
            raise ProtocolError("report.replication must hold objects")
        _check_fields(row, REPLICATION_FIELDS, "report.replication[]")


def valid_instruction(reply):
    """An arbiter's instruction carries the fields a node acts on."""
    if type(reply.get("epoch")) is not int or reply.get("role") not in ("primary", "standby", "wait"):
        return False
    if reply["role"] == "standby":
        address = reply.get("primary_address")
        return isinstance(reply.get("primary"), str) and isinstance(address, dict) \
            and isinstance(address.get("host"), str) and type(address.get("pg_port")) is int
    return True


def _check_fields(obj, fields, where, required=False):
    for name, kind in fields.items():
        if name not in obj:
            if required:
                raise ProtocolError(f"{where} needs field {name!r}")
            continue
        _require(obj, name, kind, where)


def _require(message, field, kind, where="message"):
    value = message.get(field)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ProtocolError(f"{where} field {field!r} must be {names}, got {shown}")


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


class LineHandler(socketserver.StreamRequestHandler):
    """Serves one connection: a JSON request per line, a reply to each.

    Subclasses implement answer(message). A message that breaks the
    protocol (or an answer that raises ProtocolError) gets one error reply,
    one log line, and the connection is closed; other clients are unaffected.
    """

    def answer(self, message):
        raise NotImplementedError

    def handle(self):
        self.connection.settimeout(getattr(self.server, "idle_timeout", 30.0))
        peer = "%s:%s" % self.client_address[:2]
        while True:
            try:
                message = read_frame(self.rfile)
                if message is None:
                    return
                reply = self.answer(validate_request(message))
            except ProtocolError as exc:
                log.warning("closing connection from %s: %s", peer, exc)
                self._send({"type": "error", "error": str(exc)})
                return
            except OSError:     # timeouts and resets: the client is gone
                return
            if not self._send(reply):
                return

    def _send(self, message):
        try:
            self.wfile.write(encode(message))
            return True
        except (OSError, ProtocolError):
            return False


class LineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
