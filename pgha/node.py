"""The node's HA loop: report to the arbiter, then do what it says.

Each heartbeat the node reads its PostgreSQL's status, sends it to the
arbiter, gathers what the rules look at (a node_rules.NodeView), asks
node_rules.decide() for one action and has pgha/node_actions.py carry it
out. It never decides a role by itself.

Runs on the HA loop's thread (Node.run; the main thread), and writes the
node's memory (Node.memory, pgha/node_memory.py) alone: the actions return
their Changes, the other threads hand results to its inbox
(pgha/node_inbox.py). The other threads: the watchdog (pgha/node_watchdog.py),
the lease renewer and the peer server (pgha/lease.py), the follow-target
thread and the upstream-wait thread (pgha/node_actions.py), the callbacks runner (pgha/callbacks.py), and
with a REST API its server and the cluster watcher (pgha/api.py,
pgha/node_state.py). They read Node.memory (one attribute: one consistent
value) and the published snapshot; none writes either. Also written by the
loop alone and read by nobody else: the last status, the heartbeat's
round trip, the loop's statistics and the clone's progress.
"""
import os
import threading
import time
from dataclasses import replace

from pgha import logs
from pgha import sdnotify
from pgha import arbiter_link, auth, cluster_config, clusters, node_ops, pg_facts, protocol, reaper, store, tls
from pgha.arbiter_link import ArbiterLink, addresses_from_settings
from pgha.callbacks import CallbackRunner
from pgha.fencing import Fencer
from pgha.lease import Grants, Leases, LeaseRenewer, PeerServer, peer_credential, peer_verifier
from pgha.messages import PG_RUNNING, PG_STARTING, PG_STOPPED, PRIMARY, STANDBY, WAIT, Address, Instruction, PgStatus, Report
from pgha.node_actions import STARTS_READ_WRITE, NodeActions
from pgha.node_inbox import Inbox
from pgha.node_facts import FactsWatcher
from pgha.node_memory import Changes, NodeMemory
from pgha.node_rules import IDLE, Action, DataDir, HandOver, NodeView, decide
from pgha.node_state import ClusterWatcher, LoopStats, NodeSnapshot, StatePublisher
from pgha.node_watchdog import Watchdog
from pgha.postgres import PostgresError

log = logs.get("node")

FACTS_TIMEOUT = 2.0     # s a facts query may run (its own connection: never the HA loop's)
SLOT_COPY_INTERVAL = 5.0    # s between a standby's copies of the permanent slots, and after a failed try
# Heartbeat interval of a standby a switchover is handing over to, until it is promoted.
HURRY_INTERVAL = 0.02


