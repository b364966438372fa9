#!/usr/bin/env python3
"""REST API benchmark on a local cluster.

    python -m harness.bench_api [--rate 200] [--seconds 10] [--idle-seconds 20]

Starts a local cluster, then asks the primary's REST API at a steady
`--rate` requests/s for `--seconds` (each path in turn: /primary, /replica
and /metrics, a new connection per request as HAProxy's checks make) and
prints the answer time's median, p99 and worst. Then the node daemon's
idle CPU and RSS with the API on, and again on a cluster started with
api_bind = None (API off). With --loris N, the /primary probe (a new
connection every 0.2 s, HAProxy's 2 s check timeout) while N slow-loris
clients (one byte a second) and N/3 silent connections attack the API:
the share answered 200 and the answer times. Measured here, never asserted
in the tests (testsuite/unit/test_api.py asserts the slow-loris share).
"""
import argparse
import http.client
import statistics
import sys
import time

from harness import abusers
from harness.procs import cpu_share_and_rss
from harness.localcluster import NODES, LocalCluster

PATHS = ("/primary", "/replica", "/metrics")


def hammer(port, path, rate, seconds):
    """Answer times (s) of requests sent every 1/rate s; late starts are not skipped."""
    times, errors = [], 0
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        except OSError:
            errors += 1
            continue
        times.append(time.perf_counter() - t0)
    return times, errors, time.monotonic() - start


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def footprints(cluster, seconds):
    return {name: cpu_share_and_rss(cluster.procs[name].pid, seconds) for name in NODES}


def run_cluster(args, api_on):
    overrides = {} if api_on else {"api_bind": None}
    cluster = LocalCluster(f"{args.dir}-{'on' if api_on else 'off'}", base_port=args.base_port,
                           node_overrides=overrides)
    cluster.prepare(fresh=True)
    cluster.start()
    return cluster


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per path (default %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--dir", default="/var/tmp/pgha-bench-api")
    parser.add_argument("--base-port", type=int, default=8430)
    parser.add_argument("--loris", type=int, default=300, help="slow-loris clients (0: none; default %(default)s)")
    args = parser.parse_args()
    loris = None

    results, idle = {}, {}
    for api_on in (True, False):
        cluster = run_cluster(args, api_on)
        try:
            status = cluster.wait_healthy(timeout=180)
            time.sleep(3)
            idle[api_on] = footprints(cluster, args.idle_seconds)
            if api_on:
                primary = status["primary"]
                for path in PATHS:
                    results[path] = hammer(cluster.api_ports[primary], path, args.rate, args.seconds)
                    times = results[path][0]
                    print(f"{path}: {len(times)} answers, median {statistics.median(times) * 1000:.2f} ms",
                          file=sys.stderr, flush=True)
                if args.loris:
                    answers, _ = abusers.probe_under_loris(cluster.api_ports[primary], slow=args.loris,
                                                           flood=args.loris // 3, seconds=args.seconds)
                    loris = abusers.describe(answers)
        finally:
            cluster.stop()

    print(f"\nREST API of the primary, {args.rate:g} requests/s for {args.seconds:g} s per path "
          "(a new TCP connection each):")
    print(f"{'path':10s} {'answers':>8s} {'errors':>6s} {'median':>9s} {'p99':>9s} {'worst':>9s} {'achieved':>9s}")
    for path, (times, errors, took) in results.items():
        print(f"{path:10s} {len(times):8d} {errors:6d} {statistics.median(times) * 1000:7.2f}ms "
              f"{percentile(times, 0.99) * 1000:7.2f}ms {max(times) * 1000:7.2f}ms "
              f"{(len(times) + errors) / took:7.1f}/s")
    if loris:
        print(f"\n/primary under a slow-loris of {args.loris} (+{args.loris // 3} silent): {loris}")
    print(f"\nnode daemon idle ({args.idle_seconds:g} s sample), CPU share of one core and RSS:")
    for api_on in (True, False):
        row = ", ".join(f"{name} {cpu:.2f}% {rss:.1f} MB" for name, (cpu, rss) in idle[api_on].items())
        print(f"  API {'on ' if api_on else 'off'}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
