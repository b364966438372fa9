"""The wire protocol between nodes, the arbiter and tools.

One JSON object per line (UTF-8, ending in "\\n"), at most MAX_FRAME bytes.
Every message carries "v" (the protocol version) and "type".

node -> arbiter   {"v":1,"type":"heartbeat","cluster":C,"node":NAME,"epoch":N,"report":{...}}
                  (validate_request parses it once into a pgha.requests dataclass)
arbiter -> node   {"v":1,"type":"instruction","cluster":C,"epoch":N,"role":...,...}
                  (every request to the arbiter may name its "cluster", every
                  reply echoes it; pgha.clusters; {"type":"clusters"} lists them)
                  (every request kind, its fields and who may send it: pgha/requests.py)
tool -> arbiter   {"v":1,"type":"status"} | {"v":1,"type":"switchover","to":NAME}
                  | {"v":1,"type":"rebuild","epoch":N,"primary":NAME} (confirms a rebuild proposal)
                  | {"v":1,"type":"reload"} (the arbiter and, through reload_generation, the nodes)
node -> node      {"v":1,"type":"lease","node":NAME,"epoch":N}
                  -> {"v":1,"type":"grant","granted":bool,"reason":...}
any error         {"v":1,"type":"error","error":TEXT}; after a protocol error
                  (malformed, oversized, nested deeper than limits.MAX_JSON_DEPTH,
                  unknown, incomplete limits.MESSAGE_DEADLINE after its first
                  byte) the server closes the connection.

Servers (LineServer) admit connections through limits.Slots: members (a
connection whose valid request is_member() accepts) keep their slot; every
other connection shares a bounded pool and is dropped first.

Authentication (auth.py): a client with a Credential signs each request and
checks each reply; a server with a Verifier checks each request before
answering it and signs the reply. A request that fails the check gets one
{"type":"error","error":"authentication failed"}, is logged (rate-limited)
and the connection is closed; one whose MAC is valid but whose timestamp
is refused (auth.ClockRefused) gets a signed {"type":"error","error":
auth.CLOCK_REFUSED}, from which the client's Connection learns the server's
clock and sends the request again, once (auth.ServerClock).

TLS (pgha.tls, optional): a LineServer with a tls_context wraps each accepted
connection in its handler thread (a handshake that fails costs that
connection and one rate-limited log line); a Connection with one wraps its
socket. The signing above stays as it is.
"""
from __future__ import annotations

import json
import re
import socket
import socketserver
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pgha import auth, limits, logs, requests
from pgha.errors import ProtocolError
from pgha.limits import clip
from pgha.serve import Admitting, WakeOnShutdown

if TYPE_CHECKING:     # ssl only in annotations: it loads OpenSSL (~4 MB), see pgha/tls.py
    import ssl

log = logs.get("protocol")

VERSION = 1
MAX_FRAME = 64 * 1024


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """Parse one frame (without its newline) into a dict, or raise ProtocolError."""
    message = load_json(line)
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    if type(message.get("v")) is not int or message["v"] != VERSION:   # not True, not 1.0
        raise ProtocolError(f"unsupported protocol version {clip(repr(message.get('v')))} (expected {VERSION})")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("a message needs a string 'type'")
    return message


def load_json(text: bytes) -> Any:
    """JSON as this protocol reads it (a frame's size, a bounded depth, UTF-8,
    no NaN), or ProtocolError: also what the REST API reads in a body."""
    if len(text) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(text)} bytes exceeds the {MAX_FRAME}-byte limit")
    if nesting_depth(text) > limits.MAX_JSON_DEPTH:
        # json.loads recurses once per level: refuse before it runs out of stack.
        raise ProtocolError(f"JSON nested deeper than {limits.MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text.decode("utf-8"), parse_constant=_no_nan)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {clip(str(exc))}") from None


def _no_nan(constant: str) -> float:
    # Infinity is on the wire (a standby that never answered); NaN compares
    # false with everything, so it would slip past every rule.
    if constant == "NaN":
        raise ValueError("NaN is not a number the protocol accepts")
    return float(constant)


