"""The node's actions: one method per node_rules.Action, named after its value.

Runs on the HA loop's thread (NodeActions.run), once the loop has taken the
instruction and made the decision's epoch durable. An action acts on
PostgreSQL (pgha/postgres.py), disarms the fencer before PostgreSQL runs as
a standby, and queues callbacks; of the node's memory it writes only its
Changes (pgha/node_memory.py), which the loop takes afterwards.

RELINQUISH (a switchover) runs two threads, and neither writes anything of
the loop's; each hands its result to the loop's inbox (pgha/node_inbox.py):
"hand-over-prep" (_prepare_hand_over) writes a checkpoint and makes our slot
on the target while PostgreSQL still takes writes and the loop goes on
reporting (HandOverPrepared); once that is in, the next RELINQUISH stops
PostgreSQL, and "follow-target" (_follow_target) starts it again in recovery
as a standby of the target (FollowingTarget). The follow-target thread owns
PostgreSQL while it runs: the loop reports "starting" and leaves it alone.

A standby's call that waits on the primary over the network (making its
slot there, reading the permanent slots' positions) runs on an
"upstream-wait" thread while the loop goes on reporting (_off_loop): a dead
primary's host holds a connection for connect_timeout, and reports late by
that long made the standby look silent to the arbiter.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable

from pgha import logs
from pgha.fencing import Fencer
from pgha.messages import PRIMARY, STANDBY, Address
from pgha.node_inbox import FollowingTarget, HandOverPrepared, Inbox
from pgha.node_memory import Changes
from pgha.node_rules import REJOINS, STANDBY_STREAM_DEADLINE, Action, Decision, HandOver, rejoin_backoff
from pgha.node_ops import PRE_PROMOTE_RETRY
from pgha.postgres import PostgresError, UpstreamNotReady, physical_slots
from pgha.settings import BASEBACKUP

log = logs.get("node")
CLONE_LOG_INTERVAL = 5.0    # seconds between progress lines of a clone
# Seconds a switching-over primary gives its checkpoint before it stops anyway
# (writes go on meanwhile; a cut one goes on in the checkpointer).
HAND_OVER_CHECKPOINT = 1.0


# The actions that make PostgreSQL read-write: the fencer is armed to the
# lease's end before each, so a daemon killed between the start and the
# watchdog's next look still leaves a fenced primary (invariant 2). Not
# BOOTSTRAP: at epoch 1 no standby can be promoted (it has no data yet), and
# a slow initdb outlasts the lease, so the fencer would stop the new server
# before its roles and database exist (seen in CI).
STARTS_READ_WRITE = frozenset({Action.RESTART_AFTER_CRASH, Action.PROMOTE_STOPPED_STANDBY,
                               Action.START_PRIMARY, Action.PROMOTE_RUNNING_STANDBY, Action.RESTART_PRIMARY})
PROMOTIONS = frozenset({Action.PROMOTE_STOPPED_STANDBY, Action.PROMOTE_RUNNING_STANDBY})    # pre_promote first
# A failure of these is counted and the next try waits (node rules S7, B2: rejoin_backoff).
BACKS_OFF = REJOINS | {Action.BOOTSTRAP}


class NodeActions:
    def __init__(self, pg: Any, fencer: Fencer, settings: Callable[[], Any], clock: Callable[[], float],
                 inbox: Inbox, callback: Callable[[str, str], None], say: Callable[[str, str, str], None],
                 clone_progress: Callable[[Any], None], heartbeat_while_busy: Callable[..., Any],
                 lease_end: Callable[[], float | None], pre_promote: Callable[[], str | None],
                 scope: str = "", renew_lease: Callable[[], None] = lambda: None) -> None:
        """settings: the node's current settings (a reload replaces them).
        lease_end: when the primary's leases run out (monotonic), armed in
        the fencer before PostgreSQL is made read-write.
        clone_progress: told a rewind.CloneProgress while pg_basebackup runs
        (None when it ends), for the report; heartbeat_while_busy(status=None):
        report to the arbiter from inside a long action (a clone: PostgreSQL
        reported stopped; a wait on the primary, _off_loop: its status as it
        is) and return the arbiter's Instruction or None. Both run on the
        loop's thread.
        scope: the cluster's name (a replica method's --scope). renew_lease: a
        heartbeat whose confirmation renews the primary's arbiter lease, after
        a bootstrap that outlasted the lease it started with."""
        self.pg, self.fencer, self.settings, self.clock = pg, fencer, settings, clock
        self.inbox, self.callback, self.say = inbox, callback, say
        self.clone_progress, self.heartbeat_while_busy = clone_progress, heartbeat_while_busy
        self.lease_end, self.renew_lease = lease_end, renew_lease
        self.cluster_name = scope
        self.pre_promote = pre_promote      # None: go on; else why the promotion must wait
        self._pre_promote_refused: tuple[float, str] | None = None     # (when, why) of the last refusal
        self.launching: threading.Thread | None = None     # the follow-target thread, once started
        self.preparing: threading.Thread | None = None     # the hand-over preparation thread, once started
        self.preparations = 0                               # preparations started (their serials)
        self._methods = {action: getattr(self, "_" + action.value) for action in Action}

    def run(self, action: Action, c: Changes, d: Decision) -> None:
        if action is not Action.RELINQUISH and (c.memory.hand_over_prepared or c.memory.preparing) is not None:
            # The switchover went another way: a later one prepares afresh.
            c.set(hand_over_prepared=None, preparing=None)
        if action in PROMOTIONS or action is Action.RESTART_AFTER_CRASH and d.then in PROMOTIONS:
            self._before_promotion()    # first: a refusing or slow pre_promote leaves nothing armed
        if action in STARTS_READ_WRITE:
            # Armed before the start; the watchdog keeps it so (Watchdog.starting_read_write,
            # set by the HA loop around the action) until the loop's memory says acting.
            self.fencer.follow(self.lease_end)
        if action not in BACKS_OFF:
            self._methods[action](c, d)
            return
        try:
            self._methods[action](c, d)
        except UpstreamNotReady:
            raise       # nothing was tried: no backoff
        except PostgresError:
            failed = c.memory.failed_rejoins + 1
            c.set(failed_rejoins=failed, last_rejoin_failure=self.clock())
            log.warning("%s failed (%d in a row): the next try in %.1fs",
                        "bootstrap" if action is Action.BOOTSTRAP else "rejoin", failed, rejoin_backoff(failed))
            raise
        c.set(failed_rejoins=0)

    def _off_loop(self, c: Changes, d: Decision, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """call(*args, **kwargs), a call that waits on the primary over the
        network (a connection to it: connect_timeout, a wait for its promotion,
        a CHECKPOINT there), on a thread of its own, while this thread (the HA
        loop's) goes on reporting every heartbeat interval: a primary whose
        host is gone (packets dropped, no RST) must not make this node's
        reports late, or the arbiter sees it as silent too. The call touches
        only its own connection to the primary, never PostgreSQL here or the
        node's memory. If a report meanwhile gets an instruction other than
        this standby's (a failover: promote; another primary), the wait is
        given up (UpstreamNotReady; the thread ends on its own, its result
        unused) so that the next heartbeat acts on it at once."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = call(*args, **kwargs)
            except BaseException as exc:    # handed to the loop's thread as it is
                outcome["error"] = exc
            finally:
                done.set()
        threading.Thread(target=run, daemon=True, name="upstream-wait").start()
        while not done.wait(c.memory.heartbeat_interval):
            instruction = self.heartbeat_while_busy(self.pg.status())
            if instruction is not None and (instruction.role != STANDBY or instruction.primary != d.primary
                                            or instruction.epoch != d.remember_epoch):
                self.inbox.wake()
                raise UpstreamNotReady(f"the arbiter's instruction changed (now {instruction.role} at epoch "
                                       f"{instruction.epoch}) while waiting for {d.primary}: acting on it next")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def starting_for_switchover(self) -> bool:
        """The follow-target thread is starting PostgreSQL."""
        return self.launching is not None and self.launching.is_alive()

    def _no_answer(self, c: Changes, d: Decision) -> None:
        pass    # handled in step()

    _ignore_old_epoch = _no_answer

    def _wait(self, c: Changes, d: Decision) -> None:
        pass    # the role line logged the reason

    def _await_start(self, c: Changes, d: Decision) -> None:
        pass

    def _paused(self, c: Changes, d: Decision) -> None:
        pass    # maintenance mode: PostgreSQL is left alone (node_rules M1)

    def _await_streaming(self, c: Changes, d: Decision) -> None:
        pass

    def _rejoin_backoff(self, c: Changes, d: Decision) -> None:
        pass    # the failure logged when the next try is due

    def _data_unreadable(self, c: Changes, d: Decision) -> None:
        raise PostgresError(d.why)

    # primary

    def _refuse_empty(self, c: Changes, d: Decision) -> None:
        instruction = c.memory.instruction
        epoch = instruction.epoch if instruction else c.memory.acted_epoch
        self.say("data", "error", f"data directory {self.pg.pgdata} is empty but this node is the "
                                   f"primary at epoch {epoch}: refusing to create an empty "
                                   "cluster over one that had data (restore it, or switch over to the standby)")

    def _bootstrap(self, c: Changes, d: Decision) -> None:
        if self.pg.bootstrap_unfinished():      # node rule B1: a daemon stopped or crashed mid-way
            self._set_aside_bootstrap("an earlier bootstrap from a backup did not finish")
        method = self.settings().bootstrap_method
        if method:
            self._bootstrap_from_backup(c, method)
        else:
            log.info("empty data directory: creating a new cluster in %s", self.pg.pgdata)
            self.pg.initdb()
            self.pg.write_settings(PRIMARY, sync_standby=None)
            self.pg.set_recovery_signal(False)
            self.pg.start()
        self.pg.create_roles()
        self.pg.bootstrap_finished()
        # initdb or a restore takes seconds, longer than the lease the last
        # heartbeat gave: a fresh one first, else the watchdog fences the new
        # primary at once and it starts again (a standby's first clone fails).
        self.renew_lease()
        c.acting(True)
        log.failover("new cluster created; running as primary (epoch %d)", d.remember_epoch)
        self.callback("on_role_change", "primary")

    def _bootstrap_from_backup(self, c: Changes, method: dict) -> None:
        """Patroni's custom bootstrap: the method restores a backup beside the
        data directory (swapped in once complete), PostgreSQL recovers it
        (the method's recovery_conf) and promotes itself; heartbeats go on
        throughout. With keep_existing_recovery_conf the copy's own
        recovery.signal (pgBackRest writes one) is used, not ours."""
        started = self.clock()
        log.info("empty data directory: creating the cluster from a backup (bootstrap_method) in %s",
                 self.pg.pgdata)
        every = c.memory.heartbeat_interval
        self.pg.restore_bootstrap(method, self.cluster_name, on_wait=self.heartbeat_while_busy, every=every)
        recovery = method.get("recovery_conf") or {}
        try:
            # As Patroni: our recovery.signal only with a recovery_conf, and never over the restore's own.
            self.pg.start_recovering(recovery, own_signal=bool(recovery) and not method.get("keep_existing_recovery_conf"),
                                     on_wait=self.heartbeat_while_busy, every=every)
        except PostgresError as exc:
            self._set_aside_bootstrap(f"bootstrap from a backup failed ({exc})")
            raise
        log.failover("the backup is restored and recovered in %.1fs", self.clock() - started)

    def _set_aside_bootstrap(self, why: str) -> None:
        """A restored copy that did not finish its recovery is never started as
        a primary: set aside (the last one kept, for the post-mortem), so the
        next try starts from an empty data directory as this one did."""
        self.pg.stop("immediate")
        aside = self.pg.set_aside(".bootstrap-failed") if not self.pg.data_is_empty() else None
        self.pg.bootstrap_finished()
        log.error("%s: %s", why, f"the copy is set aside in {aside}" if aside else "no copy was left")

    def _hand_over(self, c: Changes, d: Decision) -> None:
        log.failover("handing over to the standby: %s", d.why)
        c.acting(False)
        self.pg.stop("immediate")
        c.set(hand_over=HandOver.HANDED_OVER)
        self.callback("on_role_change", "demoted")

    def _restart_after_crash(self, c: Changes, d: Decision) -> None:
        c.set(last_crash_restart=self.clock())
        log.warning("PostgreSQL stopped unexpectedly: restarting it as primary")
        assert d.then is not None   # node_rules P5 names the start that follows
        self._methods[d.then](c, d)     # run() did the fencer and pre_promote for it
        self.callback("on_restart", "primary")

    def _restart_primary(self, c: Changes, d: Decision) -> None:
        log.failover("restart ordered by the operator: restarting PostgreSQL in place (primary; writes stop "
                     "until it is up)")
        self.pg.stop("fast")
        c.set(restart_done=d.restart)     # done once stopped: START_PRIMARY's way hands over if it will not start
        self._start_primary(c, d, restarted=True)

    def _restart_standby(self, c: Changes, d: Decision) -> None:
        log.failover("restart ordered by the operator: restarting PostgreSQL in place (standby of %s)", d.primary)
        self.pg.stop("fast")
        c.set(restart_done=d.restart)
        self._run_as_standby(c, d, restarted=True)

    def _before_promotion(self) -> None:
        """The pre_promote script (node_ops.pre_promote) must succeed first;
        a refusing one is run again only PRE_PROMOTE_RETRY later."""
        now = self.clock()
        last = self._pre_promote_refused
        if last is not None and now - last[0] < PRE_PROMOTE_RETRY:
            raise PostgresError(last[1])
        refused = self.pre_promote()
        self._pre_promote_refused = None if refused is None else (now, refused)
        if refused is not None:
            raise PostgresError(refused)

    def _promote_stopped_standby(self, c: Changes, d: Decision) -> None:
        log.failover("starting the former standby and promoting it (epoch %d)", d.remember_epoch)
        self.pg.write_settings(STANDBY)     # no upstream: replay only the WAL it has
        self.pg.set_recovery_signal(True)
        self.pg.start()
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.promote()
        c.set(failovers=c.memory.failovers + 1)
        self._running_as_primary(c, d)

    def _start_primary(self, c: Changes, d: Decision, restarted: bool = False) -> None:
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.set_recovery_signal(False)
        try:
            self.pg.start()
        except PostgresError as exc:
            self._hand_over(c, replace(d, why=str(exc)))
            return
        self._running_as_primary(c, d, restarted)

    def _running_as_primary(self, c: Changes, d: Decision, restarted: bool = False) -> None:
        c.acting(True)
        c.set(slot_ensured=None, permanent_ensured=frozenset(), slots_synced_at=float("-inf"))   # made afresh
        log.failover("PostgreSQL running as primary (epoch %d)", d.remember_epoch)
        self.callback("on_restart" if restarted else "on_role_change", "primary")

    def _promote_running_standby(self, c: Changes, d: Decision) -> None:
        log.failover("promoting this node to primary at epoch %d", d.remember_epoch)
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)   # standby.signal: PostgreSQL removes it
        self.pg.reload()    # the sync name holds from the first commit after the promotion
        self.pg.promote()
        c.set(failovers=c.memory.failovers + 1)
        c.acting(True)
        c.set(slot_ensured=None)
        log.failover("this node is now the primary (epoch %d)", d.remember_epoch)
        self.callback("on_role_change", "primary")

    def _relinquish(self, c: Changes, d: Decision) -> None:
        c.acting(True)
        prepared = c.memory.hand_over_prepared
        if prepared is None or prepared.target != d.address:
            # PostgreSQL takes writes and the loop reports meanwhile; the
            # heartbeat after the preparation (it wakes the loop) stops it.
            if self.preparing is None or not self.preparing.is_alive():
                self.preparations += 1
                c.set(preparing=self.preparations)
                self.preparing = threading.Thread(target=self._prepare_hand_over,
                                                  args=(d.address, self.preparations), daemon=True,
                                                  name="hand-over-prep")
                self.preparing.start()
            return
        c.set(hand_over_prepared=None)
        log.failover("switchover: stopping PostgreSQL to hand over to %s", d.why)
        self.pg.stop("fast")
        c.acting(False)
        c.set(hand_over=HandOver.SWITCHED_OVER)
        self.callback("on_role_change", "demoted")
        target = c.memory.prepared_upstream     # d.address, when our slot is on it
        if target is not None and self.pg.postmaster_pid() is None:
            self.launching = threading.Thread(target=self._follow_target, args=(d.primary, target), daemon=True,
                                               name="follow-target")
            self.launching.start()

    def _follow_target(self, primary: str | None, address: Address) -> None:
        """Start PostgreSQL again at once, in recovery, as a standby of the
        switchover's target. A thread: the HA loop reports the hand-over
        meanwhile (PostgreSQL "starting"), so it starts while the arbiter
        decides and the target is promoted; it streams from the target
        (cascading) and follows its timeline switch, so it is the synchronous
        standby the new primary's first commit waits for. Read-only, on the
        arbiter's relinquish instruction that named the target, and after the
        clean stop: the arbiter promotes the target only once we report that.
        If it will not start, the standby rows start it after the decision."""
        try:
            self.fencer.disarm()    # before PostgreSQL runs here as a standby
            self.pg.write_settings(STANDBY, primary_address=address)
            self.pg.set_recovery_signal(True)
            self.pg.launch()
        except PostgresError as exc:
            log.warning("switchover: PostgreSQL did not start as a standby of %s (%s); it starts "
                        "after the arbiter's decision", primary, exc)
            return
        self.inbox.put(FollowingTarget(address, self.clock()))    # and report what runs now
        log.failover("switchover: PostgreSQL starting as a standby of %s (cascading until it is promoted)",
                     primary)
        self.callback("on_role_change", "replica")

    def _prepare_hand_over(self, target: Address | None, serial: int) -> None:
        """Work a switchover would otherwise do while no write is accepted,
        done while PostgreSQL still takes writes: a checkpoint, so the
        shutdown checkpoint has little left to write, and our replication
        slot on the target (a standby can hold a physical slot, and keeps it
        when promoted), so following it after the decision needs no round
        trip. Both best effort: a failure only leaves the work for later.
        A thread ("hand-over-prep"): it writes nothing of the loop's and
        hands HandOverPrepared to its inbox, whatever happened."""
        slot_on = None
        try:
            self.pg.checkpoint(timeout=HAND_OVER_CHECKPOINT)
            if target is not None:
                self.pg.prepare_upstream(target, self.settings().slot_name, wait_promoted=False)
                slot_on = target
        except PostgresError as exc:
            log.warning("switchover: %s; following the target will make the slot", exc)
        except Exception:   # the hand-over goes on without the preparation
            log.exception("switchover: preparing the hand-over failed")
        finally:
            self.inbox.put(HandOverPrepared(target, slot_on, serial))

    def _set_sync(self, c: Changes, d: Decision) -> None:
        c.acting(True)
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.reload()
        if d.sync_standby:
            log.info("synchronous replication on: commits wait for %s", d.sync_standby)
        else:
            log.warning("synchronous replication off (arbiter marked the standby not promotable)")
        if d.slot:
            self._ensure_slot(c, d)

    def _ensure_slot(self, c: Changes, d: Decision) -> None:
        c.acting(True)
        self.pg.ensure_slot(d.slot)
        c.set(slot_ensured=d.slot)

    def _sync_slots(self, c: Changes, d: Decision) -> None:
        """Permanent slots (setting permanent_slots): made on the primary, copied
        on a standby (d.address: the primary it streams from). A failure is
        logged once and tried again after node.SLOT_COPY_INTERVAL."""
        slots = dict(self.settings().permanent_slots)
        c.set(slots_synced_at=self.clock())
        try:
            if d.address is None:
                self.pg.ensure_permanent_slots(slots)
                c.set(permanent_ensured=frozenset(slots))
            else:
                positions = self._off_loop(c, d, self.pg.primary_slot_positions, d.address, slots)
                self.pg.copy_permanent_slots(slots, positions)
        except PostgresError as exc:     # UpstreamNotReady too: the next try will do
            self.say("slots", "warning", f"permanent slots: {exc}")
            return
        self.say("slots", "info", f"permanent slots {', '.join(sorted(slots))} "
                                  f"{'in place' if d.address is None else 'copied from the primary'}")

    def _stay_primary(self, c: Changes, d: Decision) -> None:
        c.acting(True)

    # standby

    def _demote(self, c: Changes, d: Decision) -> None:
        log.failover("demoting: %s is the primary at epoch %d; stopping PostgreSQL to rejoin as "
                     "its standby", d.primary, d.remember_epoch)
        c.acting(False)
        self.pg.stop("fast")
        self.callback("on_role_change", "demoted")

    def _follow(self, c: Changes, d: Decision) -> None:
        self.pg.write_settings(STANDBY, primary_address=d.address)
        self.pg.reload()
        c.set(upstream=d.address, standby_since=self.clock())
        self.pg.drop_inactive_slots(keep=self.permanent_physical())

    def _stay_standby(self, c: Changes, d: Decision) -> None:
        c.set(standby_since=self.clock(), rejoin_failures=0)

    def permanent_physical(self) -> frozenset[str]:
        """The permanent physical slots: a standby keeps its copies of them."""
        slots = getattr(self.settings(), "permanent_slots", None) or {}
        return frozenset(physical_slots(slots))

    def _restart_rejoin(self, c: Changes, d: Decision) -> None:
        log.warning("not streaming from the primary for %.0fs (diverged timeline?): stopping to "
                    "rejoin again", STANDBY_STREAM_DEADLINE)
        self.pg.stop("fast")
        c.set(rejoin_failures=c.memory.rejoin_failures + 1)

    # Rejoin: plain start if our data follows the primary, else pg_rewind,
    # else (or when a rewound copy still cannot follow) a fresh pg_basebackup.

    def _clone(self, c: Changes, d: Decision) -> None:
        methods = ", ".join(self.settings().create_replica_methods)
        if d.why == "empty":
            log.info("empty data directory: a copy of %s (%s)", d.primary, methods)
        else:
            log.failover("rejoining as standby of %s: a fresh copy (%s; earlier attempt could not "
                         "follow it)", d.primary, methods)
        self._off_loop(c, d, self.pg.prepare_upstream, d.address, self.settings().slot_name)
        self._make_replica(c, d)
        self._run_as_standby(c, d)

    def _reinit(self, c: Changes, d: Decision) -> None:
        log.failover("reinit ordered by the operator: a fresh copy of %s (the old data is kept until the "
                     "copy is complete)", d.primary)
        if self.pg.postmaster_pid():
            self.pg.stop("fast")
        self._off_loop(c, d, self.pg.prepare_upstream, d.address, self.settings().slot_name)
        self._make_replica(c, d)
        self._run_as_standby(c, d)
        c.set(reinit_done=d.reinit, rejoin_failures=0)

    def _rewind(self, c: Changes, d: Decision) -> None:
        log.failover("rejoining as standby of %s: pg_rewind", d.primary)
        self._off_loop(c, d, self.pg.prepare_upstream, d.address, self.settings().slot_name, checkpoint=True)
        try:
            outcome = self.pg.rewind(d.address)
        except PostgresError as exc:
            # Only when pg_rewind itself gave up: the WAL kept here and on the
            # new primary (wal_keep_size) did not reach back far enough.
            log.warning("%s; rewinding is not possible: falling back to a fresh copy (%s)", exc,
                        ", ".join(self.settings().create_replica_methods))
            self._make_replica(c, d)
        else:
            fetched = (f"{outcome.fetched_segments} missing WAL segment(s) fetched from {d.primary}"
                       if outcome.fetched_segments else "with the WAL kept here")
            log.failover("pg_rewind done in %.1fs (%s): path %s", outcome.seconds, fetched, outcome.path)
        self._run_as_standby(c, d)

    def _make_replica(self, c: Changes, d: Decision) -> None:
        """A fresh copy by the node's create_replica_methods, in order (as
        Patroni's): the first that succeeds makes it; when every one failed,
        the last one's error stands (the rejoin backoff tries again, rule S7)."""
        s = self.settings()
        methods = s.create_replica_methods
        for i, name in enumerate(methods):
            try:
                if name == BASEBACKUP:
                    self._basebackup(c, d)
                else:
                    self._restore(c, d, name, s.replica_methods[name])
                return
            except PostgresError as exc:
                if i + 1 == len(methods):
                    raise
                log.warning("%s; trying the next replica method, %s", exc, methods[i + 1])

    def _restore(self, c: Changes, d: Decision, name: str, method: dict) -> None:
        started = self.clock()
        log.info("making the copy with replica method %s (a backup, not a load on %s)", name, d.primary)
        self.pg.restore_replica(name, method, self.cluster_name, d.address, on_wait=self.heartbeat_while_busy,
                                every=c.memory.heartbeat_interval)
        log.failover("replica method %s made the copy in %.1fs; it catches up from %s", name,
                     self.clock() - started, d.primary)

    def _basebackup(self, c: Changes, d: Decision) -> None:
        """pg_basebackup into a temporary folder, saying its progress in the
        log every CLONE_LOG_INTERVAL and in the report. The HA loop is busy
        meanwhile, so the progress callback also sends the arbiter a
        heartbeat; its instruction is acted on once the clone is done."""
        started = self.clock()
        said_at = heartbeat_at = started

        def progress(p):
            nonlocal said_at, heartbeat_at
            self.clone_progress(p)
            now = self.clock()
            if now - said_at >= CLONE_LOG_INTERVAL:
                said_at = now
                log.info("clone from %s: %s after %.0fs", d.primary, p.describe(), now - started)
            if now - heartbeat_at >= c.memory.heartbeat_interval:
                heartbeat_at = now
                self.heartbeat_while_busy()

        try:
            self.pg.basebackup(d.address, on_progress=progress)
        finally:
            self.clone_progress(None)
        log.failover("clone from %s complete in %.1fs", d.primary, self.clock() - started)

    def _start_standby(self, c: Changes, d: Decision) -> None:
        switchover = d.why == "switchover"
        if switchover:
            log.failover("following %s from the hand-over point (clean switchover: no rewind)", d.primary)
        if not (switchover and c.memory.prepared_upstream == d.address):
            self._off_loop(c, d, self.pg.prepare_upstream, d.address, self.settings().slot_name,
                           wait_promoted=not switchover)
        c.set(prepared_upstream=None)
        self._run_as_standby(c, d)

    def _run_as_standby(self, c: Changes, d: Decision, restarted: bool = False) -> None:
        self.fencer.disarm()    # before PostgreSQL runs here as a standby
        self.pg.write_settings(STANDBY, primary_address=d.address)
        self.pg.set_recovery_signal(True)
        try:
            self.pg.start()
        except PostgresError:
            c.set(rejoin_failures=c.memory.rejoin_failures + 1)
            raise
        c.set(upstream=d.address, standby_since=self.clock())
        log.failover("PostgreSQL running as standby of %s", d.primary)
        self.callback("on_restart" if restarted else "on_role_change", "replica")
