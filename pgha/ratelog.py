"""Log a repeated problem once per key and period, not once per occurrence.

A client that keeps sending bad messages must not flood the log: the first
occurrence of each (source, reason) is logged, later ones within the period
are only counted, and the count is reported with the next line logged.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

MAX_KEYS = 4096     # distinct keys remembered; beyond that the oldest are forgotten


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.period = period
        self.clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}    # key -> (last logged, suppressed since)
        self._lock = threading.Lock()

    def log(self, level: int, key: Hashable, text: str) -> bool:
        """Log `text` unless `key` was logged within the period; True when logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.period:
                self._last[key] = (last[0], last[1] + 1)
                return False
            suppressed = last[1] if last is not None else 0
            self._last.pop(key, None)
            self._last[key] = (now, 0)
            while len(self._last) > MAX_KEYS:
                del self._last[next(iter(self._last))]
        if suppressed:
            text += f" ({suppressed} more like it in the last {self.period:.0f}s not logged)"
        self.logger.log(level, "%s", text)
        return True

    def warning(self, key: Hashable, text: str) -> bool:
        return self.log(logging.WARNING, key, text)
