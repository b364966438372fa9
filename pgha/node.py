"""The node's HA loop: report to the arbiter, then do what it says.

Each heartbeat the node reads its PostgreSQL's status, sends it to the
arbiter and acts on the answer: run as primary, run as standby of X, or
wait. It never decides a role by itself. Two threads guard the primary:
the watchdog fences PostgreSQL when every lease has run out, and the lease
renewer asks the standby for its lease. The standby answers those requests
from the peer server.
"""
import os
import threading
import time

from pgha import logs
from pgha import protocol, store
from pgha.fencing import Fencer
from pgha.lease import Grants, Leases, LeaseRenewer, PeerServer
from pgha.postgres import PostgresError

log = logs.get("node")

CRASH_RESTART_WINDOW = 60.0    # one quick local restart of a crashed primary per window
STANDBY_STREAM_DEADLINE = 30.0  # a standby not streaming by then is rewound


class Node:
    def __init__(self, settings, pg, clock=time.monotonic):
        self.s = settings
        self.pg = pg
        self.clock = clock
        self.leases = Leases(clock)
        # Fences PostgreSQL at the lease end even if this daemon dies or freezes.
        self.fencer = Fencer(pg.state_dir, pg.pgdata, getattr(settings, "log_file", None))
        self.grants = Grants(clock)
        self.arbiter = protocol.Connection(settings.arbiter_host, settings.arbiter_port, timeout=1.0)
        self.state_file = os.path.join(pg.state_dir, "node-state.json")
        self.acted_epoch = 0
        self.instruction = None
        self.lease_time = 3.0           # until the arbiter tells us the cluster's timings
        self.heartbeat_interval = 0.5
        self.acting_primary = False     # PostgreSQL runs as primary under our leases
        self.relinquished = False       # we stopped PostgreSQL to hand over; arbiter must answer
        self.last_crash_restart = -CRASH_RESTART_WINDOW
        self.upstream = None            # primary address the running standby follows
        self.standby_since = None
        self.rejoin_failures = 0       # rejoins that did not end streaming: next one clones afresh
        self.slot_ensured = None
        self._said = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # run the next heartbeat now, not at the next tick

    # -- life cycle ------------------------------------------------------------

    def run(self):
        self.pg.prepare_folders()
        adopted = self.fencer.start()
        log.info("fencer %s (pid %d)", "adopted" if adopted else "started", self.fencer.pid)
        saved = store.load_json(self.state_file) or {}
        self.acted_epoch = int(saved.get("acted_epoch", 0))
        peer = PeerServer(self.s.peer_bind, self.s.peer_port, self.grants, lambda: self.lease_time)
        threading.Thread(target=peer.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="peer-server").start()
        renewer = LeaseRenewer(self.s.name, self.leases, self._renew_target, lambda: self.heartbeat_interval)
        renewer.start()
        if self.pg.status().get("role") == "primary":
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
        log.info("node %s started (last epoch acted on: %d); asking the arbiter at %s:%s before "
                 "starting PostgreSQL", self.s.name, self.acted_epoch, self.s.arbiter_host, self.s.arbiter_port)
        try:
            while not self._stop.is_set():
                started = self.clock()
                acting_before = self.acting_primary, self.pg.postmaster_pid()
                try:
                    self.step()
                    self._said.pop("postgres", None)
                except PostgresError as exc:    # logged once until it changes or clears
                    self._say("postgres", "error", str(exc))
                except Exception:   # a bug must not take the daemon (and its fencing) down
                    log.exception("unexpected error in the HA loop; carrying on")
                if (self.acting_primary, self.pg.postmaster_pid()) != acting_before:
                    continue    # a role or process change: report it at once
                self._wake.wait(max(0.05, self.heartbeat_interval - (self.clock() - started)))
                self._wake.clear()
        finally:
            renewer.stop()
            peer.shutdown()
            peer.server_close()
            self.shutdown_postgres()
            if self.pg.postmaster_pid() is None:
                self.fencer.stop()      # nothing left to fence; else it stays, armed

    def stop(self):
        self._stop.set()
        self._wake.set()

    def shutdown_postgres(self):
        # A primary nobody renews leases for must not outlive its node daemon.
        if self.pg.postmaster_pid():
            log.info("stopping PostgreSQL")
            self.acting_primary = False
            self.pg.stop("fast", timeout=30)

    # -- one heartbeat -----------------------------------------------------------

    def step(self):
        status = self.pg.status()
        report = self._report(status)
        sent_at = self.clock()
        reply = self._heartbeat(report)
        if reply is None:
            return
        if reply["epoch"] < self.acted_epoch:
            self._say("arbiter", "warning", f"ignoring instruction of epoch {reply['epoch']}: this node "
                                            f"already acted on epoch {self.acted_epoch}")
            return
        self.instruction = reply
        self.lease_time = float(reply.get("lease_time", self.lease_time))
        self.heartbeat_interval = float(reply.get("heartbeat_interval", self.heartbeat_interval))
        role = reply["role"]
        self._say("role", "info", f"arbiter: {role} at epoch {reply['epoch']}"
                  + (f" of {reply.get('primary')}" if role == "standby" else "")
                  + (f" ({reply.get('reason')})" if role == "wait" else ""))
        if role == "primary":
            self.leases.renew("arbiter", sent_at, self.lease_time)
            self.grants.stop()
            self._act_primary(reply, status, report.get("relinquished", False))
        elif role == "standby":
            self.relinquished = False   # handed over: the arbiter has a new primary
            self.grants.follow(reply["primary"], reply["epoch"])
            self._act_standby(reply, status)

    def _report(self, status):
        report = dict(status)
        report["address"] = {"host": self.s.host, "pg_port": self.s.pg_port,
                             "peer_port": self.s.peer_port, "slot": self.s.slot_name}
        report["relinquished"] = self.relinquished
        report["grant_remaining"] = round(self.grants.remaining_for_report(), 3)
        if self.acting_primary:
            report["lease_remaining"] = {source: round(self.leases.remaining(source), 3)
                                         for source in ("arbiter", "standby")}
        return report

    def _heartbeat(self, report):
        try:
            reply = self.arbiter.request({"type": "heartbeat", "node": self.s.name,
                                          "epoch": self.acted_epoch, "report": report})
        except (OSError, protocol.ProtocolError) as exc:
            self._say("arbiter", "warning", f"arbiter {self.s.arbiter_host}:{self.s.arbiter_port} "
                                            f"unreachable: {exc}")
            return None
        if reply.get("type") != "instruction" or not protocol.valid_instruction(reply):
            self._say("arbiter", "error", f"arbiter refused the heartbeat: {reply.get('error', reply)}")
            self.arbiter.close()
            return None
        self._say("arbiter", "info", "arbiter reachable")
        return reply

    # -- primary -----------------------------------------------------------------

    def _act_primary(self, instruction, status, answered_relinquish):
        epoch = instruction["epoch"]
        if answered_relinquish:
            log.warning("the arbiter kept this node primary after it handed over: starting again")
            self.relinquished = False
        if self.relinquished:
            return
        pg_state = status["pg"]
        if pg_state == "starting":
            return
        if pg_state == "stopped":
            self._start_as_primary(instruction)
            return
        if status["role"] == "standby":
            self._remember_epoch(epoch)
            log.failover("promoting this node to primary at epoch %d", epoch)
            self.pg.write_config("primary", sync_standby=instruction.get("sync_standby"), promoting=True)
            self.pg.promote()
            self.acting_primary = True
            self.slot_ensured = None
            log.failover("this node is now the primary (epoch %d)", epoch)
            return
        self.acting_primary = True
        self._remember_epoch(epoch)
        if instruction.get("relinquish"):
            log.failover("switchover: stopping PostgreSQL to hand over to %s", instruction.get("standby"))
            self.pg.stop("fast")
            self.acting_primary = False
            self.relinquished = True
            return
        self._keep_sync(instruction, status)
        slot = instruction.get("standby_slot")
        if slot and self.slot_ensured != slot:
            self.pg.ensure_slot(slot)
            self.slot_ensured = slot

    def _start_as_primary(self, instruction):
        epoch = instruction["epoch"]
        if self.pg.data_is_empty():
            if epoch != 1 or self.acted_epoch > 1:
                self._say("data", "error", f"data directory {self.pg.pgdata} is empty but this node is the "
                                           f"primary at epoch {epoch}: refusing to create an empty cluster over "
                                           "one that had data (restore it, or switch over to the standby)")
                return
            self._bootstrap_primary(instruction)
            return
        if self.acting_primary:
            # PostgreSQL died under us while we are primary: one quick local
            # restart, else hand over to the standby.
            if self.clock() - self.last_crash_restart < CRASH_RESTART_WINDOW:
                self._relinquish("PostgreSQL crashed again within %.0fs" % CRASH_RESTART_WINDOW)
                return
            self.last_crash_restart = self.clock()
            log.warning("PostgreSQL stopped unexpectedly: restarting it as primary")
        self._remember_epoch(epoch)
        if self.pg.was_standby():
            # A stopped standby becomes primary on a new timeline: start it in
            # recovery and promote it, never just start it read-write.
            log.failover("starting the former standby and promoting it (epoch %d)", epoch)
            self.pg.write_config("standby")
            self.pg.start()
            self.pg.write_config("primary", sync_standby=instruction.get("sync_standby"), promoting=True)
            self.pg.promote()
        else:
            self.pg.write_config("primary", sync_standby=instruction.get("sync_standby"))
            try:
                self.pg.start()
            except PostgresError as exc:
                self._relinquish(str(exc))
                return
        self.acting_primary = True
        self.slot_ensured = None
        log.failover("PostgreSQL running as primary (epoch %d)", epoch)

    def _bootstrap_primary(self, instruction):
        log.info("empty data directory: creating a new cluster in %s", self.pg.pgdata)
        self._remember_epoch(instruction["epoch"])
        self.pg.initdb()
        self.pg.write_config("primary", sync_standby=None)
        self.pg.start()
        self.pg.create_roles()
        self.acting_primary = True
        log.failover("new cluster created; running as primary (epoch %d)", instruction["epoch"])

    def _relinquish(self, why):
        log.failover("handing over to the standby: %s", why)
        self.acting_primary = False
        self.pg.stop("immediate")
        self.relinquished = True

    def _keep_sync(self, instruction, status):
        wanted = instruction.get("sync_standby")
        if status.get("sync_standby") != wanted:
            self.pg.write_config("primary", sync_standby=wanted)
            self.pg.reload()
            if wanted:
                log.info("synchronous replication on: commits wait for %s", wanted)
            else:
                log.warning("synchronous replication off (arbiter marked the standby not promotable)")

    # -- standby -----------------------------------------------------------------

    def _act_standby(self, instruction, status):
        address = instruction["primary_address"]
        if self.acting_primary or status.get("role") == "primary" and status["pg"] == "running":
            log.failover("demoting: %s is the primary at epoch %d; stopping PostgreSQL to rejoin as "
                         "its standby", instruction["primary"], instruction["epoch"])
            self.acting_primary = False
            self._remember_epoch(instruction["epoch"])
            self.pg.stop("fast")
            return
        self._remember_epoch(instruction["epoch"])
        if status["pg"] == "starting":
            return
        if status["pg"] == "running":
            self._keep_following(address, status)
            return
        self._start_as_standby(instruction["primary"], address)

    def _keep_following(self, address, status):
        if self.upstream != address:
            self.pg.write_config("standby", primary_address=address)
            self.pg.reload()
            self.upstream, self.standby_since = address, self.clock()
            self.pg.drop_inactive_slots()
            return
        if status.get("receiver") == "streaming":
            self.standby_since = self.clock()
            self.rejoin_failures = 0
        elif self.clock() - self.standby_since > STANDBY_STREAM_DEADLINE:
            log.warning("not streaming from the primary for %.0fs (diverged timeline?): stopping to "
                        "rejoin again", STANDBY_STREAM_DEADLINE)
            self.pg.stop("fast")
            self.rejoin_failures += 1

    def _start_as_standby(self, primary, address):
        """Rejoin: plain start if our data follows the primary, else pg_rewind,
        else (or when a rewound copy still cannot follow) a fresh pg_basebackup."""
        self.fencer.disarm()    # before PostgreSQL runs here as a standby
        slot = self.s.slot_name
        if self.pg.data_is_empty():
            log.info("empty data directory: cloning %s with pg_basebackup", primary)
            self.pg.prepare_upstream(address, slot)
            self.pg.basebackup(address)
        elif self.rejoin_failures:
            log.failover("rejoining as standby of %s: a fresh pg_basebackup (earlier attempt could not "
                         "follow it)", primary)
            self.pg.prepare_upstream(address, slot)
            self.pg.basebackup(address)
        elif not self.pg.was_standby():
            log.failover("rejoining as standby of %s: pg_rewind", primary)
            self.pg.prepare_upstream(address, slot, checkpoint=True)
            try:
                self.pg.rewind(address)
            except PostgresError as exc:
                log.warning("%s; falling back to a fresh pg_basebackup", exc)
                self.pg.basebackup(address)
        else:
            self.pg.prepare_upstream(address, slot)
        self.pg.write_config("standby", primary_address=address)
        try:
            self.pg.start()
        except PostgresError:
            self.rejoin_failures += 1
            raise
        self.upstream, self.standby_since = address, self.clock()
        log.failover("PostgreSQL running as standby of %s", primary)

    # -- helpers -------------------------------------------------------------------

    def _remember_epoch(self, epoch):
        # Durable before acting, so a restarted node never obeys an older decision.
        if epoch > self.acted_epoch:
            store.save_json(self.state_file, {"acted_epoch": epoch})
            self.acted_epoch = epoch

    def _renew_target(self):
        instruction = self.instruction
        if not instruction or instruction.get("role") != "primary" or not self.acting_primary:
            return None
        address = instruction.get("standby_address")
        if not address:
            return None
        return address["host"], address["peer_port"], instruction["epoch"], self.lease_time

    def _fence_deadline(self):
        return self.leases.deadline() if self.acting_primary else None

    def _watchdog(self):
        while not self._stop.is_set():
            try:    # the fencer enforces the same lease should this daemon die or freeze
                restarted = self.fencer.check()
                if restarted:
                    log.warning("%s", restarted)
                self.fencer.follow(self._fence_deadline)
            except Exception:   # never lose the watchdog to it
                self._say("fencer", "error", "fencer handle failed; this daemon still fences by itself")
            if self.acting_primary:
                if not self.leases.held():
                    self.acting_primary = False
                    log.failover("no lease from the arbiter or the standby: fencing PostgreSQL")
                    self.pg.fence()
                elif self.pg.postmaster_pid() is None:
                    self._wake.set()    # PostgreSQL died: don't wait for the next tick
            self._stop.wait(0.1)

    def _say(self, topic, level, text):
        """Log a line only when it differs from the last one on the same topic."""
        if self._said.get(topic) != text:
            self._said[topic] = text
            getattr(log, level)(text)

