"""The node's HA loop: report to the arbiter, then do what it says.

Each heartbeat the node reads its PostgreSQL's status, sends it to the
arbiter, gathers what the rules look at (a node_rules.NodeView), asks
node_rules.decide() for one action and carries it out here, one small
method per action. It never decides a role by itself. Two threads guard
the primary: the watchdog fences PostgreSQL when every lease has run out,
and the lease renewer asks the standby for its lease. The standby answers
those requests from the peer server.
"""
import os
import select
import threading
import time
from dataclasses import replace

from pgha import logs
from pgha import arbiter_link, auth, clusters, node_ops, protocol, reaper, store, tls
from pgha.arbiter_link import ArbiterLink, addresses_from_settings
from pgha.callbacks import CallbackRunner
from pgha.fencing import Fencer
from pgha.lease import Grants, Leases, LeaseRenewer, PeerServer, peer_credential, peer_verifier
from pgha.messages import PG_STARTING, PG_STOPPED, PRIMARY, STANDBY, WAIT, Address, Instruction, Report
from pgha.node_rules import (CRASH_RESTART_WINDOW, STANDBY_STREAM_DEADLINE, IDLE, Action, DataDir,
                             HandOver, NodeView, decide)
from pgha.node_state import ClusterWatcher, LoopStats, NodeSnapshot, StatePublisher
from pgha.postgres import PostgresError

log = logs.get("node")
CLONE_LOG_INTERVAL = 5.0    # seconds between progress lines of a clone

# Seconds the watchdog sleeps when nothing wakes it (a change of role or
# postmaster, the postmaster's exit and the lease's end do).
WATCHDOG_IDLE = 1.0
# Heartbeat interval of a standby a switchover is handing over to, until it is promoted.
HURRY_INTERVAL = 0.02
# Seconds a switching-over primary gives its checkpoint before it stops anyway
# (writes go on meanwhile; a cut one goes on in the checkpointer).
HAND_OVER_CHECKPOINT = 1.0


