#!/usr/bin/env python3
"""Commit-path overhead: pgbench on the HA cluster's primary against plain
PostgreSQL with the same synchronous standby and no daemons.

    python -m harness.bench_pgbench [--runs 3] [--seconds 15] [--scale 10] [--idle-seconds 30] [--plain-first]

Both setups run on this machine: a local cluster (node daemons, arbiter,
synchronous replication), then a hand-made primary + standby (initdb,
pg_basebackup, synchronous_standby_names naming the standby) with the
cluster's own PostgreSQL settings. Each gets `pgbench -i -s SCALE`, then
RUNS runs of `pgbench -c 4 -j 2 -T SECONDS -N`; the table shows the median
TPS and latency. With --idle-seconds, the primary's node daemon's idle CPU
and RSS are sampled first. Measured here, never asserted in the tests.
"""
import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import time

from harness.procs import cpu_share_and_rss
from harness.localcluster import ADMIN_USER, LocalCluster

PGBENCH = ("-c", "4", "-j", "2", "-N", "-n")
# The cluster's settings the plain pair does not share: addresses and replication wiring.
NOT_COPIED = ("port", "listen_addresses", "unix_socket_directories", "primary_conninfo", "primary_slot_name",
              "synchronous_standby_names", "recovery_target_timeline", "include_if_exists")


class Runner:
    """Runs PostgreSQL tools as the PostgreSQL OS user when we are root."""

    def __init__(self, os_user="postgres"):
        self.user = pwd.getpwnam(os_user) if os.geteuid() == 0 else None
        self.bindir = self._bindir()

    @staticmethod
    def _bindir():
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and os.path.exists(os.path.join(out, "pg_ctl")):
            return out
        return sorted(d for d in (f"/usr/lib/postgresql/{v}/bin" for v in os.listdir("/usr/lib/postgresql"))
                      if os.path.exists(os.path.join(d, "pg_ctl")))[-1]

    def run(self, args, env=None, check=True):
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        kwargs = {}
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        if self.user:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
            full_env.update(HOME=self.user.pw_dir, USER=self.user.pw_name)
        result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd="/", **kwargs)
        if check and result.returncode != 0:
            sys.exit(f"{args[0]} failed: {result.stderr.strip()[-500:]}")
        return result

    def chown(self, path):
        if self.user:
            for root, dirs, files in os.walk(path):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, self.user.pw_uid, self.user.pw_gid)


def pgbench(runner, port, password, user, dbname, scale, runs, seconds):
    """Median TPS and latency (ms) over runs, and each run's figures."""
    env = {"PGPASSWORD": password, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user}
    runner.run(["pgbench", "-i", "-q", "-s", str(scale), dbname], env=env)
    figures = []
    for _ in range(runs):
        out = runner.run(["pgbench", *PGBENCH, "-T", str(seconds), dbname], env=env).stdout
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
        latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
        figures.append((tps, latency))
        print(f"  port {port}: {tps:.0f} tps, {latency:.2f} ms", file=sys.stderr, flush=True)
    return statistics.median(f[0] for f in figures), statistics.median(f[1] for f in figures), figures


def cluster_settings(pgdata):
    """The PostgreSQL settings the node daemon wrote (pgha.conf), minus the wiring."""
    lines = []
    with open(os.path.join(pgdata, "pgha.conf")) as f:
        for line in f:
            key = line.split("=", 1)[0].strip()
            if line.strip() and not line.startswith("#") and key not in NOT_COPIED:
                lines.append(line.rstrip("\n"))
    return lines


