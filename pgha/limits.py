"""Limits that keep a server alive under abusive clients (issue 9).

Setting-free constants sized for the cluster (two nodes, an arbiter, a few
operator tools), the slot table that admits connections (members first),
clipping of client input before it reaches a log line, and a rate limit for
repeated warnings from one source.
"""
from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# -- the constants ---------------------------------------------------------------

LISTEN_BACKLOG = 1024       # above a flood's connections in flight: a full queue drops SYNs (a 1 s retransmit fails a check)
MEMBER_SLOTS = 16           # connections that proved membership (two nodes, their restarts)
MEMBER_SLOTS_PER_CLUSTER = 4    # a many-cluster arbiter (pgha.clusters): two nodes each, and their restarts
STRANGER_SLOTS = 64         # everyone else: tools, and whoever floods; dropped first
STRANGER_SLOTS_PER_SOURCE = 16  # so one host cannot take all the strangers' slots
STRANGER_GRACE = 1.0        # a new stranger that talks is not dropped for another this soon
MESSAGE_DEADLINE = 5.0      # a frame must complete this long after its first byte
                            # (a stranger's first frame: after it connected)
MAX_JSON_DEPTH = 32         # our messages nest 5 deep; json.loads recurses per level
CLIP = 60                   # characters of client input shown in a log line
WARN_INTERVAL = 30.0        # one warning per source and reason per interval
API_SLOTS = 32              # REST API connections at once (HAProxy checks: one per proxy per interval)
API_SLOTS_PER_SOURCE = 16   # so one address cannot take them all (a second proxy still gets in)
API_REQUEST_DEADLINE = 5.0  # a REST request (line, headers, body) must be whole this long after connecting


def member_slots_for(clusters: int) -> int:
    """Member slots of an arbiter serving `clusters` clusters: never fewer
    than MEMBER_SLOTS, and MEMBER_SLOTS_PER_CLUSTER for each."""
    return max(MEMBER_SLOTS, MEMBER_SLOTS_PER_CLUSTER * clusters)


def stranger_slots_for(clusters: int) -> int:
    """Every member arrives as a stranger (its first heartbeat proves it): a
    many-cluster arbiter restarted must admit its members' reconnections, so
    the strangers' pool grows too, one slot per cluster (the per-source share
    stays STRANGER_SLOTS_PER_SOURCE: one host still cannot take them all)."""
    return max(STRANGER_SLOTS, clusters)


def printable(text: str) -> str:
    """`text` with every character that is not printable (line breaks,
    terminal escapes, lone surrogates) shown escaped (\\n, \\x1b): what an
    operator reads (pgha-ctl's output, every log line) can neither move the
    cursor nor fake another line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def clip(value: Any, limit: int = CLIP) -> str:
    """Client input made safe for a log line: at most `limit` characters (an
    ellipsis says more was cut) and no line breaks."""
    text = value if isinstance(value, str) else repr(value)
    cut = printable(text[:limit])
    return cut if len(text) <= limit else cut + "…"


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (a flood
    must meet the connection cap, not EMFILE); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard or soft == resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            return soft
    return soft


# -- rate-limited warnings -------------------------------------------------------

class RateLimitedLog:
    """One warning per (source, reason) per interval; the next one that gets
    through says how many were held back. Remembers at most `max_keys`
    pairs, so many sources cannot grow it without bound: past that, they
    share one key per reason."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}     # key -> (logged at, held back)
        self._lock = threading.Lock()

    def allow(self, source: str, reason: str) -> tuple[bool, int]:
        """Whether to log now, and how many were held back since the last one."""
        now = self.clock()
        with self._lock:
            key = (source, reason)
            if key not in self._last and len(self._last) >= self.max_keys:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
                if len(self._last) >= self.max_keys:
                    key = ("*", reason)
            logged_at, held = self._last.get(key, (float("-inf"), 0))
            if now - logged_at < self.interval:
                self._last[key] = (logged_at, held + 1)
                return False, held + 1
            self._last[key] = (now, 0)
            return True, held

    def warning(self, source: str, reason: str, text: str) -> bool:
        """Log `text` (already clipped) unless this source logged `reason` lately."""
        return self.log(logging.WARNING, source, reason, text)

    def log(self, level: int, source: str, reason: str, text: str) -> bool:
        allowed, held = self.allow(source, reason)
        if allowed:
            suffix = f" ({held} more like it held back)" if held else ""
            self.logger.log(level, "%s%s", text, suffix)
        return allowed


# -- connection slots ----------------------------------------------------------------

@dataclass(eq=False)
class Slot:
    """One admitted connection. `close` wakes its handler (shutdown)."""
    source: str
    admitted_at: float
    close: Callable[[], None]
    member: bool = False
    talking: bool = False       # it has sent at least one byte
    evicted: bool = False


@dataclass
class Slots:
    """Who holds a connection. Members keep theirs; strangers (no valid
    member request yet) share a bounded pool: when it (or their source's
    share) is full, a newcomer takes the place of the stranger that matters
    least (see admit), so a tool's fresh request still gets in during a
    flood of silent or slow connections, and a flood never touches a member."""
    member_slots: int = MEMBER_SLOTS
    stranger_slots: int = STRANGER_SLOTS
    per_source: int = STRANGER_SLOTS_PER_SOURCE
    grace: float = STRANGER_GRACE
    silent_evict: bool = True   # False: only a newcomer whose request is here takes another's place
    _strangers: list[Slot] = field(default_factory=list)
    _members: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, source: str, now: float, close: Callable[[], None],
              talking: bool = False) -> tuple[Slot | None, list[Slot]]:
        """A new connection is a stranger (`talking`: its first bytes are
        already here). Returns its slot, or None to refuse it, and the slots
        to evict. When its pool is full the least stranger there makes room
        (one admitted more than `grace` ago, else a silent one, oldest
        first), unless that one talks, is within its grace, and the newcomer
        is silent: then the newcomer is refused."""
        slot = Slot(source, now, close, talking=talking)
        with self._lock:
            same = [s for s in self._strangers if s.source == source]
            crowd = same if len(same) >= self.per_source else \
                self._busiest_source() if len(self._strangers) >= self.stranger_slots else []
            evicted: list[Slot] = []
            if crowd and not talking and not self.silent_evict:
                return None, []
            if crowd:
                # Who has had its chance goes first: past the grace, a stranger
                # was answered already or is too slow; then the silent; then the oldest.
                least = min(crowd, key=lambda s: (now - s.admitted_at < self.grace, s.talking, s.admitted_at))
                if least.talking and not talking and now - least.admitted_at < self.grace:
                    return None, []
                least.evicted = True
                self._strangers.remove(least)
                evicted.append(least)
            self._strangers.append(slot)
        return slot, evicted

    def promote(self, slot: Slot) -> bool:
        """The connection sent a valid member request: it keeps its slot."""
        with self._lock:
            if slot.member:
                return True
            if slot.evicted or self._members >= self.member_slots:
                return False
            self._strangers.remove(slot)
            slot.member = True
            self._members += 1
            return True

    def release(self, slot: Slot) -> None:
        with self._lock:
            if slot.member:
                slot.member = False
                self._members -= 1
            elif not slot.evicted and slot in self._strangers:
                self._strangers.remove(slot)

    def counts(self) -> tuple[int, int]:
        """(members, strangers) holding a slot now."""
        with self._lock:
            return self._members, len(self._strangers)

    def _busiest_source(self) -> list[Slot]:
        by_source: dict[str, list[Slot]] = {}
        for s in self._strangers:
            by_source.setdefault(s.source, []).append(s)
        return max(by_source.values(), key=len)
