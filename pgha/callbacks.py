"""User callbacks (on_role_change, on_start, on_stop, on_reload, on_restart),
run off the HA loop; and pre_promote, the one run on it and waited for.

The script gets three arguments, the event name, the role and the node's
name (Patroni's third is the cluster's scope). fire() only queues the event and returns at once, so a
slow or hanging script never delays a failover. One background thread runs
the queue, one script at a time; events that pile up are coalesced (a newer
event of the same name replaces a queued one: only the latest role matters).
A script still running at the timeout is killed with its whole process
group (it runs in its own session). Its exit status and the tail of its
stderr are logged.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from typing import Callable

from pgha import logs

log = logs.get("callbacks")

EVENTS = ("on_role_change", "on_start", "on_stop", "on_reload", "on_restart")
STDERR_TAIL = 400       # bytes of a script's stderr that reach the log


class CallbackRunner:
    """scripts(): {event: path or None} and the timeout, read at each run, so a
    reload takes effect for the next event."""

    def __init__(self, name: str, scripts: Callable[[], tuple[dict[str, str | None], float]]) -> None:
        self.name = name
        self.scripts = scripts
        self._queue: deque[tuple[str, str]] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="callbacks")
        self._thread.start()

    def fire(self, event: str, role: str) -> None:
        """Queue `event` (one of EVENTS) with the role; never blocks."""
        if self.scripts()[0].get(event) is None:
            return
        with self._lock:
            for queued in list(self._queue):
                if queued[0] == event:
                    self._queue.remove(queued)
                    log.info("callback %s (%s) replaced by a newer one before it ran", *queued)
            self._queue.append((event, role))
            self._lock.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Let the queued events run (on_stop last), at most `timeout` seconds
        (default: one callback timeout per queued event, plus one)."""
        with self._lock:
            self._stopping = True
            pending = len(self._queue) + (1 if self._busy else 0)
            self._lock.notify()
        if timeout is None:
            timeout = self.scripts()[1] * max(1, pending) + 1.0
        self._thread.join(timeout)

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._busy

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if not self._queue:
                    return
                event, role = self._queue.popleft()
                self._busy = True
            try:
                scripts, timeout = self.scripts()
                path = scripts.get(event)
                if path:
                    run_script(path, event, role, self.name, timeout)
            except Exception:   # a callback must never take anything down with it
                log.exception("callback %s failed to run", event)
            finally:
                with self._lock:
                    self._busy = False


def run_script(path: str, event: str, role: str, name: str, timeout: float) -> int | None:
    """Run one callback; its exit status, or None when killed at the timeout."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen([path, event, role, name], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        except OSError as exc:
            log.error("callback %s: cannot run %s: %s", event, path, exc.strerror or exc)
            return None
        try:
            code: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            try:    # the whole group: a shell script's children too
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        stderr.seek(0, os.SEEK_END)
        size = stderr.tell()
        stderr.seek(max(0, size - STDERR_TAIL))
        tail = stderr.read().decode("utf-8", "replace").strip()
    took = time.monotonic() - started
    said = f"; stderr: {tail}" if tail else ""
    if code is None:
        log.error("callback %s %s %s: killed after the %gs timeout (callback_timeout)%s",
                  path, event, role, timeout, said)
    elif code != 0:
        log.warning("callback %s %s %s: exit status %d after %.1fs%s", path, event, role, code, took, said)
    else:
        log.info("callback %s %s %s: done in %.1fs%s", path, event, role, took, said)
    return code
