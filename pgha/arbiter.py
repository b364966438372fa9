"""The arbiter's I/O: the durable decision on disk and the TCP server.

The rules themselves are in decision.py; this module feeds them reports and
the clock, writes every changed decision durably *before* replying, and
keeps serving everyone else when one client misbehaves.
"""
import os
import threading
import time
from dataclasses import asdict

from pgha import logs
from pgha import decision, protocol, store

log = logs.get("arbiter")


class StateFileError(Exception):
    pass


class Arbiter:
    def __init__(self, settings, clock=time.monotonic):
        self.nodes = list(settings.nodes)
        self.state_file = settings.state_file
        self.timings = decision.Timings(
            heartbeat_interval=settings.heartbeat_interval, lease_time=settings.lease_time,
            failover_margin=settings.failover_margin, sync_stall_timeout=settings.sync_stall_timeout,
            standby_reply_timeout=settings.standby_reply_timeout, strict_sync=settings.strict_sync)
        self.clock = clock
        self.lock = threading.Lock()
        self.state = self._load_or_create(settings.initial_primary)
        self.memory = decision.Memory.at_start(clock())

    def _load_or_create(self, initial_primary):
        try:
            saved = store.load_json(self.state_file)
        except (OSError, ValueError) as exc:
            raise StateFileError(f"cannot read state file {self.state_file}: {exc}") from None
        if not os.path.exists(self.state_file):
            state = decision.ClusterState(epoch=1, primary=initial_primary, promotable=False)
            self._save(state)
            log.info("first start: %s is the initial primary (epoch 1), state in %s",
                     initial_primary, self.state_file)
            return state
        # Checked, not coerced: bool("false") is True, and a wrong guess here
        # could promote a standby that lacks commits.
        fields = saved if isinstance(saved, dict) else {}
        epoch, primary, promotable = fields.get("epoch"), fields.get("primary"), fields.get("promotable")
        if not (type(epoch) is int and epoch >= 1 and isinstance(primary, str) and type(promotable) is bool):
            raise StateFileError(f"state file {self.state_file} is damaged: {saved!r}")
        state = decision.ClusterState(epoch=epoch, primary=primary, promotable=promotable)
        if state.primary not in self.nodes:
            raise StateFileError(f"state file {self.state_file} names primary {state.primary!r}, "
                                 f"which is not in 'nodes' {self.nodes}")
        log.info("state loaded: epoch %d, primary %s, standby %s", state.epoch, state.primary,
                 "promotable" if state.promotable else "not promotable")
        return state

    def _save(self, state):
        try:
            store.save_json(self.state_file, asdict(state))
        except OSError as exc:
            raise StateFileError(f"cannot write state file {self.state_file}: {exc}") from None

    def handle(self, message):
        """Answer one valid request."""
        kind = message["type"]
        if kind == "heartbeat":
            return self._heartbeat(message)
        if kind == "status":
            return self._status()
        if kind == "switchover":
            return self._switchover(message.get("to"))
        raise protocol.ProtocolError(f"the arbiter does not serve {kind!r} messages")

    def _heartbeat(self, message):
        node = message["node"]
        if node not in self.nodes:
            raise protocol.ProtocolError(f"unknown node {node!r} (configured: {', '.join(self.nodes)})")
        with self.lock:
            outcome = decision.on_heartbeat(self.state, self.memory, self.nodes, node, message["epoch"],
                                            message["report"], self.clock(), self.timings)
            if outcome.state != self.state:
                self._save(outcome.state)   # durable before anyone hears of it (invariant 3)
            self.state, self.memory = outcome.state, outcome.memory
        for level, text in outcome.events:
            getattr(log, level)(text)
        return outcome.instruction

    def _status(self):
        with self.lock:
            now = self.clock()
            nodes = {name: {"last_seen_ago": round(now - self.memory.last_seen[name], 3)
                            if name in self.memory.last_seen else None,
                            "report": self.memory.reports.get(name)} for name in self.nodes}
            return {"type": "status", **asdict(self.state), "nodes": nodes,
                    "switchover_to": self.memory.switchover_to}

    def _switchover(self, target):
        with self.lock:
            memory, error = decision.request_switchover(self.state, self.memory, self.nodes, target)
            self.memory = memory
        if error:
            return {"type": "error", "error": f"switchover refused: {error}"}
        log.failover("switchover to %s requested: the primary will hand over", memory.switchover_to)
        return {"type": "ok", "switchover_to": memory.switchover_to}


class _Handler(protocol.LineHandler):
    def answer(self, message):
        try:
            return self.server.arbiter.handle(message)
        except StateFileError as exc:
            log.error("%s", exc)
            raise protocol.ProtocolError("arbiter cannot store its decision") from None


class ArbiterServer(protocol.LineServer):
    def __init__(self, arbiter, host, port, idle_timeout=30.0):
        self.arbiter = arbiter
        self.idle_timeout = idle_timeout
        super().__init__((host, port), _Handler)
