"""Which of several arbiter processes acts: an etcd lease on a leader key.

Each arbiter campaigns for <prefix>/<cluster>/leader: a transaction creates
the key (value: the address nodes should use) only if it does not exist,
attached to a lease of `ttl` seconds that the winner keeps alive. The key's
create_revision names the term; EtcdStore's writes compare it (a deposed
arbiter's write fails in etcd itself).

When does a leader stop? etcd expires a lease no sooner than ttl seconds
after it last received a keep-alive (or the grant), and the key goes with it;
only then can another arbiter create the key. This arbiter measures from
*before* it sent that request (`sent`), so by its own monotonic clock the
lease cannot have expired before sent + ttl. It acts only while
now < sent + ttl - safety; the safety margin covers clock rate differences
between this host and etcd's leader and the time between checking
term() and the reply leaving. So the old leader has stopped acting before
the new one can start (docs/ha-model.md, "Several arbiters").
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from pgha import logs
from pgha.etcd_client import EtcdClient, EtcdUnavailable, compare_create_revision, put, range_of

log = logs.get("arbiter")


class Leadership:
    """The etcd LeaderElection (pgha.election)."""

    def __init__(self, client: EtcdClient, key: str, address: str, ttl: int,
                 clock: Callable[[], float] = time.monotonic, record: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.key = key
        self.address = address          # "host:port" nodes reach this arbiter at
        self.ttl = ttl
        self.safety = max(0.25, ttl / 4)
        self.renew_every = ttl / 6
        self.clock = clock
        self.record = record            # told "start <term>" / "end <term>" (tests check intervals)
        self._lock = threading.Lock()
        self._lease = 0
        self._term: int | None = None   # create_revision of our leader key while we lead
        self._valid_until = 0.0
        self._leader_hint: str | None = None
        self.store_problem: str | None = None     # the last etcd failure, for status
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the arbiter asks ------------------------------------------------------------

    def term(self) -> int | None:
        """This arbiter's term while it may act as leader, else None."""
        with self._lock:
            if self._term is not None and self.clock() < self._valid_until:
                return self._term
            return None

    def leader_hint(self) -> str | None:
        """The address of the arbiter that leads, as last seen (this one's when it leads)."""
        with self._lock:
            if self._term is not None and self.clock() < self._valid_until:
                return self.address
            return self._leader_hint

    # -- the campaign ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Step down now (revoke the lease) so another arbiter need not wait a TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            lease, term = self._lease, self._term
            self._term, self._lease = None, 0
        if term is not None:
            self._ended(term, "stopping")
        if lease:
            try:
                self.client.lease_revoke(lease)
            except EtcdUnavailable:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.store_problem = None
            except EtcdUnavailable as exc:
                self.store_problem = str(exc)
                self._expire_if_due()
            self._stop.wait(self.renew_every)

    def step(self) -> None:
        """One round: renew our lease, or try to take the key."""
        with self._lock:
            lease, term = self._lease, self._term
        if term is not None:
            self._renew(lease, term)
        else:
            self._campaign()

    def _renew(self, lease: int, term: int) -> None:
        sent = self.clock()
        remaining = self.client.lease_keepalive(lease)
        kv = self.client.get(self.key) if remaining > 0 else None
        if remaining <= 0 or kv is None or kv.create_revision != term:
            with self._lock:
                self._term, self._lease = None, 0
            self._ended(term, "its lease expired in etcd" if remaining <= 0 else "the leader key changed")
            self._campaign()        # learn who leads now (or lead again, as a new term)
            return
        with self._lock:
            self._valid_until = sent + self.ttl - self.safety

    def _campaign(self) -> None:
        current = self.client.get(self.key)
        if current is not None:
            with self._lock:
                self._leader_hint = current.value.decode(errors="replace") or None
            return
        sent = self.clock()
        lease, granted = self.client.lease_grant(self.ttl)
        if granted > self.ttl:
            # Still safe (this arbiter stops by its own, shorter ttl); but a dead
            # leader is replaced only after `granted` seconds: say so.
            log.warning("arbiter leadership: etcd granted a %ds lease for etcd_lease_ttl %ds (etcd's minimum, "
                        "from its election timeout): a dead leader is replaced after up to %ds",
                        granted, self.ttl, granted)
        result = self.client.txn([compare_create_revision(self.key, 0)], [put(self.key, self.address, lease)],
                                 [range_of(self.key)])
        if not result.succeeded:
            self.client.lease_revoke(lease)
            kvs = result.ranges[0] if result.ranges else ()
            with self._lock:
                self._leader_hint = kvs[0].value.decode(errors="replace") if kvs else None
            return
        with self._lock:
            self._lease, self._term = lease, result.revision
            self._valid_until = sent + self.ttl - self.safety
            self._leader_hint = self.address
        log.warning("arbiter leadership: this arbiter (%s) leads from etcd revision %d (lease ttl %ds)",
                    self.address, result.revision, self.ttl)
        if self.record:
            self.record(f"start {result.revision}")

    def _expire_if_due(self) -> None:
        with self._lock:
            term = self._term
            if term is None or self.clock() < self._valid_until:
                return
            # The lease may have expired in etcd: stop acting; a new term needs a new campaign.
            self._term, self._lease = None, 0
        self._ended(term, f"etcd unreachable for its whole lease ({self.store_problem})")

    def _ended(self, term: int, why: str) -> None:
        log.warning("arbiter leadership: no longer leader (term %d): %s", term, why)
        if self.record:
            self.record(f"end {term}")
