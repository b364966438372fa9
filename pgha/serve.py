"""What the daemons' socketserver servers share.

WakeOnShutdown: a serve loop that sleeps until a connection or shutdown().
socketserver's own loop wakes every poll_interval to look for shutdown();
an idle daemon paid for those wake-ups in two servers. Here shutdown()
writes to a pipe the loop also waits on, so the loop sleeps without a
timeout and still stops at once. A loop that sleeps without a timeout in
the main thread must also be woken by signals: the kernel may hand a
process's SIGTERM to any thread, and Python runs the handler only when the
main thread next runs; wake_on_signals() makes that pipe the signal wakeup
descriptor, so the loop wakes whichever thread took the signal.

Admitting: every connection is admitted through a limits.Slots table in the
accept loop (the arbiter's and lease link's line servers, the REST API), so
one source cannot take every slot, a fresh client gets in by taking the
place of the least useful stranger (a slow or silent one), and refusals are
logged once per source and reason per limits.WARN_INTERVAL.
"""
from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading
import time
from typing import Any

from pgha import limits


class WakeOnShutdown:
    """Mix in before a socketserver server class (it overrides serve_forever,
    shutdown and server_close)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_open = True
        self._stop_asked = False        # stop_soon(): a plain flag, safe to set in a signal handler
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()             # not serving: shutdown() has nothing to wait for
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until shutdown(); poll_interval is accepted and ignored."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)  # type: ignore[arg-type]
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stop_wanted():
                    for key, _ in selector.select():
                        if key.fileobj is self and not self._stop_wanted():
                            self._handle_request_noblock()   # type: ignore[attr-defined]
                        elif key.fileobj == self._wake_r:
                            self._drain_wake_pipe()          # a signal's byte: awake, this thread runs its handler
                    self.service_actions()                   # type: ignore[attr-defined]
        finally:
            self._drain_wake_pipe()
            self._stop_asked = False
            self._stopping.clear()
            self._stopped.set()

    def _stop_wanted(self) -> bool:
        return self._stop_asked or self._stopping.is_set()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:                 # drained (BlockingIOError) or closed
            pass

    def wake_on_signals(self) -> None:
        """Make the wake pipe the process's signal wakeup descriptor (call it
        from the main thread, before serve_forever there)."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def stop_soon(self) -> None:
        """Ask serve_forever to return, without waiting for it: for a signal
        handler that runs on the loop's own thread (shutdown() would wait for
        itself), so it takes no lock."""
        self._stop_asked = True
        if not self._pipe_open:
            return                      # closed: its number may be another file's now
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass                        # a full pipe wakes the loop already

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it (call it from another thread)."""
        self._stopping.set()
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass                        # a full or closed pipe: the loop is awake or gone already
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()          # type: ignore[misc]
        if not self._pipe_open:         # closing twice could close a reused descriptor
            return
        self._pipe_open = False
        if threading.current_thread() is threading.main_thread():
            old = signal.set_wakeup_fd(-1)      # ours is about to close: no more bytes to it
            if old not in (-1, self._wake_w):
                signal.set_wakeup_fd(old, warn_on_full_buffer=False)   # another's: left as it was
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class Admitting:
    """Mix in before a socketserver server class: admission through
    limits.Slots (it overrides process_request and close_request).
    `warn_log` is the logger its rate-limited warnings go to; `refuse`
    tells a refused client why, without blocking."""

    warn_log = logging.getLogger("pgha")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = limits.Slots()
        self.warnings = limits.RateLimitedLog(self.warn_log)
        self._slot_of: dict[socket.socket, limits.Slot] = {}
        super().__init__(*args, **kwargs)

    def warn(self, source: str, reason: str, text: str) -> None:
        self.warnings.warning(source, reason, text)

    def slot_of(self, sock: Any) -> limits.Slot | None:
        return self._slot_of.get(sock)

    def refuse(self, request: socket.socket) -> None:
        """Say why, in the server's protocol (best effort, never blocking)."""

    def park(self, request: socket.socket, client_address: Any) -> bool:
        """A silent newcomer found no slot: True when the server keeps it to
        look at again once it talks (then it owns it); False: refused now."""
        return False

    def turn_away(self, request: socket.socket, source: str) -> None:
        self.warn(source, "refused", f"refusing connection from {source}: "
                                     f"{self.slots.per_source} strangers' slots in use")
        self.refuse(request)
        self.shutdown_request(request)      # type: ignore[attr-defined]

    def talking(self, request: socket.socket) -> bool:
        """Whether a new connection's first bytes are here (a peek, never blocking)."""
        return bool(request.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))

    def process_request(self, request: Any, client_address: Any) -> None:
        # Admission runs here, in the accept loop: a refused connection costs
        # an accept, one non-blocking reply and a close, never a thread.
        source = str(client_address[0])
        try:
            talking = self.talking(request)
        except (BlockingIOError, InterruptedError):
            talking = False
        except OSError:
            self.shutdown_request(request)      # type: ignore[attr-defined]
            return
        slot, evicted = self.slots.admit(source, time.monotonic(), lambda: wake(request), talking)
        for gone in evicted:
            gone.close()
        if evicted:
            self.warn(source, "evicted", f"strangers' slots full: dropped the least connection from "
                                         f"{evicted[0].source} for one from {source}")
        if slot is None:
            if not talking and self.park(request, client_address):
                return                          # looked at again when its first bytes come
            self.turn_away(request, source)
            return
        self._slot_of[request] = slot
        try:
            super().process_request(request, client_address)   # type: ignore[misc]
        except Exception:       # noqa: BLE001 -- no thread to be had: this connection only
            self._forget(request)
            self.shutdown_request(request)      # type: ignore[attr-defined]

    def close_request(self, request: Any) -> None:
        self._forget(request)
        super().close_request(request)          # type: ignore[misc]

    def _forget(self, request: Any) -> None:
        slot = self._slot_of.pop(request, None)
        if slot is not None:
            self.slots.release(slot)


def wake(sock: socket.socket) -> None:
    """Make a connection's handler see the end of its stream."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
