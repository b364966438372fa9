#!/usr/bin/env python3
"""Randomised fault soak on the docker-compose cluster (not part of CI by default).

    python3 -m harness.bench_soak --duration 600 [--seed 7] [--faults primary-freeze,standby-kill]
                          [--hold 2:8] [--reuse] [--keep]

For --duration seconds: pick a random fault from the fault library
(drawn from a shuffled deck, so every type comes up equally often)
(harness/scenario.py FAULTS), run the workload writer and the
split-brain probe around it, hold the fault a random time (--hold MIN:MAX s),
heal everything and wait for a healthy synchronous pair, judge, repeat.
At the end print a table per fault type: count, max write-unavailability,
(writer: longest gap between acknowledged writes; probe: the same seen by the
100 ms direct probe), lost, unexpected, split-brain violations, runs that did
not heal.
Exit status 1 if anything was lost, unexpected, split or left unhealthy.

Needs root and docker; starts dockerd and makes the base image when needed
(like the fault suite). --reuse keeps a running cluster of the project
instead of starting a fresh one; --keep leaves the cluster up at the end.
Results: out/soak/results.json.
"""
import argparse
import json
import random
import sys
import time

from harness import docker as de
from harness.scenario import FAULTS, Run


def run_one(cluster, fault, hold, index, log=print):
    """One fault cycle; returns the Outcome (problems filled on trouble)."""
    name = f"soak-{index:03d}-{fault}"
    run = Run(cluster, name)
    try:
        with run:
            run.settle(acks=10)
            run.mark_fault()
            description = FAULTS[fault](cluster, run.primary, run.standby)
            log(f"[{index}] {description}; holding {hold:.1f} s")
            time.sleep(hold)
            run.heal_and_wait(timeout=240)
    except Exception as exc:   # the soak goes on; the failure is counted
        run.result.problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    outcome = run.result
    if outcome.probe is not None and (outcome.probe.violations or outcome.probe.lost):
        outcome.problems.append("split brain: " + outcome.probe.summary()[:300])
    return outcome


def soak(cluster, duration, seed=None, faults=None, hold=(2.0, 8.0), log=print):
    """Run random fault cycles for `duration` seconds; return the list of Outcomes."""
    rng = random.Random(seed)
    names = list(faults or FAULTS)
    end = time.monotonic() + duration
    outcomes = []
    index = 0
    deck = []
    while time.monotonic() < end:
        index += 1
        if not deck:             # a shuffled deck: random order, every fault type equally often
            deck = rng.sample(names, len(names))
        fault = deck.pop()
        outcome = run_one(cluster, fault, rng.uniform(*hold), index, log)
        outcome.fault = fault
        outcomes.append(outcome)
        log(f"[{index}] {fault}: unavailability {fmt(outcome.unavailability)} s, lost {outcome.lost}, "
            f"unexpected {outcome.unexpected}" + (f", PROBLEMS {outcome.problems}" if outcome.problems else ""))
        if outcome.problems:
            try:
                cluster.heal()
                cluster.wait_healthy(timeout=120)
            except Exception:
                log(f"[{index}] cluster did not heal: restarting the compose project")
                cluster.restart_project()
                cluster.wait_healthy(timeout=300)
    return outcomes


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


def table(outcomes):
    rows = {}
    for o in outcomes:
        r = rows.setdefault(o.fault, {"count": 0, "max_unavailability": None, "max_probe_gap": None, "lost": 0,
                                      "unexpected": 0, "split_brain": 0, "failed": 0})
        r["count"] += 1
        if o.unavailability is not None:
            r["max_unavailability"] = max(r["max_unavailability"] or 0.0, o.unavailability)
        gap = o.probe.longest_gap if o.probe else None
        if gap is not None:
            r["max_probe_gap"] = max(r["max_probe_gap"] or 0.0, gap)
        r["lost"] += o.lost or 0
        r["unexpected"] += o.unexpected or 0
        r["split_brain"] += bool(o.probe and (o.probe.violations or o.probe.lost))
        r["failed"] += bool(o.problems)
    head = (f"{'fault':<24} {'count':>5} {'max unavail s':>13} {'probe gap s':>11} {'lost':>5} "
            f"{'unexp':>5} {'split':>5} {'failed':>6}")
    lines = [head, "-" * len(head)]
    for fault in sorted(rows):
        r = rows[fault]
        lines.append(f"{fault:<24} {r['count']:>5} {fmt(r['max_unavailability']):>13} "
                     f"{fmt(r['max_probe_gap']):>11} {r['lost']:>5} "
                     f"{r['unexpected']:>5} {r['split_brain']:>5} {r['failed']:>6}")
    return rows, "\n".join(lines)


def bad(outcomes):
    return [o for o in outcomes if o.problems or o.lost or o.unexpected]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults (default 600)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", help="comma-separated subset of: " + ", ".join(FAULTS))
    parser.add_argument("--hold", default="2:8", help="MIN:MAX seconds a fault is held (default 2:8)")
    parser.add_argument("--reuse", action="store_true", help="use a running cluster of the project")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = parser.parse_args(argv)
    faults = args.faults.split(",") if args.faults else None
    unknown = set(faults or ()) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    hold = tuple(float(x) for x in args.hold.split(":"))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    with de.exclusive():
        return _main(args, faults, hold, seed)


def _main(args, faults, hold, seed):
    cluster = de.bench_cluster(args.reuse)
    print(f"soak: seed {seed}, {args.duration:g} s, faults {', '.join(faults or FAULTS)}", flush=True)
    started = time.monotonic()
    try:
        outcomes = soak(cluster, args.duration, seed, faults, hold,
                        log=lambda m: print(m, flush=True))
    finally:
        if not args.keep:
            cluster.compose("down", "-v", check=False)
    rows, text = table(outcomes)
    print(f"\n{len(outcomes)} faults in {time.monotonic() - started:.0f} s (seed {seed})\n{text}")
    out = de.ROOT / "out" / "soak"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"seed": seed, "duration": args.duration, "table": rows,
                                                  "runs": [dict(o.to_dict(), fault=o.fault) for o in outcomes]},
                                                 indent=1))
    failures = bad(outcomes)
    for o in failures:
        print(f"FAILED {o.name}: lost {o.lost}, unexpected {o.unexpected}, {o.problems}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
