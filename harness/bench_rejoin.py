#!/usr/bin/env python3
"""Rejoin benchmark: how long the old primary takes to stream again after its
host died, against database size and divergence (issue 12).

    python -m harness.bench_rejoin [--sizes 100MB,1GB] [--with-5gb] [--trials 3]

Per database size, a fresh local cluster at default settings is loaded with
pgbench -i (scale chosen for the size), then each trial:

  burst     trial 1: the host dies right after the load itself (the case the
            issue measured: a checkpoint is likely under way); later trials:
            pgbench -T 5 runs and the host dies 4 s into it
  failover  the standby is promoted (not timed here: bench_failover does)
  rejoin    the old primary's node starts; timed until its PostgreSQL reports
            streaming (and until the cluster is whole: synchronous again)
  path      rewind / rewind+fetched-wal / clone, from the node's log
  divergence bytes from the divergence LSN (the new primary's timeline
            history) to the old primary's end of WAL (pg_waldump)

and prints a table: medians over the trials of each (size, burst) pair.
Needs root or the postgres user (reads the data directories). Speed is
measured here, never asserted in the test suite.
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import time

from harness.localcluster import APP_USER, NODES, LocalCluster
from pgha.postgres import find_bindir

MB_PER_SCALE = 15.0           # pgbench -i: ~15 MB of data and indexes per scale unit
SIZES_MB = {"100MB": 100, "1GB": 1024, "5GB": 5120}
BURST_SECONDS, KILL_AFTER = 5, 4.0
LSN = re.compile(r"([0-9A-F]+)/([0-9A-F]+)")


def lsn_int(text):
    hi, lo = LSN.search(text).groups()
    return (int(hi, 16) << 32) + int(lo, 16)


class Bench:
    def __init__(self, cluster):
        self.cluster = cluster
        self.bindir = find_bindir()
        self.env = {**os.environ, "PGPASSFILE": cluster.write_pgpass(), "PGDATABASE": "testdb",
                    "PGUSER": APP_USER, "PGHOST": "127.0.0.1"}

    def pgbench(self, node, *args):
        return subprocess.Popen([os.path.join(self.bindir, "pgbench"), "-p", str(self.cluster.pg_ports[node]),
                                 *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def primary(self):
        return self.cluster.wait_healthy(timeout=600)["primary"]

    def node_report(self, node):
        try:
            return (self.cluster.status()["nodes"][node] or {}).get("report") or {}
        except (OSError, KeyError, TypeError):
            return {}

    def end_of_wal(self, node):
        """The last valid WAL position of a stopped (crashed) server: pg_waldump
        from its latest checkpoint stops at the first invalid record."""
        pgdata = self.cluster.pgdata(node)
        control = subprocess.run([os.path.join(self.bindir, "pg_controldata"), "-D", pgdata],
                                 capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
        start = next(line for line in control.splitlines() if line.startswith("Latest checkpoint location"))
        tli = next(line for line in control.splitlines() if line.startswith("Latest checkpoint's TimeLineID"))
        start_lsn = LSN.search(start).group(0)
        result = subprocess.run([os.path.join(self.bindir, "pg_waldump"), "--quiet", "-p",
                                 os.path.join(pgdata, "pg_wal"), "-t", tli.split(":")[1].strip(), "-s", start_lsn],
                                capture_output=True, text=True)
        match = re.search(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+)", result.stderr)
        return lsn_int(match.group(1)) if match else lsn_int(start_lsn)

    def divergence_lsn(self, new_primary):
        histories = sorted(glob.glob(os.path.join(self.cluster.pgdata(new_primary), "pg_wal", "*.history")))
        with open(histories[-1]) as f:
            last = [line for line in f.read().splitlines() if line.strip() and not line.startswith("#")][-1]
        return lsn_int(last.split()[1])

    def trial(self, burst):
        old = self.primary()
        new = NODES[1] if old == NODES[0] else NODES[0]
        runner = None
        if burst == f"pgbench -T {BURST_SECONDS}":
            runner = self.pgbench(old, "-T", str(BURST_SECONDS), "-c", "4", "-n")
            time.sleep(KILL_AFTER)
        self.cluster.kill_host(old)
        if runner:
            runner.wait()
        deadline = time.monotonic() + 120
        while self.node_report(new).get("role") != "primary":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{new} was not promoted within 120 s")
            time.sleep(0.1)
        divergence = max(0, self.end_of_wal(old) - self.divergence_lsn(new))
        log_path = os.path.join(self.cluster.dir, f"{old}.log")
        log_start = os.path.getsize(log_path)
        started = time.monotonic()
        self.cluster.start_node(old)
        while not (self.node_report(old).get("role") == "standby"
                   and self.node_report(old).get("receiver") == "streaming"):
            if time.monotonic() - started > 3600:
                raise RuntimeError(f"{old} not streaming within an hour")
            time.sleep(0.05)
        streaming = time.monotonic() - started
        self.cluster.wait_healthy(timeout=600)
        whole = time.monotonic() - started
        with open(log_path) as f:
            f.seek(log_start)
            text = f.read()
        path = ("clone" if "clone from" in text or "replica method" in text else
                "rewind+fetched-wal" if "path rewind+fetched-wal" in text else
                "rewind" if "path rewind" in text else "start")
        return {"streaming": streaming, "whole": whole, "path": path, "divergence": divergence}


def run_size(label, size_mb, trials, workdir, base_port):
    cluster = LocalCluster(os.path.join(workdir, label.lower()), base_port=base_port)
    cluster.prepare(fresh=True)
    cluster.start()
    rows = []
    try:
        bench = Bench(cluster)
        primary = bench.primary()
        scale = max(1, round(size_mb / MB_PER_SCALE))
        print(f"{label}: pgbench -i -s {scale} on {primary}", file=sys.stderr, flush=True)
        init = bench.pgbench(primary, "-i", "-s", str(scale), "-q")
        _, err = init.communicate()
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {err.strip()[-300:]}")
        for i in range(trials):
            burst = "init load" if i == 0 else f"pgbench -T {BURST_SECONDS}"
            row = {"size": label, "burst": burst, **bench.trial(burst)}
            rows.append(row)
            print(f"{label} trial {i + 1} ({burst}): streaming {row['streaming']:.1f}s, whole {row['whole']:.1f}s, "
                  f"{row['path']}, divergence {row['divergence'] / 1024:.1f} kB", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
    return rows


def table(rows):
    lines = ["| database | burst before the kill | trials | divergence (median) | path | "
             "streaming after node start (median / worst) | whole (median) |",
             "|---|---|---|---|---|---|---|"]
    groups = {}
    for row in rows:
        groups.setdefault((row["size"], row["burst"]), []).append(row)
    for (size, burst), group in groups.items():
        streaming = [r["streaming"] for r in group]
        paths = sorted({r["path"] for r in group})
        lines.append(f"| {size} | {burst} | {len(group)} | "
                     f"{statistics.median(r['divergence'] for r in group) / 1024:.1f} kB | {', '.join(paths)} | "
                     f"{statistics.median(streaming):.1f} s / {max(streaming):.1f} s | "
                     f"{statistics.median(r['whole'] for r in group):.1f} s |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100MB,1GB", help="comma-separated, of 100MB, 1GB, 5GB")
    parser.add_argument("--with-5gb", action="store_true", help="add 5GB (needs ~15 GB of disk and time)")
    parser.add_argument("--trials", type=int, default=3, help="per size; the first follows the load itself")
    parser.add_argument("--dir", default="/var/tmp/pgha-bench-rejoin")
    parser.add_argument("--base-port", type=int, default=8530)
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()] + (["5GB"] if args.with_5gb else [])
    unknown = [s for s in sizes if s not in SIZES_MB]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; known: {', '.join(SIZES_MB)}")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    rows = []
    for label in dict.fromkeys(sizes):
        rows += run_size(label, SIZES_MB[label], args.trials, args.dir, args.base_port)
    print(table(rows))
    return 1 if any(r["path"] == "clone" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
