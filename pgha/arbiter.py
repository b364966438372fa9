"""The arbiter's I/O: the durable decision and the TCP server.

The rules themselves are in decision.py; this module feeds them parsed
reports and the clock, stores every changed decision durably *before*
replying (through the StateStore interface), and keeps serving everyone else
when one client misbehaves.
"""
import logging
import json
import secrets
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone

from pgha import logs
from pgha import auth, clusters, decision, protocol, rebuild, reload, requests, settings as settings_mod, store
from pgha import cluster_config, limits, version
from pgha.cluster_state import iso
from pgha.limits import clip
from pgha.topology import Topology

log = logs.get("arbiter")

# The name the entry point (arbiter.py) and the tests know the store's error by.
StateFileError = store.StateStoreError


def verifier(keyring, nodes):
    """Who is heard on the arbiter port: each node as itself, the operator,
    the reader (status only)."""
    return auth.Verifier(auth.ARBITER, auth.arbiter_lookup(keyring, nodes))


def service_verifier(keyring, specs, home):
    """verifier() for every cluster served (pgha.clusters): each node by its
    key id, and only about its own cluster (auth.cluster_scope)."""
    members = clusters.members(specs)
    # The replay cache holds each member's last WINDOW of nonces (~60 at 0.5 s): room for far more.
    return auth.Verifier(auth.ARBITER, auth.arbiter_lookup(keyring, list(members)),
                         scope=auth.cluster_scope(members, home),
                         max_nonces=max(auth.MAX_NONCES, NONCES_PER_MEMBER * len(members)))


NONCES_PER_MEMBER = 128


class StateMissingError(StateFileError):
    """No state and no --init: the arbiter must not start over silently."""


