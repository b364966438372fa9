"""An Arbiter that acts only while it leads (several arbiter processes, state
in etcd; pgha.leadership campaigns, pgha.etcd_store keeps the decision).

In front of Arbiter.handle: the kinds pgha.requests marks leader_only
(heartbeat, switchover, failover, pause, resume, rebuild; reload is gated by
the service) are answered only by the leader; the others answer {"type":"error","error":"not the
leader","leader":"host:port"}. Each new term starts as a restarted arbiter
does: the decision re-read from etcd (another leader may have changed it) and
Memory.at_start (the primary may just have renewed its lease: no failover
before lease_time + failover_margin from now). Status is answered by every
arbiter and says who leads and whether the state store answers.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from pgha import decision, logs, requests, store
from pgha.arbiter import Arbiter, StateFileError, scheduled_view
from pgha.election import LeaderElection, not_the_leader

log = logs.get("arbiter")

# Every kind that changes the decision or decides from the memory of heartbeats
# (a follower's memory is stale): from the table of request kinds.
LEADER_ONLY = requests.LEADER_ONLY


class ActingRecord:
    """Appends "<wall time> <event> <term>" lines (start/act/end) to a file, so
    a test can check that no two arbiters ever acted at the same time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, line: str) -> None:
        with self._lock:
            os.write(self._fd, f"{time.time():.6f} {line}\n".encode())


class LeadingArbiter:
    def __init__(self, arbiter: Arbiter, leadership: LeaderElection,
                 record: Callable[[str], None] | None = None) -> None:
        self.arbiter = arbiter
        self.leadership = leadership
        self.record = record
        self.term: int | None = None        # the term this arbiter's state and memory belong to

    @property
    def topology(self) -> Any:
        return self.arbiter.topology

    def handle(self, request: requests.Request) -> dict[str, Any]:
        if isinstance(request, requests.Status):
            return self._status()
        if requests.kind_of_request(request).name not in LEADER_ONLY:
            return self.arbiter.handle(request)
        term = self.leadership.term()
        if term is None:
            return self._not_leader()
        if term != self.term:
            self._start_term(term)
        reply = self.arbiter.handle(request)
        # Checked again after deciding: a term that ended meanwhile sends nothing
        # (its writes were refused by etcd already; this covers lease renewals).
        if self.leadership.term() != term:
            return self._not_leader()
        if self.record:
            self.record(f"act {term}")
        return reply

    def _not_leader(self) -> dict[str, Any]:
        return not_the_leader(self.leadership)

    def _start_term(self, term: int) -> None:
        arbiter = self.arbiter
        with arbiter.lock:
            if arbiter.rebuilding is None:
                state = arbiter.store.load()        # StateStoreError: no answer, retried next heartbeat
                if state is None:
                    raise StateFileError(f"{arbiter.store} holds no decision: start one arbiter with --init "
                                         "(a new cluster) or --rebuild")
                if state.primary not in arbiter.topology:
                    raise StateFileError(f"{arbiter.store} names primary {state.primary!r}, which is not in "
                                         f"'nodes' {list(arbiter.topology.members)}")
                arbiter.state = state
            arbiter.memory = decision.Memory.at_start(arbiter.clock())
            arbiter.timelines = arbiter.timelines_from_history()
        self.term = term
        log.warning("acting as leader from term %d: epoch %s, primary %s; the primary is assumed to have "
                    "just renewed its lease", term, getattr(arbiter.state, "epoch", None),
                    getattr(arbiter.state, "primary", None))

    def _status(self) -> dict[str, Any]:
        term = self.leadership.term()
        problem = self.leadership.store_problem
        if term is not None and term != self.term:
            try:
                self._start_term(term)
            except store.StateStoreError as exc:
                problem = str(exc)
        leading = term is not None and term == self.term
        if leading:
            reply = self.arbiter.handle(requests.Status(None))
        else:
            reply = {"type": "status", "epoch": None, "primary": None, "promotable": False,
                     "promotable_members": [], "nodes": {},
                     "switchover_to": None, "leader": self.leadership.leader_hint()}
            try:
                state = self.arbiter.store.load()
                if state is not None:
                    reply.update(epoch=state.epoch, primary=state.primary, **state.promotable_view(),
                                 **state.config_view(), switchover_scheduled=scheduled_view(state, self.arbiter.wall()),
                                 restarts_scheduled=[r.view(self.arbiter.wall()) for r in state.scheduled_restarts])
            except store.StateStoreError as exc:
                problem = str(exc)
        reply["arbiter"] = {"leader": leading, "term": term if leading else None,
                            "leader_address": self.leadership.leader_hint(),
                            "address": self.leadership.address,
                            "state_store": "ok" if problem is None else f"unreachable: {problem}"}
        return reply