# A string (closed, or running to the end of the line, so every match
# succeeds and the scan stays linear) or a bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.|\\\Z)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def nesting_depth(line: bytes) -> int:
    """How deep the JSON in `line` nests (brackets inside strings do not count);
    stops counting past limits.MAX_JSON_DEPTH."""
    if line.count(b"[") + line.count(b"{") <= limits.MAX_JSON_DEPTH:
        return 0 if b"[" not in line and b"{" not in line else 1   # cannot be deeper than the limit
    depth = deepest = 0
    for match in _TOKENS.finditer(line):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limits.MAX_JSON_DEPTH:
                    break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def validate_request(message: dict[str, Any]) -> requests.Request:
    """The request parsed once, at the boundary, by its kind's parser
    (pgha.requests): every server after this sees the dataclass, never the
    wire dict. ProtocolError names the first problem."""
    return requests.parse(message)


class Connection:
    """A client connection that sends one request and reads one reply at a time.

    Reconnects lazily: any socket or protocol error closes it, and the next
    request opens a new one. Signed requests are stamped on the server's clock
    as the replies tell it (auth.ServerClock, kept across reconnections);
    `clock.skew` is how far the server's wall clock is from ours.
    """

    def __init__(self, host: str, port: int, timeout: float, credential: auth.Credential | None = None,
                 tls_context: ssl.SSLContext | None = None, name: str | None = None) -> None:
        self.address = (host, port)
        self.name = name or f"{host}:{port}"     # for the clock skew's log line
        self.timeout = timeout
        self.credential = credential    # None: unsigned requests (a server without a Verifier)
        self.tls_context = tls_context  # pgha.tls.client_context, or None: plain TCP
        self._sock: socket.socket | None = None
        self._reader: FrameReader | None = None
        self.clock = server_clock(host, port, credential.clock if credential else time.time)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply, which must arrive whole within the timeout of sending.
        A signed clock refusal is answered by sending again, once, on the
        server's clock it told us."""
        reply, verified = self._request(message)
        # Only a signed refusal: an unsigned one could come from anyone on the
        # path, and a resend would run twice a request the server carried out.
        if verified and reply.get("type") == "error" and reply.get("error") == auth.CLOCK_REFUSED:
            self.close()                # the server closed it after refusing
            reply, _ = self._request(message)
        return reply

    def _request(self, message: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The reply, and whether its MAC was verified."""
        try:
            if self._sock is None or self._reader is None:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls_context is not None:    # the handshake runs under self.timeout
                    self._sock = self.tls_context.wrap_socket(self._sock)
                self._reader = FrameReader(self._sock)
            request = {"v": VERSION, **message}
            if self.credential is not None:
                request = self.credential.sign(request, self.clock)
            sent = self.clock.marks()
            self._sock.settimeout(self.timeout)
            self._sock.sendall(encode(request))
            reply = self._reader.read_frame(self.timeout)
            if reply is None:
                raise ConnectionError("closed by peer")
            verified = False
            if self.credential is not None:
                signed = reply
                reply = self.credential.check_reply(reply, request)
                verified = "mac" in signed          # check_reply passed: its "ts" is the server's
                if verified:
                    self.clock.learn(signed, sent, self.clock.marks())
                    self._note_skew()
            return reply, verified
        except (OSError, ProtocolError):
            self.close()
            raise

    def _note_skew(self) -> None:
        """Log once when the skew passes auth.SKEW_NOTICE, once when it is back."""
        skew = self.clock.skew
        if skew is None or (abs(skew) >= auth.SKEW_NOTICE) == self.clock.noted:
            return
        self.clock.noted = not self.clock.noted
        if self.clock.noted:
            log.warning("%s; our requests are stamped on its clock", auth.skew_text(skew, self.name))
        else:
            log.info("clock skew with %s back within %.0f s (%+.1f s)", self.name, auth.SKEW_NOTICE, skew)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock, self._reader = None, None


_server_clocks: dict[tuple[str, int, Callable[[], float]], auth.ServerClock] = {}


def server_clock(host: str, port: int, wall: Callable[[], float]) -> auth.ServerClock:
    """The one ServerClock of this process for a server, shared by every
    Connection to it (a fresh connection per call must not start unlearned)."""
    return _server_clocks.setdefault((host, port, wall), auth.ServerClock(wall=wall))


def call(host: str, port: int, message: dict[str, Any], timeout: float = 3.0,
         credential: auth.Credential | None = None, tls_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """One request on a fresh connection (for tools and tests)."""
    conn = Connection(host, port, timeout, credential, tls_context)
    try:
        return conn.request(message)
    finally:
        conn.close()


class MessageDeadline(ProtocolError):
    """A frame began but did not complete within limits.MESSAGE_DEADLINE."""


class Receiver(Protocol):
    """What FrameReader reads from: a socket (plain or TLS)."""
    def recv(self, size: int, /) -> bytes: ...
    def settimeout(self, timeout: float | None, /) -> None: ...


class FrameReader:
    """Reads frames from a socket, for servers and clients alike, with two
    clocks: between frames the idle timeout (None: block), and once a frame
    has begun a deadline for all of it (a byte every few seconds does not
    keep a connection)."""

    def __init__(self, sock: Receiver, clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.clock = clock
        self.received = 0           # bytes so far, on this connection
        self._buffer = bytearray()

    def next_line(self, idle_timeout: float | None, deadline: float | None = None,
                  started: float | None = None) -> bytes | None:
        """The next frame without its newline; None at a clean end of stream or
        an idle timeout. `started`: when the deadline starts if no byte came yet.
        Raises ProtocolError (MessageDeadline) or OSError."""
        deadline = limits.MESSAGE_DEADLINE if deadline is None else deadline
        if self._buffer:
            started = self.clock()      # a pipelined frame has begun
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                if len(line) > MAX_FRAME:
                    raise ProtocolError(f"frame exceeds the {MAX_FRAME}-byte limit")
                return line
            if len(self._buffer) > MAX_FRAME:
                raise ProtocolError(f"frame exceeds the {MAX_FRAME}-byte limit")
            timeout = idle_timeout if started is None else started + deadline - self.clock()
            if timeout is not None and timeout <= 0:
                raise MessageDeadline(f"message not complete within {deadline:g}s")
            self.sock.settimeout(timeout)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                if started is None:
                    return None
                raise MessageDeadline(f"message not complete within {deadline:g}s") from None
            if not chunk:
                if self._buffer:
                    raise ProtocolError("connection closed in the middle of a frame")
                return None
            if started is None:
                started = self.clock()
            self.received += len(chunk)
            self._buffer += chunk


    def read_frame(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, decoded; None at a clean end of stream. With a
        timeout the whole frame must arrive within it (else socket.timeout,
        an OSError); without one it blocks until the first byte."""
        if timeout is None:
            line = self.next_line(None)
        else:
            try:
                line = self.next_line(None, deadline=timeout, started=self.clock())
            except MessageDeadline:
                raise socket.timeout(f"no complete reply within {timeout:g}s") from None
        return None if line is None else decode(line)


class LineHandler(socketserver.StreamRequestHandler):
    """Serves one connection: a JSON request per line, a reply to each.

    Subclasses implement answer(message). A message that breaks the
    protocol (or an answer that raises ProtocolError) gets one error reply,
    one log line (rate-limited per source and reason, client input clipped),
    and the connection is closed; other clients are unaffected. So does any
    other exception an answer raises (an "internal error" reply).

    A connection starts as a stranger: its first frame must complete within
    limits.MESSAGE_DEADLINE of connecting. Once the server's is_member()
    accepts one of its requests it holds a member's slot, which no stranger
    can take, and waits between messages for the server's idle timeout.
    With a server Verifier, answer() only ever sees authenticated requests.
    """

    server: LineServer

    def setup(self) -> None:
        # With TLS, self.connection is a TLS socket over a duplicate of the
        # accepted one; self.request stays the plain socket the server's slot
        # table knows (and serve.wake shuts down). The handshake runs here, in this
        # connection's thread, under the stranger's first-message deadline.
        self.connected_at = time.monotonic()
        self.tls_refused = False
        context: ssl.SSLContext | None = getattr(self.server, "tls_context", None)
        plain = self.request
        if context is not None:
            try:
                self.request = self._handshake(context, plain)
            except (OSError, ValueError) as exc:     # ssl.SSLError is an OSError
                peer = "%s:%s" % self.client_address[:2]
                reason = getattr(exc, "reason", None) or type(exc).__name__
                self.server.warn(str(self.client_address[0]), "tls",
                                 f"TLS handshake with {peer} failed: {clip(str(reason), 200)}")
                self.tls_refused = True
        try:
            super().setup()
        finally:
            self.request = plain

    @staticmethod
    def _handshake(context: ssl.SSLContext, plain: socket.socket) -> ssl.SSLSocket:
        dup = plain.dup()
        try:
            dup.settimeout(limits.MESSAGE_DEADLINE)
            return context.wrap_socket(dup, server_side=True)
        except BaseException:
            dup.close()
            raise

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.connection is not self.request:     # the TLS socket over the duplicate
                try:
                    self.connection.close()
                except OSError:
                    pass

    def answer(self, request: requests.Request) -> dict[str, Any]:
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
        if self.tls_refused:
            return
        slot = self.server.slot_of(self.request)
        source = str(self.client_address[0])
        peer = "%s:%s" % self.client_address[:2]
        reader = FrameReader(self.connection)
        idle = float(getattr(self.server, "idle_timeout", 30.0))
        started: float | None = self.connected_at    # a stranger's first frame: from connecting
        try:
            while True:
                line = reader.next_line(idle, started=started)
                started = None
                if slot is not None:
                    slot.talking = True
                if line is None:
                    return
                message = decode(line)
                sender = self.verify(message)       # over the wire form: before parsing
                if sender is not None and sender.skew is not None and abs(sender.skew) >= auth.SKEW_NOTICE:
                    self.server.warn(source, f"skew:{sender.identity}", f"{auth.skew_text(sender.skew, sender.identity)} "
                                     "(its requests are stamped on our clock)")
                request = validate_request(message)
                reply = self.sign(self.answer(request), sender)
                # A proven sender (a member, an operator, a reader) keeps its slot;
                # without authentication the server's own is_member() decides.
                if slot is not None and not slot.member and \
                        (sender is not None or self.server.is_member(request)):
                    self.server.slots.promote(slot)
                if not self._send(reply):
                    return
        except auth.ClockRefused as exc:
            # Authentic but stamped outside our window: nothing changed; tell it our time, signed.
            skew = exc.sender.skew
            told = "" if skew is None else f" ({auth.skew_text(skew, exc.sender.identity)})"
            self.server.warn(source, f"auth:clock:{exc.sender.identity}", f"refused a request from {peer}: {clip(str(exc), 200)}{told}; "
                             "told it our time")
            self._send(self.sign({"type": "error", "error": auth.CLOCK_REFUSED}, exc.sender))
        except auth.AuthError as exc:
            # Nothing changed; tell the client only that it failed, log why (rate-limited).
            self.server.warn(source, f"auth:{exc.check}", f"refused a request from {peer}: {clip(str(exc), 200)}")
            self._send({"type": "error", "error": auth.FAILED})
        except ProtocolError as exc:
            reason = "deadline" if isinstance(exc, MessageDeadline) else "protocol"
            self.server.warn(source, reason, f"closing connection from {peer}: {clip(str(exc), 200)}")
            self._send({"type": "error", "error": clip(str(exc), 200)})
        except OSError:     # timeouts and resets: the client is gone
            return
        except Exception as exc:        # noqa: BLE001 -- a bug must cost one connection, not the server
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.server.warn(source, "internal", f"internal error answering {peer}: {type(exc).__name__}: "
                             f"{clip(str(exc), 200)} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})")
            self._send({"type": "error", "error": "internal error"})

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            data = encode(message)
        except ProtocolError as exc:    # a reply must fit the frame: say so rather than go silent
            peer = "%s:%s" % self.client_address[:2]
            self.server.warn(str(self.client_address[0]), "reply", f"reply to {peer} not sent: {exc}")
            data = encode({"type": "error", "error": "reply too large"})
        try:
            self.connection.settimeout(limits.MESSAGE_DEADLINE)    # a client that never reads
            self.wfile.write(data)
            return True
        except OSError:
            return False


class LineServer(Admitting, WakeOnShutdown, socketserver.ThreadingTCPServer):
    """A threaded server that admits connections through limits.Slots.

    Admission runs in the accept loop, so a refused connection costs an
    accept, one non-blocking error line and a close, never a thread.
    Subclasses say who is a member (is_member); by default nobody is, and
    every connection shares the strangers' pool.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = limits.LISTEN_BACKLOG
    verifier: auth.Verifier | None = None   # set it to authenticate every request
    tls_context: ssl.SSLContext | None = None   # pgha.tls.server_context: TLS on every connection

    warn_log = log

    def is_member(self, request: requests.Request) -> bool:
        """Whether a request that was answered without error
        comes from a member of the cluster (the hook authentication tightens)."""
        return False

    def refuse(self, request: socket.socket) -> None:
        try:
            request.send(encode({"type": "error", "error": "too many connections"}), socket.MSG_DONTWAIT)
        except OSError:
            pass


