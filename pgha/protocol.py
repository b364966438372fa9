"""The wire protocol between nodes, the arbiter and tools.

One JSON object per line (UTF-8, ending in "\\n"), at most MAX_FRAME bytes.
Every message carries "v" (the protocol version) and "type".

node -> arbiter   {"v":1,"type":"heartbeat","node":NAME,"epoch":N,"report":{...}}
                  (validate_request parses the report into a messages.Report)
arbiter -> node   {"v":1,"type":"instruction","epoch":N,"role":...,...}
tool -> arbiter   {"v":1,"type":"status"} | {"v":1,"type":"switchover","to":NAME}
                  | {"v":1,"type":"rebuild","epoch":N,"primary":NAME} (confirms a rebuild proposal)
node -> node      {"v":1,"type":"lease","node":NAME,"epoch":N}
                  -> {"v":1,"type":"grant","granted":bool,"reason":...}
any error         {"v":1,"type":"error","error":TEXT}; after a protocol error
                  (malformed, oversized, unknown) the server closes the connection.
"""
from __future__ import annotations

import json
import socket
import socketserver
from typing import IO, Any, Protocol

from pgha import logs
from pgha.errors import ProtocolError
from pgha.messages import Report, check_type

log = logs.get("protocol")

VERSION = 1
MAX_FRAME = 64 * 1024
REQUEST_TYPES = {"heartbeat", "status", "switchover", "lease", "rebuild"}


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return data


def decode(line: bytes) -> dict[str, Any]:
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


def validate_request(message: dict[str, Any]) -> dict[str, Any]:
    """Check the fields a server relies on; raise ProtocolError naming the first problem.

    A heartbeat's report is parsed here, once: message["report"] becomes a
    messages.Report, so the arbiter never sees a wire dict.
    """
    kind = message["type"]
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    if kind in ("heartbeat", "lease"):
        check_type(message.get("node"), str, "node")
        check_type(message.get("epoch"), int, "epoch")
    if kind == "heartbeat":
        check_type(message.get("report"), dict, "report")
        message["report"] = Report.from_wire(message["report"])
    if kind == "rebuild":     # an operator's confirmation of the rebuild proposal (pgha.rebuild)
        check_type(message.get("epoch"), int, "epoch")
        check_type(message.get("primary"), str, "primary")
    if kind == "switchover" and message.get("to") is not None:
        check_type(message["to"], str, "to")
    return message


class LineReader(Protocol):
    def readline(self, size: int, /) -> bytes: ...


def read_frame(sock_file: LineReader) -> dict[str, Any] | None:
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

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file: IO[bytes] | None = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._sock is None or self._file is None:
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

    def close(self) -> None:
        if self._sock is not None:
            try:
                if self._file is not None:
                    self._file.close()
                self._sock.close()
            except OSError:
                pass
        self._sock = self._file = None


def call(host: str, port: int, message: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
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

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def handle(self) -> None:
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

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            self.wfile.write(encode(message))
            return True
        except (OSError, ProtocolError):
            return False


class LineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
