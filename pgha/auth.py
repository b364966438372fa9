"""Who sent a message: HMAC-SHA256 authenticators on every request and reply.

A signed message carries four more fields beside its own:

    "from"   the sender's identity: a node name, "operator", "reader" or
             (on replies) "arbiter"; a node of a cluster other than the
             arbiter's home cluster signs as "CLUSTER/NODE" (pgha.clusters)
    "ts"     the sender's wall-clock time (seconds since the epoch)
    "nonce"  16 random bytes, hex
    "mac"    hex HMAC-SHA256, with the sender's key, of the canonical JSON of
             the whole message without "mac" (sorted keys, no spaces)

A reply also carries "re", the nonce of the request it answers, so a reply
cannot be replayed to another request. Replies are signed with the key the
request was verified with: the addressed member's own key (arbiter port) or
the pair key (lease link).

The receiver checks, in this order, and refuses with AuthError(reason):
known sender; that the sender may send this type (a node only as itself:
message["node"] == message["from"], and on the arbiter port only about its
own cluster, cluster_scope); timestamp within WINDOW of its clock
and not before the server started; MAC valid (hmac.compare_digest, against
each of the sender's keys: current and next, for rotation); nonce not seen.

Why a +-30 s window is safe: inside it every nonce is remembered, so each
message is accepted at most once; outside it the timestamp refuses it. So
the replay cache only needs the nonces of the last 2 * WINDOW seconds:
bounded by the members' own rate (about 240 heartbeats a minute), since only
messages with a valid MAC are remembered. A restarted server has lost its
cache, so it also refuses messages stamped before it started (less
START_SKEW, for clock skew and the millisecond stamps): a node whose clock
runs more than that behind is heard again once its clock passes the
server's start. The window only has to cover clock skew between the hosts
plus transit time.
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pgha import clusters
from pgha.errors import ProtocolError

WINDOW = 30.0                # seconds a timestamp may be off, either way
NONCE_BYTES = 16
MAX_NONCES = 65536           # far above any honest rate; full = refuse, never forget
START_SKEW = 1.0             # a fresh server hears messages stamped this long before it started
AUTH_FIELDS = ("from", "ts", "nonce", "mac")
REPLY_FIELDS = AUTH_FIELDS + ("re",)
FAILED = "authentication failed"     # all a refused client is told

ARBITER = "arbiter"
OPERATOR = "operator"
READER = "reader"
PAIR = "pair"               # keyring entry of the node-to-node key
RESERVED = (ARBITER, OPERATOR, READER, PAIR)

# Message types a sender may only send in its own name: message["node"] == "from".
SELF_TYPES = frozenset({"heartbeat", "lease"})
# Who may send what to the arbiter (a node name maps to NODE_TYPES).
NODE_TYPES = frozenset({"heartbeat", "status", "history"})   # status: the node's REST API shows the cluster
# Every state-changing command (switchover, failover, pause, resume, rebuild, reload) and the reads.
OPERATOR_TYPES = frozenset({"status", "history", "switchover", "failover", "pause", "resume", "rebuild",
                            "reload", "clusters"})
READER_TYPES = frozenset({"status", "history", "clusters"})
PEER_TYPES = frozenset({"lease"})

Keys = tuple[bytes, ...]     # current key first, then the next one during a rotation


class AuthError(ProtocolError):
    """A message that is not authentic; the reason is logged, never sent back.

    `check` names the check that failed (for rate-limited logging: the
    reason's text varies, the check does not)."""

    def __init__(self, reason: str, check: str = "reply") -> None:
        super().__init__(reason)
        self.check = check


def is_member_name(name: str) -> bool:
    """A node name as settings.identifier allows it (bounded, for logs)."""
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_-." for c in name)


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes a MAC covers: the message without "mac", keys sorted."""
    body = {k: v for k, v in message.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode()


def mac(key: bytes, message: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical(message), hashlib.sha256).hexdigest()


def _mac_matches(keys: Keys, message: Mapping[str, Any]) -> bytes | None:
    """The key among `keys` that made message["mac"], or None."""
    given = message.get("mac")
    if not isinstance(given, str):
        return None
    body = canonical(message)
    for key in keys:
        if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), given):
            return key
    return None


def _stamp(identity: str, key: bytes, message: Mapping[str, Any], clock: Callable[[], float],
           **extra: Any) -> dict[str, Any]:
    signed = {k: v for k, v in message.items() if k not in REPLY_FIELDS}
    signed.update(extra, **{"from": identity, "ts": round(clock(), 3), "nonce": secrets.token_hex(NONCE_BYTES)})
    signed["mac"] = mac(key, signed)
    return signed


def strip(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message without its authenticator (what the application sees)."""
    return {k: v for k, v in message.items() if k not in REPLY_FIELDS}


def short(value: Any, limit: int = 40) -> str:
    """A client-supplied value for a log line: repr, truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- the client side ------------------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """What a client signs with: its identity and keys (current first).

    `server` is the identity the replies must come from: "arbiter", or None
    on the lease link (any holder of the pair key but ourselves)."""
    identity: str
    keys: Keys
    server: str | None = ARBITER
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError(f"credential {self.identity!r} has no key")

    def __repr__(self) -> str:          # never show the keys
        return f"Credential({self.identity!r}, {len(self.keys)} key(s), server={self.server!r})"

    def sign(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return _stamp(self.identity, self.keys[0], message, self.clock)

    def check_reply(self, reply: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """The reply without its authenticator, or AuthError.

        An unsigned error reply is passed on as an error: it cannot make the
        client act, and a server that refused us cannot sign for us."""
        if "mac" not in reply and reply.get("type") == "error":
            return strip(reply)
        sender = reply.get("from")
        if self.server is None:
            if not isinstance(sender, str) or sender == self.identity:
                raise AuthError(f"reply from {short(sender)}, not from the peer")
        elif sender != self.server:
            raise AuthError(f"reply from {short(sender)}, not from {self.server}")
        if reply.get("re") != request.get("nonce"):
            raise AuthError("reply does not answer this request (nonce mismatch)")
        if _mac_matches(self.keys, reply) is None:
            raise AuthError(f"reply from {short(sender)} has no valid MAC")
        return strip(reply)


# -- the server side ------------------------------------------------------------------------

@dataclass(frozen=True)
class Sender:
    """A verified request's sender: who, the key that proved it, and the
    nonce the reply must bind."""
    identity: str
    key: bytes
    nonce: str

    def __repr__(self) -> str:
        return f"Sender({self.identity!r})"


# identity -> (keys, message types it may send), or None for a stranger
Lookup = Callable[[str], "tuple[Keys, frozenset[str]] | None"]
# (sender, message) -> why the sender may not say this, or None: what a
# known sender may speak for (a node only in its own name and cluster).
Scope = Callable[[str, Mapping[str, Any]], "str | None"]


def own_name_scope(sender: str, message: Mapping[str, Any]) -> str | None:
    """SELF_TYPES only in the sender's own name (the lease link)."""
    kind = message.get("type")
    if kind in SELF_TYPES and message.get("node") != sender:
        return f"{sender} sent {kind} in the name of {short(message.get('node'))}"
    return None


def cluster_scope(members: Mapping[str, tuple[str, str]], home: str) -> Scope:
    """On the arbiter port (pgha.clusters): a node's key id names one
    (cluster, node); it speaks only about that cluster (a message without
    "cluster" is about `home`), and SELF_TYPES only in that node's name.
    The operator and the reader speak for every cluster."""
    def scope(sender: str, message: Mapping[str, Any]) -> str | None:
        bound = members.get(sender)
        if bound is None:
            return None
        cluster, node = bound
        named = clusters.addressed(message.get("cluster"), home)
        kind = message.get("type")
        if named != cluster:
            return f"{sender} (of cluster {cluster}) sent {short(kind)} for cluster {short(named)}"
        if kind in SELF_TYPES and message.get("node") != node:
            return f"{sender} sent {kind} in the name of {short(message.get('node'))}"
        return None
    return scope


class Verifier:
    """Checks requests for one server and signs its replies."""

    def __init__(self, identity: str, lookup: Lookup, window: float = WINDOW,
                 clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES,
                 scope: Scope | None = None) -> None:
        self.identity = identity
        self.lookup = lookup
        self.scope = scope or own_name_scope
        self.window = window
        self.clock = clock
        self.started = clock()
        self.max_nonces = max_nonces
        self._seen: dict[str, float] = {}          # nonce -> when it may be forgotten
        self._expiry: list[tuple[float, str]] = []  # heap of the same
        self._lock = threading.Lock()

    def verify(self, message: Mapping[str, Any]) -> Sender:
        sender = message.get("from")
        if not isinstance(sender, str):
            raise AuthError("no sender ('from')", "malformed")
        entry = self.lookup(sender)
        if entry is None:
            raise AuthError(f"unknown sender {short(sender)}", "unknown sender")
        keys, allowed = entry
        kind = message.get("type")
        if not isinstance(kind, str) or kind not in allowed:
            raise AuthError(f"{sender} may not send {short(kind)}", "not permitted")
        problem = self.scope(sender, message)
        if problem:
            raise AuthError(problem, "mis-attributed")
        ts, nonce = message.get("ts"), message.get("nonce")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise AuthError(f"{sender}: no timestamp", "malformed")
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
            raise AuthError(f"{sender}: no nonce", "malformed")
        now = self.clock()
        if not abs(now - ts) <= self.window:    # also refuses NaN
            raise AuthError(f"{sender}: timestamp {ts - now:+.1f}s off our clock (window {self.window:.0f}s)", "stale")
        if ts < self.started - START_SKEW:
            raise AuthError(f"{sender}: stamped before this server started (a replay, or a clock behind)",
                            "stale")
        key = _mac_matches(keys, message)
        if key is None:
            raise AuthError(f"{sender}: bad MAC", "bad mac")
        self._remember(sender, nonce, ts, now)
        return Sender(sender, key, nonce)

    def _remember(self, sender: str, nonce: str, ts: float, now: float) -> None:
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.pop(heapq.heappop(self._expiry)[1], None)
            if nonce in self._seen:
                raise AuthError(f"{sender}: replayed nonce", "replay")
            if len(self._seen) >= self.max_nonces:
                raise AuthError(f"{sender}: replay cache full", "cache full")
            forget_at = ts + self.window       # after that the timestamp refuses it anyway
            self._seen[nonce] = forget_at
            heapq.heappush(self._expiry, (forget_at, nonce))

    def sign_reply(self, reply: Mapping[str, Any], sender: Sender) -> dict[str, Any]:
        return _stamp(self.identity, sender.key, reply, self.clock, re=sender.nonce)


# -- who may say what ------------------------------------------------------------------------

def arbiter_lookup(keyring: Mapping[str, Keys], nodes: Sequence[str]) -> Lookup:
    """On the arbiter port: each node (by its key id, pgha.clusters) heartbeats
    as itself; the operator commands; the reader (if it has a key) reads status."""
    table: dict[str, tuple[Keys, frozenset[str]]] = {}
    for node in nodes:
        table[node] = (keyring[node], NODE_TYPES)
    table[OPERATOR] = (keyring[OPERATOR], OPERATOR_TYPES)
    if keyring.get(READER):
        table[READER] = (keyring[READER], READER_TYPES)
    return table.get


def peer_lookup(own_name: str, pair_keys: Keys) -> Lookup:
    """On a node's lease link: the other node (any holder of the pair key
    but ourselves) asks for leases in its own name."""
    def lookup(sender: str) -> tuple[Keys, frozenset[str]] | None:
        stranger = sender == own_name or sender in RESERVED or not is_member_name(sender)
        return None if stranger else (pair_keys, PEER_TYPES)
    return lookup
