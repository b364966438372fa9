"""A write workload against the HA cluster, and the checker of what survived.

The engine (Writer) behaves like an application: N threads insert rows with
unique ids through one libpq multi-host DSN, reconnect on failure and record
every attempt as acknowledged, failed or indeterminate. The checker (check)
is pure: given the attempts and the ids read back from the primary, it says
what was lost, what appeared unexpectedly and how long writes were unavailable.

Safety rule: a waiting COMMIT is never cancelled. PostgreSQL turns a cancelled
synchronous-replication wait into a successful commit (with a WARNING), so a
cancel would fake an acknowledgement. A commit that takes too long is
abandoned by shutting down the connection's socket, and counts as indeterminate.
"""
import math
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field

import psycopg2
import psycopg2.extensions

ACK = "acknowledged"
FAILED = "failed"
INDETERMINATE = "indeterminate"

TABLE = "pgha_writes"
RUN_SEQUENCE = "pgha_runs"
# id = run * RUN_SPAN + writer * WRITER_SPAN + seq: unique across runs and writers.
RUN_SPAN = 10**12
WRITER_SPAN = 10**9
MAX_WRITERS = RUN_SPAN // WRITER_SPAN - 1

RETRY_PAUSE = 0.1        # after a failed attempt, so a down cluster is not hammered
WATCHDOG_TICK = 0.05
SYNC_CANCEL_NOTICE = re.compile(r"canceling (the )?wait for synchronous replication", re.I)
PASSWORD_IN_DSN = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
PASSWORD_IN_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def mask_dsn(dsn):
    """The DSN with any password replaced by ***, for printing."""
    masked = PASSWORD_IN_DSN.sub(r"\1***", dsn)
    return PASSWORD_IN_URI.sub(r"\1***\3", masked)


def make_id(run, writer, seq):
    return run * RUN_SPAN + writer * WRITER_SPAN + seq


def run_id_range(run):
    """The inclusive id range of one run."""
    return run * RUN_SPAN, (run + 1) * RUN_SPAN - 1


@dataclass
class Attempt:
    id: int
    writer: int
    start: float          # seconds since the run started
    end: float
    outcome: str          # ACK, FAILED or INDETERMINATE
    node: str = None      # "host:port" of the server the attempt talked to
    error: str = None

    @property
    def latency(self):
        return self.end - self.start


@dataclass
class Gap:
    start: float
    end: float
    open_ended: bool = False   # no acknowledged write closed it (run ended first)

    @property
    def length(self):
        return self.end - self.start


@dataclass
class Report:
    attempted: int
    acknowledged: int
    failed: int
    indeterminate: int
    indeterminate_committed: int
    lost: list
    unexpected: list
    longest_gap: Gap = None
    fault_at: float = None
    recovered_at: float = None     # first acknowledged write after the fault's outage
    primary_before: str = None     # served the last acknowledged write before the fault
    primary_after: str = None      # served the last acknowledged write of the run
    nodes: list = field(default_factory=list)
    latency: dict = field(default_factory=dict)   # bucket -> percentiles

    @property
    def ok(self):
        return not self.lost and not self.unexpected

    def to_dict(self):
        """JSON-ready: lost/unexpected are counts, their ids in lost_ids/unexpected_ids."""
        data = asdict(self)
        data["lost_ids"], data["lost"] = data["lost"], len(self.lost)
        data["unexpected_ids"], data["unexpected"] = data["unexpected"], len(self.unexpected)
        data["ok"] = self.ok
        if self.longest_gap is not None:
            data["longest_gap"]["length"] = self.longest_gap.length
        return data


# ---------------------------------------------------------------- checker

def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies):
    if not latencies:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    return {"count": len(latencies), "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
            "max": max(latencies)}


def write_gaps(ack_times, run_start, run_end):
    """Gaps between consecutive acknowledged writes, with the run's edges.

    The gap from the run start to the first acknowledgement counts (a cluster
    that is down at the start is unavailable), and so does the one from the
    last acknowledgement to the run end, marked open-ended.
    """
    times = sorted(ack_times)
    if not times:
        return [Gap(run_start, run_end, open_ended=True)]
    gaps = [Gap(run_start, times[0])]
    gaps += [Gap(a, b) for a, b in zip(times, times[1:])]
    gaps.append(Gap(times[-1], max(run_end, times[-1]), open_ended=True))
    return gaps


def longest(gaps):
    return max(gaps, key=lambda g: g.length, default=None)