class Arbiter:
    """One cluster's decision (pgha.arbiter_service routes each request to
    its cluster's Arbiter). cluster: a clusters.ClusterSpec; None: the one
    cluster of the simple settings (nodes, initial_primary, state_file).
    init: create the state at epoch 1 when there is none (a new cluster).
    rebuild: there is no state; collect the nodes' reports and wait for an
    operator's confirmation (pgha.rebuild)."""

    def __init__(self, settings, clock=time.monotonic, state_store=None, init=False, rebuild=False,
                 wall=time.time, cluster=None):
        self.cluster = cluster if cluster is not None else clusters.simple(settings)
        self.topology = Topology(tuple(self.cluster.nodes))
        self.settings = settings
        self.timings = decision.Timings.from_settings(settings)
        self.settings_loader = None     # () -> new settings (arbiter.py sets it): reload_settings
        self.reload_generation = 0      # instructions carry it; pgha.ctl reload bumps it
        self.lease_transition = None    # a reload.LeaseTransition while a shrunk lease_time settles
        self.store = state_store if state_store is not None else store.FileStore(self.cluster.state_file)
        self.clock = clock
        self.wall = wall            # event times and scheduled switchovers (operators think in wall time)
        self.lock = threading.Lock()
        self.acted_epochs = {}      # node -> the epoch its last heartbeat said it acted on (for list)
        self.refusals = limits.RateLimitedLog(log, clock=self.clock)    # the rules' error events
        self.rebuilding = None      # a rebuild.Rebuild while the state is being rebuilt
        if rebuild:
            self.state = None
            self._start_rebuild()
        else:
            self.state = self._load_or_create(self.cluster.initial_primary, init)
        self.memory = decision.Memory.at_start(clock())
        self.timelines = self.timelines_from_history()     # timeline -> the member that made it (/history)
        # One handler per kind of pgha.requests about this cluster's decision.
        self._answers = {
            requests.Heartbeat: self._heartbeat,
            requests.Status: self._status,
            requests.Switchover: self._switchover_or_schedule,
            requests.Failover: self._failover,
            requests.Pause: self._set_paused,
            requests.Resume: self._set_paused,
            requests.History: self._history,
            requests.Flush: self._flush,
            requests.Reinit: self._reinit,
            requests.Restart: self._restart,
            requests.Config: self._change_config,
        }

    def _load_or_create(self, initial_primary, init):
        state = self.store.load()
        if state is None and not init:
            raise StateMissingError(
                f"state file {self.store} does not exist: for a new cluster start once with --init; if the "
                "state was lost, start with --rebuild and confirm with `python -m pgha.ctl rebuild` "
                "(README: Arbiter state loss)")
        if state is None:
            state = decision.ClusterState(epoch=1, primary=initial_primary)
            self.store.save(state, expected_epoch=None)
            self._record("initialised", epoch=1, primary=initial_primary)
            log.info("first start: %s is the initial primary (epoch 1), state in %s", initial_primary, self.store)
            return state
        if state.primary not in self.topology:
            raise StateFileError(f"state file {self.store} names primary {state.primary!r}, "
                                 f"which is not in 'nodes' {list(self.topology.members)}")
        log.info("state loaded: epoch %d, primary %s, standby %s%s", state.epoch, state.primary,
                 f"promotable ({', '.join(sorted(state.promotable))})" if state.promotable else "not promotable",
                 "; PAUSED (maintenance mode: no failover until resume)" if state.paused else "")
        return state

    def handle(self, request):
        """Answer one request (a pgha.requests dataclass: protocol.validate_request
        parsed it). One handler per kind."""
        if self.rebuilding is not None or isinstance(request, requests.Rebuild):
            return self._handle_rebuilding(request)
        answer = self._answers.get(type(request))
        if answer is None:
            # "reload" and "clusters" are the service's (pgha.arbiter_service): one settings file for every cluster.
            raise protocol.ProtocolError(f"the arbiter does not serve {requests.kind_of_request(request).name!r} "
                                         "messages")
        return answer(request)

    def _member_of(self, request):
        """The heartbeat's node, one of this cluster's members (else ProtocolError)."""
        if request.node not in self.topology:
            raise protocol.ProtocolError(f"unknown node {clip(repr(request.node))} "
                                         f"(configured: {', '.join(self.topology.members)})")
        return request.node

    def _heartbeat(self, request):
        node = self._member_of(request)
        self._start_due_orders()
        with self.lock:
            self.acted_epochs[node] = request.epoch
            before, memory_before = self.state, self.memory
            now = self.clock()
            outcome = decision.on_heartbeat(self.state, self.memory, self.topology, node, request.epoch,
                                            request.report, now, self._rules_timings(now))
            outcome = replace(outcome, instruction=self._stamp_instruction(outcome.instruction))
            if outcome.state != self.state:
                # Durable before anyone hears of it (invariant 3): the state,
                # then its history event.
                self.store.save(outcome.state, expected_epoch=self.state.epoch)
            self.state, self.memory = outcome.state, outcome.memory
            if outcome.state != before or memory_before.switchover_to != outcome.memory.switchover_to:
                # The state is saved and adopted first: a history that cannot be
                # written fails this reply, never the next compare-and-set.
                self._record_change(before, outcome, memory_before)
            self._note_timeline(node, request.report)
        for level, text in outcome.events:
            if level == "error":
                # A refusal repeats with every heartbeat (a lost or re-created
                # state): once per node and text per interval, with a count.
                self.refusals.log(logging.ERROR, node, text, text)
            else:
                getattr(log, level)(text)
        return outcome.instruction.to_wire()

    # -- history (StateStore.append_event / history) -----------------------------------------

    def _record(self, kind, **fields):
        """Append one event to the durable history (before the decision it
        belongs to is announced: the caller holds the reply until this returns)."""
        when = datetime.fromtimestamp(self.wall(), timezone.utc).isoformat(timespec="milliseconds")
        self.store.append_event({"time": when.replace("+00:00", "Z"), "event": kind, **fields})

    def _record_change(self, before, outcome, memory_before):
        after = outcome.state
        if after.epoch != before.epoch:
            old_report = memory_before.reports.get(before.primary)
            new_report = outcome.memory.reports.get(after.primary)
            reason = next((text for level, text in outcome.events if level == "failover"), None)
            # A planned hand-over (switchover, or a failover --to with a live primary) is a switchover.
            planned = outcome.memory.handover_from == before.primary
            dropped = {"scheduled_switchover_dropped": iso(before.scheduled_at)} \
                if before.scheduled and not after.scheduled else {}
            self._record("switchover" if planned else "failover", epoch=after.epoch, old_primary=before.primary,
                         new_primary=after.primary, reason=reason, **dropped,
                         old_primary_lsn=old_report.lsn if old_report and old_report.lsn else None,
                         new_primary_lsn=_standby_lsn(new_report))
        elif after.promotable != before.promotable:
            reason = next((text for level, text in outcome.events if level in ("info", "warning")), None)
            self._record("promotable", epoch=after.epoch, primary=after.primary, **after.promotable_view(),
                         reason=reason)
        if after.epoch == before.epoch and memory_before.switchover_to and not outcome.memory.switchover_to:
            # A requested switchover the rules dropped: pgha-ctl switchover (waiting) reports why.
            reason = next((text for level, text in outcome.events if level == "warning"), None)
            self._record("switchover_failed", epoch=after.epoch, primary=after.primary,
                         to=memory_before.switchover_to, reason=reason)

    def _note_timeline(self, node, report):
        """The primary's first report on a new timeline is a history event: who
        made each timeline (Patroni's new_leader in /history)."""
        timeline = report.timeline
        if node != self.state.primary or report.running_as != "primary" or not timeline \
                or self.timelines.get(timeline) == node:
            return
        try:
            self._record("timeline", epoch=self.state.epoch, timeline=timeline, primary=node)
        except store.StateStoreError as exc:
            # Only /history's new_leader waits for it: never the heartbeat's reply (a
            # new primary without its standby's lease yet would be fenced). Retried next heartbeat.
            self.refusals.log(logging.WARNING, node, "timeline", f"cannot record timeline {timeline}: {exc}")
            return
        self.timelines[timeline] = node
        for old in sorted(self.timelines)[:-TIMELINES_KEPT]:
            del self.timelines[old]

    def timelines_from_history(self):
        """timeline -> member, from the durable history's "timeline" events
        (a restarted arbiter or a new leader knows them again)."""
        try:
            events = self.store.history()
        except store.StateStoreError as exc:
            log.warning("history unreadable: the timelines' leaders are not known yet (%s)", exc)
            return {}
        found = {e["timeline"]: e["primary"] for e in events if e.get("event") == "timeline"
                 and type(e.get("timeline")) is int and isinstance(e.get("primary"), str)}
        return dict(sorted(found.items())[-TIMELINES_KEPT:])

    def _history(self, request):
        limit = HISTORY_DEFAULT if request.limit is None else request.limit     # 1..HISTORY_MAX (requests)
        events = self.store.history(limit)
        # The reply must fit one frame: drop the oldest until it does.
        truncated = False
        while events and len(json.dumps(events)) > HISTORY_REPLY_BYTES:
            events, truncated = events[1:], True
        return {"type": "history", "events": events, "truncated": truncated}

    def _status(self, request=None):
        with self.lock:
            now = self.clock()
            nodes = {}
            for name in self.topology.members:
                seen, report = self.memory.last_seen.get(name), self.memory.reports.get(name)
                nodes[name] = {"last_seen_ago": None if seen is None else round(now - seen, 3),
                               "report": None if report is None else report.to_wire()}
                nodes[name]["epoch"] = self.acted_epochs.get(name)
            state = self.state
            scheduled = scheduled_view(state, self.wall())
            decided = {**{k: v for k, v in asdict(state).items()
                          if k not in ("scheduled_at", "scheduled_to", "scheduled_restarts", "parameters",
                                       "config_version")},
                       "restarts_scheduled": [r.view(self.wall()) for r in state.scheduled_restarts],
                       **state.promotable_view(), **state.config_view()}
            return {"type": "status", **decided, "nodes": nodes,
                    "switchover_to": self.memory.switchover_to, "switchover_scheduled": scheduled,
                    "failover_to": self.memory.failover_to,
                    "timelines": {str(t): name for t, name in self.timelines.items()},
                    "heartbeat_interval": self.timings.heartbeat_interval, "arbiter_version": version.VERSION}

    def _switchover_or_schedule(self, request):
        if request.at is not None:
            return self._schedule_switchover(request.to, request.at, request.replace, request.expect_primary)
        return self._switchover(request.to, expect_primary=request.expect_primary)

    def _switchover(self, target, scheduled_for=None, expect_primary=None):
        with self.lock:
            memory, error = decision.request_switchover(self.state, self.memory, self.topology, target,
                                                        expect_primary)
            if error:
                self._record("switchover_refused", epoch=self.state.epoch, to=target, reason=error,
                             **({"scheduled_for": scheduled_for} if scheduled_for else {}))
            else:
                self._record("switchover_requested", epoch=self.state.epoch, primary=self.state.primary,
                             to=memory.switchover_to)
            self.memory = memory
        if error:
            return {"type": "error", "error": f"switchover refused: {error}"}
        log.failover("switchover to %s requested: the primary will hand over", memory.switchover_to)
        return {"type": "ok", "switchover_to": memory.switchover_to}

    def _change_scheduled(self, change):
        """Store the state `change(state)` makes ((state, error)): durable
        before the reply (invariant 3); (old state, new state, error)."""
        with self.lock:
            before = self.state
            state, error = change(before)
            if error is None and state != before:
                self.store.save(state, expected_epoch=before.epoch)
                self.state = state
            return before, state, error

    def _schedule_switchover(self, target, at, replacing, expect_primary=None):
        before, state, error = self._change_scheduled(
            lambda s: decision.schedule_switchover(s, self.topology, target, at, self.wall(), replacing,
                                                   expect_primary))
        if error:
            return {"type": "error", "error": f"switchover not scheduled: {error}"}
        replaced = {"replaced": iso(before.scheduled_at)} if before.scheduled else {}
        self._record("switchover_scheduled", epoch=state.epoch, primary=state.primary, to=target, at=iso(at),
                     **replaced)
        log.failover("switchover to %s scheduled at %s%s", target or "the standby", iso(at),
                     f" (replacing the one at {replaced['replaced']})" if replaced else "")
        return {"type": "ok", "switchover_to": target, "at": iso(at), **replaced}

    def _flush(self, request):
        if request.what == "restart":
            return self._cancel_restarts(request.member)
        before, state, error = self._change_scheduled(decision.cancel_scheduled_switchover)
        if error:
            return {"type": "error", "error": f"flush refused: {error}"}
        self._record("switchover_cancelled", epoch=state.epoch, primary=state.primary, to=before.scheduled_to,
                     at=iso(before.scheduled_at))
        log.failover("scheduled switchover at %s cancelled by the operator", iso(before.scheduled_at))
        return {"type": "ok", "cancelled": {"at": iso(before.scheduled_at), "to": before.scheduled_to}}

    def _cancel_restarts(self, member=None):
        """pgha-ctl flush restart [MEMBER], DELETE /restart (its node's member):
        the scheduled restarts and an order not carried out, whichever there
        are (of `member` alone when named)."""
        before, state, _ = self._change_scheduled(lambda s: (decision.without_scheduled_restart(s, member), None))
        scheduled = [r.member for r in before.scheduled_restarts if member in (None, r.member)]
        with self.lock:
            memory, error = decision.cancel_restart(self.memory, member)
            pending = None if error else self.memory.restart
            if error and not scheduled:
                return {"type": "error", "error": f"flush refused: {error} and none is scheduled"
                                                  f"{f' for {member}' if member else ''}"}
            self.memory = memory
            self._record("restart_cancelled", epoch=state.epoch, primary=state.primary,
                         member=pending[0] if pending else None, scheduled=scheduled)
        log.failover("%s cancelled by the operator", "; ".join(
            ([f"restart order for {pending[0]}"] if pending else []) +
            ([f"scheduled restarts of {', '.join(scheduled)}"] if scheduled else [])))
        return {"type": "ok", "cancelled": {"restart": pending[0] if pending else None, "scheduled": scheduled}}

    def _reinit(self, request):
        return self._operator_order("reinit", request.member, decision.request_reinit)

    def _restart(self, request):
        if request.at is not None:
            return self._schedule_restart(request.member, request.at, request.pending)
        return self._operator_order("restart", request.member, decision.request_restart)

    def _schedule_restart(self, member, at, pending):
        _, state, error = self._change_scheduled(
            lambda s: decision.schedule_restart(s, self.topology, member, at, self.wall(), pending))
        if error:
            return {"type": "error", "error": f"restart not scheduled: {error}"}
        self._record("restart_scheduled", epoch=state.epoch, primary=state.primary, member=member, at=iso(at),
                     pending=pending)
        log.failover("restart of %s scheduled at %s%s", member, iso(at),
                     " (if a parameter then waits for a restart)" if pending else "")
        return {"type": "ok", "member": member, "at": iso(at), "pending": pending}

    def _operator_order(self, kind, member, rule):
        """An order for one member (reinit, restart), carried out by that node;
        the member reports its id done (Report.reinit_done, restart_done)."""
        with self.lock:
            reply = self._place_order(kind, member, rule)
        if reply["type"] == "ok":
            self._log_order(kind, member)
        return reply

    def _place_order(self, kind, member, rule, scheduled_for=None):
        """_operator_order's step under the lock (a due scheduled restart's too)."""
        when = {"scheduled_for": scheduled_for} if scheduled_for else {}
        order = secrets.randbelow(2 ** 31 - 1) + 1     # fresh across arbiter restarts: never taken as done
        state, memory, error = rule(self.state, self.memory, self.topology, member, order)
        if error:
            if scheduled_for:
                self._record(f"{kind}_refused", epoch=state.epoch, member=member, reason=error, **when)
            return {"type": "error", "error": f"{kind} refused: {error}"}
        if state != self.state:     # not promotable: durable before anyone hears of it (invariant 3)
            self.store.save(state, expected_epoch=self.state.epoch)
        self.state, self.memory = state, memory
        self._record(f"{kind}_requested", epoch=state.epoch, primary=state.primary, member=member, **when)
        return {"type": "ok", "member": member, "order": order}

    def _log_order(self, kind, member):
        if member == self.state.primary:     # a reinit of the primary is refused by its rule
            how = "the primary restarts PostgreSQL in place at once (writes stop meanwhile)"
        else:
            how = ("it is not promotable until it streams again; it starts once the primary has dropped it from "
                   "synchronous replication")
        log.failover("%s of %s ordered by the operator: %s", kind, member, how)

    def _start_due_orders(self):
        self._start_due_switchover()
        self._start_due_restart()

    def _start_due_restart(self):
        """A scheduled restart whose time has come becomes an order (one at a
        time, standbys first: decision.next_due_restart). Taken off the stored
        state in the same step, so it fires once; with `pending`, skipped (with
        a history event) unless the member reports a parameter waiting for a
        restart. A refused order (a member no longer configured) is recorded."""
        with self.lock:
            due = decision.next_due_restart(self.state, self.memory, self.wall())
            if due is None:
                return
            state = decision.without_scheduled_restart(self.state, due.member)
            self.store.save(state, expected_epoch=self.state.epoch)
            self.state = state
            report = self.memory.reports.get(due.member)
            if due.pending and not (report and report.pending_restart):
                self._record("restart_skipped", epoch=state.epoch, primary=state.primary, member=due.member,
                             scheduled_for=iso(due.at), reason="no parameter waits for a restart")
                log.failover("scheduled restart of %s skipped: no parameter waits for a restart", due.member)
                return
            reply = self._place_order("restart", due.member, decision.request_restart, scheduled_for=iso(due.at))
        if reply["type"] == "error":
            log.warning("scheduled %s", reply["error"])
        else:
            self._log_order("restart", due.member)

    def _start_due_switchover(self):
        """A scheduled switchover whose time has come becomes a request (refused
        then, with a history event, if the standby is not promotable). Taken
        off the stored state first, so it fires once."""
        if not decision.due_switchover(self.state, self.wall()):
            return
        before, _, error = self._change_scheduled(
            lambda s: decision.cancel_scheduled_switchover(s) if decision.due_switchover(s, self.wall())
            else (s, "not due"))
        if error:
            return
        reply = self._switchover(before.scheduled_to, scheduled_for=iso(before.scheduled_at))
        if reply["type"] == "error":
            log.warning("scheduled %s", reply["error"])

    def _failover(self, request):
        target, force = request.to, request.force
        with self.lock:
            now = self.clock()
            memory, error, how = decision.request_failover(self.state, self.memory, self.topology, target,
                                                           force, now, self._rules_timings(now),
                                                           primary_stopped=request.primary_stopped,
                                                           expect_primary=request.expect_primary)
            if error:
                return {"type": "error", "error": f"failover refused: {error}"}
            self._record("failover_requested", epoch=self.state.epoch, primary=self.state.primary, to=target,
                         force=bool(force), promotable=target in self.state.promotable, how=how)
            self.memory = memory
        if how == "switchover":
            log.failover("manual failover to %s with a live primary: switching over", target)
        else:
            log.failover("manual failover to %s requested%s: it is promoted once the primary's lease has run "
                         "out", target, " (FORCED: it may lack acknowledged commits)" if memory.failover_forced
                         else "")
        return {"type": "ok", "to": target, "how": how, "forced": memory.failover_forced}

    def _set_paused(self, request):
        paused = isinstance(request, requests.Pause)
        with self.lock:
            if self.state.paused == paused:
                return {"type": "ok", "paused": paused, "changed": False}
            state, memory = decision.set_paused(self.state, self.memory, paused)
            # Durable before anyone hears of it (invariant 3).
            self.store.save(state, expected_epoch=self.state.epoch)
            self.state, self.memory = state, memory
            self._record("pause" if paused else "resume", epoch=state.epoch, primary=state.primary)
        log.failover("%s", "maintenance mode ON (paused): no failover or switchover; nodes leave PostgreSQL "
                           "alone; leases and fencing still run" if paused
                     else "maintenance mode OFF (resumed): failover and switchover enabled again")
        return {"type": "ok", "paused": paused, "changed": True}

    def _change_config(self, request):
        with self.lock:
            before = self.state
            state, error = decision.change_parameters(before, request.parameters, request.version)
            if error:
                return {"type": "error", "error": f"configuration refused: {error}"}
            if state != before:
                # Durable before any node hears of it (invariant 3), and in the history.
                self.store.save(state, expected_epoch=before.epoch)
                self.state = state
                changes = cluster_config.describe_changes(before.parameters, state.parameters)
                self._record("config", epoch=state.epoch, primary=state.primary,
                             config_version=state.config_version, reason=changes)
        if state != before:
            log.info("cluster configuration version %d: %s", state.config_version, changes)
        return {"type": "ok", "changed": state != before, **state.config_view()}

    # -- reload (SIGHUP, pgha.ctl reload) ------------------------------------------------

    def _rules_timings(self, now):
        """The timings the rules use: while a shrunk lease_time settles they
        still wait the old lease (reload.LeaseTransition)."""
        transition = self.lease_transition
        if transition is None:
            return self.timings
        if now >= transition.until:
            self.lease_transition = None
            log.info("reload: lease_time %.3gs now in full effect (every longer lease has run out)",
                     self.timings.lease_time)
            return self.timings
        return replace(self.timings, lease_time=transition.rules_lease(self.timings.lease_time, now))

    def _stamp_instruction(self, instruction):
        """The nodes' leases use the current lease_time at once; a node
        seeing reload_generation grow re-reads its settings."""
        changes = {"reload_generation": self.reload_generation}
        if instruction.lease_time is not None:
            changes["lease_time"] = self.timings.lease_time
        return replace(instruction, **changes)

    def reload_settings(self):
        """Re-read the settings file (settings_loader) and apply what can
        change at run time; (reload.Diff, None) or (None, error text). The
        service's reload, for this cluster alone."""
        from pgha.arbiter_service import ArbiterService
        return ArbiterService.single(self).reload_settings()

    def apply_settings(self, new, announce=True):
        """Apply what of `new` can change at run time; the reload.Diff.
        announce: log the changes (once per service, not once per cluster)."""
        old = self.settings
        diff = reload.settings_diff(old, new, settings_mod.ARBITER_SPECS, reload.ARBITER_RUNTIME)
        merged = reload.merge(old, new, diff)
        with self.lock:
            now = self.clock()
            self.lease_transition = reload.LeaseTransition.after_change(
                old.lease_time, merged.lease_time, merged.failover_margin, now, self.lease_transition)
            self.settings, self.timings = merged, decision.Timings.from_settings(merged)
        if not announce:
            return diff
        logs.reconfigure(merged.log_level, merged.log_file)
        for line in reload.change_lines(old, new, diff, settings_mod.ARBITER_SPECS):
            log.info("%s", line)
        if self.lease_transition is not None and "lease_time" in diff.applied:
            log.warning("reload: lease_time shrinks; the arbiter still waits the old %.3gs lease before a "
                        "failover until every lease granted under it has run out (%.1fs)",
                        self.lease_transition.old_lease, self.lease_transition.until - now)
        if not diff.applied and not diff.restart_needed:
            log.info("reload: no setting changed")
        return diff

    def bump_reload_generation(self):
        """The nodes re-read their settings at their next instruction."""
        with self.lock:
            self.reload_generation += 1
            return self.reload_generation

    # -- rebuilding a lost state (arbiter.py --rebuild, pgha.rebuild) ----------------------

    def _start_rebuild(self):
        existing = self.store.load()
        if existing is not None:
            raise StateFileError(f"--rebuild: state file {self.store} exists (epoch {existing.epoch}, primary "
                                 f"{existing.primary}); refusing to replace it. Start without --rebuild")
        self.rebuilding = rebuild.Rebuild(self.topology, fresh_within=self.timings.lease_time,
                                          started_at=self.clock())
        self._last_proposal = None
        log.warning("rebuild mode: no state in %s; every node is told to wait until an operator confirms "
                    "the proposal (python -m pgha.ctl status, then rebuild --confirm)", self.store)

    def _handle_rebuilding(self, request):
        """Rebuild mode's own table: heartbeats (told to wait, read for the
        proposal), status (the proposal), the operator's confirmation; every
        other kind is refused until then."""
        if self.rebuilding is None:
            return {"type": "error", "error": "the arbiter is not rebuilding its state"}
        answer = {requests.Heartbeat: self._rebuild_heartbeat, requests.Status: self._rebuild_status,
                  requests.Rebuild: self._confirm_rebuild}.get(type(request))
        if answer is None:
            kind = requests.kind_of_request(request).name
            return {"type": "error", "error": f"the arbiter is rebuilding its state: {kind} refused until an "
                                              "operator confirms (python -m pgha.ctl rebuild)"}
        return answer(request)

    def _rebuild_heartbeat(self, request):
        node = self._member_of(request)
        with self.lock:
            now = self.clock()
            instruction = self.rebuilding.on_heartbeat(node, request.epoch, request.report, now)
            proposal = self.rebuilding.proposal(now)
        if proposal != self._last_proposal:     # one line per change, not per heartbeat
            self._last_proposal = proposal
            found, problem = proposal
            if found:
                log.warning("rebuild proposal: epoch %d, primary %s; confirm with `python -m pgha.ctl "
                            "rebuild --confirm --epoch %d --primary %s`", found.epoch, found.primary,
                            found.epoch, found.primary)
            else:
                log.warning("rebuild: no proposal yet: %s", problem)
        return instruction.to_wire()

    def _rebuild_status(self, request):
        with self.lock:
            now = self.clock()
            found, problem = self.rebuilding.proposal(now)
            return {"type": "status", "epoch": None, "primary": None, "promotable": False,
                    "promotable_members": [], "rebuilding": True, "proposal": found.to_wire() if found else None,
                    "proposal_problem": problem, "nodes": self.rebuilding.status_nodes(now),
                    "switchover_to": None}

    def _confirm_rebuild(self, request):
        epoch, primary = request.epoch, request.primary
        with self.lock:
            if self.rebuilding is None:
                return {"type": "error", "error": "the arbiter is not rebuilding its state"}
            state, problem = self.rebuilding.confirm(epoch, primary, self.clock())
            if state is None:
                log.warning("rebuild confirmation refused: %s", problem)
                return {"type": "error", "error": f"rebuild refused: {problem}"}
            # Durable before normal service starts (invariant 3); a state that
            # appeared meanwhile is not overwritten (StaleStateError).
            self.store.save(state, expected_epoch=None)
            self._record("rebuilt", epoch=state.epoch, primary=state.primary)
            self.state, self.memory, self.rebuilding = state, decision.Memory.at_start(self.clock()), None
        log.failover("state rebuilt by the operator: epoch %d, primary %s, standby not promotable until it "
                     "is synchronous again; normal service", state.epoch, state.primary)
        return {"type": "ok", "epoch": state.epoch, "primary": state.primary}


