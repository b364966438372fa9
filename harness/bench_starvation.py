#!/usr/bin/env python3
"""Safety of the default timings under CPU starvation and network delay.

    python -m harness.bench_starvation [--minutes 30] [--delay 0.1:0.3] [--hogs 2] [--core N]

Runs the local cluster at its default timings for --minutes with:
  * the arbiter and the standby (node daemon, fencer, PostgreSQL) pinned to
    one core (os.sched_setaffinity) that --hogs busy-loop processes, pinned
    there too, keep busy;
  * 100-300 ms of delay (--delay) each way on the node -> arbiter links and
    on both lease links: the kernel here has no sch_netem, so the traffic goes
    through harness/delay_proxy.py (the nodes' arbiter_port and
    peer_advertise_port point at it). PostgreSQL's own replication is not
    delayed: its round trip is every commit's latency;
  * a writer committing every 50 ms through the multi-host DSN.

No fault is injected, so nothing may fail over or fence. It prints every
epoch change, every fencing and lease loss and every other warning the
daemons logged, and exits 1 if any failover or fencing happened or an
acknowledged row was lost.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import re
import subprocess
import sys
import time

from harness import workload
from harness.bench_failover import log_lines
from harness.localcluster import NODES, LocalCluster, process_tree

# Log lines that mean a failover or a fencing happened (the run fails), and
# lines worth counting (it does not).
FAILURES = {
    "failover decided": re.compile(r"epoch \d+: promoting"),
    "fenced by the daemon": re.compile(r"no lease from the arbiter or the standby: fencing"),
    "fenced by the fencer": re.compile(r"lease ran out: immediate shutdown"),
    "handed over": re.compile(r"handing over to the standby|switchover: stopping"),
    "demoted": re.compile(r"demoting: "),
}
NOTED = {
    "standby marked not promotable": re.compile(r"marked not promotable"),
    "synchronous replication off": re.compile(r"synchronous replication off"),
    "arbiter unreachable": re.compile(r"arbiter .* unreachable"),
}


def hog(core: int) -> None:
    os.sched_setaffinity(0, {core})
    while True:
        pass


def pin(pids: list[int], core: int) -> int:
    pinned = 0
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {core})
            pinned += 1
        except OSError:
            pass    # exited meanwhile
    return pinned


def starved_pids(cluster: LocalCluster, standby: str) -> list[int]:
    """The arbiter's and the standby host's processes (daemon, fencer, PostgreSQL and its children)."""
    arbiter = cluster.procs["arbiter"].pid
    return process_tree(arbiter) + cluster._host_pids(standby)


def start_proxy(cluster: LocalCluster, ports: dict[str, int], delay: str) -> subprocess.Popen:
    routes = [f"{ports['arbiter']}:127.0.0.1:{cluster.arbiter_port}"]
    routes += [f"{ports[n]}:127.0.0.1:{cluster.peer_ports[n]}" for n in NODES]
    log = open(os.path.join(cluster.dir, "delay_proxy.log"), "a")
    cmd = [sys.executable, "-m", "harness.delay_proxy", "--delay", delay]
    for route in routes:
        cmd += ["--route", route]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scan_logs(cluster: LocalCluster, since: float) -> tuple[list[tuple[str, str]], collections.Counter]:
    """(failure kind, log line) of every failure, and the counts of noted lines."""
    failures, noted = [], collections.Counter()
    for name in ["arbiter", *NODES]:
        for _, _, line in log_lines(os.path.join(cluster.dir, f"{name}.log"), since):
            for kind, pattern in FAILURES.items():
                if pattern.search(line):
                    failures.append((kind, line.rstrip()))
            for kind, pattern in NOTED.items():
                if pattern.search(line):
                    noted[kind] += 1
    return failures, noted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--delay", default="0.1:0.3", help="MIN:MAX seconds each way (default 0.1:0.3)")
    parser.add_argument("--hogs", type=int, default=2, help="busy loops on the starved core (default 2)")
    parser.add_argument("--core", type=int, default=None, help="the starved core (default: the last one)")
    parser.add_argument("--dir", default="/var/tmp/pgha-starve")
    parser.add_argument("--base-port", type=int, default=8530)
    args = parser.parse_args()
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))

    base = args.base_port
    proxy_ports = {"arbiter": base + 41, NODES[0]: base + 42, NODES[1]: base + 43}
    cluster = LocalCluster(args.dir, base_port=base, node_overrides={"arbiter_port": proxy_ports["arbiter"]},
                           per_node_overrides={n: {"peer_advertise_port": proxy_ports[n]} for n in NODES})
    cluster.prepare(fresh=True)
    proxy = start_proxy(cluster, proxy_ports, args.delay)
    hogs: list[multiprocessing.Process] = []
    writer = None
    status_line = ""
    epochs: list[tuple[float, int, str]] = []
    try:
        cluster.start()
        first = cluster.wait_healthy(timeout=240)
        primary, epoch = first["primary"], first["epoch"]
        standby = NODES[1] if primary == NODES[0] else NODES[0]
        since = time.time()
        epochs.append((0.0, epoch, primary))
        hogs = [multiprocessing.Process(target=hog, args=(core,), daemon=True) for _ in range(args.hogs)]
        for h in hogs:
            h.start()
        pinned = pin(starved_pids(cluster, standby), core)
        print(f"starving core {core} with {args.hogs} busy loop(s): the arbiter and {standby} "
              f"({pinned} processes); primary {primary}; delay {args.delay} s on the arbiter and lease "
              f"links; {args.minutes:g} min", flush=True)
        writer = workload.Writer(cluster.dsn, writers=1, interval=0.05, commit_timeout=30)
        writer.start()
        start = time.monotonic()
        end = start + args.minutes * 60
        next_pin = next_line = start
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_pin:     # PostgreSQL's new backends inherit it; a restarted process would not
                pin(starved_pids(cluster, standby), core)
                next_pin = now + 10
            try:
                status = cluster.status()
                if status.get("epoch") != epochs[-1][1] or status.get("primary") != epochs[-1][2]:
                    epochs.append((now - start, status.get("epoch"), status.get("primary")))
                    print(f"  {now - start:7.1f}s EPOCH CHANGE: epoch {status.get('epoch')}, "
                          f"primary {status.get('primary')}", flush=True)
            except OSError as exc:
                status_line = f"status failed: {exc}"
            if now >= next_line:
                acked = writer.counts[workload.ACK]
                print(f"  {now - start:7.1f}s epoch {epochs[-1][1]} primary {epochs[-1][2]}, "
                      f"{acked} commits acknowledged {status_line}", flush=True)
                status_line = ""
                next_line = now + 60
            time.sleep(1.0)
    finally:
        for h in hogs:
            h.terminate()
        if writer is not None:
            writer.stop()
        report = workload.check(writer.attempts, writer.read_back(timeout=90)) if writer else None
        cluster.stop()
        proxy.terminate()
        proxy.wait(10)
        with open(os.path.join(cluster.dir, "delay_proxy.log")) as f:
            print(f.read().strip().splitlines()[-1])    # the connections each route carried

    failures, noted = scan_logs(cluster, since)
    acked = [a.end for a in writer.attempts if a.outcome == workload.ACK]
    longest = max((b - a for a, b in zip(acked, acked[1:])), default=0.0)
    print(f"\n{args.minutes:g} min, core {core} starved by {args.hogs} busy loop(s), delay {args.delay} s")
    print(f"epoch changes: {len(epochs) - 1}")
    for kind, line in failures:
        print(f"  {kind}: {line}")
    print(f"failovers or fencings no fault asked for: {len(failures)}")
    for kind in NOTED:
        print(f"{kind}: {noted[kind]} log line(s)")
    print(f"commits acknowledged: {len(acked)}, lost: {len(report.lost)}, unexpected: {len(report.unexpected)}, "
          f"longest gap between acknowledged commits: {longest:.2f}s")
    bad = len(epochs) > 1 or failures or report.lost or report.unexpected
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
