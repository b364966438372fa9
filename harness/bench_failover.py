#!/usr/bin/env python3
"""Failover benchmark on the local cluster.

    bin/bench [--trials 5] [--idle-seconds 20] [--only NAME,...] [--etcd] [--haproxy [CFG]]
                                                                  (python -m harness.bench_failover)

--haproxy: the writer goes through HAProxy (Debian's haproxy) run with
docs/haproxy.cfg, or CFG (a variant of it), its ports rewritten to the
cluster's (harness/haproxy.py), instead of the multi-host DSN.

--etcd: the arbiter's decision in a 3-member etcd on loopback, two arbiter
processes of which one leads (LocalCluster(etcd=True)); it adds the fault
"primary host dead + arbiter leader killed" (the leading arbiter's process
killed at the same moment as the primary's host), which the file backend,
with its one arbiter, does not have.

Runs each fault several times against one local cluster, with a writer
committing every 50 ms (and retrying 50 ms after a failed attempt: the gap's
resolution) through the multi-host DSN and an independent monitor
(harness/exposure.py) reading every server every 50 ms, heals between trials,
and prints per fault the median and worst of:

  gap          the longest time without an acknowledged write after the fault
  unprotected  seconds a writable server had no synchronous standby streaming
               (commits one disk away from loss), from the fault until the
               cluster is whole again
  refused      for a node daemon killed alone: seconds until the old primary
               stopped taking writes (its fencer, within the 3 s lease)
  two primaries  seconds two servers were writable at once (must be 0)

and the rows lost, and the node daemon's idle CPU and RSS. Then the per-phase
breakdown of each fault that moves the primary, from the daemons' logs (ms
timestamps) and the writer:

  stopping     fault -> a switching-over primary starts its clean stop (writes
               end about here; switchover only)
  decided      fault -> the arbiter's decision is durable (detection + decision
               + fsync; the arbiter logs "epoch N: promoting" after the write)
  heard        -> the new primary's node starts acting on it (its next heartbeat)
  writable     -> PostgreSQL accepts writes ("now the primary" / "running as primary")
  first write  -> the writer's first acknowledged commit after that (reconnect)

For a killed PostgreSQL restarted in place there is no decision: "heard" is
the node seeing the death. Speed is measured here, never asserted in the
test suite.
"""
import argparse
import datetime
import os
import re
import statistics
import sys
import time

from harness import workload
from harness.exposure import ExposureMonitor
from harness.haproxy import SHIPPED, HAProxy
from harness.localcluster import NODES, LocalCluster
from harness.procs import cpu_share_and_rss

PROBE_INTERVAL = 0.05  # seconds between the writer's attempts, after a failure too
SETTLE = 2.0          # seconds of writes before the fault
AFTER = 2.0           # seconds of writes after the cluster is whole again
FREEZE_EXTRA = 2.0    # a frozen primary stays frozen this long past lease + margin
STANDBY_FREEZE = 3.0  # a frozen standby: commits stall until the primary drops sync
WHOLE_TIMEOUT = 120   # seconds to wait for the cluster to be whole again

FAULTS = ("primary PostgreSQL killed", "primary host dead", "standby dead", "standby frozen", "switchover",
          "node daemon killed alone", "primary frozen")
LEADER_KILLED = "primary host dead + arbiter leader killed"
ETCD_FAULTS = (LEADER_KILLED,)      # several arbiters: --etcd only
NAME_WIDTH = max(len(f) for f in FAULTS + ETCD_FAULTS)


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
    if fault == "standby frozen":
        # SIGSTOP: the standby's PostgreSQL (and daemon) go silent without
        # closing a socket; the writer's gap is the commits' stall.
        cluster.freeze_host(standby)
        return lambda: cluster.thaw_host(standby)
    if fault == "switchover":
        cluster.switchover(standby)
        return None
    if fault == "node daemon killed alone":
        cluster.kill_daemon(primary)
        return lambda: (wait_primary_other_than(cluster, primary), cluster.start_node(primary))
    if fault == LEADER_KILLED:
        leader = cluster.leading_arbiter()
        if leader is None:
            raise RuntimeError("no arbiter leads: cannot kill the leader")
        cluster.kill(leader)
        cluster.kill_host(primary)
        return lambda: (cluster.start_arbiter(key=leader), cluster.start_node(primary),
                        cluster.wait_listening(cluster.arbiter_ports[leader]))
    if fault == "primary frozen":
        cluster.freeze_host(primary)
        time.sleep(sum(float(cluster.arbiter_setting(s)) for s in ("lease_time", "failover_margin")) + FREEZE_EXTRA)
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


# Markers in the logs (FAILOVER and WARNING lines), in phase order.
PHASES = (
    ("stopping", "node", re.compile(r"switchover: stopping PostgreSQL")),
    ("decided", "arbiter", re.compile(r"epoch \d+: promoting")),
    ("heard", "node", re.compile(r"promoting this node|starting the former standby|"
                                 r"PostgreSQL stopped unexpectedly")),
    ("writable", "node", re.compile(r"this node is now the primary|PostgreSQL running as primary")),
)
PHASE_NAMES = tuple(name for name, _, _ in PHASES) + ("first write",)
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+\s+(\S+) ")


def log_lines(path, since):
    """(wall time, program, text) of the log lines at or after `since` (epoch seconds)."""
    found = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                match = _LINE.match(line)
                if not match:
                    continue
                at = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                if at >= since - 0.001:
                    found.append((at, match.group(2), line))
    except OSError:
        pass
    return found