HISTORY_DEFAULT = 20
HISTORY_MAX = requests.HISTORY_MAX
HISTORY_REPLY_BYTES = protocol.MAX_FRAME - 4096   # room for the envelope and signature
TIMELINES_KEPT = 32     # the newest timelines whose leaders status names (/history's new_leader)


def scheduled_view(state, wall_now):
    """The state's scheduled switchover as status shows it ({"at", "in", "to"}), or None."""
    if state.scheduled_at is None:
        return None
    return {"at": iso(state.scheduled_at), "in": round(state.scheduled_at - wall_now, 1), "to": state.scheduled_to}


def _standby_lsn(report):
    """The promoted standby's last reported position: what it had received."""
    if report is None:
        return None
    return max(report.lsn, report.receive_lsn) or None


class _Handler(protocol.LineHandler):
    def answer(self, request):
        try:
            return self.server.service.handle(request)
        except StateFileError as exc:
            log.error("%s", exc)
            raise protocol.ProtocolError("arbiter cannot store its decision") from None


class ArbiterServer(protocol.LineServer):
    """Serves one pgha.arbiter_service.ArbiterService (one cluster's Arbiter:
    ArbiterService.single(arbiter)). verifier: an auth.Verifier
    (auth.arbiter_lookup says who may send what); None only in tests of other
    behaviour: the entry point always passes one."""

    def __init__(self, service, host, port, idle_timeout=30.0, verifier=None):
        self.service = service
        self.idle_timeout = idle_timeout
        self.verifier = verifier
        if verifier is not None:
            service.clock_skews = verifier.skews
        super().__init__((host, port), _Handler)
        # Members keep their slots: two per cluster, and as many again for their restarts.
        self.slots.member_slots = max(self.slots.member_slots, limits.member_slots_for(len(self.service.handlers)))
        self.slots.stranger_slots = max(self.slots.stranger_slots, limits.stranger_slots_for(len(self.service.handlers)))

    def is_member(self, request):
        """A heartbeat the arbiter answered, in the name of a configured node,
        earns the connection a member's slot (authentication tightens this:
        the name must also be proven)."""
        return self.service.is_member(request)