def check(attempts, present_ids, fault_at=None):
    """Judge a run: attempts made, ids read back from the primary -> Report.

    lost: acknowledged but not present. unexpected: present although no
    COMMIT was ever sent for it (never attempted, or failed before COMMIT).
    """
    present = set(present_ids)
    acked = [a for a in attempts if a.outcome == ACK]
    indeterminate = [a for a in attempts if a.outcome == INDETERMINATE]
    committable = {a.id for a in attempts if a.outcome != FAILED}
    run_start = min((a.start for a in attempts), default=0.0)
    run_end = max((a.end for a in attempts), default=0.0)
    gaps = write_gaps([a.end for a in acked], run_start, run_end)
    report = Report(
        attempted=len(attempts),
        acknowledged=len(acked),
        failed=sum(a.outcome == FAILED for a in attempts),
        indeterminate=len(indeterminate),
        indeterminate_committed=sum(a.id in present for a in indeterminate),
        lost=sorted(a.id for a in acked if a.id not in present),
        unexpected=sorted(present - committable),
        longest_gap=longest(gaps),
        fault_at=fault_at,
        nodes=sorted({a.node for a in acked if a.node}),
    )
    acked.sort(key=lambda a: a.end)
    if acked:
        report.primary_after = acked[-1].node
    if fault_at is None:
        report.latency = {"all": latency_summary([a.latency for a in acked])}
        return report
    outage = longest([g for g in gaps if g.end > fault_at])
    if outage is not None and not outage.open_ended:
        report.recovered_at = outage.end
    report.primary_before = next((a.node for a in reversed(acked) if a.end < fault_at), None)
    report.latency = _latency_by_phase(acked, fault_at, report.recovered_at)
    return report


def _latency_by_phase(acked, fault_at, recovered_at):
    """before: acked before the fault; during: up to and including the first
    write after the outage; after: the rest. Bucketed by acknowledgement time."""
    recovered = math.inf if recovered_at is None else recovered_at
    buckets = {"before": [], "during": [], "after": []}
    for a in acked:
        phase = "before" if a.end < fault_at else "during" if a.end <= recovered else "after"
        buckets[phase].append(a.latency)
    return {name: latency_summary(values) for name, values in buckets.items()}


def timeline(attempts):
    """Per-second buckets (by completion time): acknowledged, errors, max latency."""
    if not attempts:
        return []
    seconds = int(max(a.end for a in attempts)) + 1
    rows = [{"t": t, "acknowledged": 0, "errors": 0, "max_latency": None} for t in range(seconds)]
    for a in attempts:
        row = rows[max(0, int(a.end))]
        if a.outcome == ACK:
            row["acknowledged"] += 1
            row["max_latency"] = max(row["max_latency"] or 0.0, a.latency)
        else:
            row["errors"] += 1
    return rows


def format_report(report, labels=None, fault=None):
    """The human-readable verdict. labels maps "host:port" to node names."""
    def node(n):
        name = (labels or {}).get(n)
        return f"{name} ({n})" if name else (n or "none")

    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1000:.1f} ms"

    lines = [
        f"attempted      {report.attempted}",
        f"acknowledged   {report.acknowledged}",
        f"failed         {report.failed}",
        f"indeterminate  {report.indeterminate} ({report.indeterminate_committed} turned out committed)",
        f"lost           {len(report.lost)}" + _sample(report.lost),
        f"unexpected     {len(report.unexpected)}" + _sample(report.unexpected),
    ]
    gap = report.longest_gap
    if gap is not None:
        tail = ", run ended before any write" if gap.open_ended else ""
        lines.append(f"longest write-unavailability {gap.length:.3f} s "
                     f"(from +{gap.start:.3f} s to +{gap.end:.3f} s{tail})")
    if fault is not None:
        lines.append(_fault_line(fault))
    if report.fault_at is not None:
        lines.append(f"primary before fault: {node(report.primary_before)}; after: {node(report.primary_after)}")
        recovered = ("never" if report.recovered_at is None
                     else f"at +{report.recovered_at:.3f} s ({report.recovered_at - report.fault_at:.3f} s after the fault)")
        lines.append(f"writes resumed {recovered}")
    else:
        lines.append("nodes that served writes: " + (", ".join(node(n) for n in report.nodes) or "none"))
    for bucket, s in report.latency.items():
        lines.append(f"latency {bucket:<7} n={s['count']:<6} p50={ms(s['p50'])} p95={ms(s['p95'])} "
                     f"p99={ms(s['p99'])} max={ms(s['max'])}")
    lines.append("VERDICT: " + ("OK, nothing lost" if report.ok else "FAILED, data lost or unexpected rows"))
    return "\n".join(lines)


