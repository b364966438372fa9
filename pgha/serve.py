"""A socketserver serve loop that sleeps until a connection or shutdown().

socketserver's own loop wakes every poll_interval to look for shutdown();
an idle daemon paid for those wake-ups in two servers. Here shutdown()
writes to a pipe the loop also waits on, so the loop sleeps without a
timeout and still stops at once.
"""
import os
import selectors
import threading
from typing import Any


class WakeOnShutdown:
    """Mix in before a socketserver server class (it overrides serve_forever,
    shutdown and server_close)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_open = True
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
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self and not self._stopping.is_set():
                            self._handle_request_noblock()   # type: ignore[attr-defined]
                    self.service_actions()                   # type: ignore[attr-defined]
        finally:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except OSError:             # drained (BlockingIOError) or closed
                pass
            self._stopping.clear()
            self._stopped.set()

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
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
