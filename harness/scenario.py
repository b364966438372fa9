"""One fault scenario: workload + split-brain probe around a fault, then the verdict.

Used by test_faults.py, test_soak_short.py and harness/bench_soak.py:

    with Run(cluster, "primary-postgres-kill") as run:
        run.settle()                 # some writes acknowledged before the fault
        run.mark_fault()             # t = fault time (writer clock)
        cluster.kill_postgres(run.primary)
        ...                          # scenario-specific waiting and asserting
        run.heal_and_wait()          # undo everything, wait for a healthy sync pair
    run.result                       # Outcome: workload report, probe result, timings

The writer is harness.workload.Writer (acknowledged / failed / indeterminate
per attempt, never cancelling a commit); the checker is harness.workload.check.
"""
import json
import time
from dataclasses import dataclass, field

from harness import workload
from harness import docker as de
from harness.probe import SplitBrainProbe

OUT = de.ROOT / "out" / "faults"


@dataclass
class Outcome:
    name: str
    primary_before: str = None
    primary_after: str = None
    report: object = None            # workload.Report
    probe: object = None             # probe.ProbeResult
    unavailability: float = None     # longest gap between acknowledged writes (s)
    recovered_after: float = None    # first ack after the fault's outage, from the fault (s)
    healthy_after: float = None      # heal -> healthy synchronous pair (s)
    duration: float = None
    problems: list = field(default_factory=list)

    @property
    def lost(self):
        return len(self.report.lost) if self.report else None

    @property
    def unexpected(self):
        return len(self.report.unexpected) if self.report else None

    def summary(self):
        r = self.report
        lines = [f"== {self.name}: primary {self.primary_before} -> {self.primary_after}, "
                 f"run {self.duration:.1f} s" if self.duration else f"== {self.name}"]
        if r is not None:
            lines.append(workload.format_report(r, labels={f"{a}:{de.PG_PORT}": n for n, a in de.ADDR.items()}))
        if self.probe is not None:
            lines.append(self.probe.summary())
        if self.healthy_after is not None:
            lines.append(f"healthy synchronous pair {self.healthy_after:.1f} s after healing")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self):
        return {"name": self.name, "primary_before": self.primary_before, "primary_after": self.primary_after,
                "attempted": self.report.attempted if self.report else None,
                "acknowledged": self.report.acknowledged if self.report else None,
                "lost": self.lost, "unexpected": self.unexpected,
                "unavailability": self.unavailability, "recovered_after": self.recovered_after,
                "healthy_after": self.healthy_after, "duration": self.duration,
                "probe_acks": len(self.probe.acks) if self.probe else None,
                "probe_gap": self.probe.longest_gap if self.probe else None,
                "probe_violations": self.probe.violations if self.probe else None,
                "probe_lost": len(self.probe.lost) if self.probe else None,
                "problems": self.problems}