class Node:
    def __init__(self, settings, pg, keys, clock=time.monotonic, settings_loader=None):
        """keys: (auth.Credential towards the arbiter, pair keys of the lease
        link), from pgha.keys.node_keys. settings_loader: () -> settings, for
        a reload (SIGHUP, pgha.ctl reload)."""
        self.s = settings
        self.pg = pg
        self.clock = clock
        # The watchdog sleeps on this pipe (and the postmaster's pidfd) instead of polling.
        self._watch_r, self._watch_w = os.pipe()
        os.set_blocking(self._watch_r, False)
        os.set_blocking(self._watch_w, False)
        self.leases = Leases(clock, on_renew=self._lease_renewed)
        # Fences PostgreSQL at the lease end even if this daemon dies or freezes.
        self.fencer = Fencer(pg.state_dir, pg.pgdata, getattr(settings, "log_file", None))
        self.grants = Grants(clock)
        credential, pair_keys = keys
        self.credential = credential
        # Which of the arbiter's clusters this node is in (pgha.clusters); every request names it.
        self.cluster = getattr(settings, "cluster_name", clusters.DEFAULT)
        # One arbiter, or several of which one leads (pgha.arbiter_link finds it).
        # TLS on the arbiter link and the lease link when the tls_* settings are set (pgha.tls).
        self.tls_server, self.tls_client = tls.contexts(settings)
        self.arbiter = ArbiterLink(addresses_from_settings(settings), timeout=1.0, credential=credential,
                                   tls_context=self.tls_client)
        self.peer_verifier = peer_verifier(settings.name, pair_keys)
        self.peer_credential = peer_credential(settings.name, pair_keys)
        self.state_file = os.path.join(pg.state_dir, "node-state.json")
        # Where the other members reach this node, in every report.
        self.address = Address(host=settings.host, pg_port=settings.pg_port,
                               peer_port=settings.peer_advertise_port or settings.peer_port, slot=settings.slot_name)
        self.acted_epoch = 0
        self.instruction = None         # the last Instruction taken (the lease renewer reads it)
        self.lease_time = 1.8           # until the arbiter tells us the cluster's timings
        self.heartbeat_interval = 0.5
        self.acting_primary = False     # PostgreSQL runs as primary under our leases
        self.hand_over = HandOver.NONE  # HANDED_OVER: we stopped PostgreSQL for the standby; reported
        self.last_crash_restart = -CRASH_RESTART_WINDOW
        self.upstream = None            # primary address the running standby follows
        self.standby_since = None
        self.rejoin_failures = 0       # rejoins that did not end streaming: next one clones afresh
        self.slot_ensured = None
        self.prepared_upstream = None   # the switchover target our slot was made on before the hand-over
        self._launching = None          # the thread of _follow_target while it runs
        self.last_action = None         # the last action other than a steady one (node_rules.IDLE)
        self.clone_progress = None      # a rewind.CloneProgress while pg_basebackup runs
        self._actions = {action: getattr(self, "_" + action.value) for action in Action}
        self._said = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # run the next heartbeat now, not at the next tick
        # What the REST API serves: a snapshot published after each heartbeat.
        self.state = StatePublisher(settings.name, clock)
        self.status = Report()              # PostgreSQL as the last heartbeat saw it
        self.failovers = 0                  # promotions carried out
        self.fences = 0                     # fences by the watchdog
        self.loop_stats = LoopStats()
        self.heartbeat_rtt = None
        self.arbiter_reachable = False
        self.grant_reported = 0.0           # not grants.remaining_for_report(): that pauses grants
        self.reloader = node_ops.NodeReloader(settings_loader)
        self.callbacks = CallbackRunner(settings.name, lambda: node_ops.callback_scripts(self.s))

    # -- life cycle ------------------------------------------------------------

    def run(self):
        # First, before anything starts: a damaged state file stops the node (store.NodeStateError),
        # and a taken API port stops it before it acts.
        self.acted_epoch = store.load_acted_epoch(self.state_file)
        api_server, watcher = self._start_api()
        self.pg.prepare_folders()
        if reaper.become_subreaper():   # the postmaster becomes our child: its death is reaped at once
            reaper.reap_postgres()
        adopted = self.fencer.start()
        log.info("fencer %s (pid %d)", "adopted" if adopted else "started", self.fencer.pid)
        peer = PeerServer(self.s.peer_bind, self.s.peer_port, self.grants, lambda: self.lease_time,
                          verifier=self.peer_verifier)
        peer.tls_context = self.tls_server
        threading.Thread(target=peer.serve_forever, daemon=True,
                         name="peer-server").start()
        renewer = LeaseRenewer(self.s.name, self.leases, self._renew_target, lambda: self.heartbeat_interval,
                               credential=self.peer_credential, tls_context=self.tls_client)
        renewer.start()
        running_as = self.pg.status().running_as    # one status query at start, for both uses below
        if running_as == PRIMARY:
            # PostgreSQL outlived a previous node daemon: it gets one lease
            # period to be confirmed by the arbiter, then it is fenced.
            self.acting_primary = True
            self.leases.renew("grace", self.clock(), self.lease_time)
            self.fencer.cap(self.lease_time)    # never later than the lease the last daemon armed
            log.warning("PostgreSQL is already running as primary: fencing it unless the arbiter "
                        "confirms this node within %.1fs", self.lease_time)
        else:
            self.fencer.disarm()    # an adopted fencer's old deadline must not hit a standby
        threading.Thread(target=self._watchdog, daemon=True, name="watchdog").start()
        self._callback("on_start", running_as or "stopped")
        log.info("node %s started (last epoch acted on: %d); asking the arbiter at %s:%s before "
                 "starting PostgreSQL", self.s.name, self.acted_epoch, self.s.arbiter_host, self.s.arbiter_port)
        try:
            while not self._stop.is_set():
                started = self.clock()
                acting_before = self.acting_primary, self.pg.postmaster_pid()
                try:
                    if not self._starting_for_switchover():   # it writes PostgreSQL's files: reload after it
                        self.reloader.reload_if_asked(self)
                    self.step()
                    self._said.pop("postgres", None)
                except PostgresError as exc:    # logged once until it changes or clears
                    self._say("postgres", "error", str(exc))
                except Exception:   # a bug must not take the daemon (and its fencing) down
                    log.exception("unexpected error in the HA loop; carrying on")
                self._publish(self.clock() - started)
                if (self.acting_primary, self.pg.postmaster_pid()) != acting_before:
                    self._poke_watchdog()   # it watches the new role and postmaster
                    continue    # a role or process change: report it at once
                self._wake.wait(max(0.02, self._next_report_in() - (self.clock() - started)))
                self._wake.clear()
        finally:
            if api_server:
                api_server.stop()
                watcher.stop()
            renewer.stop()
            peer.shutdown()
            peer.server_close()
            self.shutdown_postgres()
            if self.pg.postmaster_pid() is None:
                self.fencer.stop()      # nothing left to fence; else it stays, armed
            self._callback("on_stop", "stopped")
            self.callbacks.stop()       # the queued callbacks, at most a timeout each

    def _next_report_in(self):
        """Seconds from this heartbeat's start to the next: the interval, or
        sooner when the arbiter's last answer (this heartbeat's, not an older
        one) asked for it: a switchover's target hurries, and a decision due
        before the next heartbeat (decision.report_in) is reported for in time."""
        instruction, interval = self.instruction, self.heartbeat_interval
        if instruction is None or not self.arbiter_reachable:
            return interval
        if instruction.hurry and instruction.role == STANDBY:
            return HURRY_INTERVAL
        return min(interval, instruction.report_in or interval)

    def stop(self):
        self._stop.set()
        self._wake.set()
        self._poke_watchdog()

    def request_reload(self):
        """Re-read the settings before the next heartbeat (SIGHUP)."""
        self.reloader.ask()
        self._wake.set()

    def shutdown_postgres(self):
        # A primary nobody renews leases for must not outlive its node daemon.
        launching = self._launching
        if launching is not None:
            launching.join(30)      # a start under way ends first, so it is stopped too
        if self.pg.postmaster_pid():
            log.info("stopping PostgreSQL")
            self.acting_primary = False
            self.pg.stop("fast", timeout=30)

    # -- one heartbeat -----------------------------------------------------------

    def _starting_for_switchover(self):
        return self._launching is not None and self._launching.is_alive()

    def step(self):
        if self._starting_for_switchover():
            # _follow_target is starting PostgreSQL: leave it alone meanwhile.
            status = self.status = Report(pg=PG_STARTING)
        else:
            self._launching = None
            status = self.status = self.pg.status()
        report = self._report(status)
        self.grant_reported = report.grant_remaining
        sent_at = self.clock()
        instruction = self._heartbeat(report)
        view = self._view(instruction, status)
        decision = decide(view)
        if decision.action not in IDLE:
            self.last_action = decision.action.value
        self._say("action", "debug" if decision.action in IDLE else "info",
                  f"action {decision.action.value} (row {decision.row}, PostgreSQL {view.pg})")
        if decision.action is Action.NO_ANSWER:
            return
        if decision.action is Action.IGNORE_OLD_EPOCH:
            self._say("arbiter", "warning", f"ignoring instruction of epoch {instruction.epoch}: this node "
                                            f"already acted on epoch {self.acted_epoch}")
            return
        self._take(instruction, sent_at)
        if decision.hand_over is not self.hand_over:
            if instruction.role == PRIMARY:
                log.warning("the arbiter kept this node primary after it handed over: starting again")
            self.hand_over = decision.hand_over
        if decision.remember_epoch is not None:
            self._remember_epoch(decision.remember_epoch)
        self._actions[decision.action](decision)

    def _take(self, instruction, sent_at):
        """Adopt a current instruction: its timings, and the leases and grants its role calls for."""
        self.instruction = instruction
        self.reloader.note_generation(instruction.reload_generation)
        self.lease_time = instruction.lease_time or self.lease_time
        self.heartbeat_interval = instruction.heartbeat_interval or self.heartbeat_interval
        role = instruction.role
        self._say("role", "info", f"arbiter: {role} at epoch {instruction.epoch}"
                  + (f" of {instruction.primary}" if role == STANDBY else "")
                  + (f" ({instruction.reason})" if role == WAIT else ""))
        if role == PRIMARY:
            self.leases.renew("arbiter", sent_at, self.lease_time)
            self.grants.stop()
        elif role == STANDBY:
            self.grants.follow(instruction.primary, instruction.epoch)

    def _view(self, instruction, status):
        """What the rules look at. The data directory of a stopped PostgreSQL
        is read only when the instruction may act on it."""
        data, data_error = None, None
        if status.pg == PG_STOPPED and instruction is not None and instruction.role != WAIT \
                and instruction.epoch >= self.acted_epoch:
            data, data_error = self._read_data_dir()
        return NodeView(
            now=self.clock(), instruction=instruction, acted_epoch=self.acted_epoch, pg=status.pg,
            running_as=status.running_as,
            data=data, data_error=data_error, acting_primary=self.acting_primary, hand_over=self.hand_over,
            last_crash_restart=self.last_crash_restart, rejoin_failures=self.rejoin_failures,
            upstream=self.upstream, streaming=status.receiver == "streaming",
            not_streaming_since=self.standby_since, slot_ensured=self.slot_ensured,
            sync_standby=status.sync_standby)

    def _read_data_dir(self):
        if self.pg.data_is_empty():
            return DataDir.EMPTY, None
        if self.hand_over is HandOver.SWITCHED_OVER and not self.pg.recovery_signal_set():
            # This daemon stopped it as primary for a switchover and did not
            # start it again: no pg_controldata run on the switchover's path.
            return DataDir.WAS_PRIMARY, None
        try:
            return (DataDir.WAS_STANDBY if self.pg.was_standby() else DataDir.WAS_PRIMARY), None
        except PostgresError as exc:
            return DataDir.UNREADABLE, str(exc)

    def _report(self, status):
        """This heartbeat's messages.Report: PostgreSQL's status (pg.status())
        and what the node adds, its address, leases and last action."""
        return replace(
            status, address=self.address, relinquished=self.hand_over is not HandOver.NONE,
            grant_remaining=round(self.grants.remaining_for_report(), 3), last_action=self.last_action,
            clone_progress=None if self.clone_progress is None else self.clone_progress.to_wire(),
            lease_remaining={source: round(self.leases.remaining(source), 3) for source in ("arbiter", "standby")}
            if self.acting_primary else None)

    def _heartbeat(self, report):
        """The arbiter's Instruction, or None (logged) when there is none to act on."""
        self.arbiter_reachable = False
        sent = self.clock()
        try:
            reply = self.arbiter.request({"type": "heartbeat", "cluster": self.cluster, "node": self.s.name,
                                          "epoch": self.acted_epoch, "report": report.to_wire()})
            self.heartbeat_rtt = self.clock() - sent
        except auth.AuthError as exc:   # not the arbiter's reply to this heartbeat: act on nothing
            self._say("arbiter", "error", f"ignoring a reply that is not the arbiter's: {exc}")
            return None
        except (OSError, protocol.ProtocolError) as exc:
            self._say("arbiter", "warning", f"arbiter {self.arbiter} unreachable: {exc}")
            return None
        try:
            if reply.get("type") != "instruction":
                raise protocol.ProtocolError(str(reply.get("error", reply)))
            instruction = Instruction.from_wire(reply)
            if instruction.cluster not in (None, self.cluster):
                raise protocol.ProtocolError(f"the instruction is for cluster {instruction.cluster}, "
                                             f"not this node's {self.cluster}")
        except protocol.ProtocolError as exc:
            self._say("arbiter", "error", f"arbiter refused the heartbeat: {exc}")
            self.arbiter.close()
            return None
        self._say("arbiter", "info", "arbiter reachable")
        self.arbiter_reachable = True
        return instruction

    # -- actions: one method per node_rules.Action, named after its value --------
    # The epoch (decision.remember_epoch) is already durable when these run.

    def _no_answer(self, d):
        pass    # handled in step()

    _ignore_old_epoch = _no_answer

    def _wait(self, d):
        pass    # the role line logged the reason

    def _await_start(self, d):
        pass

    def _paused(self, d):
        pass    # maintenance mode: PostgreSQL is left alone (node_rules M1)

    def _await_streaming(self, d):
        pass

    def _data_unreadable(self, d):
        raise PostgresError(d.why)

    # primary

    def _refuse_empty(self, d):
        self._say("data", "error", f"data directory {self.pg.pgdata} is empty but this node is the "
                                   f"primary at epoch {self.instruction.epoch}: refusing to create an empty "
                                   "cluster over one that had data (restore it, or switch over to the standby)")

    def _bootstrap(self, d):
        log.info("empty data directory: creating a new cluster in %s", self.pg.pgdata)
        self.pg.initdb()
        self.pg.write_settings(PRIMARY, sync_standby=None)
        self.pg.set_recovery_signal(False)
        self.pg.start()
        self.pg.create_roles()
        self.acting_primary = True
        log.failover("new cluster created; running as primary (epoch %d)", d.remember_epoch)
        self._callback("on_role_change", "primary")

    def _hand_over(self, d):
        log.failover("handing over to the standby: %s", d.why)
        self.acting_primary = False
        self.pg.stop("immediate")
        self.hand_over = HandOver.HANDED_OVER
        self._callback("on_role_change", "demoted")

    def _restart_after_crash(self, d):
        self.last_crash_restart = self.clock()
        log.warning("PostgreSQL stopped unexpectedly: restarting it as primary")
        self._actions[d.then](d)

    def _promote_stopped_standby(self, d):
        log.failover("starting the former standby and promoting it (epoch %d)", d.remember_epoch)
        self.pg.write_settings(STANDBY)     # no upstream: replay only the WAL it has
        self.pg.set_recovery_signal(True)
        self.pg.start()
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.promote()
        self.failovers += 1
        self._running_as_primary(d)

    def _start_primary(self, d):
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.set_recovery_signal(False)
        try:
            self.pg.start()
        except PostgresError as exc:
            self._hand_over(replace(d, why=str(exc)))
            return
        self._running_as_primary(d)

    def _running_as_primary(self, d):
        self.acting_primary = True
        self.slot_ensured = None
        log.failover("PostgreSQL running as primary (epoch %d)", d.remember_epoch)
        self._callback("on_role_change", "primary")

    def _promote_running_standby(self, d):
        log.failover("promoting this node to primary at epoch %d", d.remember_epoch)
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)   # standby.signal: PostgreSQL removes it
        self.pg.reload()    # the sync name holds from the first commit after the promotion
        self.pg.promote()
        self.failovers += 1
        self.acting_primary = True
        self.slot_ensured = None
        log.failover("this node is now the primary (epoch %d)", d.remember_epoch)
        self._callback("on_role_change", "primary")

    def _relinquish(self, d):
        self.acting_primary = True
        self._prepare_hand_over(d.address)
        log.failover("switchover: stopping PostgreSQL to hand over to %s", d.why)
        self.pg.stop("fast")
        self.acting_primary = False
        self.hand_over = HandOver.SWITCHED_OVER
        self._callback("on_role_change", "demoted")
        if self.prepared_upstream is not None and self.pg.postmaster_pid() is None:
            self._launching = threading.Thread(target=self._follow_target, args=(d,), daemon=True,
                                               name="follow-target")
            self._launching.start()

    def _follow_target(self, d):
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
            self.pg.write_settings(STANDBY, primary_address=d.address)
            self.pg.set_recovery_signal(True)
            self.pg.launch()
        except PostgresError as exc:
            log.warning("switchover: PostgreSQL did not start as a standby of %s (%s); it starts "
                        "after the arbiter's decision", d.primary, exc)
            return
        self.prepared_upstream = None
        self.upstream, self.standby_since = d.address, self.clock()
        log.failover("switchover: PostgreSQL starting as a standby of %s (cascading until it is promoted)",
                     d.primary)
        self._callback("on_role_change", "replica")
        self._wake.set()    # report what runs now

    def _prepare_hand_over(self, target):
        """Work a switchover would otherwise do while no write is accepted,
        done while PostgreSQL still takes writes: a checkpoint, so the
        shutdown checkpoint has little left to write, and our replication
        slot on the target (a standby can hold a physical slot, and keeps it
        when promoted), so following it after the decision needs no round
        trip. Both best effort: a failure only leaves the work for later."""
        self.prepared_upstream = None
        self.pg.checkpoint(timeout=HAND_OVER_CHECKPOINT)
        if target is None:
            return
        try:
            self.pg.prepare_upstream(target, self.s.slot_name, wait_promoted=False)
            self.prepared_upstream = target
        except PostgresError as exc:
            log.warning("switchover: %s; following the target will make the slot", exc)

    def _set_sync(self, d):
        self.acting_primary = True
        self.pg.write_settings(PRIMARY, sync_standby=d.sync_standby)
        self.pg.reload()
        if d.sync_standby:
            log.info("synchronous replication on: commits wait for %s", d.sync_standby)
        else:
            log.warning("synchronous replication off (arbiter marked the standby not promotable)")
        if d.slot:
            self._ensure_slot(d)

    def _ensure_slot(self, d):
        self.acting_primary = True
        self.pg.ensure_slot(d.slot)
        self.slot_ensured = d.slot

    def _stay_primary(self, d):
        self.acting_primary = True

    # standby

    def _demote(self, d):
        log.failover("demoting: %s is the primary at epoch %d; stopping PostgreSQL to rejoin as "
                     "its standby", d.primary, d.remember_epoch)
        self.acting_primary = False
        self.pg.stop("fast")
        self._callback("on_role_change", "demoted")

    def _follow(self, d):
        self.pg.write_settings(STANDBY, primary_address=d.address)
        self.pg.reload()
        self.upstream, self.standby_since = d.address, self.clock()
        self.pg.drop_inactive_slots()

    def _stay_standby(self, d):
        self.standby_since = self.clock()
        self.rejoin_failures = 0

    def _restart_rejoin(self, d):
        log.warning("not streaming from the primary for %.0fs (diverged timeline?): stopping to "
                    "rejoin again", STANDBY_STREAM_DEADLINE)
        self.pg.stop("fast")
        self.rejoin_failures += 1

    # Rejoin: plain start if our data follows the primary, else pg_rewind,
    # else (or when a rewound copy still cannot follow) a fresh pg_basebackup.

    def _clone(self, d):
        if d.why == "empty":
            log.info("empty data directory: cloning %s with pg_basebackup", d.primary)
        else:
            log.failover("rejoining as standby of %s: a fresh pg_basebackup (earlier attempt could not "
                         "follow it)", d.primary)
        self.pg.prepare_upstream(d.address, self.s.slot_name)
        self._basebackup(d)
        self._run_as_standby(d)

    def _rewind(self, d):
        log.failover("rejoining as standby of %s: pg_rewind", d.primary)
        self.pg.prepare_upstream(d.address, self.s.slot_name, checkpoint=True)
        try:
            outcome = self.pg.rewind(d.address)
        except PostgresError as exc:
            # Only when pg_rewind itself gave up: the WAL kept here and on the
            # new primary (wal_keep_size) did not reach back far enough.
            log.warning("%s; rewinding is not possible: falling back to a fresh pg_basebackup", exc)
            self._basebackup(d)
        else:
            fetched = (f"{outcome.fetched_segments} missing WAL segment(s) fetched from {d.primary}"
                       if outcome.fetched_segments else "with the WAL kept here")
            log.failover("pg_rewind done in %.1fs (%s): path %s", outcome.seconds, fetched, outcome.path)
        self._run_as_standby(d)

    def _basebackup(self, d):
        """pg_basebackup into a temporary folder, saying its progress in the
        log every CLONE_LOG_INTERVAL and in the report. The HA loop is busy
        meanwhile, so the progress callback also sends the arbiter a
        heartbeat; its instruction is acted on once the clone is done."""
        started = self.clock()
        said_at = heartbeat_at = started

        def progress(p):
            nonlocal said_at, heartbeat_at
            self.clone_progress = p
            now = self.clock()
            if now - said_at >= CLONE_LOG_INTERVAL:
                said_at = now
                log.info("clone from %s: %s after %.0fs", d.primary, p.describe(), now - started)
            if now - heartbeat_at >= self.heartbeat_interval:
                heartbeat_at = now
                self._heartbeat(self._report(Report(pg=PG_STOPPED)))

        try:
            self.pg.basebackup(d.address, on_progress=progress)
        finally:
            self.clone_progress = None
        log.failover("clone from %s complete in %.1fs", d.primary, self.clock() - started)

    def _start_standby(self, d):
        switchover = d.why == "switchover"
        if switchover:
            log.failover("following %s from the hand-over point (clean switchover: no rewind)", d.primary)
        if not (switchover and self.prepared_upstream == d.address):
            self.pg.prepare_upstream(d.address, self.s.slot_name, wait_promoted=not switchover)
        self.prepared_upstream = None
        self._run_as_standby(d)

    def _run_as_standby(self, d):
        self.fencer.disarm()    # before PostgreSQL runs here as a standby
        self.pg.write_settings(STANDBY, primary_address=d.address)
        self.pg.set_recovery_signal(True)
        try:
            self.pg.start()
        except PostgresError:
            self.rejoin_failures += 1
            raise
        self.upstream, self.standby_since = d.address, self.clock()
        log.failover("PostgreSQL running as standby of %s", d.primary)
        self._callback("on_role_change", "replica")

    # -- helpers -------------------------------------------------------------------

    def _remember_epoch(self, epoch):
        # Durable before acting, so a restarted node never obeys an older decision.
        if epoch > self.acted_epoch:
            store.save_json(self.state_file, {"acted_epoch": epoch})
            self.acted_epoch = epoch

    def _renew_target(self):
        instruction = self.instruction
        if not instruction or instruction.role != PRIMARY or not self.acting_primary:
            return None
        address = instruction.standby_address
        if not address:
            return None
        return address.host, address.peer_port, instruction.epoch, self.lease_time

    def _lease_renewed(self):
        """The fencer follows a renewed lease from the renewing thread (the HA
        loop or the lease renewer). Waking the watchdog for it cost a thread
        switch per renewal; the watchdog still looks every WATCHDOG_IDLE.
        Never waits for the fencer handle (the watchdog may be restarting
        the fencer): then the watchdog is woken to follow instead."""
        try:
            if self.fencer.follow(self._fence_deadline, wait=False):
                return
        except Exception:   # the watchdog follows at its next look
            self._say("fencer", "error", "fencer handle failed; this daemon still fences by itself")
        self._poke_watchdog()

    def _fence_deadline(self):
        return self.leases.deadline() if self.acting_primary else None

    def _poke_watchdog(self):
        try:
            os.write(self._watch_w, b"!")
        except (BlockingIOError, OSError):
            pass    # a full pipe wakes it all the same

    def _watchdog(self):
        """Fences at the lease end, keeps the fencer armed to the lease, and
        wakes the HA loop the moment the primary's PostgreSQL dies.

        Event-driven: it sleeps until the lease ends, a heartbeat changed the
        role or the postmaster, the postmaster exits (its pidfd), or
        WATCHDOG_IDLE at most. A renewed lease does not wake it: the renewing
        thread moves the fencer's deadline itself (_lease_renewed)."""
        death = reaper.DeathWatch()
        while not self._stop.is_set():
            try:    # the fencer enforces the same lease should this daemon die or freeze
                restarted = self.fencer.check()
                if restarted:
                    log.warning("%s", restarted)
                self.fencer.follow(self._fence_deadline)
            except Exception:   # never lose the watchdog to it
                self._say("fencer", "error", "fencer handle failed; this daemon still fences by itself")
            timeout, watched = WATCHDOG_IDLE, [self._watch_r]
            if self.acting_primary:
                if not self.leases.held():
                    self.acting_primary = False
                    log.failover("no lease from the arbiter or the standby: fencing PostgreSQL")
                    self.fences += 1
                    self.pg.fence()
                    self._callback("on_role_change", "fenced")
                    continue
                pid = self.pg.postmaster_pid()
                if pid is None:
                    reaper.reap_postgres()
                    self._wake.set()    # PostgreSQL died: don't wait for the next heartbeat
                fd = death.watch(pid)
                if fd is not None:
                    watched.append(fd)
                elif pid is not None:
                    timeout = 0.1       # no pidfd on this system: poll while primary
                timeout = min(timeout, max(0.0, self.leases.held_until() - self.clock()) + 0.002)
            else:
                death.close()
            readable = select.select(watched, [], [], timeout)[0]
            if self._watch_r in readable:
                try:
                    while os.read(self._watch_r, 512):
                        pass
                except BlockingIOError:
                    pass
        death.close()

    # -- the REST API's view -------------------------------------------------------

    def _start_api(self):
        """The REST API and the thread that fetches the arbiter's status for
        it; (None, None) when api_bind is empty."""
        if not self.s.api_bind:
            return None, None
        from pgha import api    # the HTTP server's modules (http, email) only when it runs
        server = api.start(self.s.api_bind, self.s.api_port, self.state,
                           relay=api.arbiter_relay(self.arbiter.addresses, tls_context=self.tls_client,
                                                   cluster=self.cluster))
        if server is None:
            return None, None
        watcher = ClusterWatcher(self.state, lambda: arbiter_link.call(
            self.arbiter.addresses, {"type": "status", "cluster": self.cluster}, timeout=1.0, credential=self.credential,
            tls_context=self.tls_client))
        watcher.start()
        return server, watcher

    def _publish(self, duration):
        """Publish what this heartbeat saw; readers never wait for it."""
        self.loop_stats = self.loop_stats.add(duration)
        status, instruction = self.status, self.instruction
        self.state.publish(NodeSnapshot(
            name=self.s.name, taken_at=self.clock(), pg=status.pg, running_as=status.running_as,
            lsn=status.lsn, receive_lsn=status.receive_lsn, timeline=status.timeline,
            sync_standby=status.sync_standby, receiver=status.receiver, replication=status.replication,
            acting_primary=self.acting_primary,
            instruction_role=instruction.role if instruction else None,
            instruction_epoch=instruction.epoch if instruction else None,
            instruction_reason=instruction.reason if instruction else None,
            instruction_paused=instruction.paused if instruction else False,
            primary=(self.s.name if instruction.role == PRIMARY else instruction.primary) if instruction else None,
            primary_address=instruction.primary_address if instruction else None,
            upstream=self.upstream, acted_epoch=self.acted_epoch,
            lease_until=self.leases.until(), grant_remaining=self.grant_reported,
            heartbeat_interval=self.heartbeat_interval, lease_time=self.lease_time,
            arbiter_reachable=self.arbiter_reachable, heartbeat_rtt=self.heartbeat_rtt,
            last_action=self.last_action, failovers=self.failovers, fences=self.fences,
            loop=self.loop_stats, started_at=self.state.snapshot.started_at))

    def _callback(self, event, role):
        """Queue a user callback (pgha.callbacks): returns at once."""
        self.callbacks.fire(event, role)

    def _say(self, topic, level, text):
        """Log a line only when it differs from the last one on the same topic."""
        if self._said.get(topic) != text:
            self._said[topic] = text
            getattr(log, level)(text)

