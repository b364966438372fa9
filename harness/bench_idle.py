"""Idle footprint of every daemon of a healthy local cluster.

    python -m harness.bench_idle [--seconds 60] [--rounds 3] [--dir DIR] [--base-port N]

Starts a fresh local cluster, waits until it is healthy and idle, then
samples each process's CPU time (utime + stime from /proc) over `seconds`,
`rounds` times, and prints per process: CPU % of one core per round, the
CPU milliseconds per heartbeat (the node's 0.5 s heartbeat: less noisy on
a shared machine than the share), and RSS.
"""
import argparse
import statistics
import time

from harness.localcluster import NODES, LocalCluster
from harness.procs import cpu_seconds, rss_mb

HEARTBEAT = 0.5     # the default heartbeat interval (lease timings)


def daemons(cluster):
    """{label: pid}: the primary's and the standby's node daemon and fencer, and the arbiter."""
    primary = cluster.status()["primary"]
    standby = next(n for n in NODES if n != primary)
    pids = {"arbiter": cluster.procs["arbiter"].pid}
    for role, name in (("primary", primary), ("standby", standby)):
        pids[f"{role} node"] = cluster.procs[name].pid
        pids[f"{role} fencer"] = cluster.fencer_pid(name)
    return pids


def sample(pids, seconds):
    """{label: CPU seconds used} over `seconds` of wall clock, and the wall time taken."""
    before, start = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
    time.sleep(seconds)
    after, wall = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic() - start
    return {k: after[k] - before[k] for k in pids}, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of idle before sampling")
    parser.add_argument("--dir", default="/var/tmp/pgha-idle")
    parser.add_argument("--base-port", type=int, default=8530)
    args = parser.parse_args()
    cluster = LocalCluster(args.dir, base_port=args.base_port)
    cluster.prepare(fresh=True)
    cluster.start()
    try:
        cluster.wait_healthy(timeout=180)
        time.sleep(args.settle)
        pids = daemons(cluster)
        rounds = [sample(pids, args.seconds) for _ in range(args.rounds)]
        print(f"{'process':16s} {'CPU % per round':>24s} {'ms/heartbeat (median)':>22s} {'RSS MB':>7s}")
        for label, pid in pids.items():
            shares = [used[label] / wall * 100 for used, wall in rounds]
            per_beat = statistics.median(used[label] * 1000 / (wall / HEARTBEAT) for used, wall in rounds)
            print(f"{label:16s} {' '.join(f'{s:.3f}' for s in shares):>24s} {per_beat:22.3f} "
                  f"{rss_mb(pid):7.1f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
