"""Seeing the postmaster die at once, and clearing its zombie at once.

pg_ctl start leaves the postmaster an orphan, adopted by the nearest child
subreaper, else by PID 1. A killed postmaster stays a zombie until that
parent reaps it, and PostgreSQL's tools refuse the data directory until then
(in some containers PID 1 takes a second or more). The node daemon makes
itself a subreaper so the postmaster is its child and reaps it itself.

Reaping is narrow so it never steals a child subprocess.run waits for: only
zombie children whose command name is "postgres" (the adopted postmaster
and its orphaned backends). The daemon starts only pg_* tools, initdb and
the fencer (python) as direct children, never "postgres" itself.
"""
from __future__ import annotations

import ctypes
import os
import select

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (the postmaster); False where Linux's prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[str, str] | None:
    """(command name, state letter) of pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.find("(") + 1:text.rfind(")")]
    return name, text[text.rfind(")") + 2:text.rfind(")") + 3]


def _children() -> set[int]:
    pids: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def reap_postgres() -> int:
    """Reap every zombie child named postgres; how many were reaped."""
    reaped = 0
    for pid in _children():
        if _stat(pid) != ("postgres", "Z"):
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except ChildProcessError:
            pass
    return reaped


class DeathWatch:
    """A pidfd on the running postmaster: readable the moment it exits
    (child or not), so the watchdog sleeps instead of polling."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.fd: int | None = None

    def watch(self, pid: int | None) -> int | None:
        """Watch pid (None: nothing); the fd to select on, or None."""
        if pid != self.pid:
            self.close()
            if pid is not None:
                try:
                    self.fd = os.pidfd_open(pid)
                    self.pid = pid
                except (OSError, AttributeError):    # gone already, or no pidfd: the caller polls
                    self.fd = None
        return self.fd

    def exited(self) -> bool:
        if self.fd is None:
            return False
        return bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.pid, self.fd = None, None