def plain_pair(runner, folder, base_port, settings):
    """Start a primary + synchronous standby by hand; returns (ports, stop)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    runner.chown(folder)
    primary, standby = os.path.join(folder, "primary"), os.path.join(folder, "standby")
    p_port, s_port = base_port, base_port + 1
    runner.run(["initdb", "-D", primary, "-U", "postgres", "--auth=trust", "-N"])
    with open(os.path.join(primary, "postgresql.conf"), "a") as f:
        f.write("\n".join([*settings, f"port = {p_port}", "listen_addresses = '127.0.0.1'",
                           f"unix_socket_directories = '{folder}'",
                           "synchronous_standby_names = 'standby'", ""]) + "\n")
    runner.run(["pg_ctl", "-D", primary, "-l", os.path.join(folder, "primary.log"), "-w", "start"])
    runner.run(["psql", "-h", "127.0.0.1", "-p", str(p_port), "-U", "postgres", "-qc",
                "SELECT pg_create_physical_replication_slot('standby')", "postgres"])
    runner.run(["pg_basebackup", "-h", "127.0.0.1", "-p", str(p_port), "-U", "postgres", "-D", standby,
                "-X", "stream", "-R", "-S", "standby", "-c", "fast"])
    with open(os.path.join(standby, "postgresql.auto.conf"), "a") as f:
        f.write(f"port = {s_port}\nprimary_conninfo = 'host=127.0.0.1 port={p_port} user=postgres "
                "application_name=standby'\n")
    runner.run(["pg_ctl", "-D", standby, "-l", os.path.join(folder, "standby.log"), "-w", "start"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = runner.run(["psql", "-h", "127.0.0.1", "-p", str(p_port), "-U", "postgres", "-Atc",
                          "SELECT sync_state FROM pg_stat_replication", "postgres"]).stdout.strip()
        if out == "sync":
            break
        time.sleep(0.5)
    else:
        sys.exit("the plain standby did not become synchronous")

    def stop():
        for data in (primary, standby):
            runner.run(["pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False)
    return p_port, stop


def plain_pgbench(runner, args, settings):
    port, stop = plain_pair(runner, os.path.join(args.dir, "plain"), args.base_port + 50, settings)
    try:
        runner.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qc",
                    "CREATE DATABASE bench", "postgres"])
        return pgbench(runner, port, "", "postgres", "bench", args.scale, args.runs, args.seconds)
    finally:
        stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=0)
    parser.add_argument("--idle-only", action="store_true", help="sample the idle daemon only, no pgbench")
    parser.add_argument("--plain-first", action="store_true",
                        help="run plain PostgreSQL first, while the cluster idles (same background load)")
    parser.add_argument("--dir", default="/var/tmp/pgha-pgbench")
    parser.add_argument("--base-port", type=int, default=8530)
    args = parser.parse_args()
    runner = Runner()
    rows, idle = {}, None

    cluster = LocalCluster(os.path.join(args.dir, "c"), base_port=args.base_port)
    cluster.prepare(fresh=True)
    cluster.start()
    try:
        status = cluster.wait_healthy(timeout=180)
        primary = status["primary"]
        if args.idle_seconds:
            time.sleep(3)
            idle = cpu_share_and_rss(cluster.procs[primary].pid, args.idle_seconds)
            print(f"primary node daemon idle: {idle[0]:.2f}% of one core, {idle[1]:.1f} MB RSS", flush=True)
        if args.idle_only:
            return
        settings = cluster_settings(cluster.pgdata(primary))
        if args.plain_first:    # the cluster idles meanwhile: both setups share the same background
            rows["plain PostgreSQL (sync standby)"] = plain_pgbench(runner, args, settings)
        rows["HA cluster (daemons, sync standby)"] = pgbench(
            runner, cluster.pg_ports[primary], cluster.passwords["admin_password"], ADMIN_USER, "testdb",
            args.scale, args.runs, args.seconds)
    finally:
        cluster.stop()
    if not args.plain_first:
        rows["plain PostgreSQL (sync standby)"] = plain_pgbench(runner, args, settings)

    print(f"\npgbench -s {args.scale} {' '.join(PGBENCH)} -T {args.seconds}, median of {args.runs}:")
    print(f"{'setup':38s} {'TPS':>8s} {'latency ms':>11s}  runs (tps)")
    for name, (tps, latency, figures) in rows.items():
        print(f"{name:38s} {tps:8.0f} {latency:11.2f}  {', '.join(f'{t:.0f}' for t, _ in figures)}")
    a, b = rows["HA cluster (daemons, sync standby)"][0], rows["plain PostgreSQL (sync standby)"][0]
    print(f"HA / plain TPS: {a / b * 100:.1f} %")


if __name__ == "__main__":
    main()
