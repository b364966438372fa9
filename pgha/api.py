"""The node's REST API: Patroni's health-check paths and status codes,
the node and cluster as JSON, role history and Prometheus metrics.

A threaded HTTP server in the node daemon. Every answer is computed from
the HA loop's last published snapshot (node_state.StatePublisher) by the
pure functions in health.py and metrics.py: it never waits on PostgreSQL,
and on the arbiter only when its last status is too old to use (the
node_state.ClusterWatcher asks the arbiter only while the API is read).
GET, HEAD and OPTIONS (HAProxy's default check method) are served, and
POST on the operator's paths (RELAYED); anything else is 405. Each
connection closes after one answer, a silent client is dropped after
REQUEST_TIMEOUT, and at most MAX_CLIENTS are served at once.

POST /switchover, /reload, /pause, /resume, /failover: the node holds no
operator key, so it cannot sign. The body must be the operator-signed
request itself (one JSON object, e.g. from pgha.ctl --print-signed or any
client holding operator.keys) whose "type" is the path's name; the node
relays it unchanged to the arbiter, which verifies it, and answers with the
arbiter's reply: 200 when it is ok, 403 when the signature was refused, 409
for any other refusal, 503 when the arbiter is unreachable.
"""
from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from pgha import arbiter_link, auth, clusters, health, logs, metrics, protocol
from pgha.node_state import StatePublisher
from pgha.serve import WakeOnShutdown

if TYPE_CHECKING:     # ssl only in annotations: it loads OpenSSL (~4 MB), see pgha/tls.py
    import ssl

log = logs.get("api")

REQUEST_TIMEOUT = 5.0
MAX_CLIENTS = 32
JSON_TYPE = "application/json"
RELAYED = frozenset({"switchover", "reload", "pause", "resume", "failover"})   # POST /<type>

# Sends one already-signed request to the arbiter and returns its reply.
Relay = Callable[[dict[str, Any]], dict[str, Any]]


class ApiServer(WakeOnShutdown, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, state: StatePublisher, relay: Relay | None = None) -> None:
        self.state = state
        self.relay = relay
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A flood gets closed connections, not a thread each.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

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


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    timeout = REQUEST_TIMEOUT          # socket timeout: a slow client cannot hold a thread
    server_version = "pgha"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_OPTIONS(self) -> None:     # HAProxy's `option httpchk` without a method sends OPTIONS
        self._answer(head=False)

    def _not_allowed(self) -> None:
        allowed = "GET, HEAD, OPTIONS" + (", POST" if self.server.relay is not None else "")
        body = json.dumps({"error": f"only {allowed} are served"
                           + (" (POST on /" + ", /".join(sorted(RELAYED)) + ")" if self.server.relay else "")})
        self._send(405, JSON_TYPE, (body + "\n").encode(), head=False, extra={"Allow": allowed})

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def do_POST(self) -> None:
        kind = urllib.parse.urlsplit(self.path).path.strip("/")
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
            return self._json(400, {"error": f"POST /{kind} relays a {kind!r} request, the body holds "
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
        if path in ("/", "/patroni"):
            return self._json(200, health.node_json(snapshot, view, now), head)
        if path == "/cluster":
            return self._json(200, health.cluster_json(snapshot, view, now), head)
        if path == "/history":
            return self._json(200, health.history_json(state.history.events()), head)
        check = health.check_for(path)
        if check is None:
            return self._json(404, {"error": f"no such path: {path[:80]}"}, head)
        try:
            max_lag = health.query_lag(query)
        except ValueError as exc:
            return self._json(400, {"error": str(exc)}, head)
        ok = check(snapshot, view, now, max_lag)
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


def start(host: str | None, port: int, state: StatePublisher, relay: Relay | None = None) -> ApiServer | None:
    """Start the REST API, or return None when it is disabled (no host)."""
    if not host:
        return None
    try:
        server = ApiServer(host, port, state, relay)
    except OSError as exc:
        raise OSError(f"REST API cannot listen on {host}:{port}: {exc.strerror or exc} "
                      "(settings api_bind, api_port)") from None
    server.start()
    log.info("REST API on http://%s:%d/ (health checks, /metrics)", host, port)
    return server
