"""Leases: the primary's two, and the standby's side of the node-to-node one.

A primary may run only while it holds an unexpired lease, from the arbiter
or from the standby (ha-model.md, invariant 2). Lease time runs on the
holder's monotonic clock from the moment it *sent* the request that was
granted, so a lease can only look shorter to its holder than to its
grantor, never longer.

Threads: Leases is renewed by the HA loop (the arbiter's lease) and the
"lease-renewer" thread (the standby's), and read by the watchdog; Grants is
written by the "peer-server" thread and the HA loop. Each holds its own
lock; neither writes the node's memory (pgha/node_memory.py), which the
renewer and the peer server only read (the instruction, the timings).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from pgha import auth, logs
from pgha import protocol, requests

if TYPE_CHECKING:     # ssl only in annotations: it loads OpenSSL (~4 MB), see pgha/tls.py
    import ssl

log = logs.get("lease")


class Leases:
    """The primary's view: when each lease runs out (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_renew: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.on_renew = on_renew    # the node moves its fencer to the new deadline
        # "grace": a restarted daemon's one lease period for a PostgreSQL it
        # found running as primary. Not granted by anyone, so never handed to
        # the fencer (see deadline()).
        self._until = {"arbiter": 0.0, "standby": 0.0, "grace": 0.0}
        self._lock = threading.Lock()

    def renew(self, source: str, sent_at: float, duration: float) -> None:
        with self._lock:
            self._until[source] = max(self._until[source], sent_at + duration)
        if self.on_renew is not None:
            self.on_renew()

    def remaining(self, source: str) -> float:
        return max(0.0, self._until[source] - self.clock())

    def deadline(self) -> float:
        """When the last lease actually granted runs out (monotonic seconds;
        in the past when none is held): what the fencer enforces."""
        return max(self.until().values())

    def until(self) -> dict[str, float]:
        """When each granted lease runs out (monotonic seconds), for the REST API."""
        with self._lock:
            return {source: self._until[source] for source in ("arbiter", "standby")}

    def held(self) -> bool:
        return self.held_until() > self.clock()

    def held_until(self) -> float:
        """When the last lease of any kind, grace included, runs out: when
        the watchdog must look again."""
        with self._lock:
            return max(self._until.values())


# The standby reports a grant as outstanding this long past its end, so the
# arbiter's "no grant" covers what the failover margin covers on the arbiter
# lease: the two hosts' clock rates (1000 ppm of a 1.8 s lease is 2 ms) and
# the fencer's reaction at the holder's lease end (docs/ha-model.md, Timings).
GRANT_TAIL = 0.1