def _fault_line(fault):
    if fault.get("error"):
        return f"fault {fault['fault']}: FAILED to inject at +{fault['at']:.3f} s: {fault['error']}"
    if fault.get("at") is None:
        return f"fault {fault['fault']}: not fired (the run ended first)"
    return f"fault {fault['fault']} on {fault.get('node') or '?'} at +{fault['at']:.3f} s"


def _sample(ids, limit=10):
    if not ids:
        return ""
    more = f" ... (+{len(ids) - limit})" if len(ids) > limit else ""
    return "  ids: " + ", ".join(map(str, ids[:limit])) + more


# ---------------------------------------------------------------- engine

def connect(dsn, connect_timeout=2.0):
    """Open a connection; a DSN without connect_timeout gets one, so a dead
    host cannot stall a writer for the kernel's TCP timeout."""
    extra = {}
    if "connect_timeout" not in psycopg2.extensions.parse_dsn(dsn):
        extra["connect_timeout"] = max(1, round(connect_timeout))
    return psycopg2.connect(dsn, **extra)


def node_of(conn):
    return f"{conn.info.host}:{conn.info.port}"


def server_address(conn):
    """The PostgreSQL server a connection really reached (through HAProxy,
    say): one query, so use it only where the proxy is under test."""
    with conn.cursor() as cur:
        cur.execute("SELECT host(inet_server_addr()), inet_server_port()")
        host, port = cur.fetchone()
    conn.rollback()
    return f"{host}:{port}"


