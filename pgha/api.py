"""The node's REST API: Patroni's health-check paths and status codes
(GET /, HEAD / and OPTIONS / answer as /primary), the node, cluster,
configuration and timeline history as Patroni's JSON, our role history
(/pgha/history) and Prometheus metrics.

A threaded HTTP server in the node daemon. Every answer is computed from
the HA loop's last published snapshot (node_state.StatePublisher) by the
pure functions in health.py and metrics.py: it never waits on PostgreSQL,
and on the arbiter only when its last status is too old to use (the
node_state.ClusterWatcher asks the arbiter only while the API is read).
GET, HEAD and OPTIONS (HAProxy's default check method) are served, and
POST on the operator's paths (RELAYED), PATCH /config, and with
api_authentication Patroni's writes (below); anything else is 405. Each
connection closes after one answer. One client cannot blind the health
checks (issue 19): the whole request (line, headers, body) must arrive
within REQUEST_DEADLINE of the connection (a client sending one byte a
second is dropped then, not kept alive by each byte), connections are
admitted through limits.Slots in the accept loop (at most API_SLOTS at
once, API_SLOTS_PER_SOURCE from one address; a client whose whole request
head is there takes the place of the least useful stranger, so a probe
from the same host as a flood still gets in; a silent one that finds no
slot waits up to PARK_WAIT in the _WaitingRoom for its request), and
refusals and drops are logged once per source and reason per
limits.WARN_INTERVAL.

POST /switchover, /reload, /pause, /resume, /failover, /config (and PATCH
/config, as Patroni's): unless it is given one (PatroniWrites), the node
holds no operator key, so it cannot sign. The body must be the operator-signed
request itself (one JSON object, e.g. from pgha.ctl --print-signed or any
client holding operator.keys) whose "type" is the path's name; the node
relays it unchanged to the arbiter, which verifies it, and answers with the
arbiter's reply: 200 when it is ok, 403 when the signature was refused, 409
for any other refusal, 503 when the arbiter is unreachable.

Patroni-style writes (PatroniWrites, pgha.patroni_requests): with HTTP
Basic credentials (api_authentication) a caller sends Patroni's bodies;
the node turns them into our requests, signs them with the operator key it
was given (api_operator_key_file) and answers as Patroni does (200, 400,
401, 412, 503).
"""
from __future__ import annotations

import base64
import hmac
import io
import json
import selectors
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from pgha import arbiter_link, auth, clusters, health, limits, logs, metrics, patroni_requests, protocol, requests
from pgha.node_state import StatePublisher
from pgha.serve import Admitting, WakeOnShutdown

if TYPE_CHECKING:     # ssl only in annotations: it loads OpenSSL (~4 MB), see pgha/tls.py
    import ssl

log = logs.get("api")

REQUEST_DEADLINE = limits.API_REQUEST_DEADLINE
REQUEST_TIMEOUT = REQUEST_DEADLINE      # a reply write to a client that does not read
MAX_CLIENTS = limits.API_SLOTS
HEAD_PEEK = 8192        # bytes of a new connection looked at for a whole request head
PARKED = 64             # silent newcomers waiting for a slot at once (the oldest is turned away first)
PARK_WAIT = 0.5         # s a silent newcomer may wait for its first bytes before it is turned away
REFUSED = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
JSON_TYPE = "application/json"
RELAYED = requests.RELAYED     # POST /<type>: the kinds the table of request kinds marks relayed
GUARDED = frozenset({"/cluster"})   # behind the reader key when api_cluster_key_file is set
SIGNED_HEADER = "X-Pgha-Signed"     # where a guarded read carries its signed status request
READ_TYPES = frozenset({"status"})

# Paths that always answer 200 with JSON (GET / is a health check: /primary, as Patroni's).
PLAIN_ANSWERS = {"/patroni": health.node_json, "/cluster": health.cluster_json,
                 "/config": health.config_json, "/history": lambda s, v, now: health.history_json(s, v)}

# Sends one already-signed request to the arbiter and returns its reply.
Relay = Callable[[dict[str, Any]], dict[str, Any]]