class Grants:
    """The standby's side: grants the primary a lease while it can hear it.

    Before reporting "no grant outstanding" to the arbiter the standby stops
    granting (pause), and resumes only when the arbiter's reply keeps it a
    standby. So once the arbiter has seen "no grant", the old primary can
    never get a new lease from this standby behind the arbiter's back.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._until = 0.0
        self._paused = False
        self._allowed: tuple[str, int] | None = None     # (primary name, epoch) we may grant to, from the arbiter

    def assume_granted(self, duration: float, since: float | None = None) -> None:
        """A restarted daemon: the one before it may have granted a lease
        just before it died, and the primary may still hold it. Count it
        outstanding for `duration` (the lease time last heard) from now (or
        from `since`, the daemon's start, once the lease is heard), so
        the arbiter hears "no grant" only once that grant has surely run
        out (found by the Spin model and the simulation, docs/ha-model.md)."""
        with self._lock:
            self._until = max(self._until, (self.clock() if since is None else since) + duration)

    def follow(self, primary: str, epoch: int) -> None:
        """The arbiter says: stay standby of `primary` at `epoch`; grants may resume."""
        with self._lock:
            self._allowed = (primary, epoch)
            self._paused = False

    def stop(self) -> None:
        """We are no longer anyone's standby: grant nothing."""
        with self._lock:
            self._allowed = None
            self._paused = True

    def request(self, node: str, epoch: int, duration: float) -> tuple[bool, str | None]:
        with self._lock:
            if self._paused:
                return False, "grants paused until the arbiter confirms the primary"
            if self._allowed != (node, epoch):
                return False, f"not a standby of {node} at epoch {epoch}"
            self._until = max(self._until, self.clock() + duration)
            return True, None

    def allowed_primary(self) -> str | None:
        """The primary the arbiter told us to follow, if any."""
        with self._lock:
            return self._allowed[0] if self._allowed else None

    def remaining_for_report(self) -> float:
        """Seconds of grant outstanding, GRANT_TAIL included; at zero, pause
        grants before saying so."""
        with self._lock:
            remaining = max(0.0, self._until + GRANT_TAIL - self.clock()) if self._until else 0.0
            if remaining == 0.0:
                self._paused = True
            return remaining


class _PeerHandler(protocol.LineHandler):
    server: PeerServer

    def answer(self, request: requests.Request) -> dict[str, Any]:
        if not isinstance(request, requests.Lease):
            raise protocol.ProtocolError(f"the lease link does not serve "
                                         f"{requests.kind_of_request(request).name!r}")
        granted, reason = self.server.grants.request(request.node, request.epoch, self.server.duration())
        return {"type": "grant", "granted": granted, "reason": reason}


class PeerServer(protocol.LineServer):
    idle_timeout = 10.0

    def __init__(self, host: str, port: int, grants: Grants, duration: Callable[[], float],
                 verifier: auth.Verifier | None = None) -> None:
        self.grants = grants
        self.duration = duration    # callable: the cluster's lease time, from the arbiter
        # peer_verifier: only the other node, as itself, with the pair key.
        # None only in tests of other behaviour: the node always passes one.
        self.verifier = verifier
        super().__init__((host, port), _PeerHandler)

    def is_member(self, request: requests.Request) -> bool:
        """A lease request from the primary we follow earns a member's slot."""
        return isinstance(request, requests.Lease) and request.node == self.grants.allowed_primary()


def peer_verifier(own_name: str, pair_keys: auth.Keys,
                  partner: Callable[[], str | None] | None = None) -> auth.Verifier:
    """The lease link's verifier. The pair key is shared by the two nodes,
    so it cannot tell one name from another: with `partner` (the node daemon
    passes Grants.allowed_primary) only the one member the arbiter named as
    this standby's primary is heard at all; any other name a pair-key holder
    claims is refused as an unknown sender (issue 19)."""
    lookup = auth.peer_lookup(own_name, pair_keys)
    if partner is None:
        return auth.Verifier(own_name, lookup)

    def bound(sender: str) -> tuple[auth.Keys, frozenset[str]] | None:
        return lookup(sender) if sender == partner() else None
    return auth.Verifier(own_name, bound)


def peer_credential(own_name: str, pair_keys: auth.Keys) -> auth.Credential:
    """What the primary signs lease requests with; grants must come from the other pair-key holder."""
    return auth.Credential(own_name, pair_keys, server=None)


class LeaseRenewer(threading.Thread):
    """On the primary: asks the standby for a lease every heartbeat."""

    def __init__(self, name: str, leases: Leases,
                 target: Callable[[], tuple[str, int, int, float] | None],
                 interval: Callable[[], float], credential: auth.Credential | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__(daemon=True, name="lease-renewer")
        self.node_name = name
        self.credential = credential
        self.tls_context = tls_context
        self.leases = leases
        self.target = target        # callable -> (host, port, epoch, duration) or None
        self.interval = interval    # callable -> seconds
        self._stop = threading.Event()
        self._conn: protocol.Connection | None = None
        self._address: tuple[str, int] | None = None

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._renew_once()
            self._stop.wait(max(0.0, self.interval() - (time.monotonic() - started)))

    def _renew_once(self) -> None:
        target = self.target()
        if target is None:
            return
        host, port, epoch, duration = target
        if self._conn is None or self._address != (host, port):
            if self._conn:
                self._conn.close()
            self._conn = protocol.Connection(host, port, timeout=min(1.0, duration / 3),
                                             credential=self.credential, tls_context=self.tls_context,
                                             name=f"the standby at {host}:{port}")
            self._address = (host, port)
        sent_at = time.monotonic()
        try:
            reply = self._conn.request({"type": "lease", "node": self.node_name, "epoch": epoch})
        except (OSError, protocol.ProtocolError):
            return
        if reply.get("type") == "grant" and reply.get("granted"):
            self.leases.renew("standby", sent_at, duration)

    @property
    def clock_skew(self) -> float | None:
        """The standby's wall clock minus ours, s, as its last grant showed."""
        conn = self._conn
        return None if conn is None else conn.clock.skew

    def stop(self) -> None:
        self._stop.set()
