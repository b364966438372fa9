"""What the node's other threads hand to the HA loop: a result and a wake-up.

The watchdog and the switchover's threads never write the loop's memory
(pgha/node.py); they put a result here, which also wakes the loop, and the
loop applies it at the start of its next heartbeat. Any thread may put() or
wake(); only the HA loop's thread calls drain() and wait().
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from pgha.messages import Address


@dataclass(frozen=True)
class Fenced:
    """The watchdog fenced PostgreSQL when every lease of this acting term ran out."""
    term: int


@dataclass(frozen=True)
class FollowingTarget:
    """The follow-target thread started PostgreSQL as a standby of the switchover's target."""
    address: Address
    at: float


@dataclass(frozen=True)
class HandOverPrepared:
    """The switchover's preparation thread is done for this target: a
    checkpoint written, and our slot made on slot_on (the target, or None)."""
    target: Address | None
    slot_on: Address | None
    serial: int = 0             # which preparation: the memory takes only the one it awaits


Result = Fenced | FollowingTarget | HandOverPrepared


class Inbox:
    def __init__(self) -> None:
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._wake = threading.Event()

    def put(self, result: Result) -> None:
        self._results.put(result)
        self._wake.set()

    def wake(self) -> None:
        """Run the next heartbeat now, not at the next tick."""
        self._wake.set()

    def drain(self) -> list[Result]:
        """The results put since the last drain, oldest first (the HA loop only)."""
        results = []
        while True:
            try:
                results.append(self._results.get_nowait())
            except queue.Empty:
                return results

    def wait(self, timeout: float) -> None:
        """Sleep until woken or timeout (the HA loop only)."""
        self._wake.wait(timeout)
        self._wake.clear()
