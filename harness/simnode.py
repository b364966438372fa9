"""Simulated database nodes: the real signed arbiter protocol, no PostgreSQL.

    python -m harness.simnode --arbiter HOST:PORT --nodes NODES.json [--interval 0.5]
                              [--duration S] [--stats OUT.json]

NODES.json lists the nodes this process plays: [{"cluster": C, "node": N,
"peer": OTHER, "key_file": PATH, "role": "primary"|"standby", "source":
127.x.y.z (optional: connect from it)}, ...]. Each
node keeps one connection to the arbiter and heartbeats every --interval
seconds with a healthy report for the role it plays (a primary whose
standby `peer` streams synchronously and is caught up; a streaming standby
that grants no lease), and obeys its instruction just enough: told
"primary" it reports itself primary (a promoted standby, on a new
timeline), told "standby" it reports standby, "wait" changes nothing.
Stopping the process (SIGTERM) stops its nodes, as a dead host would.

Used by the many-cluster integration test (one process per node) and by
harness/bench_arbiter.py (many nodes per process, asyncio). --stats writes
each heartbeat's [wall time, reply time] and the errors seen, at exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pgha import auth, keys, protocol
from pgha.messages import Instruction


@dataclass
class SimNode:
    cluster: str
    node: str
    peer: str
    credential: auth.Credential
    role: str = "standby"               # what it plays: primary | standby
    epoch: int = 0                      # the highest epoch acted on
    timeline: int = 1
    lsn: int = 1_000_000
    source: str | None = None           # a loopback address of its own, as a host of its own has
    rtts: list[tuple[float, float]] = field(default_factory=list)    # (wall time sent, reply time)
    errors: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        address = {"host": "127.0.0.1", "pg_port": 1, "peer_port": 1, "slot": self.node.replace("-", "_")}
        base = {"pg": "running", "address": address, "relinquished": False, "grant_remaining": 0.0,
                "role": self.role, "lsn": self.lsn, "receive_lsn": self.lsn, "timeline": self.timeline,
                "syncrep_wait": 0.0, "last_action": "simulated"}
        if self.role == "primary":
            base.update(sync_standby=self.peer, lease_remaining={"arbiter": 3.0, "standby": 3.0},
                        replication=[{"name": self.peer, "state": "streaming", "sync_state": "sync",
                                      "flush_lsn": self.lsn, "reply_age": 0.1}])
        else:
            base.update(sync_standby=None, receiver="streaming", replication=[])
        return base

    def obey(self, instruction: Instruction) -> None:
        if instruction.role == "wait":
            return
        if instruction.role == "primary" and self.role != "primary":
            self.timeline += 1          # promoted: a new timeline, as pg_promote makes
        self.role = instruction.role
        self.epoch = max(self.epoch, instruction.epoch)

    def heartbeat(self) -> dict[str, Any]:
        self.lsn += 100 if self.role == "primary" else 0
        return {"type": "heartbeat", "cluster": self.cluster, "node": self.node, "epoch": self.epoch,
                "report": self.report()}


async def run_node(sim: SimNode, host: str, port: int, interval: float, stop: asyncio.Event) -> None:
    """Heartbeat until `stop`: one connection, reopened after any error."""
    reader = writer = None
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, local_addr=(sim.source, 0) if sim.source else None), 2.0)
            assert reader is not None
            request = sim.credential.sign({"v": protocol.VERSION, **sim.heartbeat()})
            sent = time.perf_counter()
            writer.write(protocol.encode(request))
            line = await asyncio.wait_for(reader.readline(), 2.0)
            if not line:
                raise ConnectionError("closed by the arbiter")
            reply = sim.credential.check_reply(protocol.decode(line[:-1]), request)
            sim.rtts.append((time.time(), time.perf_counter() - sent))
            if reply.get("type") != "instruction":
                raise protocol.ProtocolError(str(reply.get("error")))
            sim.obey(Instruction.from_wire(reply))
        except (OSError, asyncio.TimeoutError, protocol.ProtocolError) as exc:
            sim.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            if writer is not None:
                writer.close()
            reader = writer = None
        next_at += interval
        delay = next_at - time.monotonic()
        if delay < 0:                   # fell behind: do not burst to catch up
            next_at, delay = time.monotonic(), 0
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
    if writer is not None:
        writer.close()


def load_nodes(path: str) -> list[SimNode]:
    with open(path) as f:
        listed = json.load(f)
    sims = []
    for entry in listed:
        credential, _pair = keys.node_keys(entry["key_file"], entry["node"], entry["cluster"])
        sims.append(SimNode(entry["cluster"], entry["node"], entry["peer"], credential,
                            role=entry.get("role", "standby"), epoch=entry.get("epoch", 0),
                            source=entry.get("source")))
    return sims


async def main_async(args: argparse.Namespace, sims: list[SimNode]) -> None:
    host, _, port = args.arbiter.rpartition(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    # Spread the first heartbeats over one interval, as independent hosts would be.
    tasks = []
    for i, sim in enumerate(sims):
        tasks.append(asyncio.create_task(_after(i * args.interval / max(1, len(sims)),
                                                run_node(sim, host, int(port), args.interval, stop), stop)))
    await asyncio.gather(*tasks)


async def _after(delay: float, work: Any, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
        work.close()
        return
    except asyncio.TimeoutError:
        pass
    await work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.simnode", description="simulated nodes for the arbiter")
    parser.add_argument("--arbiter", required=True, help="HOST:PORT")
    parser.add_argument("--nodes", required=True, help="JSON file listing the nodes to play")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds (0: until SIGTERM)")
    parser.add_argument("--stats", help="write reply times and errors here at exit (JSON)")
    args = parser.parse_args(argv)
    try:
        sims = load_nodes(args.nodes)
    except (OSError, ValueError, KeyError, keys.KeyFileError) as exc:
        print(f"simnode: {exc}", file=sys.stderr)
        return 2
    asyncio.run(main_async(args, sims))
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump({"rtts": [r for s in sims for r in s.rtts], "errors": [e for s in sims for e in s.errors],
                       "nodes": {f"{s.cluster}/{s.node}": {"role": s.role, "epoch": s.epoch} for s in sims}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