def phases(cluster, fault_wall, first_ack_wall):
    """Seconds from the fault to each phase marker, and to the first write after it."""
    lines = sorted([x for key in cluster.arbiter_ports for x in log_lines(os.path.join(cluster.dir, f"{key}.log"),
                                                                          fault_wall)]
                   + [x for n in NODES for x in log_lines(os.path.join(cluster.dir, f"{n}.log"), fault_wall)])
    found, after = {}, fault_wall
    for name, program, pattern in PHASES:
        for at, who, text in lines:
            if at >= after and (who == "arbiter") == (program == "arbiter") and pattern.search(text):
                found[name], after = at - fault_wall, at
                break
    writable = found.get("writable")
    if writable is not None and first_ack_wall:
        later = [t for t in first_ack_wall if t - fault_wall >= writable]
        if later:
            found["first write"] = min(later) - fault_wall
    return found


def trial(cluster, fault, dsn=None):
    """One fault; the writer on `dsn` (default: the cluster's multi-host DSN)."""
    primary = cluster.wait_healthy(timeout=180)["primary"]
    monitor = ExposureMonitor({n: cluster.dsn_for(n) for n in NODES})
    # Every attempt is recorded, failed ones too; retrying as often as the
    # writer writes makes 50 ms the gap's resolution whether commits fail or not.
    writer = workload.Writer(dsn or cluster.dsn, writers=1, interval=PROBE_INTERVAL, commit_timeout=30,
                             retry_pause=PROBE_INTERVAL)
    monitor.start()
    writer.start()
    time.sleep(SETTLE)
    fault_at, fault_mono, fault_wall = writer.elapsed(), time.monotonic(), time.time()
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
    acks = [fault_wall + a.end - fault_at for a in writer.attempts if a.outcome == workload.ACK and a.end > fault_at]
    breakdown = phases(cluster, fault_wall, acks)
    return {"phases": breakdown, "gap": gap, "unprotected": monitor.unprotected_seconds(since=fault_mono),
            "two primaries": monitor.split_brain_seconds(since=fault_mono), "refused": refused,
            "lost": len(report.lost), "unexpected": len(report.unexpected)}


def _gaps_after(attempts, fault_at):
    acked = sorted(a.end for a in attempts if a.outcome == workload.ACK)
    return [workload.Gap(s, e) for s, e in zip(acked, acked[1:]) if e > fault_at]


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
    parser.add_argument("--etcd", action="store_true",
                        help="the arbiter's state in etcd, two arbiters (base+9; etcd on base+30..35)")
    parser.add_argument("--haproxy", nargs="?", const=SHIPPED, metavar="CFG",
                        help="write through HAProxy with docs/haproxy.cfg or CFG (ports base+40..42)")
    args = parser.parse_args()
    known = FAULTS + ETCD_FAULTS if args.etcd else FAULTS
    faults = [f.strip() for f in args.only.split(",")] if args.only else list(known)
    unknown = [f for f in faults if f not in FAULTS + ETCD_FAULTS]
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; known: {', '.join(FAULTS + ETCD_FAULTS)}")
    needs_etcd = [f for f in faults if f not in known]
    if needs_etcd:
        parser.exit(2, f"bench: {needs_etcd[0]!r} needs several arbiters: run it with --etcd "
                       "(the file backend has one arbiter)\n")

    cluster = LocalCluster(args.dir, base_port=args.base_port, etcd=args.etcd)
    cluster.prepare(fresh=True)
    cluster.start()
    results = {}
    proxy = None
    try:
        if args.haproxy:
            proxy = HAProxy(cluster, os.path.join(cluster.dir, "haproxy"), args.base_port + 40, args.base_port + 41,
                            shipped=args.haproxy).start()
        cluster.wait_healthy(timeout=180)
        time.sleep(3)
        footprint = {name: cpu_share_and_rss(cluster.procs[name].pid, args.idle_seconds)
                     for name in (NODES[0], "arbiter")}
        for fault in faults:
            for i in range(args.trials):
                row = trial(cluster, fault, proxy.dsn() if proxy else None)
                results.setdefault(fault, []).append(row)
                print(f"{fault:{NAME_WIDTH}s} trial {i + 1}: " + " ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                    if k != "phases") + " | " + " ".join(f"{k} {v:.3f}" for k, v in row["phases"].items()),
                      file=sys.stderr, flush=True)
    finally:
        if proxy:
            proxy.stop()
        cluster.stop()

    columns = ("gap", "unprotected", "refused", "two primaries")
    print(f"\n{'fault':{NAME_WIDTH}s} " + " ".join(f"{c + ' med/worst':>22s}" for c in columns)
          + f" {'lost':>5s} {'unexp.':>6s} trials")
    for fault, rows in results.items():
        cells = [" / ".join(summary([r[c] for r in rows])) for c in columns]
        print(f"{fault:{NAME_WIDTH}s} " + " ".join(f"{c:>22s}" for c in cells)
              + f" {sum(r['lost'] for r in rows):5d} {sum(r['unexpected'] for r in rows):6d} {len(rows)}")
    print(f"\nphases (seconds from the fault, median / worst)\n{'fault':{NAME_WIDTH}s} "
          + " ".join(f"{name:>16s}" for name in PHASE_NAMES))
    for fault, rows in results.items():
        cells = [" / ".join(summary([r["phases"].get(name) for r in rows]))
                 for name in PHASE_NAMES]
        print(f"{fault:{NAME_WIDTH}s} " + " ".join(f"{c:>16s}" for c in cells))
    for name, (cpu, rss) in footprint.items():
        print(f"{'node daemon' if name != 'arbiter' else 'arbiter'} idle: {cpu:.2f}% of one core, "
              f"{rss:.1f} MB RSS ({args.idle_seconds:.0f}s sample)")
    bad = any(r["lost"] or r["unexpected"] or r["two primaries"] > 0 for rows in results.values() for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
