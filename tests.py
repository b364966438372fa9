#!/usr/bin/env python3
"""External client simulator: write to the HA cluster while something fails,
then say whether any acknowledged write was lost.

    python tests.py                                   # local cluster in ./local-cluster, 10 s
    python tests.py --fault kill-primary --fault-at 3 --duration 12 --json out.json
    python tests.py --dsn "host=a,b port=5432,5432 dbname=testdb user=kronos ..." --count 1000
    python tests.py --target compose --dsn "..." --fault kill-primary-host --fault-at 5

Exit status: 0 nothing lost, 1 lost or unexpected rows, 2 bad input,
3 no verdict: the rows could not be read back, or the fault could not be injected.
"""
import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone

import psycopg2
import psycopg2.extensions

from harness import faults, workload
from harness.cluster import FaultError
from harness.docker import ComposeCluster
from harness.localcluster import LocalCluster

EXIT_OK, EXIT_LOST, EXIT_BAD_INPUT, EXIT_NO_VERDICT = 0, 1, 2, 3
DEFAULT_DURATION = 10.0
DEFAULT_FAULT_AT = 5.0


class BadInput(Exception):
    """Reported as one line on stderr, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(f"{message} (see --help)")


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value
    return parse


def non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def parse_args(argv):
    p = ArgumentParser(description="Write to the HA cluster while a fault happens; report lost writes.")
    src = p.add_argument_group("cluster")
    src.add_argument("--dsn", help="libpq DSN (multi-host, target_session_attrs=read-write); "
                                   "default: the \"dsn\" of CLUSTER/cluster.json")
    src.add_argument("--cluster", default=os.environ.get("PGHA_CLUSTER_DIR", "./local-cluster"),
                     help="local cluster directory with cluster.json (default: $PGHA_CLUSTER_DIR or ./local-cluster)")
    src.add_argument("--target", choices=("local", "compose"), default="local",
                     help="where faults are injected (default: local)")
    src.add_argument("--compose-file", default="docker-compose.yml", help="for --target compose")
    load = p.add_argument_group("workload")
    load.add_argument("--writers", type=positive(int), default=4, help="concurrent writers (default 4)")
    load.add_argument("--count", type=positive(int), help="attempts per writer")
    load.add_argument("--duration", type=positive(float),
                      help=f"seconds to write (default {DEFAULT_DURATION:g} unless --count is given)")
    load.add_argument("--interval", type=non_negative, default=0.0,
                      help="seconds between writes of one writer (default 0: as fast as possible)")
    load.add_argument("--commit-timeout", type=positive(float), default=10.0,
                      help="a COMMIT without reply after this many seconds is abandoned as indeterminate")
    load.add_argument("--readback-timeout", type=positive(float), default=60.0,
                      help="seconds to keep trying to reach the primary to read rows back")
    fault = p.add_argument_group("fault")
    fault.add_argument("--fault", choices=faults.FAULTS)
    fault.add_argument("--fault-at", type=non_negative,
                       help=f"seconds after the writers start (default {DEFAULT_FAULT_AT:g})")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the report and a per-second timeline as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="draw writes/s and latency over time")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    validate(args)
    return args


def validate(args):
    if args.writers > workload.MAX_WRITERS:
        raise BadInput(f"--writers must be at most {workload.MAX_WRITERS}")
    if args.count is None and args.duration is None:
        args.duration = DEFAULT_DURATION
    if args.fault_at is not None and args.fault is None:
        raise BadInput("--fault-at needs --fault")
    if args.fault is not None and args.fault_at is None:
        args.fault_at = DEFAULT_FAULT_AT
    if args.fault and args.duration is not None and args.fault_at >= args.duration:
        raise BadInput(f"--fault-at {args.fault_at:g} is not before the end of --duration {args.duration:g}")
    if args.target == "compose" and not args.dsn:
        raise BadInput("--target compose needs --dsn")
    if args.dsn is not None:
        try:
            psycopg2.extensions.parse_dsn(args.dsn)
        except psycopg2.Error as exc:
            raise BadInput(f"invalid --dsn: {workload.first_line(exc)}") from None
    for path in (args.json, args.plot):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.access(folder, os.W_OK):
            raise BadInput(f"cannot write {path}: folder {folder} is missing or not writable")
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (only checked here; drawn at the end)
        except ImportError:
            raise BadInput("--plot needs matplotlib (pip install matplotlib)") from None


def resolve_target(args):
    """(dsn, fault target or None, node labels). Raises BadInput."""
    cluster = None
    if args.target == "local" and (args.dsn is None or args.fault):
        try:
            cluster = LocalCluster.load(args.cluster)
        except FaultError as exc:
            raise BadInput(str(exc)) from None
    dsn = args.dsn or cluster.dsn
    if args.target == "compose":
        compose = ComposeCluster(args.compose_file, dsn=dsn)
        return dsn, compose, compose.labels()
    return dsn, (cluster if args.fault else None), (cluster.labels() if cluster else {})


def connection_problem(exc):
    """libpq's multi-line, per-host connection error as one line."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Is the server running")]
    return workload.mask_dsn("; ".join(lines) or type(exc).__name__)


