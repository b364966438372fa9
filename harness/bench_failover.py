#!/usr/bin/env python3
"""Failover benchmark on the local cluster.

    bin/bench [--trials 5] [--idle-seconds 20] [--only NAME,...]   (python -m harness.bench_failover)

Runs each fault several times against one local cluster, with a writer
committing every 50 ms through the multi-host DSN and an independent monitor
(harness/exposure.py) reading every server every 50 ms, heals between trials,
and prints per fault the median and worst of:

  gap          the longest time without an acknowledged write after the fault
  unprotected  seconds a writable server had no synchronous standby streaming
               (commits one disk away from loss), from the fault until the
               cluster is whole again
  refused      for a node daemon killed alone: seconds until the old primary
               stopped taking writes (its fencer, within the 3 s lease)
  two primaries  seconds two servers were writable at once (must be 0)

and the rows lost, and the node daemon's idle CPU and RSS. Speed is measured
here, never asserted in the test suite.
"""
import argparse
import os
import statistics
import sys
import time

from harness import workload
from harness.exposure import ExposureMonitor
from harness.localcluster import NODES, LocalCluster

SETTLE = 2.0          # seconds of writes before the fault
AFTER = 2.0           # seconds of writes after the cluster is whole again
FREEZE = 6.0          # a frozen primary stays frozen past lease + margin (4 s)
WHOLE_TIMEOUT = 120   # seconds to wait for the cluster to be whole again

FAULTS = ("primary PostgreSQL killed", "primary host dead", "standby dead", "switchover",
          "node daemon killed alone", "primary frozen")


def other(node):
    return NODES[1] if node == NODES[0] else NODES[0]


def inject(cluster, fault, primary):
    """Cause `fault`; return how to heal it once writes have resumed (or None)."""
    standby = other(primary)
    if fault == "primary PostgreSQL killed":
        cluster.kill_postgres(primary)
        return None
    if fault == "primary host dead":
        cluster.kill_host(primary)
        return lambda: cluster.start_node(primary)
    if fault == "standby dead":
        cluster.kill_host(standby)
        return lambda: cluster.start_node(standby)
    if fault == "switchover":
        cluster.switchover(standby)
        return None
    if fault == "node daemon killed alone":
        cluster.kill_daemon(primary)
        return lambda: (wait_primary_other_than(cluster, primary), cluster.start_node(primary))
    if fault == "primary frozen":
        cluster.freeze_host(primary)
        time.sleep(FREEZE)
        cluster.thaw_host(primary)
        return None
    raise ValueError(fault)


def wait_primary_other_than(cluster, node, timeout=60):
    """Until the arbiter names another primary (the failover happened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cluster.status().get("primary") != node:
                return
        except OSError:
            pass
        time.sleep(0.1)


def trial(cluster, fault):
    primary = cluster.wait_healthy(timeout=180)["primary"]
    monitor = ExposureMonitor({n: cluster.dsn_for(n) for n in NODES})
    writer = workload.Writer(cluster.dsn, writers=1, interval=0.05, commit_timeout=30)
    monitor.start()
    writer.start()
    time.sleep(SETTLE)
    fault_at, fault_mono = writer.elapsed(), time.monotonic()
    heal = inject(cluster, fault, primary)
    acked = writer.counts[workload.ACK]
    deadline = time.monotonic() + 120
    while writer.counts[workload.ACK] < acked + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    if heal:
        heal()
    cluster.wait_healthy(timeout=WHOLE_TIMEOUT)
    time.sleep(AFTER)
    writer.stop()
    monitor.stop()
    report = workload.check(writer.attempts, writer.read_back(timeout=90), fault_at)
    gap = max((g.length for g in _gaps_after(writer.attempts, fault_at)), default=float("nan"))
    last = monitor.last_writable(primary, since=fault_mono)
    refused = (last - fault_mono) if fault == "node daemon killed alone" and last is not None else None
    return {"gap": gap, "unprotected": monitor.unprotected_seconds(since=fault_mono),
            "two primaries": monitor.split_brain_seconds(since=fault_mono), "refused": refused,
            "lost": len(report.lost), "unexpected": len(report.unexpected)}


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


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-", "-"
    return f"{statistics.median(values):.2f}s", f"{max(values):.2f}s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--only", help="comma-separated faults to run (default: all)")
    parser.add_argument("--dir", default="/var/tmp/pgha-bench")
    parser.add_argument("--base-port", type=int, default=8430)
    args = parser.parse_args()
    faults = [f.strip() for f in args.only.split(",")] if args.only else list(FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; known: {', '.join(FAULTS)}")

    cluster = LocalCluster(args.dir, base_port=args.base_port)
    cluster.prepare(fresh=True)
    cluster.start()
    results = {}
    try:
        cluster.wait_healthy(timeout=180)
        time.sleep(3)
        footprint = {name: idle_footprint(cluster.procs[name].pid, args.idle_seconds)
                     for name in (NODES[0], "arbiter")}
        for fault in faults:
            for i in range(args.trials):
                row = trial(cluster, fault)
                results.setdefault(fault, []).append(row)
                print(f"{fault:26s} trial {i + 1}: " + " ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                      file=sys.stderr, flush=True)
    finally:
        cluster.stop()

    columns = ("gap", "unprotected", "refused", "two primaries")
    print(f"\n{'fault':26s} " + " ".join(f"{c + ' med/worst':>22s}" for c in columns)
          + f" {'lost':>5s} {'unexp.':>6s} trials")
    for fault, rows in results.items():
        cells = [" / ".join(summary([r[c] for r in rows])) for c in columns]
        print(f"{fault:26s} " + " ".join(f"{c:>22s}" for c in cells)
              + f" {sum(r['lost'] for r in rows):5d} {sum(r['unexpected'] for r in rows):6d} {len(rows)}")
    for name, (cpu, rss) in footprint.items():
        print(f"{'node daemon' if name != 'arbiter' else 'arbiter'} idle: {cpu:.2f}% of one core, "
              f"{rss:.1f} MB RSS ({args.idle_seconds:.0f}s sample)")
    bad = any(r["lost"] or r["unexpected"] or r["two primaries"] > 0 for rows in results.values() for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
