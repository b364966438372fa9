"""The wire protocol between nodes, the arbiter and tools.

One JSON object per line (UTF-8, ending in "\\n"), at most MAX_FRAME bytes.
Every message carries "v" (the protocol version) and "type".

node -> arbiter   {"v":1,"type":"heartbeat","node":NAME,"epoch":N,"report":{...}}
                  (validate_request parses the report into a messages.Report)
arbiter -> node   {"v":1,"type":"instruction","epoch":N,"role":...,...}
tool -> arbiter   {"v":1,"type":"status"} | {"v":1,"type":"switchover","to":NAME}
node -> node      {"v":1,"type":"lease","node":NAME,"epoch":N}
                  -> {"v":1,"type":"grant","granted":bool,"reason":...}
any error         {"v":1,"type":"error","error":TEXT}; after a protocol error
                  (malformed, oversized, unknown) the server closes the connection.

Authentication (auth.py): a client with a Credential signs each request and
checks each reply; a server with a Verifier checks each request before
answering it and signs the reply. A request that fails the check gets one
{"type":"error","error":"authentication failed"}, is logged (rate-limited)
and the connection is closed.
"""
from __future__ import annotations

import json
import socket
import socketserver
from typing import IO, Any, Protocol

from pgha import auth, logs
from pgha.errors import ProtocolError
from pgha.ratelog import RateLimitedLog
from pgha.messages import Report, check_type

log = logs.get("protocol")

VERSION = 1
MAX_FRAME = 64 * 1024
REQUEST_TYPES = {"heartbeat", "status", "switchover", "lease"}


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

    def __init__(self, host: str, port: int, timeout: float, credential: auth.Credential | None = None) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.credential = credential    # None: unsigned requests (a server without a Verifier)
        self._sock: socket.socket | None = None
        self._file: IO[bytes] | None = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._sock is None or self._file is None:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._file = self._sock.makefile("rb")
            request = {"v": VERSION, **message}
            if self.credential is not None:
                request = self.credential.sign(request)
            self._sock.sendall(encode(request))
            reply = read_frame(self._file)
            if reply is None:
                raise ConnectionError("closed by peer")
            if self.credential is not None:
                reply = self.credential.check_reply(reply, request)
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


def call(host: str, port: int, message: dict[str, Any], timeout: float = 3.0,
         credential: auth.Credential | None = None) -> dict[str, Any]:
    """One request on a fresh connection (for tools and tests)."""
    conn = Connection(host, port, timeout, credential)
    try:
        return conn.request(message)
    finally:
        conn.close()


class LineHandler(socketserver.StreamRequestHandler):
    """Serves one connection: a JSON request per line, a reply to each.

    Subclasses implement answer(message). A message that breaks the
    protocol (or an answer that raises ProtocolError) gets one error reply,
    one log line, and the connection is closed; other clients are unaffected.
    With a server Verifier, answer() only ever sees authenticated requests.
    """

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def verify(self, message: dict[str, Any]) -> auth.Sender | None:
        """The authenticated sender (AuthError if not authentic); None when
        the server has no Verifier."""
        verifier: auth.Verifier | None = getattr(self.server, "verifier", None)
        return None if verifier is None else verifier.verify(message)

    def sign(self, reply: dict[str, Any], sender: auth.Sender | None) -> dict[str, Any]:
        verifier: auth.Verifier | None = getattr(self.server, "verifier", None)
        if verifier is None or sender is None:
            return reply
        return verifier.sign_reply({"v": VERSION, **reply}, sender)

    def handle(self) -> None:
        self.connection.settimeout(getattr(self.server, "idle_timeout", 30.0))
        peer = "%s:%s" % self.client_address[:2]
        while True:
            try:
                message = read_frame(self.rfile)
                if message is None:
                    return
                sender = self.verify(message)
                reply = self.sign(self.answer(validate_request(message)), sender)
            except auth.AuthError as exc:
                # Nothing changed; say only that it failed, log why (once a minute per source and check).
                auth_log(self.server).warning((self.client_address[0], exc.check),
                                              f"refused a request from {peer}: {exc}")
                self._send({"type": "error", "error": auth.FAILED})
                return
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


_AUTH_LOG = RateLimitedLog(log)


def auth_log(server: object) -> RateLimitedLog:
    """The server's rate-limited log of refused requests (one per process by default)."""
    limiter: RateLimitedLog = getattr(server, "auth_log", _AUTH_LOG)
    return limiter


class LineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    verifier: auth.Verifier | None = None   # set it to authenticate every request