def first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def prepare(dsn, connect_timeout=2.0, timeout=10.0):
    """Create the table if missing and allocate a run number. Raises psycopg2.Error.

    A statement timeout keeps a cluster that cannot commit from hanging the
    start; cancelling a DDL's synchronous-replication wait fakes no write.
    """
    conn = connect(dsn, connect_timeout)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', %s, false)", (f"{timeout * 1000:.0f}",))
            cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                        "id bigint PRIMARY KEY, writer int NOT NULL, "
                        "attempted_at timestamptz NOT NULL DEFAULT now(), payload text)")
            cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {RUN_SEQUENCE}")
            cur.execute("SELECT nextval(%s)", (RUN_SEQUENCE,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def read_back(dsn, run, timeout=60.0, connect_timeout=2.0):
    """Ids of one run present on the primary, retrying the connection for up to
    `timeout` seconds (the cluster may still be failing over)."""
    low, high = run_id_range(run)

    def read(conn):
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '60s'")   # a read: cancelling is harmless
            cur.execute(f"SELECT id FROM {TABLE} WHERE id BETWEEN %s AND %s", (low, high))
            return {row[0] for row in cur}
    return with_retries(dsn, read, timeout, connect_timeout)


def with_retries(dsn, work, timeout, connect_timeout=2.0, pause=1.0):
    """work(conn) on a fresh connection, retried on any PostgreSQL error until
    `timeout` seconds have passed; then the last error is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = connect(dsn, connect_timeout)
            try:
                return work(conn)
            finally:
                conn.close()
        except psycopg2.Error:
            if time.monotonic() >= deadline:
                raise
            time.sleep(pause)


class _Watch:
    """Registers one in-flight statement with the watchdog."""

    def __init__(self, writer, slot, conn):
        self.writer, self.slot, self.conn = writer, slot, conn
        self.fired = False

    def __enter__(self):
        with self.writer._lock:
            self.writer._inflight[self.slot] = (time.monotonic() + self.writer.commit_timeout, self)
        return self

    def __exit__(self, *exc):
        with self.writer._lock:
            self.writer._inflight.pop(self.slot, None)
        return False


def abandon_socket(conn):
    """Shut the connection's socket down so a blocked libpq call returns.

    shutdown() on a dup of the descriptor acts on the shared socket, and
    unlike close() cannot hand a recycled descriptor number to libpq.
    """
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg2.Error):
        pass


class Writer:
    """N writer threads inserting unique rows until stopped, a count per
    writer is reached, or a duration has passed.

        w = Writer(dsn, writers=4, duration=10); w.start(); w.wait(); w.stop()
        report = check(w.attempts, w.read_back())
    """

    def __init__(self, dsn, writers=4, count=None, duration=None, interval=0.0,
                 commit_timeout=10.0, connect_timeout=2.0, server_of=None, retry_pause=RETRY_PAUSE):
        if not 1 <= writers <= MAX_WRITERS:
            raise ValueError(f"writers must be between 1 and {MAX_WRITERS}")
        self.dsn = dsn
        self.writers = writers
        self.count = count
        self.duration = duration
        self.interval = interval
        self.commit_timeout = commit_timeout
        self.connect_timeout = connect_timeout
        # Seconds after a failed attempt (at least `interval`): with the
        # interval, what sets how finely a gap is measured.
        self.retry_pause = retry_pause
        # conn -> "host:port" of the server that answers; the default names the
        # DSN's host, which behind a proxy is the proxy (see server_address).
        self.server_of = server_of or node_of
        self.run = None
        self.attempts = []
        self.started_at = None         # wall clock (epoch seconds) of the run start
        self.last_node = None          # served the latest acknowledged write
        self.counts = {ACK: 0, FAILED: 0, INDETERMINATE: 0}
        self._t0 = None
        self._lock = threading.Lock()
        self._inflight = {}
        self._stop = threading.Event()
        self._threads = []
        self._watchdog = None

    # -- control

    def prepare(self):
        if self.run is None:
            self.run = prepare(self.dsn, self.connect_timeout, self.commit_timeout)
        return self.run

    def start(self):
        self.prepare()
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._write_loop, args=(w,), daemon=True,
                                          name=f"writer-{w}") for w in range(self.writers)]
        for t in self._threads:
            t.start()
        self._watchdog = threading.Thread(target=self._watch_loop, daemon=True, name="commit-watchdog")
        self._watchdog.start()
        return self

    def elapsed(self):
        return time.monotonic() - self._t0

    def running(self):
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout=None):
        """Wait for the writers to finish on their own; True when they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running()

    def stop(self):
        """Stop the writers; an in-flight commit finishes or times out first."""
        self._stop.set()
        for t in self._threads:
            t.join()
        if self._watchdog is not None:
            self._watchdog.join()

    def read_back(self, timeout=60.0):
        return read_back(self.dsn, self.run, timeout, self.connect_timeout)

    # -- writer threads

    def _done(self, seq):
        if self._stop.is_set():
            return True
        if self.count is not None and seq >= self.count:
            return True
        return self.duration is not None and self.elapsed() >= self.duration

    def _write_loop(self, w):
        conn, seq = None, 0
        while not self._done(seq):
            seq += 1
            attempt, conn = self._attempt(w, make_id(self.run, w, seq), conn)
            self._record(attempt)
            pause = self.interval if attempt.outcome == ACK else max(self.interval, self.retry_pause)
            if pause:
                self._stop.wait(pause)
        discard(conn)

    def _attempt(self, w, ident, conn):
        """One insert+commit; returns the Attempt and the connection to reuse (or None)."""
        start = self.elapsed()
        node = None
        try:
            fresh = conn is None
            if fresh:
                conn = connect(self.dsn, self.connect_timeout)
            node = self.server_of(conn)
            with _Watch(self, w, conn), conn.cursor() as cur:
                if fresh:
                    cur.execute("SET statement_timeout = 0")   # a server-side cancel would fake acks
                cur.execute(f"INSERT INTO {TABLE} (id, writer, payload) VALUES (%s, %s, %s)",
                            (ident, w, f"writer {w} row {ident % WRITER_SPAN}"))
        except Exception as exc:
            # COMMIT was never sent: the row cannot be committed.
            discard(conn)
            return Attempt(ident, w, start, self.elapsed(), FAILED, node, first_line(exc)), None
        watch = _Watch(self, w, conn)
        try:
            del conn.notices[:]
            with watch:
                conn.commit()
        except Exception as exc:
            discard(conn)
            reason = f"no reply to COMMIT within {self.commit_timeout:g} s" if watch.fired else first_line(exc)
            return Attempt(ident, w, start, self.elapsed(), INDETERMINATE, node, reason), None
        end = self.elapsed()
        cancelled = [n for n in conn.notices if SYNC_CANCEL_NOTICE.search(n)]
        if cancelled:
            # The synchronous-replication wait was cancelled: "committed" only locally.
            discard(conn)
            return Attempt(ident, w, start, end, INDETERMINATE, node, cancelled[0].strip()), None
        return Attempt(ident, w, start, end, ACK, node), conn

    def _record(self, attempt):
        with self._lock:
            self.attempts.append(attempt)
            self.counts[attempt.outcome] += 1
            if attempt.outcome == ACK:
                self.last_node = attempt.node

    def _watch_loop(self):
        while self.running():
            now = time.monotonic()
            with self._lock:
                for deadline, watch in self._inflight.values():
                    if now >= deadline and not watch.fired:
                        watch.fired = True
                        abandon_socket(watch.conn)
            time.sleep(WATCHDOG_TICK)


def discard(conn):
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass
