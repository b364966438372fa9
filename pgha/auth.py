"""Who sent a message: HMAC-SHA256 authenticators on every request and reply.

A signed message carries four more fields beside its own, and two optional ones:

    "from"   the sender's identity: a node name, "operator", "reader" or
             (on replies) "arbiter"; a node of a cluster other than the
             arbiter's home cluster signs as "CLUSTER/NODE" (pgha.clusters)
    "ts"     the time on the receiver's wall clock, as the sender knows it
             (seconds since the epoch): its own wall clock until it has heard
             the receiver, then the receiver's (ServerClock, below)
    "wall"   the sender's own wall clock (optional; only reported, as skew)
    "sid"    on a reply: the server's instance id (random, new at each
             start); on a request, optional: the last one the sender heard
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
A request that carries this server's "sid" is exempt from the start check:
it can only have been signed after its sender heard this server instance.

Why a +-30 s window is safe: inside it every nonce is remembered, so each
message is accepted at most once; outside it the timestamp refuses it. So
the replay cache only needs the nonces of the last 2 * WINDOW seconds:
bounded by the members' own rate (about 240 heartbeats a minute), since only
messages with a valid MAC are remembered. A restarted server has lost its
cache, so it also refuses messages stamped before it started (less
START_SKEW, for the millisecond stamps), unless they carry its "sid" (which
no message signed before it started can). The window only has to cover
the error of the sender's estimate of the server's clock plus transit time.

Why the members' wall clocks need not agree (ServerClock): a client stamps
its requests on the *server's* clock, which it learns from every signed
reply (its "ts", bound to our request by "re" and the MAC, so nobody but the
key's holder can set it) and carries forward on its own monotonic clock. A
request whose timestamp the server refuses but whose MAC is valid gets a
signed refusal (CLOCK_REFUSED) carrying the server's time: the client learns
it and sends again at once, on a new connection. So a member whose wall clock
is off by minutes, or steps, is heard within one round trip, and a restarted
server hears it at once; replays stay refused exactly as before (the window,
the start time and the nonces are all on the server's own clock). The skew
itself (the sender's "wall" against the server's clock, and the server's
"ts" against the client's) is reported on both sides: SKEW_NOTICE.
"""
from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pgha import clusters, requests
from pgha.errors import ProtocolError

WINDOW = 30.0                # seconds a timestamp may be off, either way
NONCE_BYTES = 16
MAX_NONCES = 65536           # far above any honest rate; full = refuse, never forget
START_SKEW = 1.0             # a fresh server hears messages stamped this long before it started
SKEW_NOTICE = 1.0            # a clock skew this large is logged and shown
CLOCK_REFUSED = "timestamp outside the server's window"   # the signed refusal: learn its "ts"
AUTH_FIELDS = ("from", "ts", "wall", "nonce", "mac")
REPLY_FIELDS = AUTH_FIELDS + ("re", "sid")
FAILED = "authentication failed"     # all a refused client is told

ARBITER = "arbiter"
OPERATOR = "operator"
READER = "reader"
PAIR = "pair"               # keyring entry of the node-to-node key
RESERVED = (ARBITER, OPERATOR, READER, PAIR)

# Who may send what, from the table of request kinds (pgha.requests).
SELF_TYPES = requests.OWN_NAME          # only in the sender's own name: message["node"] == "from"
NODE_TYPES = requests.sent_by(requests.NODE)    # status: the node's REST API shows the cluster
OPERATOR_TYPES = requests.sent_by(requests.OPERATOR)
READER_TYPES = requests.sent_by(requests.READER)
PEER_TYPES = requests.sent_by(requests.PEER)

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
    if "wall" in signed:
        signed["wall"] = round(signed["wall"], 3)
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

    def sign(self, message: Mapping[str, Any], server_clock: ServerClock | None = None) -> dict[str, Any]:
        """Stamped on `server_clock` once it has heard the server, with our own
        wall clock as "wall"; without one, on our clock (self.clock)."""
        if server_clock is None:
            return _stamp(self.identity, self.keys[0], message, self.clock)
        extra = {} if server_clock.sid is None else {"sid": server_clock.sid}
        return _stamp(self.identity, self.keys[0], message, server_clock.now, wall=self.clock(), **extra)

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


def skew_text(skew: float, other: str) -> str:
    """'clock skew of +60.0 s with X (its clock is ahead of ours)': skew is
    the other's clock minus ours."""
    way = "ahead of" if skew > 0 else "behind"
    return f"clock skew of {skew:+.1f} s with {other} (its clock is {way} ours)"


class ServerClock:
    """A client's view of one server's wall clock, for stamping requests.

    Learned from each authenticated reply (its "ts", at the midpoint of the
    round trip, error at most half of it) and carried forward on our
    monotonic clock, so a step of our own wall clock changes nothing. Until
    it has heard the server, it is our wall clock. `skew`: the server's wall
    clock minus ours (None until heard)."""

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self._offset: float | None = None      # server wall time - our monotonic time
        self.skew: float | None = None
        self.noted = False                     # a skew past SKEW_NOTICE was logged (Connection)
        self.sid: str | None = None            # the server instance's id, from its last reply

    def now(self) -> float:
        offset = self._offset
        return self.wall() if offset is None else self.monotonic() + offset

    def marks(self) -> tuple[float, float]:
        """(monotonic, wall) now: taken before sending and after the reply."""
        return self.monotonic(), self.wall()

    def learn(self, reply: Mapping[str, Any], sent: tuple[float, float], received: tuple[float, float]) -> None:
        """Take the server's "ts" and "sid" from a reply whose MAC was verified."""
        sid, server_ts = reply.get("sid"), reply.get("ts")
        if isinstance(sid, str) and len(sid) <= 64:
            self.sid = sid
        if isinstance(server_ts, bool) or not isinstance(server_ts, (int, float)) or not math.isfinite(server_ts):
            return
        self._offset = server_ts - (sent[0] + received[0]) / 2
        self.skew = server_ts - (sent[1] + received[1]) / 2


# -- the server side ------------------------------------------------------------------------

@dataclass(frozen=True)
class Sender:
    """A verified request's sender: who, the key that proved it, the nonce
    the reply must bind, and its clock's skew from ours if it told us ("wall")."""
    identity: str
    key: bytes
    nonce: str
    skew: float | None = None

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


class ClockRefused(AuthError):
    """An authentic request (valid MAC) whose timestamp is outside the window
    or before the server started: answered with a signed CLOCK_REFUSED, whose
    "ts" tells the sender our time (ServerClock). Nothing is remembered."""

    def __init__(self, reason: str, sender: Sender) -> None:
        super().__init__(reason, "stale")
        self.sender = sender


class Verifier:
    """Checks requests for one server and signs its replies.

    skews: sender -> its clock's skew from ours, from the last authentic
    request that said ("wall"), or from a refused timestamp."""

    def __init__(self, identity: str, lookup: Lookup, window: float = WINDOW,
                 clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES,
                 scope: Scope | None = None) -> None:
        self.identity = identity
        self.lookup = lookup
        self.scope = scope or own_name_scope
        self.window = window
        self.clock = clock
        self.started = clock()
        self.sid = secrets.token_hex(8)     # this instance: replies carry it, requests may echo it
        self.max_nonces = max_nonces
        self.skews: dict[str, float] = {}
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
        wall = message.get("wall")
        if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))):
            raise AuthError(f"{sender}: 'wall' is not a time", "malformed")
        now = self.clock()
        if not abs(now - ts) <= self.window:    # also refuses NaN
            stale = f"timestamp {ts - now:+.1f}s off our clock (window {self.window:.0f}s)"
        elif ts < self.started - START_SKEW and message.get("sid") != self.sid:
            stale = "stamped before this server started (a replay, or a clock behind)"
        else:
            stale = None
        key = _mac_matches(keys, message)
        if key is None:
            raise AuthError(f"{sender}: {stale or 'bad MAC'}", "stale" if stale else "bad mac")
        skew = _skew(wall if wall is not None else ts, now)
        if stale:   # not kept: a replayed old message must not set the skew shown
            raise ClockRefused(f"{sender}: {stale}", Sender(sender, key, nonce, skew))
        if skew is not None:
            self.skews[sender] = skew
        self._remember(sender, nonce, ts, now)
        return Sender(sender, key, nonce, skew)

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
        return _stamp(self.identity, sender.key, reply, self.clock, re=sender.nonce, sid=self.sid)


def _skew(their_time: float, now: float) -> float | None:
    """Their clock minus ours, rounded to 0.1 s; None if not a finite time."""
    skew = their_time - now
    return round(skew, 1) if abs(skew) < 1e12 else None


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
