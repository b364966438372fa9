"""The arbiter's decision in etcd (state_backend = "etcd").

One key per cluster, <prefix>/<cluster>/state, holding the same JSON as the
state file. save() is a compare-and-set like FileStore's: it reads the key,
checks the stored epoch, and writes in one etcd transaction that compares the
key's mod_revision with the one it read, so a write that raced it fails and is
retried against the new content (at most a few times), never overwritten.

guard: when the arbiter runs with leadership (pgha.leadership), every write
also compares the leader key's create_revision with this arbiter's term: an
arbiter that lost its leadership (even one that does not know it yet, e.g.
frozen) cannot write a decision. That comparison is etcd's, not the clock's.

Event history: one key per event under <prefix>/<cluster>/history/, named
by the wall time in nanoseconds (and a random suffix), so a range read in
key order is the history in time order; once more than 2 * HISTORY_KEEP
events are kept, the oldest beyond HISTORY_KEEP are deleted.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from pgha.cluster_state import ClusterState
from pgha.etcd_client import (EtcdClient, EtcdUnavailable, b64, compare_create_revision, compare_mod_revision,
                              put, range_of, unb64)
from pgha import store
from pgha.store import StaleStateError, StateStore, StateStoreError, check_state, state_to_stored

Guard = Callable[[], "list[dict[str, Any]] | None"]    # compares to add, None: must not write


def state_key(prefix: str, cluster: str) -> str:
    return f"{prefix.rstrip('/')}/{cluster}/state"


def leader_key(prefix: str, cluster: str) -> str:
    return f"{prefix.rstrip('/')}/{cluster}/leader"


class EtcdStore(StateStore):
    RETRIES = 5     # a concurrent write moved the key; re-read and compare the epoch again

    def __init__(self, client: EtcdClient, prefix: str = "/pgha", cluster: str = "main",
                 guard: Guard | None = None) -> None:
        self.client = client
        self.key = state_key(prefix, cluster)
        self.history_prefix = f"{prefix.rstrip('/')}/{cluster}/history/"
        self.guard = guard
        # (epoch, mod_revision) of the key as this store last read or wrote it:
        # save() compares that revision at once, and reads first only when it moved.
        self._known: tuple[int, int] | None = None
        self._history_count: int | None = None     # counted at the first append, then kept here

    def __str__(self) -> str:
        return f"etcd key {self.key} (endpoints {self.client})"

    def _read(self) -> tuple[ClusterState | None, int]:
        """The stored state and the key's mod_revision (0: no key)."""
        try:
            kv = self.client.get(self.key)
        except EtcdUnavailable as exc:
            raise StateStoreError(f"cannot read {self}: {exc}") from None
        if kv is None:
            self._known = None
            return None, 0
        try:
            value: Any = json.loads(kv.value)
        except ValueError:
            value = kv.value
        state = check_state(value)
        if state is None:
            shown = repr(kv.value) if len(repr(kv.value)) <= 100 else repr(kv.value)[:100] + "..."
            raise StateStoreError(f"{self} is damaged: {' '.join(shown.split())}")
        self._known = (state.epoch, kv.mod_revision)
        return state, kv.mod_revision

    def load(self) -> ClusterState | None:
        return self._read()[0]

    def save(self, new: ClusterState, expected_epoch: int | None) -> None:
        text = json.dumps(state_to_stored(new), sort_keys=True)
        known = self._known if self._known is not None and self._known[0] == expected_epoch else None
        self._known = None
        for _ in range(self.RETRIES):
            if known is not None:
                # The key unchanged since this store saw expected_epoch in it (its
                # mod_revision is compared below): the same check as reading it, one call less.
                revision, known = known[1], None
            else:
                current, revision = self._read()
                found = None if current is None else current.epoch
                if found != expected_epoch:
                    raise StaleStateError(f"{self} holds epoch {found}, expected {expected_epoch}: another "
                                          "writer saved a decision first; not overwriting it")
            guard = [] if self.guard is None else self.guard()
            if guard is None:
                raise StateStoreError(f"not writing {self}: this arbiter is not the leader")
            # mod_revision 0 compares "no key"; the guard's range answers why a failure failed.
            compares = [compare_mod_revision(self.key, revision), *guard]
            try:
                result = self.client.txn(compares, [put(self.key, text)],
                                         [range_of(c_key) for c_key in _keys(guard)])
            except EtcdUnavailable as exc:
                raise StateStoreError(f"cannot write {self}: {exc}") from None
            if result.succeeded:
                self._known = (new.epoch, result.revision)     # the put's revision is the transaction's
                return
            if guard and not _guard_holds(guard, result.ranges):
                raise StateStoreError(f"not writing {self}: this arbiter's leadership ended")
        raise StaleStateError(f"{self} kept changing under {self.RETRIES} attempts: another writer is active; "
                              "not overwriting it")


    # -- history ---------------------------------------------------------------------------

    def append_event(self, event: dict[str, Any]) -> None:
        key = f"{self.history_prefix}{time.time_ns():020d}-{os.urandom(4).hex()}"
        try:
            self.client.txn([], [put(key, json.dumps(event, sort_keys=True))], [])
            keep = store.HISTORY_KEEP
            # Counted once, then kept here (as the file's lines are); counted again
            # before trimming, so another arbiter's appends never make it trim too many.
            count = self._history_count + 1 if self._history_count is not None else None
            if count is None or count > 2 * keep:
                count = int(self._range(count_only=True).get("count", 0))
            self._history_count = count
            if count > 2 * keep:
                oldest = self._range(limit=count - keep, keys_only=True).get("kvs") or []
                if oldest:
                    last = unb64(oldest[-1]["key"]).decode()
                    self.client.post("/kv/deleterange", {"key": b64(self.history_prefix),
                                                         "range_end": b64(last + "\0")})
                    self._history_count = count - len(oldest)
        except (EtcdUnavailable, ValueError, KeyError) as exc:
            raise StateStoreError(f"cannot append to the history in etcd ({self.client}): {exc}") from None

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        try:
            reply = self._range(limit=limit or 0, descending=True)
        except EtcdUnavailable as exc:
            raise StateStoreError(f"cannot read the history in etcd ({self.client}): {exc}") from None
        events = []
        for kv in reversed(reply.get("kvs") or []):
            try:
                event = json.loads(unb64(kv["value"]))
            except (ValueError, KeyError):
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def _range(self, limit: int = 0, descending: bool = False, keys_only: bool = False,
               count_only: bool = False) -> dict[str, Any]:
        end = self.history_prefix[:-1] + chr(ord(self.history_prefix[-1]) + 1)
        body: dict[str, Any] = {"key": b64(self.history_prefix), "range_end": b64(end), "limit": limit,
                                "sort_target": "KEY", "sort_order": "DESCEND" if descending else "ASCEND",
                                "keys_only": keys_only, "count_only": count_only}
        return self.client.post("/kv/range", body)


def _keys(guard: list[dict[str, Any]]) -> list[str]:
    return [unb64(c["key"]).decode() for c in guard]


def _guard_holds(guard: list[dict[str, Any]], ranges: tuple[tuple[Any, ...], ...]) -> bool:
    for compare, kvs in zip(guard, ranges):
        wanted = int(compare["create_revision"])
        if not kvs or kvs[0].create_revision != wanted:
            return False
    return True


def leadership_guard(key: str, term: Callable[[], int | None]) -> Guard:
    """The guard for an arbiter whose term (leader key create_revision) `term()` returns."""
    def guard() -> list[dict[str, Any]] | None:
        revision = term()
        return None if revision is None else [compare_create_revision(key, revision)]
    return guard