class Run:
    def __init__(self, cluster, name, writers=2, interval=0.02, probe_interval=0.1,
                 healthy_timeout=240, commit_timeout=5.0, dsn=de.DSN):
        self.cluster = cluster
        self.name = name
        # A commit with no reply for commit_timeout s is abandoned (socket shut,
        # never cancelled) and counts as indeterminate, as an application with a
        # 5 s timeout would; a longer one only measures the frozen host's TCP.
        self.writer = workload.Writer(dsn, writers=writers, interval=interval,
                                      commit_timeout=commit_timeout, connect_timeout=2.0)
        self.probe = SplitBrainProbe(interval=probe_interval)
        self.healthy_timeout = healthy_timeout
        self.result = Outcome(name)
        self.fault_at = None
        self.primary = self.standby = None
        self._t0 = None

    # -- lifecycle

    def __enter__(self):
        self.primary, self.standby = self.cluster.primary_and_standby()
        self.result.primary_before = self.primary
        self.writer.prepare()
        self.probe.prepare()
        self.writer.start()
        self.probe.start(t0=self.writer._t0)      # one clock for both
        self._t0 = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.finish()
        except Exception as finish_exc:   # keep the scenario's own error if it had one
            if exc is None:
                raise
            self.result.problems.append(f"finishing failed too: {finish_exc}")
        return False

    def now(self):
        return self.writer.elapsed()

    def settle(self, acks=20, timeout=30):
        """Wait until the writer has some acknowledged writes (a baseline)."""
        deadline = time.monotonic() + timeout
        start = self.writer.counts[workload.ACK]
        while self.writer.counts[workload.ACK] - start < acks:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: writes not flowing before the fault "
                                     f"({self.writer.counts})")
            time.sleep(0.1)

    def mark_fault(self):
        self.fault_at = self.now()
        return self.fault_at

    def acks_since(self, t):
        with self.writer._lock:
            return [a for a in self.writer.attempts if a.outcome == workload.ACK and a.end >= t]

    def wait_acks(self, n=10, timeout=60, since=None, node=None):
        """Wait until n writes acknowledged after `since` (writer clock), optionally by one node."""
        since = self.now() if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            acks = [a for a in self.acks_since(since) if node is None or de.label_of(a.node) == node]
            if len(acks) >= n:
                return acks
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: fewer than {n} writes acknowledged "
                                     f"{'by ' + node if node else ''} within {timeout} s "
                                     f"(counts {self.writer.counts})")
            time.sleep(0.1)

    def heal_and_wait(self, timeout=None):
        t = time.monotonic()
        self.cluster.heal()
        self.result.primary_after = self.cluster.wait_healthy(timeout or self.healthy_timeout)
        self.result.healthy_after = time.monotonic() - t
        return self.result.primary_after

    def finish(self, tail=2.0):
        """Let writes run a little on the healed cluster, stop, read back, judge."""
        if self.writer.running() and tail:
            time.sleep(tail)
        self.writer.stop()
        self.probe.stop()
        present = self.writer.read_back(timeout=90)
        report = workload.check(self.writer.attempts, present, fault_at=self.fault_at)
        self.result.report = report
        self.result.probe = self.probe.check(self.probe.read_back(timeout=90))
        self.result.unavailability = report.longest_gap.length if report.longest_gap else None
        if self.fault_at is not None and report.recovered_at is not None:
            self.result.recovered_after = report.recovered_at - self.fault_at
        self.result.duration = time.monotonic() - self._t0
        save(self.result)
        return self.result

    # -- the verdict every scenario shares

    def assert_safe(self):
        """lost = 0, unexpected = 0, no split brain, one writable primary,
        healthy synchronous standby (checked by heal_and_wait)."""
        r, p = self.result.report, self.result.probe
        text = self.result.summary()
        assert r is not None, text
        assert not r.lost, f"acknowledged writes lost:\n{text}"
        assert not r.unexpected, f"rows present that were never committed:\n{text}"
        assert not p.violations, f"two primaries acknowledged writes at once:\n{text}"
        assert not p.lost, f"probe writes acknowledged but missing on the final primary:\n{text}"
        assert not p.unexpected, f"probe rows that were never sent:\n{text}"
        writable = self.cluster.writable_nodes()
        assert len(writable) == 1, f"writable nodes at the end: {writable}\n{text}"
        primary, problems = self.cluster.healthy()
        assert not problems, f"cluster not healthy at the end: {problems}\n{text}"


def save(outcome):
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps({"at": time.time(), **outcome.to_dict()}) + "\n")
    (OUT / f"{outcome.name}.txt").write_text(outcome.summary() + "\n")


# ---------------------------------------------------------------- fault library
# Each fault takes (cluster, primary, standby), does the damage and returns a
# short description; healing is always cluster.heal() (undoes every kind).

def fault_primary_postgres_kill(c, primary, standby):
    c.kill_postgres(primary)
    return f"SIGKILL PostgreSQL on {primary}"


def fault_primary_container_kill(c, primary, standby):
    c.kill(primary)
    return f"docker kill {primary}"


def fault_primary_freeze(c, primary, standby):
    """Frozen for as long as the fault is held: shorter than the leases it must
    simply resume as primary, longer and the standby takes over while it fences."""
    c.pause(primary)
    return f"docker pause {primary}"


def fault_primary_arbiter_cut(c, primary, standby):
    c.block(primary, "arbiter")
    return f"iptables: {primary} <-/-> arbiter"


def fault_primary_isolated(c, primary, standby):
    c.disconnect(primary)
    return f"network disconnect {primary}"


def fault_replication_cut(c, primary, standby):
    c.block(primary, standby)
    return f"iptables: {primary} <-/-> {standby}"


def fault_standby_kill(c, primary, standby):
    c.kill(standby)
    return f"docker kill {standby}"


def fault_arbiter_kill(c, primary, standby):
    c.kill("arbiter")
    return "docker kill arbiter"


def fault_standby_isolated(c, primary, standby):
    c.disconnect(standby)
    return f"network disconnect {standby}"


FAULTS = {
    "primary-postgres-kill": fault_primary_postgres_kill,
    "primary-container-kill": fault_primary_container_kill,
    "primary-freeze": fault_primary_freeze,
    "primary-arbiter-cut": fault_primary_arbiter_cut,
    "primary-isolated": fault_primary_isolated,
    "replication-cut": fault_replication_cut,
    "standby-kill": fault_standby_kill,
    "standby-isolated": fault_standby_isolated,
    "arbiter-kill": fault_arbiter_kill,
}


def wait_for(predicate, timeout, pause=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(pause)


def wait_new_primary(cluster, old, timeout=60):
    """Wait until the arbiter names a primary other than `old` and that node is writable."""
    def check():
        st = cluster.status()
        if st and st.get("primary") not in (None, old):
            info = cluster.node(st["primary"])
            if info and "error" not in info and not info["in_recovery"]:
                return st["primary"]
        return None
    return wait_for(check, timeout, what=f"failover away from {old}")
