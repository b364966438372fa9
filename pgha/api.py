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
POST on the operator's paths (RELAYED); anything else is 405. Each
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
/config, as Patroni's): the node holds no operator key, so it cannot sign. The body must be the operator-signed
request itself (one JSON object, e.g. from pgha.ctl --print-signed or any
client holding operator.keys) whose "type" is the path's name; the node
relays it unchanged to the arbiter, which verifies it, and answers with the
arbiter's reply: 200 when it is ok, 403 when the signature was refused, 409
for any other refusal, 503 when the arbiter is unreachable.
"""
from __future__ import annotations

import io
import json
import selectors
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from pgha import arbiter_link, auth, clusters, health, limits, logs, metrics, protocol, requests
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
                 "/config": health.config_json, "/history": lambda s, v, now: health.history_json(s)}

# Sends one already-signed request to the arbiter and returns its reply.
Relay = Callable[[dict[str, Any]], dict[str, Any]]


class ApiServer(Admitting, WakeOnShutdown, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = limits.LISTEN_BACKLOG
    warn_log = log

    def __init__(self, host: str, port: int, state: StatePublisher, relay: Relay | None = None,
                 reader: auth.Verifier | None = None) -> None:
        self.state = state
        self.relay = relay
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
        allowed = "GET, HEAD, OPTIONS" + (", POST, PATCH" if self.server.relay is not None else "")
        body = json.dumps({"error": f"only {allowed} are served"
                           + (" (POST on /" + ", /".join(sorted(RELAYED)) + "; PATCH on /config)"
                              if self.server.relay else "")})
        self._send(405, JSON_TYPE, (body + "\n").encode(), head=False, extra={"Allow": allowed})

    do_PUT = do_DELETE = _not_allowed

    def do_POST(self) -> None:
        self._relay(urllib.parse.urlsplit(self.path).path.strip("/"))

    def do_PATCH(self) -> None:     # Patroni's way to change /config
        kind = urllib.parse.urlsplit(self.path).path.strip("/")
        self._relay(kind) if kind == "config" else self._not_allowed()

    def _relay(self, kind: str) -> None:
        """Relay the operator-signed request in the body, of type `kind`, to the arbiter."""
        if kind not in RELAYED or self.server.relay is None:
            return self._not_allowed()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(411, {"error": "a POST needs a Content-Length"}, False)
        if not 0 < length <= protocol.MAX_FRAME:
            return self._json(413, {"error": f"the body must hold 1 to {protocol.MAX_FRAME} bytes"}, False)
        try:
            request = protocol.decode(self.rfile.read(length).strip())
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
            filters = health.Filters.from_query(query)
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
    from pgha import files, keys
    try:
        files.check_trusted(key_file, "key file")
        ring = keys.reader_keys(key_file)
    except keys.KeyFileError as exc:
        raise OSError(f"api_cluster_key_file: {exc}") from None
    return auth.Verifier(own_name, lambda sender: (ring[sender], READ_TYPES) if sender in ring else None)


def start(host: str | None, port: int, state: StatePublisher, relay: Relay | None = None,
          reader: auth.Verifier | None = None) -> ApiServer | None:
    """Start the REST API, or return None when it is disabled (no host)."""
    if not host:
        return None
    try:
        server = ApiServer(host, port, state, relay, reader)
    except OSError as exc:
        raise OSError(f"REST API cannot listen on {host}:{port}: {exc.strerror or exc} "
                      "(settings api_bind, api_port)") from None
    server.start()
    log.info("REST API on http://%s:%d/ (health checks, /metrics)", host, port)
    return server
