"""What the node's REST API serves: the HA loop's last observation.

The HA loop builds a NodeSnapshot after each heartbeat and publishes it
into a StatePublisher: one attribute swap, so a reader (an API thread)
always sees a whole snapshot and never waits for PostgreSQL or the
arbiter. Role changes go into a bounded History. The ClusterWatcher asks
the arbiter for its status, in its own thread, for /cluster, the standby's
lag and whether the standby is promotable: only while the REST API is read
(an idle node asks nothing), at most every CLUSTER_POLL_INTERVAL.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from pgha import logs, settings
from pgha.messages import Address, ReplicationRow, Report
from pgha.disk import DiskUse
from pgha.pg_facts import PgFacts

log = logs.get("api")

HISTORY_LENGTH = 100
CLUSTER_POLL_INTERVAL = 2.0     # seconds at least between two status requests to the arbiter
CLUSTER_VIEW_MAX_AGE = 10.0     # older arbiter status is not used for lag or epoch
CLUSTER_FETCH_WAIT = 1.0        # seconds a reader waits for a view when it has none this fresh


@dataclass(frozen=True)
class LoopStats:
    """HA loop turns: how many, their total and last duration (seconds)."""
    count: int = 0
    total: float = 0.0
    last: float = 0.0

    def add(self, duration: float) -> LoopStats:
        return LoopStats(self.count + 1, self.total + duration, duration)


@dataclass(frozen=True)
class NodeSnapshot:
    """The node as its HA loop last saw it. Times are monotonic seconds of
    the daemon's clock, so a reader can tell how old each one is."""
    name: str
    taken_at: float                         # when the loop finished this turn
    pg: str = "stopped"                     # running | starting | stopped (messages.PG_*)
    running_as: str | None = None           # primary | standby, while running
    lsn: int = 0                            # current (primary) or replayed (standby) WAL position
    receive_lsn: int = 0
    timeline: int | None = None
    sync_standby: str | None = None         # synchronous_standby_names, on a primary
    receiver: str | None = None             # the standby's WAL receiver status
    replication: tuple[ReplicationRow, ...] = ()
    acting_primary: bool = False            # running as primary under this node's leases
    instruction_role: str | None = None     # the last current instruction: primary | standby | wait
    instruction_epoch: int | None = None
    instruction_reason: str | None = None
    instruction_paused: bool = False        # maintenance mode, as this node last heard it
    cluster_parameters: Mapping[str, Any] = field(default_factory=dict)   # pgha.cluster_config, as last heard
    primary: str | None = None              # whom the arbiter names primary
    primary_address: Address | None = None  # where a standby must stream from
    upstream: Address | None = None         # where this standby was told to stream from
    acted_epoch: int = 0
    lease_until: Mapping[str, float] = field(default_factory=dict)   # arbiter/standby lease ends
    grant_remaining: float = 0.0            # this standby's outstanding grant to the primary
    heartbeat_interval: float = settings.HEARTBEAT_INTERVAL
    lease_time: float = settings.LEASE_TIME
    arbiter_reachable: bool = False
    heartbeat_rtt: float | None = None      # last answered heartbeat's round trip, s
    clock_skew: Mapping[str, float | None] = field(default_factory=dict)   # "arbiter"/"peer": their clock - ours, s
    last_action: str | None = None
    failovers: int = 0                      # promotions this daemon carried out
    fences: int = 0                         # times its watchdog fenced PostgreSQL
    loop: LoopStats = LoopStats()
    started_at: float = 0.0                 # when the daemon started
    # What Patroni's tools read (README "REST API"); filled where node.py builds the snapshot.
    scope: str | None = None                # the cluster's name (Patroni's scope)
    tags: Mapping[str, Any] = field(default_factory=dict)   # the tags setting (Patroni's tags)
    facts: PgFacts | None = None            # PostgreSQL facts beyond the report, while running
    disk: DiskUse | None = None             # the data directory's and pg_wal's disks (pgha/disk.py)
    arbiter_last_seen: float | None = None  # wall clock of the last answered heartbeat (StatePublisher)


@dataclass(frozen=True)
class Member:
    """One member as the arbiter last heard of it."""
    name: str
    report: Report | None
    last_seen_ago: float | None


@dataclass(frozen=True)
class ClusterView:
    """The arbiter's status, as fetched at `fetched_at` (monotonic)."""
    fetched_at: float
    epoch: int
    primary: str | None
    promotable: bool
    members: tuple[Member, ...] = ()
    paused: bool = False                    # maintenance mode (pgha.ctl pause)
    scheduled_switchover: Mapping[str, Any] | None = None   # the arbiter's {"at": ISO time, "to": name}
    # member -> the arbiter's {"at": ISO time, "pending": bool}: its scheduled restart
    scheduled_restarts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    timelines: Mapping[int, str] = field(default_factory=dict)     # timeline -> the member that made it

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    @classmethod
    def from_status(cls, status: Mapping[str, Any], fetched_at: float) -> ClusterView:
        """Parse the arbiter's status reply; raises ValueError (or ProtocolError) when malformed."""
        if status.get("type") != "status" or not isinstance(status.get("nodes"), dict):
            raise ValueError(f"not a status reply: {str(status.get('error', status.get('type')))[:80]}")
        members = []
        for name, entry in status["nodes"].items():
            entry = entry or {}
            report = entry.get("report")
            seen = entry.get("last_seen_ago")
            members.append(Member(str(name), None if report is None else Report.from_wire(report),
                                  float(seen) if isinstance(seen, (int, float)) else None))
        epoch = status.get("epoch")
        return cls(fetched_at=fetched_at, epoch=epoch if isinstance(epoch, int) else 0,
                   primary=status.get("primary") if isinstance(status.get("primary"), str) else None,
                   promotable=status.get("promotable") is True, members=tuple(members),
                   paused=status.get("paused") is True,
                   scheduled_switchover=scheduled if isinstance(scheduled := status.get("switchover_scheduled"), dict)
                   else None,
                   scheduled_restarts={r["member"]: r for r in status.get("restarts_scheduled") or ()
                                       if isinstance(r, dict) and isinstance(r.get("member"), str)},
                   timelines=_timelines(status.get("timelines")))