class ApiServer(Admitting, WakeOnShutdown, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = limits.LISTEN_BACKLOG
    warn_log = log

    def __init__(self, host: str, port: int, state: StatePublisher, relay: Relay | None = None,
                 reader: auth.Verifier | None = None, patroni: PatroniWrites | None = None) -> None:
        self.state = state
        self.relay = relay
        self.patroni = patroni      # set: Patroni-style writes with HTTP Basic credentials (api_authentication)
        self.reader = reader    # set: GUARDED paths answer only a request signed by the reader (or operator)
        super().__init__((host, port), _Handler)
        self.slots.member_slots = 0     # no member connections here: every client is a stranger
        self.slots.stranger_slots = MAX_CLIENTS
        self.slots.per_source = limits.API_SLOTS_PER_SOURCE
        self.slots.silent_evict = False
        self.waiting_room = _WaitingRoom(self)

    def refused_read(self, path: str, signed: str | None, source: str) -> str | None:
        """Why a read of `path` is refused (401), or None. Only GUARDED paths,
        and only when a reader key file is set: the request must carry, in
        SIGNED_HEADER, a status request signed with the reader's (or the
        operator's) key, fresh and not seen before (pgha.auth)."""
        if self.reader is None or (urllib.parse.urlsplit(path).path.rstrip("/") or "/") not in GUARDED:
            return None
        if not signed:
            return (f"this path needs a status request signed with the reader key in the {SIGNED_HEADER} "
                    "header (pgha-ctl --key-file reader.keys status --print-signed)")
        try:
            message = protocol.decode(signed.encode("utf-8", "replace"))
            self.reader.verify(message)
        except auth.AuthError as exc:
            self.warn(source, f"auth:{exc.check}", f"REST API: refused a read from {source}: {limits.clip(str(exc), 200)}")
            return auth.FAILED
        except protocol.ProtocolError as exc:
            return f"{SIGNED_HEADER}: {limits.clip(str(exc), 200)}"
        return None

    def park(self, request: socket.socket, client_address: Any) -> bool:
        return self.waiting_room.park(request, client_address)

    def talking(self, request: socket.socket) -> bool:
        # A whole request head already here (a health check sends it at once):
        # such a client may take a slow one's place; a slow one never takes any.
        return b"\r\n\r\n" in request.recv(HEAD_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)

    def refuse(self, request: socket.socket) -> None:
        try:
            request.send(REFUSED, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("REST API request from %s failed", client_address[0] if client_address else "?",
                  exc_info=True)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True,
                                  name="rest-api")
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.waiting_room.close()


class _WaitingRoom:
    """Silent newcomers that found every slot taken wait here (one thread,
    one selector, at most PARKED: the oldest is turned away first) for
    their first bytes, up to PARK_WAIT. A health check accepted a moment
    before its request arrived is then admitted like one whose request was
    there (it takes a slow client's place); a slow or silent one is turned away."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.parked: dict[socket.socket, tuple[Any, float]] = {}     # socket -> (address, parked at)
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.closed = False

    def park(self, request: socket.socket, client_address: Any) -> bool:
        with self.lock:
            if self.closed:
                return False
            if len(self.parked) >= PARKED:
                oldest = next(iter(self.parked))
                self.server.turn_away(oldest, str(self._leave(oldest)[0]))
            self.parked[request] = (client_address, time.monotonic())
            self.selector.register(request, selectors.EVENT_READ)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="rest-api-waiting", daemon=True)
                self.thread.start()
        return True

    def _leave(self, request: socket.socket) -> Any:
        address, _ = self.parked.pop(request)
        self.selector.unregister(request)
        return address

    def _run(self) -> None:
        while True:
            try:
                ready = self.selector.select(timeout=PARK_WAIT / 4)
            except (OSError, ValueError):       # closed
                return
            now = time.monotonic()
            with self.lock:
                if self.closed:
                    return
                spoke = {key.fileobj for key, _ in ready if key.fileobj in self.parked}
                due = [sock for sock, (_, at) in self.parked.items() if sock in spoke or now - at >= PARK_WAIT]
                moves = [(sock, self._leave(sock)) for sock in due]
            for sock, address in moves:
                try:
                    whole = self.server.talking(sock)
                except OSError:
                    whole = False
                if whole:       # admitted as any health check with its request is
                    self.server.process_request(sock, address)
                else:
                    self.server.turn_away(sock, str(address[0]))

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for sock in list(self.parked):
                self._leave(sock)
                self.server.shutdown_request(sock)
            self.selector.close()


class RequestDeadline(TimeoutError):
    """The request did not arrive whole within REQUEST_DEADLINE."""


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read bounded by what is left of one
    deadline for the whole request (a socket timeout alone is per read:
    a byte a second would hold the connection for ever)."""

    def __init__(self, sock: socket.socket, deadline: float, slot: limits.Slot | None) -> None:
        super().__init__()
        self.sock, self.deadline, self.slot = sock, deadline, slot
        self.missed = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise socket.timeout
            self.sock.settimeout(left)
            count = self.sock.recv_into(buffer)
        except socket.timeout:
            self.missed = True
            raise RequestDeadline(f"request not complete within {REQUEST_DEADLINE:g}s") from None
        if count and self.slot is not None:
            self.slot.talking = True
        return count


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    timeout = REQUEST_TIMEOUT          # socket timeout for writes; reads: the request's deadline
    server_version = "pgha"
    sys_version = ""

    def setup(self) -> None:
        deadline = time.monotonic() + REQUEST_DEADLINE
        super().setup()
        self.rfile.close()      # the plain file over the socket: reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection, deadline, self.server.slot_of(self.request))
        self.rfile = io.BufferedReader(self._reader)

    def parse_request(self) -> bool:
        """The request line and headers, then the reader-key check of a guarded path (before any answer)."""
        if not super().parse_request():
            return False
        problem = self.server.refused_read(self.path, self.headers.get(SIGNED_HEADER), str(self.client_address[0]))
        if problem is None:
            return True
        self.close_connection = True
        self._json(401, {"error": problem}, head=self.command == "HEAD")
        return False

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_OPTIONS(self) -> None:     # HAProxy's `option httpchk` without a method sends OPTIONS
        self._answer(head=False)

    def _not_allowed(self) -> None:
        allowed = "GET, HEAD, OPTIONS" + (", POST, PATCH" if self.server.relay is not None else "") \
            + (", DELETE" if self.server.patroni is not None else "")
        body = json.dumps({"error": f"only {allowed} are served"
                           + (" (POST on /" + ", /".join(sorted(RELAYED)) + "; PATCH on /config)"
                              if self.server.relay else "")})
        self._send(405, JSON_TYPE, (body + "\n").encode(), head=False, extra={"Allow": allowed})

    do_PUT = _not_allowed

    def do_POST(self) -> None:
        self._write()

    def do_PATCH(self) -> None:     # Patroni's way to change /config
        self._write()

    def do_DELETE(self) -> None:    # Patroni's way to cancel a scheduled switchover or restart
        self._write()

    def _write(self) -> None:
        """A write: Patroni's (HTTP Basic credentials, Patroni's body; only when
        api_authentication is set), or an operator-signed request relayed as is."""
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        raw = self._body()
        if raw is None:
            return None     # answered
        patroni = self.server.patroni
        if patroni is not None and ("Authorization" in self.headers or not _signed(raw)):
            return self._patroni_write(patroni, path, raw)
        if self.command == "DELETE" or (self.command == "PATCH" and path != "/config"):
            return self._not_allowed()
        return self._relay(path.strip("/"), raw)

    def _body(self) -> bytes | None:
        """The request's body (b"" when it has none); None when the length
        was refused (answered here)."""
        if "Transfer-Encoding" in self.headers:     # a chunked body would be read as none
            self._json(411, {"error": "send the body with a Content-Length (chunked bodies are not read)"}, False)
            return None
        given = self.headers.get("Content-Length")
        if given is None:
            return b""
        if not given.strip().isdigit():
            self._json(400, {"error": "Content-Length is not a number"}, False)
            return None
        length = int(given)
        if not 0 <= length <= protocol.MAX_FRAME:
            self._json(413, {"error": f"the body must hold at most {protocol.MAX_FRAME} bytes"}, False)
            return None
        return self.rfile.read(length) if length else b""

    def _patroni_write(self, patroni: PatroniWrites, path: str, raw: bytes) -> None:
        source = str(self.client_address[0])
        if not patroni.allows(self.headers.get("Authorization")):
            self.server.warn(source, "auth:basic", f"REST API: refused a {self.command} {limits.printable(path[:80])} "
                                                   f"from {source}: missing or wrong credentials (api_authentication)")
            body = json.dumps({"error": "this write needs the REST API's credentials (HTTP Basic)"}) + "\n"
            return self._send(401, JSON_TYPE, body.encode(), False, extra={"WWW-Authenticate": 'Basic realm="pgha"'})
        try:
            body = protocol.load_json(raw) if raw.strip() else {}
            translated = patroni_requests.translate(self.command, path, body, patroni.member)
        except (protocol.ProtocolError, patroni_requests.BadRequest) as exc:
            return self._json(400, {"error": limits.clip(str(exc), 300)}, False)
        facts = self.server.state.snapshot.facts
        if translated.only_if_pending and not (facts and facts.pending_restart):
            return self._json(503, {"error": "restart conditions are not satisfied: no restart is pending"}, False)
        if not patroni.writing.acquire(blocking=False):     # each may wait a minute: a few at a time
            return self._json(503, {"error": "another write is under way here: try again"}, False)
        try:
            code, reply = patroni.carry_out(translated)
        except (OSError, protocol.ProtocolError) as exc:
            code, reply = 503, {"error": f"arbiter unreachable: {limits.clip(str(exc), 200)}"}
        finally:
            patroni.writing.release()
        self._json(code, reply, False)

    def _relay(self, kind: str, raw: bytes) -> None:
        """Relay the operator-signed request in the body, of type `kind`, to the arbiter."""
        if kind not in RELAYED or self.server.relay is None:
            return self._not_allowed()
        if not raw:
            return self._json(411, {"error": f"a {self.command} needs the operator-signed request as its body"}, False)
        try:
            request = protocol.decode(raw.strip())
        except protocol.ProtocolError as exc:
            return self._json(400, {"error": f"the body must be the operator-signed request: {exc}"}, False)
        if request.get("type") != kind:
            return self._json(400, {"error": f"{self.command} /{kind} relays a {kind!r} request, the body holds "
                                             f"{str(request.get('type'))[:40]!r}"}, False)
        try:
            reply = self.server.relay(request)
        except (OSError, protocol.ProtocolError) as exc:
            return self._json(503, {"error": f"arbiter unreachable: {exc}"}, False)
        if reply.get("type") != "error":
            return self._json(200, reply, False)
        self._json(403 if reply.get("error") == auth.FAILED else 409, reply, False)

    def _answer(self, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        state = self.server.state
        snapshot, view, now = state.snapshot, state.read_cluster(), state.clock()
        try:
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True, max_num_fields=8)
        except ValueError:
            return self._json(400, {"error": "malformed query string"}, head)
        if path == "/metrics":
            body = metrics.render(snapshot, view, now).encode()
            return self._send(200, metrics.CONTENT_TYPE, body, head)
        answer = PLAIN_ANSWERS.get(path)
        if answer is not None:
            return self._json(200, answer(snapshot, view, now), head)
        if path == "/pgha/history":
            return self._json(200, health.role_history_json(state.history.events()), head)
        check = health.check_for(path)
        if check is None:
            return self._json(404, {"error": f"no such path: {path[:80]}"}, head)
        try:
            filters = health.Filters.from_query(query, readiness=path.strip("/") == "readiness")
        except ValueError as exc:
            return self._json(400, {"error": str(exc)}, head)
        ok = check(snapshot, view, now, filters)
        # The body is the node's JSON, as Patroni answers its health checks.
        self._json(200 if ok else 503, health.node_json(snapshot, view, now), head)

    def _json(self, code: int, body: Any, head: bool) -> None:
        self._send(code, JSON_TYPE, (json.dumps(body) + "\n").encode(), head)

    def _send(self, code: int, content_type: str, body: bytes, head: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass    # a check every 500 ms per HAProxy: not worth a log line each

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (socket.timeout, ConnectionError):
            self.close_connection = True
        if self._reader.missed:         # http.server swallows the timeout: say it here, once per source
            self.close_connection = True
            source = str(self.client_address[0])
            self.server.warn(source, "deadline", f"REST API: dropped a connection from {source}: request "
                                                 f"not complete within {REQUEST_DEADLINE:g}s")


def _signed(raw: bytes) -> bool:
    """Whether a body looks like an operator-signed request (it carries a mac)."""
    try:
        message = protocol.load_json(raw)
    except protocol.ProtocolError:
        return False
    return isinstance(message, dict) and "mac" in message


PATRONI_WAIT = 60.0     # s a Patroni-style switchover or failover waits for the new primary (as pgha-ctl)
PATRONI_WRITERS = 2     # Patroni-style writes carried out at once (the rest: 503); health checks keep their slots


class PatroniWrites:
    """Patroni-style writes (pgha.patroni_requests): the REST API's HTTP
    Basic credentials (api_authentication, as Patroni's
    restapi.authentication), and `ask`, which signs a request with the
    operator key (api_operator_key_file) and sends it to the leading arbiter."""

    def __init__(self, username: str, password: str, ask: Callable[[dict[str, Any]], dict[str, Any]],
                 member: str, clock: Callable[[], float] = time.monotonic, poll: float = 0.5) -> None:
        self._expected = f"{username}:{password}".encode()
        self.ask, self.member, self.clock, self.poll = ask, member, clock, poll
        self.writing = threading.BoundedSemaphore(PATRONI_WRITERS)

    def allows(self, header: str | None) -> bool:
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self._expected)

    def carry_out(self, translated: patroni_requests.Translated) -> tuple[int, dict[str, Any]]:
        """Send the requests in order; (HTTP code, body): 200 when done,
        412 when the arbiter refused (its reason), 503 when a switchover or
        failover did not complete within PATRONI_WAIT."""
        before = self.ask({"type": "status"}) if translated.wait_for_primary else None
        if before is not None and (before.get("type") != "status" or not isinstance(before.get("epoch"), int)):
            return 503, {"error": "cannot read the cluster's state from the arbiter: nothing sent"}
        replies: dict[str, Any] = {}
        for request in translated.requests:
            reply = self.ask(request)
            if reply.get("type") == "error":
                return 412, {"error": str(reply.get("error"))}
            replies.update(_plain(reply))
        if before is None:
            return translated.accepted, {"message": "done" if translated.accepted == 200 else "accepted", **replies}
        return self._wait_for_new_primary(before, translated.requests[-1].get("to"))

    def _wait_for_new_primary(self, before: dict[str, Any], target: str | None) -> tuple[int, dict[str, Any]]:
        """Until the arbiter names a new primary at a newer epoch and that
        member reports running as primary, in one status snapshot."""
        deadline = self.clock() + PATRONI_WAIT
        while self.clock() < deadline:
            status = self.ask({"type": "status"})
            new = status.get("primary")
            report = (((status.get("nodes") or {}).get(new) or {}).get("report") or {}) if new else {}
            if isinstance(status.get("epoch"), int) and status["epoch"] > before["epoch"] and new != before.get("primary"):
                if target is not None and new != target:
                    return 503, {"error": f"{new} was promoted, not {target}"}
                if report.get("role") == "primary":
                    return 200, {"message": f"Successfully switched over to \"{new}\"", "epoch": status["epoch"]}
            elif status.get("switchover_to") is None and status.get("failover_to") is None:
                return 503, {"error": "the arbiter dropped the request (pgha-ctl history says why)"}
            time.sleep(self.poll)
        return 503, {"error": f"no new primary running within {PATRONI_WAIT:g}s"}


def _plain(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in auth.AUTH_FIELDS + ("type", "v")}


def arbiter_relay(addresses: list[tuple[str, int]], timeout: float = 5.0,
                  tls_context: ssl.SSLContext | None = None, cluster: str | None = None) -> Relay:
    """Send an already-signed request to the leading arbiter unchanged (no
    signing here: the arbiter verifies the operator's own signature); the
    reply's signature answers the operator's nonce, so it is passed on unchecked.
    cluster: this node's; the signature covers the request's "cluster", so
    the relay cannot add it: a request naming another cluster is refused here
    (pgha-ctl --cluster NAME --print-signed names it; one naming none is for
    the arbiter's home cluster, so only a node of the default cluster "main"
    passes it on)."""
    def relay(request: dict[str, Any]) -> dict[str, Any]:
        named = request.get("cluster")
        # Unnamed means the arbiter's home cluster: only a node of the default cluster may pass that on.
        if cluster is not None and (named or clusters.DEFAULT) != cluster:
            return {"type": "error", "error": f"this node is in cluster {cluster}, the request is for "
                                              f"cluster {str(named)[:64]}: send it to a node of that cluster"}
        return arbiter_link.call(addresses, request, timeout=timeout, tls_context=tls_context)
    return relay


def reader_verifier(key_file: str | None, own_name: str) -> auth.Verifier | None:
    """What checks reads of the GUARDED paths: None (open) without a key file;
    an OSError with one line when the file is missing or unsafe."""
    if not key_file:
        return None
    from pgha import keys
    ring = trusted_keys(key_file, "api_cluster_key_file", keys.reader_keys)
    return auth.Verifier(own_name, lambda sender: (ring[sender], READ_TYPES) if sender in ring else None)


def trusted_keys(key_file: str, setting: str, read: Callable[[str], Any]) -> Any:
    """read(key_file) once the file is checked trusted (owner and mode); an
    OSError with one line naming `setting` when it is missing or unsafe."""
    from pgha import files, keys
    try:
        files.check_trusted(key_file, "key file")
        return read(key_file)
    except keys.KeyFileError as exc:
        raise OSError(f"{setting}: {exc}") from None


def start(host: str | None, port: int, state: StatePublisher, relay: Relay | None = None,
          reader: auth.Verifier | None = None, patroni: PatroniWrites | None = None) -> ApiServer | None:
    """Start the REST API, or return None when it is disabled (no host)."""
    if not host:
        return None
    try:
        server = ApiServer(host, port, state, relay, reader, patroni)
    except OSError as exc:
        raise OSError(f"REST API cannot listen on {host}:{port}: {exc.strerror or exc} "
                      "(settings api_bind, api_port)") from None
    server.start()
    log.info("REST API on http://%s:%d/ (health checks, /metrics)", host, port)
    return server
