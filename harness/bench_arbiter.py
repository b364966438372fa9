"""How many nodes one arbiter process serves (the `scale` benchmark).

    python -m harness.bench_arbiter [--nodes 100,250,500,1000] [--duration 20] [--procs 2]
                                    [--backend file|etcd|both] [--dir /var/tmp/pgha-bench-arbiter]
                                    [--port 12600] [--json OUT]

For each backend and count N: one real arbiter process (the setting
`clusters` with N/2 clusters of two nodes, authentication on; etcd: a
3-member etcd on loopback at --port+10.., fsync on, one leadership for the
service, awaited before the nodes start) and N
simulated nodes (harness.simnode, real signed protocol) driven from
--procs separate asyncio processes, each heartbeating every 0.5 s for
--duration seconds. Reported: the heartbeat reply time (median, p99), the
arbiter's CPU share (its user+system time over the wall time of the run;
1.0 = one core) and its RSS at the end (etcd: also the members' CPU and
RSS, summed), and errors; then the largest N whose p99 stayed under 50 ms.
Measured over --duration seconds after a 5 s warm-up; the warm-up's own
p99 and worst reply are reported apart (it holds every cluster's first
durable decisions: a state write and a history event each when its standby
turns promotable, all clusters at once). Errors count the whole run. Times include the load generator's own
scheduling delay, so they are an upper bound on the arbiter's.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time

from harness.etcd import EtcdCluster
from harness.procs import cpu_seconds, listening_within, rss_mb, stop_process
from pgha import keys
from pgha.etcd_client import EtcdClient, EtcdOptions, EtcdUnavailable
from pgha.etcd_store import leader_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P99_LIMIT = 0.050


def write_keys(folder: str, clusters: list[str]) -> None:
    """arbiter.keys with every member's key, and one key file per node (as
    pgha-keys add-cluster makes them, written at once: add-cluster per
    cluster rewrites arbiter.keys each time)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    new = lambda: (secrets.token_bytes(keys.KEY_BYTES),)     # noqa: E731
    ring = {"operator": new()}
    for cluster in clusters:
        pair = new()
        os.makedirs(os.path.join(folder, cluster), mode=0o700, exist_ok=True)
        for node in ("n1", "n2"):
            ring[f"{cluster}/{node}"] = new()
            keys._write_new(os.path.join(folder, cluster, f"{node}.keys"),
                            {f"{cluster}/{node}": ring[f"{cluster}/{node}"], "pair": pair})
    keys._write_new(os.path.join(folder, "arbiter.keys"), ring)
    keys._write_new(os.path.join(folder, "operator.keys"), {"operator": ring["operator"]})


ETCD_PREFIX = "/pgha-bench"