def _timelines(value: Any) -> dict[int, str]:
    """The status's {"2": "pgsql-1"}: timeline -> the member that made it; anything malformed left out."""
    if not isinstance(value, dict):
        return {}
    return {int(t): name for t, name in value.items()
            if isinstance(t, str) and t.isascii() and t.isdigit() and len(t) < 12 and isinstance(name, str)}


@dataclass(frozen=True)
class RoleChange:
    at: float                   # wall clock (epoch seconds)
    epoch: int
    old: str
    new: str
    reason: str | None


def role_of(snapshot: NodeSnapshot) -> str:
    """The coarse role history tracks: primary, standby, starting or stopped."""
    if snapshot.pg == "running" and snapshot.running_as:
        return snapshot.running_as
    return snapshot.pg


class History:
    """The last HISTORY_LENGTH role changes this node saw (in memory)."""

    def __init__(self, length: int = HISTORY_LENGTH, wall: Callable[[], float] = time.time) -> None:
        self._events: collections.deque[RoleChange] = collections.deque(maxlen=length)
        self._lock = threading.Lock()
        self._wall = wall

    def add(self, epoch: int, old: str, new: str, reason: str | None) -> None:
        with self._lock:
            self._events.append(RoleChange(self._wall(), epoch, old, new, reason))

    def events(self) -> tuple[RoleChange, ...]:
        with self._lock:
            return tuple(self._events)


class StatePublisher:
    """The HA loop's latest snapshot and the cluster view, swapped whole."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic,
                 history: History | None = None, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.history = history or History()
        self.snapshot: NodeSnapshot = NodeSnapshot(name=name, taken_at=clock(), started_at=clock())
        self.cluster: ClusterView | None = None
        self.watcher: ClusterWatcher | None = None     # fetches the cluster view when it is read
        self._published = False

    def publish(self, snapshot: NodeSnapshot) -> None:
        old, new = role_of(self.snapshot), role_of(snapshot)
        if self._published and old != new:
            fenced = snapshot.fences > self.snapshot.fences
            reason = "fenced: no lease left" if fenced else snapshot.last_action or snapshot.instruction_reason
            self.history.add(snapshot.acted_epoch, old, new, reason)
        # Patroni's dcs_last_seen: when the arbiter last answered, kept across turns it did not.
        seen = self.wall() if snapshot.arbiter_reachable else self.snapshot.arbiter_last_seen
        if seen != snapshot.arbiter_last_seen:
            snapshot = replace(snapshot, arbiter_last_seen=seen)
        self.snapshot = snapshot    # one reference swap: readers see the old or the new one
        self._published = True

    def set_cluster(self, view: ClusterView | None) -> None:
        self.cluster = view

    def read_cluster(self) -> ClusterView | None:
        """The cluster view for a reader; asks the watcher to refresh a stale one."""
        if self.watcher is not None:
            self.watcher.freshen()
        return self.cluster


class ClusterWatcher(threading.Thread):
    """Asks the arbiter for its status when a reader wants it (freshen()),
    at most every `interval`. A reader gets the last view at once while it
    is younger than CLUSTER_VIEW_MAX_AGE (the refresh runs behind it); with
    none that fresh it waits for the refresh, up to `wait`. `fetch` returns
    the status reply (a dict); a failure keeps the last view."""

    def __init__(self, publisher: StatePublisher, fetch: Callable[[], Mapping[str, Any]],
                 interval: float = CLUSTER_POLL_INTERVAL, wait: float = CLUSTER_FETCH_WAIT) -> None:
        super().__init__(daemon=True, name="cluster-watcher")
        self.publisher = publisher
        self.fetch = fetch
        self.interval = interval
        self.wait = wait
        self._stop_event = threading.Event()
        self._asked = threading.Event()
        self._done = threading.Condition()
        self._fetches = 0               # fetches finished (readers wait for the next one)
        self._last_try: float | None = None
        self._failing: str | None = None
        publisher.watcher = self

    def freshen(self) -> None:
        clock = self.publisher.clock
        now = clock()
        if self._last_try is not None and now - self._last_try < self.interval:
            return          # asked lately (or failing lately): the last view stands
        with self._done:
            seen = self._fetches
            self._asked.set()
            view = self.publisher.cluster
            if view is None or now - view.fetched_at > CLUSTER_VIEW_MAX_AGE:
                self._done.wait_for(lambda: self._fetches != seen or self._stop_event.is_set(), self.wait)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._asked.wait()
            self._asked.clear()
            if self._stop_event.is_set():
                break
            self._last_try = self.publisher.clock()
            try:
                view = ClusterView.from_status(self.fetch(), self.publisher.clock())
                self.publisher.set_cluster(view)
                self._failing = None
            except Exception as exc:    # an unreachable arbiter is the HA loop's news, not ours
                text = f"{type(exc).__name__}: {exc}"[:200]
                if text != self._failing:
                    log.debug("arbiter status for the REST API unavailable: %s", text)
                    self._failing = text
            with self._done:
                self._fetches += 1
                self._done.notify_all()

    def stop(self) -> None:
        self._stop_event.set()
        self._asked.set()
        with self._done:
            self._done.notify_all()
