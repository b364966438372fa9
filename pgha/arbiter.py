"""The arbiter's I/O: the durable decision and the TCP server.

The rules themselves are in decision.py; this module feeds them parsed
reports and the clock, stores every changed decision durably *before*
replying (through the StateStore interface), and keeps serving everyone else
when one client misbehaves.
"""
import threading
import time
from dataclasses import asdict

from pgha import logs
from pgha import auth, decision, protocol, store
from pgha.topology import Topology

log = logs.get("arbiter")

# The name the entry point (arbiter.py) and the tests know the store's error by.
StateFileError = store.StateStoreError


def verifier(keyring, nodes):
    """Who is heard on the arbiter port: each node as itself, the operator,
    the reader (status only)."""
    return auth.Verifier(auth.ARBITER, auth.arbiter_lookup(keyring, nodes))


class Arbiter:
    def __init__(self, settings, clock=time.monotonic, state_store=None):
        self.topology = Topology(tuple(settings.nodes))
        self.timings = decision.Timings.from_settings(settings)
        self.store = state_store if state_store is not None else store.FileStore(settings.state_file)
        self.clock = clock
        self.lock = threading.Lock()
        self.state = self._load_or_create(settings.initial_primary)
        self.memory = decision.Memory.at_start(clock())

    def _load_or_create(self, initial_primary):
        state = self.store.load()
        if state is None:
            state = decision.ClusterState(epoch=1, primary=initial_primary, promotable=False)
            self.store.save(state, expected_epoch=None)
            log.info("first start: %s is the initial primary (epoch 1), state in %s", initial_primary, self.store)
            return state
        if state.primary not in self.topology:
            raise StateFileError(f"state file {self.store} names primary {state.primary!r}, "
                                 f"which is not in 'nodes' {list(self.topology.members)}")
        log.info("state loaded: epoch %d, primary %s, standby %s", state.epoch, state.primary,
                 "promotable" if state.promotable else "not promotable")
        return state

    def handle(self, message):
        """Answer one valid request (protocol.validate_request has parsed it)."""
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
        if node not in self.topology:
            raise protocol.ProtocolError(f"unknown node {node!r} "
                                         f"(configured: {', '.join(self.topology.members)})")
        with self.lock:
            outcome = decision.on_heartbeat(self.state, self.memory, self.topology, node, message["epoch"],
                                            message["report"], self.clock(), self.timings)
            if outcome.state != self.state:
                # Durable before anyone hears of it (invariant 3).
                self.store.save(outcome.state, expected_epoch=self.state.epoch)
            self.state, self.memory = outcome.state, outcome.memory
        for level, text in outcome.events:
            getattr(log, level)(text)
        return outcome.instruction.to_wire()

    def _status(self):
        with self.lock:
            now = self.clock()
            nodes = {}
            for name in self.topology.members:
                seen, report = self.memory.last_seen.get(name), self.memory.reports.get(name)
                nodes[name] = {"last_seen_ago": None if seen is None else round(now - seen, 3),
                               "report": None if report is None else report.to_wire()}
            return {"type": "status", **asdict(self.state), "nodes": nodes,
                    "switchover_to": self.memory.switchover_to}

    def _switchover(self, target):
        with self.lock:
            memory, error = decision.request_switchover(self.state, self.memory, self.topology, target)
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
    """verifier: an auth.Verifier (auth.arbiter_lookup says who may send
    what); None only in tests of other behaviour: the entry point always
    passes one."""

    def __init__(self, arbiter, host, port, idle_timeout=30.0, verifier=None):
        self.arbiter = arbiter
        self.idle_timeout = idle_timeout
        self.verifier = verifier
        super().__init__((host, port), _Handler)
