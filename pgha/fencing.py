"""The node daemon's handle on its fencer (pgha/fencer.py).

The fencer is a separate tiny process in its own session, so it outlives a
daemon killed -9 and keeps running while the daemon is frozen. The daemon
hands it the primary's lease end; if that passes without a renewal, the
fencer stops PostgreSQL by itself (ha-model.md, invariant 2).

One fencer per state folder: a restarted daemon adopts the running one (by
its pid file) instead of starting a second, and tells it at once what it
knows (cap or disarm). Commands are written only when the deadline moves by
more than WRITE_STEP, to keep an idle primary's CPU low.

Threads: the HA loop (start, cap, disarm), the follow-target thread
(disarm), the watchdog (check, follow) and
the lease renewer (follow, never waiting) share one handle; its lock orders
their commands. It writes only the fencer's FIFO and its own view of the
fencer's deadline.
"""
import errno
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

FENCER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fencer.py")
WRITE_STEP = 0.05       # seconds: smaller moves of the deadline are not worth a write
READY_TIMEOUT = 5.0     # seconds for a new fencer to open its FIFO
RESPAWN_INTERVAL = 1.0  # seconds between attempts to restart a fencer that will not start

_UNKNOWN = float("-inf")   # the fencer's deadline is not known: the next command is always sent


class FencerError(OSError):
    pass


class Fencer:
    def __init__(self, state_dir: str, pgdata: str, log_path: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic, python: str = sys.executable) -> None:
        self.state_dir = state_dir
        self.pgdata = os.path.abspath(pgdata)
        self.log_path = log_path or os.path.join(state_dir, "fencer.log")
        self.fifo = os.path.join(state_dir, "fencer.fifo")
        self.pidfile = os.path.join(state_dir, "fencer.pid")
        self.clock = clock
        self.python = python
        self.pid: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._fd: Optional[int] = None
        # What the fencer holds as far as we know: None disarmed, a deadline, or _UNKNOWN.
        self._until: Optional[float] = _UNKNOWN
        self._lock = threading.Lock()
        self._last_failed_spawn = -RESPAWN_INTERVAL

    # -- life cycle -------------------------------------------------------------

    def start(self) -> bool:
        """Adopt the running fencer or start one; True if one was adopted.
        An adopted fencer keeps its deadline until told otherwise (cap/disarm)."""
        with self._lock:
            pid = running_fencer(self.pidfile, self.fifo)
            if pid is not None:
                try:
                    self._open_fifo(wait=READY_TIMEOUT)
                    self.pid, self._proc = pid, None
                    self._until = _UNKNOWN
                    return True
                except OSError:     # not reading its FIFO: start a fresh one beside it
                    pass
            self._spawn()
            return False

    def check(self) -> Optional[str]:
        """Restart the fencer if it died; a line for the log when something happened."""
        with self._lock:
            if self._alive():
                return None
            if self.clock() - self._last_failed_spawn < RESPAWN_INTERVAL:
                return None
            gone = self.pid
            try:
                self._spawn()
            except OSError as exc:
                self._last_failed_spawn = self.clock()
                return f"fencer (pid {gone}) is gone and could not be restarted: {exc}"
            return f"fencer (pid {gone}) was gone: restarted it (pid {self.pid})"

    def stop(self) -> None:
        """Tell the fencer to exit (disarmed): only once PostgreSQL is stopped."""
        with self._lock:
            self._send("exit")
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            self._close_fifo()

    # -- the deadline -------------------------------------------------------------

    def follow(self, deadline: Callable[[], Optional[float]], wait: bool = True) -> bool:
        """Arm to deadline() (a monotonic lease end) when it grows, disarm on None.
        wait=False: do nothing and return False if another thread holds the
        handle (a fencer being restarted takes up to READY_TIMEOUT).

        deadline() is called under the lock, so a disarm() from another thread
        can never be overtaken by an arm computed before it."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            until = deadline()
            if until is None:
                self._disarm()
            elif until > self.clock() and (self._until is None or until > self._until + WRITE_STEP):
                if self._send(f"arm {until:.6f}"):
                    self._until = until
            return True
        finally:
            self._lock.release()

    def arm(self, remaining: float) -> None:
        """Fence `remaining` seconds from now unless re-armed."""
        with self._lock:
            until = self.clock() + remaining
            if self._send(f"arm {until:.6f}"):
                self._until = until

    def cap(self, remaining: float) -> None:
        """Fence within `remaining` seconds at the latest; an earlier armed deadline stands."""
        with self._lock:
            until = self.clock() + remaining
            if self._send(f"cap {until:.6f}"):
                self._until = until if self._until is None else min(self._until, until)

    def disarm(self) -> None:
        with self._lock:
            self._disarm()

    # -- internals ---------------------------------------------------------------

    def _disarm(self) -> None:
        if self._until is not None and self._send("disarm"):
            self._until = None

    def _send(self, command: str) -> bool:
        """One atomic write (well under PIPE_BUF). False if it did not get
        through: the fencer is then treated as holding an unknown deadline."""
        if self._fd is None:
            try:
                self._open_fifo()
            except OSError:
                self._until = _UNKNOWN
                return False
        assert self._fd is not None     # _open_fifo() opened it or raised
        try:
            os.write(self._fd, (command + "\n").encode("ascii"))
            return True
        except OSError as exc:
            # EAGAIN: the fencer is not reading (frozen); EPIPE: it is gone.
            if exc.errno not in (errno.EAGAIN, errno.EPIPE):
                self._close_fifo()
            self._until = _UNKNOWN
            return False

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and is_fencer(self.pid, self.fifo)

    def _spawn(self) -> None:
        """Start a fresh fencer on a fresh FIFO (no stale commands in it)."""
        self._close_fifo()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        try:
            os.unlink(self.fifo)
        except FileNotFoundError:
            pass
        os.mkfifo(self.fifo, 0o600)
        # A pid file left by a fencer of an earlier boot (or container) may
        # hold the very pid the new one gets: it would read as "ready" before
        # the new fencer has opened the FIFO.
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass
        log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-S", FENCER_SCRIPT, "--pgdata", self.pgdata, "--fifo", self.fifo,
                 "--pidfile", self.pidfile],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd="/",
                start_new_session=True)     # its own session: survives the daemon's death
        finally:
            os.close(log)
        self._proc, self.pid = proc, proc.pid
        ready_by = time.monotonic() + READY_TIMEOUT
        while _read_pid(self.pidfile) != proc.pid:
            if proc.poll() is not None or time.monotonic() > ready_by:
                proc.kill()
                raise FencerError(errno.EIO, f"the fencer did not start (see {self.log_path})")
            time.sleep(0.005)
        self._open_fifo(wait=max(0.0, ready_by - time.monotonic()))
        self._until = None

    def _open_fifo(self, wait: float = 0.0) -> None:
        """Open the FIFO for writing; ENXIO (no reader yet) is retried for `wait` seconds."""
        self._close_fifo()
        give_up = time.monotonic() + wait
        while True:
            try:
                self._fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > give_up:
                    raise
                time.sleep(0.005)

    def _close_fifo(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def is_fencer(pid: int, fifo: str) -> bool:
    """pid is a live fencer reading this FIFO (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False
    return any(a.endswith("fencer.py") for a in argv) and \
        any(flag == "--fifo" and value == fifo for flag, value in zip(argv, argv[1:]))


def running_fencer(pidfile: str, fifo: str) -> Optional[int]:
    pid = _read_pid(pidfile)
    return pid if pid is not None and is_fencer(pid, fifo) else None
