"""The primary's watchdog: fences PostgreSQL when every lease has run out.

Runs on its own thread ("watchdog"). It reads the HA loop's acting term
(acting(): the term PostgreSQL runs read-write under, or None) and the
leases; it writes none of the loop's memory. What it does: fences
PostgreSQL (pg.fence) and hands Fenced(term) to the loop's inbox, keeps the
fencer process (pgha/fencing.py) armed to the lease end and restarts it if
it died, and wakes the loop the moment the primary's postmaster exits. Its
own state (the term it fenced, its fence count) is written by this thread
alone; other threads read it (fence_deadline, fences). The one exception:
the lease renewer, finding the fencer's handle broken, logs that through
fencer_failed(), which only dedupes a log line.

Event-driven: it sleeps until the lease ends, the loop pokes it (a change
of role or postmaster), the postmaster exits (its pidfd), or IDLE at most.
A renewed lease does not wake it: the renewing thread moves the fencer's
deadline itself (Node._lease_renewed, through fence_deadline).
"""
from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable

from pgha import logs, reaper
from pgha.fencing import Fencer
from pgha.lease import Leases
from pgha.node_inbox import Fenced, Inbox

log = logs.get("node")

# Seconds the watchdog sleeps when nothing wakes it (a change of role or
# postmaster, the postmaster's exit and the lease's end do).
IDLE = 1.0


class Watchdog:
    def __init__(self, pg: Any, fencer: Fencer, leases: Leases, clock: Callable[[], float],
                 acting: Callable[[], int | None], inbox: Inbox, on_fenced: Callable[[], None]) -> None:
        """acting: the loop's acting term, or None when not acting as primary.
        on_fenced: called (on this thread) after a fence, e.g. to queue a callback."""
        self.pg, self.fencer, self.leases, self.clock = pg, fencer, leases, clock
        self.acting, self.inbox, self.on_fenced = acting, inbox, on_fenced
        self.fences = 0                 # fences carried out (the REST snapshot reads it)
        self._fenced_term: int | None = None
        self._starting = False          # the loop is making PostgreSQL read-write (starting_read_write)
        self._stop = threading.Event()
        self._said: str | None = None
        # It sleeps on this pipe (and the postmaster's pidfd) instead of polling.
        self._poke_r, self._poke_w = os.pipe()
        os.set_blocking(self._poke_r, False)
        os.set_blocking(self._poke_w, False)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="watchdog").start()

    def stop(self) -> None:
        self._stop.set()
        self.poke()

    def poke(self) -> None:
        """Look again now (any thread): the role or the postmaster changed."""
        try:
            os.write(self._poke_w, b"!")
        except (BlockingIOError, OSError):
            pass    # a full pipe wakes it all the same

    def guarding(self) -> int | None:
        """The acting term this watchdog still guards: the loop's, unless it
        was fenced already (the loop has not taken the Fenced result yet)."""
        term = self.acting()
        return None if term is None or term == self._fenced_term else term

    def starting_read_write(self, starting: bool) -> None:
        """The HA loop is about to make PostgreSQL read-write (True), until its
        memory says acting (False, after the action): meanwhile the fencer stays
        armed to the lease end, so a daemon killed in the middle of a start or a
        promotion still leaves a fenced server (the loop's memory says acting
        only once the action returned)."""
        self._starting = starting

    def fence_deadline(self) -> float | None:
        """The lease end the fencer must enforce, None: disarmed (any thread)."""
        return self.leases.deadline() if self._starting or self.guarding() is not None else None

    def fencer_failed(self) -> None:
        self._say("fencer handle failed; this daemon still fences by itself")

    def _run(self) -> None:
        death = reaper.DeathWatch()
        fencer_death = reaper.DeathWatch()     # the fencer's exit wakes us: restarted at once, not at IDLE
        while not self._stop.is_set():
            try:    # the fencer enforces the same lease should this daemon die or freeze
                restarted = self.fencer.check()
                if restarted:
                    log.warning("%s", restarted)
                self.fencer.follow(self.fence_deadline)
            except Exception:   # never lose the watchdog to it
                self.fencer_failed()
            timeout, watched = IDLE, [self._poke_r]
            fencer_fd = fencer_death.watch(self.fencer.pid)
            if fencer_fd is not None and not fencer_death.exited():    # dead, not yet restarted: IDLE retries
                watched.append(fencer_fd)
            term = self.guarding()
            if term is not None:
                if not self.leases.held():
                    self._fence(term)
                    continue
                pid = self.pg.postmaster_pid()
                if pid is None:
                    reaper.reap_postgres()
                    self.inbox.wake()   # PostgreSQL died: don't wait for the next heartbeat
                fd = death.watch(pid)
                if fd is not None:
                    watched.append(fd)
                elif pid is not None:
                    timeout = 0.1       # no pidfd on this system: poll while primary
                timeout = min(timeout, max(0.0, self.leases.held_until() - self.clock()) + 0.002)
            else:
                death.close()
            readable = select.select(watched, [], [], timeout)[0]
            if self._poke_r in readable:
                try:
                    while os.read(self._poke_r, 512):
                        pass
                except BlockingIOError:
                    pass
        death.close()
        fencer_death.close()

    def _fence(self, term: int) -> None:
        self._fenced_term = term    # first: the fencer is disarmed from here on, as the loop will be
        log.failover("no lease from the arbiter or the standby: fencing PostgreSQL")
        self.fences += 1
        self.pg.fence()
        self.inbox.put(Fenced(term))
        self.on_fenced()

    def _say(self, text: str) -> None:
        if self._said != text:
            self._said = text
            log.error("%s", text)
