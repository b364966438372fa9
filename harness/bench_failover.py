#!/usr/bin/env python3
"""Failover benchmark on the local cluster.

    bin/bench [--trials 5]   (python -m harness.bench_failover) [--idle-seconds 20]

Runs each fault several times against one local cluster, with a writer
committing every 50 ms through the multi-host DSN, heals between trials, and
prints per scenario the median and worst write gap (no acknowledged write),
the rows lost, and the node daemon's idle CPU and RSS. Speed is measured
here, never asserted in the test suite.
"""
import argparse
import os
import statistics
import sys
import time

from harness import workload
from harness.localcluster import NODES, LocalCluster

SETTLE = 2.0          # seconds of writes before the fault
AFTER = 3.0           # seconds of writes after writes resumed


def other(node):
    return NODES[1] if node == NODES[0] else NODES[0]


def trial(cluster, fault):
    status = cluster.wait_healthy(timeout=180)
    primary = status["primary"]
    writer = workload.Writer(cluster.dsn, writers=1, interval=0.05, commit_timeout=30)
    writer.start()
    time.sleep(SETTLE)
    fault_at = writer.elapsed()
    victim = other(primary) if fault == "standby dead" else primary
    if fault == "primary PostgreSQL killed":
        cluster.kill_postgres(primary)
    else:
        cluster.kill_host(victim)
    acked = writer.counts[workload.ACK]
    deadline = time.monotonic() + 120
    while writer.counts[workload.ACK] < acked + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(AFTER)
    writer.stop()
    report = workload.check(writer.attempts, writer.read_back(timeout=90), fault_at)
    if fault != "primary PostgreSQL killed":
        cluster.start_node(victim)     # heal: the host comes back
    gap = max((g.length for g in _gaps_after(writer.attempts, fault_at)), default=float("nan"))
    return gap, len(report.lost), len(report.unexpected)


def _gaps_after(attempts, fault_at):
    acked = sorted(a.end for a in attempts if a.outcome == workload.ACK)
    return [workload.Gap(s, e) for s, e in zip(acked, acked[1:]) if e > fault_at]


def idle_footprint(pid, seconds):
    """CPU share of one core over `seconds`, and RSS in MB, of a process."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before, start = cpu(), time.monotonic()
    time.sleep(seconds)
    share = (cpu() - before) / (time.monotonic() - start) * 100
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return share, rss_kb / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--dir", default="/var/tmp/pgha-bench")
    parser.add_argument("--base-port", type=int, default=8430)
    args = parser.parse_args()

    cluster = LocalCluster(args.dir, base_port=args.base_port)
    cluster.prepare(fresh=True)
    cluster.start()
    results = {}
    try:
        cluster.wait_healthy(timeout=180)
        time.sleep(3)
        cpu, rss = idle_footprint(cluster.procs[NODES[0]].pid, args.idle_seconds)
        for fault in ("primary PostgreSQL killed", "primary host dead", "standby dead"):
            for i in range(args.trials):
                gap, lost, unexpected = trial(cluster, fault)
                results.setdefault(fault, []).append((gap, lost, unexpected))
                print(f"{fault:28s} trial {i + 1}: gap {gap:5.2f}s lost {lost} unexpected {unexpected}",
                      file=sys.stderr, flush=True)
    finally:
        cluster.stop()

    print(f"\n{'scenario':28s} {'median gap':>10s} {'worst gap':>10s} {'lost':>5s} {'unexp.':>6s}  trials")
    for fault, rows in results.items():
        gaps = [r[0] for r in rows]
        print(f"{fault:28s} {statistics.median(gaps):9.2f}s {max(gaps):9.2f}s "
              f"{sum(r[1] for r in rows):5d} {sum(r[2] for r in rows):6d}  {len(rows)}")
    print(f"\nnode daemon idle: {cpu:.2f}% of one core, {rss:.1f} MB RSS ({args.idle_seconds:.0f}s sample)")
    return 1 if any(r[1] or r[2] for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