class Progress:
    """Live bar: elapsed (or attempts), write rate, errors and the serving primary."""

    def __init__(self, writer, labels):
        from tqdm import tqdm
        self.writer, self.labels = writer, labels
        by_count = writer.count is not None and writer.duration is None
        self.total_of = (lambda: len(writer.attempts)) if by_count else writer.elapsed
        total = writer.count * writer.writers if by_count else writer.duration
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(total=total, unit="write" if by_count else "s", bar_format=fmt,
                        dynamic_ncols=True, leave=True)
        self.last = (time.monotonic(), 0)

    def update(self):
        w = self.writer
        now, acked = time.monotonic(), w.counts[workload.ACK]
        rate = (acked - self.last[1]) / max(1e-9, now - self.last[0])
        self.last = (now, acked)
        primary = self.labels.get(w.last_node, w.last_node) or "-"
        self.bar.n = min(self.bar.total, self.total_of())
        self.bar.set_postfix_str(f"ack={acked} {rate:.0f}/s failed={w.counts[workload.FAILED]} "
                                 f"indet={w.counts[workload.INDETERMINATE]} primary={primary}")

    def close(self):
        self.update()
        self.bar.close()


def run_workload(args, dsn, target, labels):
    """Run the writers (and the fault); returns (writer, fault result or None)."""
    writer = workload.Writer(dsn, writers=args.writers, count=args.count, duration=args.duration,
                             interval=args.interval, commit_timeout=args.commit_timeout)
    try:
        writer.prepare()
    except psycopg2.Error as exc:
        raise BadInput(f"cannot use {workload.mask_dsn(dsn)}: {connection_problem(exc)}") from None
    writer.start()
    started = datetime.fromtimestamp(writer.started_at).strftime("%Y-%m-%d %H:%M:%S")
    print(f"run {writer.run} against {workload.mask_dsn(dsn)}, started {started} (+0 s)", flush=True)
    fault = None
    if args.fault:
        fault = faults.FaultThread(target, args.fault, args.fault_at, writer.elapsed)
        fault.start()
    progress = None if args.quiet or not sys.stderr.isatty() else Progress(writer, labels)
    try:
        while not writer.wait(0.5):
            if progress:
                progress.update()
    except KeyboardInterrupt:
        print("interrupted: stopping the writers", file=sys.stderr)
    writer.stop()
    if progress:
        progress.close()
    if fault is None:
        return writer, None
    fault.cancel()
    fault.join()
    return writer, fault.result


def write_json(path, args, dsn, writer, report, fault, labels):
    data = {
        "config": {"dsn": workload.mask_dsn(dsn), "target": args.target, "writers": args.writers,
                   "count": args.count, "duration": args.duration, "interval": args.interval,
                   "commit_timeout": args.commit_timeout, "fault": args.fault, "fault_at": args.fault_at},
        "run": writer.run,
        "started_at": datetime.fromtimestamp(writer.started_at, timezone.utc).isoformat(),
        "node_names": labels,
        "fault": fault,
        **report.to_dict(),
        "timeline": workload.timeline(writer.attempts),
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def draw_plot(path, attempts, report):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = workload.timeline(attempts)
    seconds = [r["t"] for r in rows]
    acked = [a for a in attempts if a.outcome == workload.ACK]
    fig, (rate_ax, lat_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 6))
    rate_ax.bar(seconds, [r["acknowledged"] for r in rows], width=1.0, align="edge", label="acknowledged")
    rate_ax.bar(seconds, [r["errors"] for r in rows], width=1.0, align="edge", color="tab:red",
                bottom=[r["acknowledged"] for r in rows], label="failed / indeterminate")
    rate_ax.set_ylabel("writes per second")
    lat_ax.scatter([a.end for a in acked], [a.latency * 1000 for a in acked], s=3)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("write latency (ms)")
    lat_ax.set_xlabel("seconds since start")
    for ax in (rate_ax, lat_ax):
        if report.fault_at is not None:
            ax.axvline(report.fault_at, color="tab:red", linestyle="--", label="fault")
        if report.recovered_at is not None:
            ax.axvline(report.recovered_at, color="tab:green", linestyle="--", label="new primary takes writes")
    rate_ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    dsn, target, labels = resolve_target(args)
    writer, fault = run_workload(args, dsn, target, labels)
    try:
        present = writer.read_back(args.readback_timeout)
    except psycopg2.Error as exc:
        print(f"tests.py: no verdict: cannot read rows back from the primary within "
              f"{args.readback_timeout:g} s: {connection_problem(exc)}", file=sys.stderr)
        return EXIT_NO_VERDICT
    fault_at = fault["at"] if fault and not fault["error"] else None
    report = workload.check(writer.attempts, present, fault_at=fault_at)
    print(workload.format_report(report, labels, fault))
    try:
        if args.json:
            write_json(args.json, args, dsn, writer, report, fault, labels)
        if args.plot:
            draw_plot(args.plot, writer.attempts, report)
    except OSError as exc:
        print(f"tests.py: error: cannot write output: {exc}", file=sys.stderr)
    if not report.ok:
        return EXIT_LOST
    if fault and fault["error"]:
        # Nothing was lost, but the failover asked for was never tested.
        print(f"tests.py: no verdict on the fault: it could not be injected: {fault['error']}", file=sys.stderr)
        return EXIT_NO_VERDICT
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BadInput as exc:
        print(f"tests.py: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("tests.py: interrupted", file=sys.stderr)
        sys.exit(130)
