#!/usr/bin/env python3
"""What the client's own settings cost in a failover (issue 21, item 8), on
the docker-compose cluster (root and docker, as the fault suite).

    python3 -m harness.bench_clients [--trials 3] [--hold 6] [--reuse] [--keep]

For each fault that leaves a writer's connection hanging on the old primary
(its host cut off the network: no TCP answer at all; its host frozen: the
kernel still answers) and each client setting:

  plain     the multi-host DSN with libpq's defaults (no keepalives, no
            tcp_user_timeout), as many applications connect
  timeouts  the same DSN with harness.localcluster.CLIENT_TIMEOUTS
            (keepalives 2 s + 1 s x 2, tcp_user_timeout 3 s), what
            `bin/cluster` prints and README "Client settings" recommends

the writer (two threads, a commit every 20 ms, the application's own commit
timeout set to 60 s so only the connection settings end a hang) and the fault
held --hold seconds (past the lease, so the standby takes over) are run
--trials times, always on pgsql-1 as the primary (switched back before a
trial: which host is first in the DSN changes the reconnect); printed per
cell: the median and worst of the longest gap between acknowledged writes,
and the rows lost (must be 0).
"""
import argparse
import statistics
import sys
import time

from harness import docker as de
from harness.localcluster import CLIENT_TIMEOUTS
from harness.scenario import FAULTS, Run

CUTS = ("primary-isolated", "primary-freeze")
SETTINGS = {"plain": de.DSN, "timeouts": f"{de.DSN} {CLIENT_TIMEOUTS}"}
APP_COMMIT_TIMEOUT = 60.0   # s: longer than any hang the connection settings should end


FIRST = "pgsql-1"    # every trial faults this host: the DSN's first, whose order changes the reconnect


def trial(cluster, fault, setting, hold, index, log=print):
    """One fault under one client setting: (longest gap s, lost rows)."""
    if cluster.primary() != FIRST:      # the same host every time: settings compared, not hosts
        cluster.switchover(FIRST)
        deadline = time.monotonic() + 120
        while cluster.primary() != FIRST and time.monotonic() < deadline:
            time.sleep(0.5)
        cluster.wait_healthy(timeout=120)
        assert cluster.primary() == FIRST, f"the switchover back to {FIRST} did not happen"
    run = Run(cluster, f"clients-{fault}-{setting}-{index}", dsn=SETTINGS[setting],
              commit_timeout=APP_COMMIT_TIMEOUT)
    with run:
        run.settle(acks=10)
        run.mark_fault()
        FAULTS[fault](cluster, run.primary, run.standby)
        time.sleep(hold)
        run.heal_and_wait(timeout=240)
        run.wait_acks(10, timeout=120)
    report = run.result.report
    gap = report.longest_gap.length if report.longest_gap else 0.0
    log(f"{fault} / {setting} #{index}: longest gap {gap:.2f} s, lost {len(report.lost)}")
    return gap, len(report.lost)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--hold", type=float, default=6.0, help="seconds the fault is held (default 6)")
    parser.add_argument("--reuse", action="store_true", help="use a running cluster of the project")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = parser.parse_args(argv)
    with de.exclusive():
        cluster = de.bench_cluster(args.reuse)
        results = {}
        try:
            for index in range(1, args.trials + 1):
                for fault in CUTS:
                    for setting in SETTINGS:
                        results.setdefault((fault, setting), []).append(
                            trial(cluster, fault, setting, args.hold, index, log=lambda m: print(m, flush=True)))
        finally:
            if not args.keep:
                cluster.compose("down", "-v", check=False)
    print(f"\n{'fault':<18} {'client':<9} {'trials':>6} {'gap median':>10} {'gap worst':>9} {'lost':>4}")
    lost = 0
    for (fault, setting), rows in results.items():
        gaps = [g for g, _ in rows]
        lost += sum(n for _, n in rows)
        print(f"{fault:<18} {setting:<9} {len(rows):>6} {statistics.median(gaps):>9.2f}s {max(gaps):>8.2f}s "
              f"{sum(n for _, n in rows):>4}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