def wait_leading(etcd: EtcdCluster, timeout: float = 30.0) -> None:
    """Until the arbiter holds the service's leader key: before that every
    heartbeat is refused (not the leader), which is start-up, not load."""
    client = EtcdClient(EtcdOptions(endpoints=tuple(etcd.endpoints)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if client.get(leader_key(ETCD_PREFIX, "bench")) is not None:
                    return
            except EtcdUnavailable:
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"the arbiter did not take the leadership within {timeout}s")


def percentile_ms(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[max(0, int(len(ordered) * share) - 1)] * 1000, 2) if ordered else None


def run_one(count: int, folder: str, port: int, duration: float, procs: int, backend: str = "file",
            warmup: float = 5.0) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    clusters = [f"c{i}" for i in range(count // 2)]
    write_keys(os.path.join(folder, "keys"), clusters)
    etcd = EtcdCluster(os.path.join(folder, "etcd"), port + 10) if backend == "etcd" else None
    settings = {"listen_port": port, "state_file": os.path.join(folder, "state.json"), "cluster_name": "bench",
                "clusters": {c: {"nodes": ["n1", "n2"], "initial_primary": "n1"} for c in clusters},
                "key_file": os.path.join(folder, "keys", "arbiter.keys"), "log_level": "WARNING",
                "log_file": os.path.join(folder, "arbiter.log")}
    if etcd is not None:
        settings.update(state_backend="etcd", etcd_endpoints=etcd.endpoints, etcd_prefix=ETCD_PREFIX)
    settings_file = os.path.join(folder, "arbiter_settings.py")
    with open(settings_file, "w") as f:
        f.writelines(f"{name} = {value!r}\n" for name, value in settings.items())
    if etcd is not None:
        etcd.start()
    arbiter = subprocess.Popen([sys.executable, os.path.join(ROOT, "arbiter.py"), "--settings", settings_file,
                                "--init"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loaders = []
    try:
        if not listening_within(port, 30):
            raise RuntimeError(f"the arbiter did not listen on {port} within 30s")
        if etcd is not None:
            wait_leading(etcd)
        nodes = [{"cluster": c, "node": n, "peer": "n2" if n == "n1" else "n1",
                  "key_file": os.path.join(folder, "keys", c, f"{n}.keys"),
                  "role": "primary" if n == "n1" else "standby"} for c in clusters for n in ("n1", "n2")]
        for i, node in enumerate(nodes):    # each from its own loopback address, as from its own host
            node["source"] = f"127.1.{i // 250}.{i % 250 + 1}"
        for i in range(procs):
            listed = os.path.join(folder, f"nodes-{i}.json")
            with open(listed, "w") as f:
                json.dump(nodes[i::procs], f)
            loaders.append(subprocess.Popen(
                [sys.executable, "-m", "harness.simnode", "--arbiter", f"127.0.0.1:{port}", "--nodes", listed,
                 "--duration", str(duration + 2 * warmup), "--stats", os.path.join(folder, f"stats-{i}.json")], cwd=ROOT))
        warm_from, warm_cpu = time.monotonic(), cpu_seconds(arbiter.pid)
        etcd_pids = list(etcd.pids().values()) if etcd is not None else []
        warm_etcd = sum(cpu_seconds(pid) for pid in etcd_pids)
        # Measured after a warm-up: the first seconds hold every cluster's first
        # durable decisions (promotable on: a state write and a history event each).
        time.sleep(warmup)
        measured_from, started, cpu_before = time.time(), time.monotonic(), cpu_seconds(arbiter.pid)
        etcd_cpu_before = sum(cpu_seconds(pid) for pid in etcd_pids)
        warm_cpu = (cpu_before - warm_cpu) / (started - warm_from)
        warm_etcd = (etcd_cpu_before - warm_etcd) / (started - warm_from)
        time.sleep(duration)
        wall = time.monotonic() - started
        cpu = (cpu_seconds(arbiter.pid) - cpu_before) / wall
        rss = rss_mb(arbiter.pid)
        etcd_cpu = (sum(cpu_seconds(pid) for pid in etcd_pids) - etcd_cpu_before) / wall
        etcd_rss = sum(rss_mb(pid) for pid in etcd_pids)
        for loader in loaders:
            loader.wait(warmup + 60)
    finally:
        for loader in loaders:
            if loader.poll() is None:
                loader.terminate()
        try:
            stop_process(arbiter, grace=20)
        finally:
            if etcd is not None:
                etcd.stop()
    rtts: list[float] = []
    warm: list[float] = []
    errors: list[str] = []
    for i in range(procs):
        with open(os.path.join(folder, f"stats-{i}.json")) as f:
            stats = json.load(f)
        rtts += [rtt for sent, rtt in stats["rtts"] if measured_from <= sent <= measured_from + duration]
        warm += [rtt for sent, rtt in stats["rtts"] if sent < measured_from]
        errors += stats["errors"]
    row = {"backend": backend, "nodes": count, "clusters": len(clusters), "heartbeats": len(rtts),
           "median_ms": round(statistics.median(rtts) * 1000, 2) if rtts else None,
           "p99_ms": percentile_ms(rtts, 0.99), "warmup_p99_ms": percentile_ms(warm, 0.99),
           "warmup_max_ms": round(max(warm) * 1000, 1) if warm else None,
           "arbiter_cpu": round(cpu, 3), "warmup_arbiter_cpu": round(warm_cpu, 3), "arbiter_rss_mb": round(rss, 1), "errors": len(errors),
           "first_error": errors[0] if errors else None}
    if etcd is not None:
        row.update(etcd_cpu=round(etcd_cpu, 3), etcd_rss_mb=round(etcd_rss, 1), warmup_etcd_cpu=round(warm_etcd, 3))
    return row


def render(rows: list[dict]) -> str:
    lines = ["| backend | nodes | clusters | heartbeats | reply median | reply p99 | warm-up p99 (max) | "
             "arbiter CPU | arbiter RSS | etcd CPU | etcd RSS | errors |", "|" + "---|" * 12]
    for r in rows:
        etcd = (f"{r['etcd_cpu'] * 100:.0f}% | {r['etcd_rss_mb']} MB" if "etcd_cpu" in r else "- | -")
        lines.append(f"| {r['backend']} | {r['nodes']} | {r['clusters']} | {r['heartbeats']} | {r['median_ms']} ms | "
                     f"{r['p99_ms']} ms | {r['warmup_p99_ms']} ms ({r['warmup_max_ms']} ms) | "
                     f"{r['arbiter_cpu'] * 100:.0f}% of a core | {r['arbiter_rss_mb']} MB | {etcd} | {r['errors']} |")
    for backend in dict.fromkeys(r["backend"] for r in rows):
        held = [r["nodes"] for r in rows if r["backend"] == backend and r["p99_ms"] is not None
                and r["p99_ms"] < P99_LIMIT * 1000 and not r["errors"]]
        lines.append(f"\n{backend}: largest count with p99 under {P99_LIMIT * 1000:.0f} ms and no errors: "
                     f"{max(held) if held else 'none'} nodes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness.bench_arbiter", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="100,250,500,1000", help="comma-separated node counts (even)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--dir", default="/var/tmp/pgha-bench-arbiter")
    parser.add_argument("--port", type=int, default=12600)
    parser.add_argument("--backend", choices=("file", "etcd", "both"), default="file")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    backends = ("file", "etcd") if args.backend == "both" else (args.backend,)
    rows = []
    for backend in backends:
        for count in (int(n) for n in args.nodes.split(",")):
            rows.append(run_one(count - count % 2, args.dir, args.port, args.duration, args.procs, backend))
            print(json.dumps(rows[-1]), flush=True)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
