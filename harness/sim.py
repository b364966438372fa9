"""A deterministic simulation of the real rules: pgha/decision.py (the
arbiter), pgha/node_rules.py (each node) and pgha/lease.py (leases and
grants), driven by one seeded scheduler with a simulated clock, network,
PostgreSQL and fencer. Invariants are checked after every step.

    python -m harness.sim --seeds 1000 [--first 0] [--steps 400]
    python -m harness.sim --replay SEED        # one seed, its trace printed

Simulated, per step, chosen by the seed: a heartbeat (request or reply lost,
reply delayed up to the request timeout; the node takes only the reply to
its request), a lease renewal over the node-to-node link (lost or not),
a client commit (acknowledged by synchronous replication when the primary
names a streaming standby, locally when it names none), streaming, crash of
PostgreSQL, of a node daemon (the epoch file and the fencer's deadline
survive; its leases and grants in memory do not), of the arbiter (its state
file survives), and time passing on each host's clock (rate drift up to
0.1 %). The fencer stops a read-write PostgreSQL when its host's clock
passes the deadline the daemon armed (Leases.deadline()).

Invariants: at most one PostgreSQL read-write at once (2); a node promoted
holds every acknowledged commit (1); the epoch a node acts on and the
arbiter's epoch never go back (3). A failing seed prints its trace.

The adapter to the rules' API (NodeView in, Decision out; Report in,
Instruction out) is `SimNode.view`, `SimNode.carry_out`, `SimNode.report`
and `World.arbiter_answer`: the one place to change when those APIs change.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field, replace

from pgha import decision, node_rules
from pgha.lease import Grants, Leases
from pgha.messages import PG_RUNNING, PG_STOPPED, PRIMARY, STANDBY, Address, Instruction, Report, ReplicationRow
from pgha.node_rules import Action, DataDir, HandOver, NodeView
from pgha.topology import Topology

NAMES = ("a", "b")
TIMINGS = decision.Timings(heartbeat_interval=0.5, lease_time=1.8, failover_margin=0.4, sync_stall_timeout=0.7,
                           standby_reply_timeout=1.5, strict_sync=False)
REQUEST_TIMEOUT = 1.0       # the node's arbiter link timeout
MAX_DRIFT = 0.001           # clock rate difference between hosts
# The fix of a bug this simulation and the Spin model found (docs/ha-model.md,
# "Found by the checks"): a restarted node daemon's Grants started empty and
# reported "no grant" at once, while the primary could still hold the grant
# the previous daemon gave. Now node.run calls Grants.assume_granted (as
# Memory.at_start assumes the primary just renewed). False replays the code
# before the fix (seed 3019 breaks).
RESTARTED_GRANTS_ASSUME_A_GRANT = True
# An operator's error the rules cannot fully survive (docs/ha-model.md):
# the arbiter restarted from a copy of its state file one decision old.
# Off in the CI run; on to show the epoch check catching a forgotten epoch.
STALE_ARBITER_FAULT = False


class InvariantBroken(AssertionError):
    pass


@dataclass
class SimNode:
    name: str
    drift: float
    address: Address
    acted_epoch: int = 1                        # node-state.json: survives a daemon crash
    daemon_up: bool = True
    pg: str = PG_STOPPED
    role: str | None = None                     # primary | standby while running
    wal: tuple[int, ...] = ()                   # commit ids, in order
    upstream: str | None = None
    sync_standby: str | None = None
    acting_primary: bool = False
    fence_at: float = float("-inf")             # the fencer's deadline (host clock): survives the daemon
    leases: Leases = field(init=False)
    grants: Grants = field(init=False)
    pending: tuple[float, Instruction | None] | None = None     # (sent at, reply) of the one request
    syncrep_since: float | None = None          # a commit waits for the standby since then
    last_crash_restart: float = float("-inf")
    clock_now: float = 0.0

    def __post_init__(self) -> None:
        self.fresh_memory()

    def clock(self) -> float:
        return self.clock_now

    def fresh_memory(self) -> None:
        """A (re)started daemon: leases and grants in memory are new."""
        self.leases = Leases(self.clock, on_renew=self.arm_fencer)
        self.grants = Grants(self.clock)

    def arm_fencer(self) -> None:
        self.fence_at = self.leases.deadline()

    @property
    def read_write(self) -> bool:
        return self.pg == PG_RUNNING and self.role == PRIMARY

    # -- the adapter to the rules --------------------------------------------------------
    def report(self, world: World) -> Report:
        rows: tuple[ReplicationRow, ...] = ()
        if self.read_write:
            rows = tuple(ReplicationRow(name=o.name, state="streaming", sync_state="sync" if self.sync_standby == o.name
                                        else "async", flush_lsn=len(o.wal), reply_age=0.1)
                         for o in world.nodes.values() if o.streams_from(self))
        wait = 0.0 if self.syncrep_since is None else self.clock() - self.syncrep_since
        return Report(pg=self.pg, role=self.role if self.pg == PG_RUNNING else None, lsn=len(self.wal),
                      receive_lsn=len(self.wal), sync_standby=self.sync_standby if self.read_write else None,
                      receiver="streaming" if self.role == STANDBY and self.upstream and
                      self.streams_from(world.nodes[self.upstream]) else None,
                      syncrep_wait=wait, replication=rows, address=self.address,
                      grant_remaining=round(self.grants.remaining_for_report(), 3))

    def view(self, instruction: Instruction | None) -> NodeView:
        data = None
        if self.pg == PG_STOPPED:
            data = DataDir.EMPTY if not self.wal and self.role is None else \
                DataDir.WAS_STANDBY if self.role == STANDBY else DataDir.WAS_PRIMARY
        upstream_address = self.upstream_address
        return NodeView(now=self.clock(), instruction=instruction, acted_epoch=self.acted_epoch, pg=self.pg,
                        running_as=self.role if self.pg == PG_RUNNING else None, data=data,
                        acting_primary=self.acting_primary, hand_over=HandOver.NONE,
                        last_crash_restart=self.last_crash_restart, upstream=upstream_address,
                        streaming=upstream_address is not None, not_streaming_since=None,
                        slot_ensured=instruction.standby_slot if instruction else None,
                        sync_standby=self.sync_standby if self.read_write else None)

    upstream_address: Address | None = None

    def carry_out(self, world: World, instruction: Instruction, decided: node_rules.Decision) -> None:
        action = decided.action
        if decided.remember_epoch is not None:
            world.check(decided.remember_epoch >= self.acted_epoch, f"{self.name}: epoch file went back")
            self.acted_epoch = decided.remember_epoch
        starts_primary = action in (Action.START_PRIMARY, Action.PROMOTE_RUNNING_STANDBY,
                                    Action.PROMOTE_STOPPED_STANDBY, Action.RESTART_AFTER_CRASH, Action.BOOTSTRAP)
        if starts_primary:
            if action is Action.RESTART_AFTER_CRASH:
                self.last_crash_restart = self.clock()
            world.promoted(self)
            self.pg, self.role, self.upstream, self.upstream_address = PG_RUNNING, PRIMARY, None, None
            self.acting_primary = True
            self.sync_standby = decided.sync_standby
        elif action is Action.SET_SYNC:
            self.sync_standby = decided.sync_standby
        elif action in (Action.DEMOTE, Action.HAND_OVER, Action.RELINQUISH, Action.RESTART_REJOIN):
            self.stop()
        elif action in (Action.REWIND, Action.START_STANDBY, Action.CLONE, Action.FOLLOW):
            self.follow(world, decided.primary or "", decided.address)

    # -- simulated PostgreSQL -----------------------------------------------------------------
    def stop(self) -> None:
        self.pg, self.acting_primary, self.upstream_address, self.syncrep_since = PG_STOPPED, False, None, None

    def follow(self, world: World, primary: str, address: Address | None) -> None:
        """Start as a standby of `primary`, rewound to the common history (pg_rewind)."""
        theirs = world.nodes[primary].wal
        common = 0
        while common < min(len(theirs), len(self.wal)) and theirs[common] == self.wal[common]:
            common += 1
        self.wal = self.wal[:common]
        self.pg, self.role, self.upstream, self.upstream_address = PG_RUNNING, STANDBY, primary, address
        self.acting_primary = False

    def streams_from(self, primary: SimNode) -> bool:
        return (self.pg == PG_RUNNING and self.role == STANDBY and self.upstream == primary.name
                and primary.pg == PG_RUNNING and primary.wal[:len(self.wal)] == self.wal)


class World:
    def __init__(self, seed: int, steps: int = 400) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.now = 100.0
        self.topology = Topology(NAMES)
        self.nodes = {n: SimNode(n, self.rng.uniform(-MAX_DRIFT, MAX_DRIFT),
                                 Address(host=f"{n}.sim", pg_port=5432, peer_port=5433, slot=f"slot_{n}"))
                      for n in NAMES}
        self.state = decision.ClusterState(epoch=1, primary="a", promotable=frozenset({"b"}))
        self.memory = decision.Memory.at_start(self.now)
        self.arbiter_up = True
        self.acked: set[int] = set()
        self.next_commit = 1
        self.trace: list[str] = []
        self.max_epoch = 1
        self.previous_state: decision.ClusterState | None = None
        a, b = self.nodes["a"], self.nodes["b"]
        a.pg, a.role, a.acting_primary, a.sync_standby = PG_RUNNING, PRIMARY, True, "b"
        b.follow(self, "a", a.address)
        b.grants.follow("a", 1)
        self.sync_clocks()
        a.leases.renew("arbiter", a.clock(), TIMINGS.lease_time)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            raise InvariantBroken(f"seed {self.seed}: {what}")

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now - 100:8.3f} {text}")

    def sync_clocks(self) -> None:
        for node in self.nodes.values():
            node.clock_now = self.now * (1 + node.drift)

    def promoted(self, node: SimNode) -> None:
        missing = self.acked - set(node.wal)
        self.check(not missing, f"{node.name} runs read-write without acknowledged commits {sorted(missing)}")

    # -- the arbiter ------------------------------------------------------------------------------
    def arbiter_answer(self, node: SimNode, report: Report) -> Instruction:
        outcome = decision.on_heartbeat(self.state, self.memory, self.topology, node.name, node.acted_epoch,
                                        report, self.now, TIMINGS)
        self.check(outcome.state.epoch >= self.state.epoch, "the arbiter's epoch went back")
        if outcome.state.epoch != self.state.epoch:
            self.previous_state = self.state
        for level, text in outcome.events:
            self.log(f"arbiter {level}: {text}")
        self.state, self.memory = outcome.state, outcome.memory      # durable before it is sent
        return outcome.instruction

    # -- the steps ---------------------------------------------------------------------------------
    def step(self) -> None:
        rng = self.rng
        kind = rng.choices(("time", "heartbeat", "reply", "lease", "commit", "stream", "fault"),
                           weights=(30, 20, 10, 20, 10, 5, 3))[0]
        name = rng.choice(NAMES)
        node, other = self.nodes[name], self.nodes[NAMES[1 - NAMES.index(name)]]
        if kind == "time":
            self.now += rng.choice((0.05, 0.1, 0.2, 0.5))
            self.sync_clocks()
            for n in self.nodes.values():
                if n.read_write and n.clock() >= n.fence_at:
                    self.log(f"fencer stops {n.name}")
                    n.stop()
        elif kind == "heartbeat" and node.daemon_up and node.pending is None:
            report = node.report(self)
            sent_at = node.clock()
            reply = None
            if self.arbiter_up and rng.random() > 0.2:
                reply = self.arbiter_answer(node, report)
                if rng.random() < 0.1:
                    reply = None        # the reply is lost
            node.pending = (sent_at, reply)
            if rng.random() < 0.7:
                self.take(node)
        elif kind == "reply" and node.pending is not None:
            self.take(node)
        elif kind == "lease" and node.daemon_up and node.read_write and other.daemon_up and rng.random() > 0.2:
            sent_at = node.clock()
            granted, _ = other.grants.request(name, node.acted_epoch, TIMINGS.lease_time)
            if granted and rng.random() > 0.1:
                node.leases.renew("standby", sent_at, TIMINGS.lease_time)
        elif kind == "commit" and node.read_write:
            self.commit(node, other)
        elif kind == "stream" and other.streams_from(node):
            other.wal = node.wal
        elif kind == "fault":
            self.fault(rng.choice(("postgres", "daemon", "arbiter") + (("stale arbiter",) if STALE_ARBITER_FAULT else ())),
                       node)

    def take(self, node: SimNode) -> None:
        assert node.pending is not None
        sent_at, instruction = node.pending
        node.pending = None
        if instruction is None or node.clock() - sent_at > REQUEST_TIMEOUT:
            return
        decided = node_rules.decide(node.view(instruction))
        if decided.action in (Action.NO_ANSWER, Action.IGNORE_OLD_EPOCH):
            return
        self.check(instruction.epoch >= node.acted_epoch, f"{node.name} acts on an older epoch")
        if instruction.role == PRIMARY:                         # node._take
            node.leases.renew("arbiter", sent_at, instruction.lease_time or TIMINGS.lease_time)
            node.grants.stop()
        elif instruction.role == STANDBY:
            node.grants.follow(instruction.primary or "", instruction.epoch)
        if decided.action not in node_rules.IDLE:
            self.log(f"{node.name}: {decided.action.value} (row {decided.row}, epoch {instruction.epoch})")
        node.carry_out(self, instruction, decided)
        writers = [n.name for n in self.nodes.values() if n.read_write]
        self.check(len(writers) <= 1, f"two read-write primaries: {writers}")

    def commit(self, primary: SimNode, standby: SimNode) -> None:
        commit = self.next_commit
        self.next_commit += 1
        primary.wal = primary.wal + (commit,)
        if primary.sync_standby is None:
            self.acked.add(commit)
        elif primary.sync_standby == standby.name and standby.streams_from(primary):
            standby.wal = primary.wal
            self.acked.add(commit)
            primary.syncrep_since = None
        elif primary.syncrep_since is None:
            primary.syncrep_since = primary.clock()     # the commit waits

    def fault(self, what: str, node: SimNode) -> None:
        if what == "postgres" and node.pg == PG_RUNNING:
            self.log(f"{node.name}: PostgreSQL crashes")
            node.stop()
        elif what == "daemon":
            if node.daemon_up:
                self.log(f"{node.name}: node daemon crashes")
                node.daemon_up, node.pending = False, None
            else:
                self.log(f"{node.name}: node daemon restarts")
                node.daemon_up = True
                node.fresh_memory()
                if RESTARTED_GRANTS_ASSUME_A_GRANT:     # as node.run does
                    node.grants.assume_granted(TIMINGS.lease_time)
                if node.read_write:     # node.run: a grace period, the fencer capped, never extended
                    node.fence_at = min(node.fence_at, node.clock() + TIMINGS.lease_time)
        elif what == "stale arbiter" and self.previous_state is not None:
            self.log(f"arbiter restored from an old copy: epoch {self.previous_state.epoch}")
            self.state, self.previous_state = self.previous_state, None
            self.memory = decision.Memory.at_start(self.now)
        elif what == "arbiter":
            self.arbiter_up = not self.arbiter_up
            if self.arbiter_up:
                self.memory = decision.Memory.at_start(self.now)
            self.log(f"arbiter {'restarts' if self.arbiter_up else 'crashes'}")

    def run(self) -> None:
        for _ in range(self.steps):
            self.step()
            writers = [n.name for n in self.nodes.values() if n.read_write]
            self.check(len(writers) <= 1, f"two read-write primaries: {writers}")
            self.max_epoch = max(self.max_epoch, self.state.epoch)


def run_seed(seed: int, steps: int = 400) -> World:
    world = World(seed, steps)
    world.run()
    return world


def run_seeds(first: int, count: int, steps: int = 400) -> tuple[list[tuple[int, str]], int]:
    """(failures as (seed, message), failovers seen)."""
    failures, failovers = [], 0
    for seed in range(first, first + count):
        try:
            world = run_seed(seed, steps)
            failovers += world.max_epoch > 1
        except InvariantBroken as broken:
            failures.append((seed, str(broken)))
    return failures, failovers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--replay", type=int, help="run one seed and print its trace")
    args = parser.parse_args(argv)
    if args.replay is not None:
        world = World(args.replay, args.steps)
        try:
            world.run()
            verdict = "no invariant broken"
        except InvariantBroken as broken:
            verdict = str(broken)
        print("\n".join(world.trace))
        print(verdict)
        return 0 if verdict == "no invariant broken" else 1
    started = time.monotonic()
    failures, failovers = run_seeds(args.first, args.seeds, args.steps)
    print(f"{args.seeds} schedules of {args.steps} steps, {failovers} with a failover, "
          f"{len(failures)} broke an invariant, {time.monotonic() - started:.1f}s")
    for seed, message in failures[:10]:
        print(f"  {message} (replay: python -m harness.sim --replay {seed} --steps {args.steps})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