def api_url(host, port):
    """Patroni's member api_url for a REST API on host:port (plain HTTP, as ours serves)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/patroni"


class Node:
    def __init__(self, settings, pg, keys, clock=time.monotonic, settings_loader=None):
        """keys: (auth.Credential towards the arbiter, pair keys of the lease
        link), from pgha.keys.node_keys. settings_loader: () -> settings, for
        a reload (SIGHUP, pgha.ctl reload)."""
        self.s = settings
        self.pg = pg
        self.clock = clock
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
        self.peer_verifier = peer_verifier(settings.name, pair_keys, self.grants.allowed_primary)
        self.peer_credential = peer_credential(settings.name, pair_keys)
        self.state_file = os.path.join(pg.state_dir, "node-state.json")
        # Where the other members reach this node, in every report.
        self.address = Address(host=settings.host, pg_port=settings.pg_port,
                               peer_port=settings.peer_advertise_port or settings.peer_port, slot=settings.slot_name)
        # Where its REST API answers (Patroni's member api_url), and its tags, for /cluster and list.
        self.api_url = api_url(settings.host, settings.api_port) if settings.api_bind else None
        # The node's memory (pgha/node_memory.py): one frozen value, replaced by the HA loop alone.
        self.memory = NodeMemory()
        self._saved_state = None        # what the state file holds (acted_epoch, lease_time)
        self._grant_lease_unknown_since = None  # a restart whose state file held no lease_time: when
        self.clone_progress = None      # a rewind.CloneProgress while pg_basebackup runs
        self._said = {}
        self._stop = threading.Event()
        # What the watchdog and the follow-target thread hand the loop, and its wake-up.
        self.inbox = Inbox()
        self.watchdog = Watchdog(pg, self.fencer, self.leases, clock, lambda: self.memory.acting_term, self.inbox,
                                 on_fenced=lambda: self._callback("on_role_change", "fenced"))
        self.actions = NodeActions(pg, self.fencer, lambda: self.s, clock, self.inbox, self._callback, self._say,
                                   clone_progress=self._clone_progress,
                                   heartbeat_while_busy=lambda status=None: self._heartbeat(
                                       self._report(status or PgStatus(pg=PG_STOPPED))),
                                   lease_end=self.leases.deadline, pre_promote=lambda: node_ops.pre_promote(self.s),
                                   scope=self.cluster, renew_lease=self._renew_lease)
        # What the REST API serves beyond the report, read by a thread of its own (never the HA loop).
        self.facts = FactsWatcher(lambda: self.s, lambda: pg.new_connection(statement_timeout=FACTS_TIMEOUT),
                                  clock=clock)
        # What the REST API serves: a snapshot published after each heartbeat.
        self.state = StatePublisher(settings.name, clock)
        self.status = PgStatus()            # PostgreSQL as the last heartbeat saw it
        self.loop_stats = LoopStats()
        self.heartbeat_rtt = None
        self.arbiter_reachable = False
        self.grant_reported = 0.0           # not grants.remaining_for_report(): that pauses grants
        self.renewer = None                 # the lease renewer, once run() starts it
        self.reloader = node_ops.NodeReloader(settings_loader)
        self.parameters_heard = None        # the cluster-wide parameters of the last instruction
        self.parameters_applied = None      # the ones last applied (the same object once done)
        self.callbacks = CallbackRunner(settings.name, lambda: node_ops.callback_scripts(self.s))

    # -- life cycle ------------------------------------------------------------

    def run(self):
        # First, before anything starts: a damaged state file stops the node (store.NodeStateError),
        # and a taken API port stops it before it acts.
        saved = store.load_node_state(self.state_file)     # read once
        acted_epoch, remembered = saved.acted_epoch, saved.lease_time
        lease_time = remembered or self.memory.lease_time
        self.memory = replace(self.memory, acted_epoch=acted_epoch, lease_time=lease_time,
                              reinit_done=saved.reinit_done, restart_done=saved.restart_done)
        self._saved_state = self._state_to_save()
        if acted_epoch:     # this node was a member before: its last daemon may have granted a lease
            self.grants.assume_granted(lease_time)
            if remembered is None:
                # Saved by an older version: the cluster's lease may be longer than
                # the default; the first instruction's lease counts from the start too.
                self._grant_lease_unknown_since = self.clock()
        api_server, watcher = self._start_api()
        self.pg.prepare_folders()
        if reaper.become_subreaper():   # the postmaster becomes our child: its death is reaped at once
            reaper.reap_postgres()
        adopted = self.fencer.start()
        log.info("fencer %s (pid %d)", "adopted" if adopted else "started", self.fencer.pid)
        peer = PeerServer(self.s.peer_bind, self.s.peer_port, self.grants, lambda: self.memory.lease_time,
                          verifier=self.peer_verifier)
        peer.tls_context = self.tls_server
        threading.Thread(target=peer.serve_forever, daemon=True,
                         name="peer-server").start()
        renewer = LeaseRenewer(self.s.name, self.leases, self._renew_target, lambda: self.memory.heartbeat_interval,
                               credential=self.peer_credential, tls_context=self.tls_client)
        renewer.start()
        self.renewer = renewer
        running_as = self.pg.status().running_as    # one status query at start, for both uses below
        if running_as == PRIMARY:
            # PostgreSQL outlived a previous node daemon: it gets one lease
            # period (the cluster's, as last heard: never longer than the
            # arbiter's failover wait) to be confirmed by the arbiter, then it is fenced.
            self.memory = self.memory.acting(True)
            lease_time = self.memory.lease_time
            self.leases.renew("grace", self.clock(), lease_time)
            self.fencer.cap(lease_time)     # never later than the lease the last daemon armed
            log.warning("PostgreSQL is already running as primary: fencing it unless the arbiter "
                        "confirms this node within %.1fs", lease_time)
        else:
            self.fencer.disarm()    # an adopted fencer's old deadline must not hit a standby
        self.watchdog.start()
        self.facts.start()
        self._callback("on_start", running_as or "stopped")
        log.info("node %s started (last epoch acted on: %d); asking the arbiter at %s:%s before "
                 "starting PostgreSQL", self.s.name, self.memory.acted_epoch, self.s.arbiter_host, self.s.arbiter_port)
        try:
            while not self._stop.is_set():
                started = self.clock()
                acting_before = self.memory.acting_primary, self.pg.postmaster_pid()
                try:
                    if not self.actions.starting_for_switchover():   # it writes PostgreSQL's files: reload after it
                        reloaded = self.reloader.reload_if_asked(self)
                        if reloaded is not None and (reloaded.applied or reloaded.restart_needed):
                            self._callback("on_reload", self.status.running_as or "stopped")
                    self.step()
                    self._said.pop("postgres", None)
                except PostgresError as exc:    # logged once until it changes or clears
                    self._say("postgres", "error", str(exc))
                except Exception:   # a bug must not take the daemon (and its fencing) down
                    log.exception("unexpected error in the HA loop; carrying on")
                self._publish(self.clock() - started)
                if (self.memory.acting_primary, self.pg.postmaster_pid()) != acting_before:
                    self.watchdog.poke()    # it watches the new role and postmaster
                    continue    # a role or process change: report it at once
                self.inbox.wait(max(0.02, self._next_report_in() - (self.clock() - started)))
        finally:
            self.facts.stop()
            if api_server:
                api_server.stop()
                watcher.stop()
            renewer.stop()
            peer.shutdown()
            peer.server_close()
            if self.stop_leaves_postgres_running():
                self.leave_postgres_running()
            else:
                self.shutdown_postgres()
            left_as = self._left_running_as()
            if left_as is None:
                self.fencer.stop()      # nothing left to fence; else it stays (armed on an unpaused primary)
            self._callback("on_stop", left_as or "stopped")
            self.callbacks.stop()       # the queued callbacks, at most a timeout each

    def _next_report_in(self):
        """Seconds from this heartbeat's start to the next: the interval, or
        sooner when the arbiter's last answer (this heartbeat's, not an older
        one) asked for it: a switchover's target hurries, and a decision due
        before the next heartbeat (decision.report_in) is reported for in time."""
        instruction, interval = self.memory.instruction, self.memory.heartbeat_interval
        if instruction is None or not self.arbiter_reachable:
            return interval
        if instruction.hurry and instruction.role == STANDBY:
            return HURRY_INTERVAL
        return min(interval, instruction.report_in or interval)

    def stop(self):
        self._stop.set()
        self.inbox.wake()
        self.watchdog.stop()

    def request_reload(self):
        """Re-read the settings before the next heartbeat (SIGHUP)."""
        self.reloader.ask()
        self.inbox.wake()

    def paused(self):
        """The cluster is in maintenance mode, as the last instruction said."""
        instruction = self.memory.instruction
        return instruction is not None and instruction.paused

    def stop_leaves_postgres_running(self):
        """A stopping daemon leaves PostgreSQL running (a restart adopts it),
        unless stop_postgres_on_exit asks for the old way outside pause."""
        return self.paused() or not getattr(self.s, "stop_postgres_on_exit", False)

    def leave_postgres_running(self):
        """The daemon stops, PostgreSQL runs on. A standby keeps streaming.
        A primary says goodbye in one last heartbeat: outside pause its answer
        renews the arbiter lease and the fencer stays armed to that lease's
        end (a daemon back by then adopts the server; else it is fenced and
        the standby promoted, invariant 2). In pause, once the arbiter has
        answered that it is paused and heard that this primary is left
        unfenced (it then holds back any failover until the daemon reports
        again, ClusterState.primary_unfenced), the fencer is disarmed."""
        launching = self.actions.launching
        if launching is not None:
            launching.join(30)      # a start under way ends first
        if not self.pg.postmaster_pid():
            return
        if not self.memory.acting_primary:
            log.info("PostgreSQL left running (not primary): a restarted daemon takes it over")
            return
        paused = self.paused()
        sent_at = self.clock()
        try:
            instruction = self._heartbeat(replace(self._report(self.pg.status()), unfenced=paused))
        except PostgresError as exc:
            self._say("postgres", "error", str(exc))
            instruction = None
        confirmed = self._names_primary(instruction, self.memory.acted_epoch)
        if confirmed and paused and instruction.paused:
            self.memory = self.memory.acting(False)
            self.fencer.disarm()
            log.warning("paused: PostgreSQL left running as primary, unfenced; the arbiter allows no failover "
                        "until this daemon reports again")
            return
        if confirmed:
            self._renew_arbiter_lease(instruction, sent_at)
        self.fencer.follow(self.watchdog.fence_deadline)
        left = max(0.0, self.leases.deadline() - self.clock())
        log.warning("PostgreSQL left running as primary: its fencer stops it in %.1fs (the lease's end) unless "
                    "a restarted daemon is confirmed by the arbiter before", left)

    def _left_running_as(self):
        """PostgreSQL's role as the daemon leaves it ("running" if it does
        not answer), or None when it is stopped."""
        if not self.pg.postmaster_pid():
            return None
        try:
            return self.pg.status().running_as or "running"
        except PostgresError:
            return "running"

    def shutdown_postgres(self):
        """Stop PostgreSQL with the daemon (stop_postgres_on_exit)."""
        launching = self.actions.launching
        if launching is not None:
            launching.join(30)      # a start under way ends first, so it is stopped too
        if self.pg.postmaster_pid():
            log.info("stopping PostgreSQL")
            self.memory = self.memory.acting(False)
            self.pg.stop("fast", timeout=30)

    # -- one heartbeat -----------------------------------------------------------

    def step(self):
        launching = self.actions.starting_for_switchover()  # before the drain: a finished start has put its result
        self._take_results()
        if launching:
            # The follow-target thread is starting PostgreSQL: leave it alone meanwhile.
            status = self.status = PgStatus(pg=PG_STARTING)
        else:
            self.actions.launching = None
            status = self.status = self.pg.status()
        report = self._report(status)
        self.grant_reported = report.grant_remaining
        sent_at = self.clock()
        instruction = self._heartbeat(report)
        sdnotify.ready()    # systemd (Type=notify): up once a first heartbeat went out, answered or not
        view = self._view(instruction, status)
        decision = decide(view)
        if decision.hand_over is not self.memory.hand_over and instruction.role == PRIMARY:
            log.warning("the arbiter kept this node primary after it handed over: starting again")
        self.memory = self.memory.decided(decision)
        self._say("action", "debug" if decision.action in IDLE else "info",
                  f"action {decision.action.value} (row {decision.row}, PostgreSQL {view.pg})")
        if decision.action is Action.NO_ANSWER:
            return
        if decision.action is Action.IGNORE_OLD_EPOCH:
            self._say("arbiter", "warning", f"ignoring instruction of epoch {instruction.epoch}: this node "
                                            f"already acted on epoch {self.memory.acted_epoch}")
            return
        self._take(instruction, sent_at)
        self._remember(decision.remember_epoch)
        self._act(decision)
        self._save_state()      # an order carried out (reinit_done, restart_done) survives a daemon restart
        self._apply_parameters()

    def _apply_parameters(self):
        """Changed cluster-wide parameters, checked and applied after the
        heartbeat's action and its lease renewal (never on a role change's
        path), on this thread alone; not while the follow-target thread writes
        PostgreSQL's files (a later heartbeat does it)."""
        if self.parameters_heard is None or self.parameters_heard is self.parameters_applied \
                or self.actions.starting_for_switchover():
            return
        self.parameters_applied = self.parameters_heard
        node_ops.apply_cluster_parameters(self.pg, self.parameters_heard, self.written_for_role)

    def written_for_role(self):
        """write_settings' arguments for the role PostgreSQL runs in, when it is
        the one the arbiter gives (a reload after this daemon took over a
        running server, before it wrote pgha.conf itself); else None."""
        instruction, status = self.memory.instruction, self.pg.status()
        if instruction is None or status.pg != PG_RUNNING or status.running_as != instruction.role:
            return None
        if instruction.role == PRIMARY:
            return PRIMARY, None, status.sync_standby
        if instruction.role == STANDBY and instruction.primary_address is not None:
            return STANDBY, instruction.primary_address, None
        return None

    def _take_results(self):
        """Apply what the other threads handed over since the last heartbeat."""
        for result in self.inbox.drain():
            self.memory = self.memory.after(result)

    def _act(self, decision):
        """Carry out the decision's action; what it changed of the memory
        stands, also when it raised part-way."""
        changes = Changes(self.memory)
        starting = decision.action in STARTS_READ_WRITE
        if starting:
            self.watchdog.starting_read_write(True)
        try:
            self.actions.run(decision.action, changes, decision)
        finally:
            self.memory = changes.memory
            if starting:    # after the memory: the watchdog sees acting (or not) from here on
                self.watchdog.starting_read_write(False)

    def _renew_lease(self):
        """A heartbeat from inside an action (the HA loop's thread): the
        arbiter's lease renewed from its sending when the reply still names
        this node primary at the instruction's epoch (as _take renews it)."""
        sent_at = self.clock()
        instruction = self._heartbeat(self._report(self.pg.status()))
        current = self.memory.instruction
        if current is not None and self._names_primary(instruction, current.epoch):
            self._renew_arbiter_lease(instruction, sent_at)

    @staticmethod
    def _names_primary(instruction, epoch):
        return instruction is not None and instruction.role == PRIMARY and instruction.epoch == epoch

    def _renew_arbiter_lease(self, instruction, sent_at):
        """The arbiter's lease from a reply naming this node primary, from when
        its heartbeat was sent, as long as the reply says (a reload may have
        shortened it: reload.LeaseTransition)."""
        self.leases.renew("arbiter", sent_at, instruction.lease_time or self.memory.lease_time)

    def _take(self, instruction, sent_at):
        """Adopt a current instruction: its timings, and the leases and grants its role calls for."""
        m = self.memory
        self.memory = m = replace(m, instruction=instruction, lease_time=instruction.lease_time or m.lease_time,
                                  heartbeat_interval=instruction.heartbeat_interval or m.heartbeat_interval)
        self.reloader.note_generation(instruction.reload_generation)
        if instruction.parameters is not None and not cluster_config.same(instruction.parameters,
                                                                          self.parameters_heard):
            self.parameters_heard = dict(instruction.parameters)    # checked and applied after the action
        if self._grant_lease_unknown_since is not None and instruction.lease_time:
            self.grants.assume_granted(instruction.lease_time, since=self._grant_lease_unknown_since)
            self._grant_lease_unknown_since = None
        role = instruction.role
        self._say("role", "info", f"arbiter: {role} at epoch {instruction.epoch}"
                  + (f" of {instruction.primary}" if role == STANDBY else "")
                  + (f" ({instruction.reason})" if role == WAIT else ""))
        if role == PRIMARY:
            self._renew_arbiter_lease(instruction, sent_at)
            self.grants.stop()
        elif role == STANDBY:
            self.grants.follow(instruction.primary, instruction.epoch)

    def _view(self, instruction, status):
        """What the rules look at. The data directory of a stopped PostgreSQL
        is read only when the instruction may act on it."""
        m, data, data_error = self.memory, None, None
        if status.pg == PG_STOPPED and instruction is not None and instruction.role != WAIT \
                and instruction.epoch >= m.acted_epoch:
            data, data_error = self._read_data_dir()
        return NodeView(
            now=self.clock(), instruction=instruction, acted_epoch=m.acted_epoch, pg=status.pg,
            running_as=status.running_as,
            data=data, data_error=data_error, acting_primary=m.acting_primary, hand_over=m.hand_over,
            last_crash_restart=m.last_crash_restart, rejoin_failures=m.rejoin_failures,
            failed_rejoins=m.failed_rejoins, last_rejoin_failure=m.last_rejoin_failure, reinit_done=m.reinit_done,
            restart_done=m.restart_done,
            upstream=m.upstream, streaming=status.streams_steadily,
            not_streaming_since=m.standby_since, slot_ensured=m.slot_ensured,
            slots_due=self._slots_due(status.running_as), sync_standby=status.sync_standby,
            bootstrap_unfinished=self.pg.bootstrap_unfinished())

    def _slots_due(self, running_as):
        """Permanent slots to make (running as primary: once per start, and again
        after a failure or a reload that changed them) or to copy (running as a
        standby: every SLOT_COPY_INTERVAL)."""
        names, m = frozenset(getattr(self.s, "permanent_slots", None) or {}), self.memory
        if not names or self.clock() - m.slots_synced_at < SLOT_COPY_INTERVAL:
            return False
        return running_as == STANDBY or running_as == PRIMARY and names != m.permanent_ensured

    def _read_data_dir(self):
        if self.pg.data_is_empty():
            return DataDir.EMPTY, None
        if self.memory.hand_over is HandOver.SWITCHED_OVER and not self.pg.recovery_signal_set():
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
        m, latest = self.memory, self.facts.latest      # one read of the facts thread's latest
        return Report.from_status(
            status, address=self.address, relinquished=m.hand_over is not HandOver.NONE,
            grant_remaining=round(self.grants.remaining_for_report(), 3), last_action=m.last_action,
            clone_progress=None if self.clone_progress is None else self.clone_progress.to_wire(),
            lease_remaining={source: round(self.leases.remaining(source), 3) for source in ("arbiter", "standby")}
            if m.acting_primary else None,
            disk=latest.disk_report, pending_restart=bool(latest.facts and latest.facts.pending_restart),
            reinit_done=m.reinit_done, restart_done=m.restart_done, api_url=self.api_url, tags=self.s.tags)

    def _clock_skews(self, acting_primary):
        """The arbiter's and the other node's wall clock minus ours, s (None: not
        heard): the peer as the lease link last showed it, from whichever side
        of it this node is on."""
        renewer = self.renewer
        peer = renewer.clock_skew if acting_primary and renewer else \
            next(iter(self.peer_verifier.skews.copy().values()), None)     # copy: the lease link's threads add
        return {"arbiter": self.arbiter.clock_skew, "peer": peer}

    def _heartbeat(self, report):
        """The arbiter's Instruction, or None (logged) when there is none to act on."""
        self.arbiter_reachable = False
        sent = self.clock()
        try:
            reply = self.arbiter.request({"type": "heartbeat", "cluster": self.cluster, "node": self.s.name,
                                          "epoch": self.memory.acted_epoch, "report": report.to_wire()})
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

    # -- helpers -------------------------------------------------------------------

    def _remember(self, epoch):
        """Durable before acting: the epoch, so a restarted node never obeys
        an older decision, and the cluster's lease, a restarted node's grace
        for a primary it finds running (and the orders done, _save_state)."""
        self.memory = replace(self.memory, acted_epoch=max(self.memory.acted_epoch, epoch or 0))
        self._save_state()

    def _state_to_save(self):
        m = self.memory
        state = {"acted_epoch": m.acted_epoch, "lease_time": m.lease_time}
        state.update({name: getattr(m, name) for name in ("reinit_done", "restart_done") if getattr(m, name)})
        return state

    def _save_state(self):
        """node-state.json, written only when what it holds changed."""
        state = self._state_to_save()
        if state != self._saved_state:
            store.save_json(self.state_file, state)
            self._saved_state = state

    def _renew_target(self):
        m = self.memory     # one read: a consistent instruction and lease
        instruction = m.instruction
        if not instruction or instruction.role != PRIMARY or self.watchdog.guarding() is None:
            return None
        address = instruction.standby_address
        if not address:
            return None
        return address.host, address.peer_port, instruction.epoch, m.lease_time

    def _lease_renewed(self):
        """The fencer follows a renewed lease from the renewing thread (the HA
        loop or the lease renewer). Waking the watchdog for it cost a thread
        switch per renewal; the watchdog still looks every node_watchdog.IDLE.
        Never waits for the fencer handle (the watchdog may be restarting
        the fencer): then the watchdog is woken to follow instead."""
        try:
            if self.fencer.follow(self.watchdog.fence_deadline, wait=False):
                return
        except Exception:   # the watchdog follows at its next look
            self.watchdog.fencer_failed()
        self.watchdog.poke()

    # -- the REST API's view -------------------------------------------------------

    def _start_api(self):
        """The REST API and the thread that fetches the arbiter's status for
        it; (None, None) when api_bind is empty."""
        if not self.s.api_bind:
            return None, None
        from pgha import api    # the HTTP server's modules (http, email) only when it runs
        server = api.start(self.s.api_bind, self.s.api_port, self.state,
                           relay=api.arbiter_relay(self.arbiter.addresses, tls_context=self.tls_client,
                                                   cluster=self.cluster),
                           reader=api.reader_verifier(getattr(self.s, "api_cluster_key_file", None), self.s.name),
                           patroni=self._patroni_writes(api))
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
        status, m = self.status, self.memory
        instruction = m.instruction
        self.facts.note(status.pg)
        reading = self.facts.latest     # one reference: facts and disk of one reading
        self.state.publish(NodeSnapshot(
            name=self.s.name, taken_at=self.clock(), pg=status.pg, running_as=status.running_as,
            lsn=status.lsn, receive_lsn=status.receive_lsn, timeline=status.timeline,
            sync_standby=status.sync_standby, receiver=status.receiver, replication=status.replication,
            acting_primary=m.acting_primary,
            instruction_role=instruction.role if instruction else None,
            instruction_epoch=instruction.epoch if instruction else None,
            instruction_reason=instruction.reason if instruction else None,
            instruction_paused=instruction.paused if instruction else False,
            cluster_parameters=self.pg.cluster_parameters,
            primary=(self.s.name if instruction.role == PRIMARY else instruction.primary) if instruction else None,
            primary_address=instruction.primary_address if instruction else None,
            upstream=m.upstream, acted_epoch=m.acted_epoch,
            lease_until=self.leases.until(), grant_remaining=self.grant_reported,
            heartbeat_interval=m.heartbeat_interval, lease_time=m.lease_time,
            arbiter_reachable=self.arbiter_reachable, heartbeat_rtt=self.heartbeat_rtt,
            clock_skew=self._clock_skews(m.acting_primary),
            last_action=m.last_action, failovers=m.failovers, fences=self.watchdog.fences,
            loop=self.loop_stats, started_at=self.state.snapshot.started_at,
            disk=reading.disk, **pg_facts.snapshot_fields(self.s, self.cluster, reading.facts)))

    def _patroni_writes(self, api):
        """Patroni-style writes on the REST API (api_authentication and
        api_operator_key_file), or None; OSError with one line when the key
        file is missing or unsafe."""
        credentials, key_file = getattr(self.s, "api_authentication", None), getattr(self.s, "api_operator_key_file", None)
        if not credentials or not key_file:
            return None
        from pgha import keys
        operator = api.trusted_keys(key_file, "api_operator_key_file", keys.client_credential)
        if operator.identity != keys.OPERATOR:
            raise OSError(f"api_operator_key_file: {key_file} holds no operator key (a reader's cannot sign writes)")
        return api.PatroniWrites(credentials["username"], credentials["password"], lambda message: arbiter_link.call(
            self.arbiter.addresses, {**message, "cluster": self.cluster}, timeout=5.0, credential=operator,
            tls_context=self.tls_client), self.s.name)

    def _clone_progress(self, progress):
        self.clone_progress = progress

    def _callback(self, event, role):
        """Queue a user callback (pgha.callbacks): returns at once."""
        self.callbacks.fire(event, role)

    def _say(self, topic, level, text):
        """Log a line only when it differs from the last one on the same topic."""
        if self._said.get(topic) != text:
            self._said[topic] = text
            getattr(log, level)(text)

