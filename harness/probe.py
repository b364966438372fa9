"""Split-brain probe: writes to each node directly and proves no two
divergent primaries ever acknowledged writes.

One thread per node connects to that node alone (not through the multi-host
DSN), and every ~100 ms inserts one row into its own table and commits. The
row records the timeline the node was writing on; the probe records, for
every acknowledged commit, the node, the timeline, the host monotonic time
the INSERT was *sent* and the time the COMMIT was *acknowledged*. A standby
refuses the INSERT (read-only), which is simply not an acknowledgement.

Definitions and checks (see ProbeResult):

* An *era* is one (node, timeline) pair: a node writing on one timeline.
  A promotion always starts a new timeline, so two legitimate primaries
  never share an era, and a later primary always has a higher timeline
  than the one it replaced (it replayed the old one's history first).

* Overlap check (clock based, sound: it can only fire on a real overlap).
  For eras O (older timeline) and N (newer timeline) on different nodes:
  the last INSERT that O acknowledged was *sent* at s_O, the first COMMIT N
  acknowledged came back at a_N. If s_O > a_N, then O executed and committed
  a transaction that started after N had already committed one: both nodes
  were taking writes at once on diverging histories. This uses the send time
  of the old primary's write and the ack time of the new one's, so the probe's
  own network and scheduling delays can only hide an overlap of less than one
  round trip, never invent one. Two eras on different nodes with the *same*
  timeline are divergent by construction, and fail the check too.

* Lineage check (clock free). Every acknowledged probe row must be on the
  final primary. A node that acknowledged writes while another primary was
  already promoted wrote them on a history the winner does not contain; after
  healing (pg_rewind) they are gone, so this catches any split brain whose
  writes the timing check could not order, and also a lost acknowledged write.
  Rows present but never sent are reported as unexpected.
"""
import threading
import time
from dataclasses import dataclass, field

import psycopg2

from harness.workload import abandon_socket, discard, with_retries
from harness import docker as de

TABLE = "pgha_probe"
RUNS = "pgha_probe_runs"
RUN_SPAN = 10**9
NODE_SPAN = 10**8
COMMIT_ABANDON = 20.0    # a commit hanging this long has its socket shut (never cancelled)


@dataclass
class Ack:
    node: str
    id: int
    tli: int
    sent: float
    acked: float


@dataclass
class ProbeResult:
    acks: list
    violations: list
    lost: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    eras: list = field(default_factory=list)

    @property
    def longest_gap(self):
        """Longest time between consecutive probe acknowledgements (any node):
        the cluster's write-unavailability as seen with a 100 ms probe."""
        times = sorted(a.acked for a in self.acks)
        return max((b - a for a, b in zip(times, times[1:])), default=None)

    @property
    def ok(self):
        return not self.violations and not self.lost and not self.unexpected

    def summary(self):
        eras = ", ".join(f"{n}@tli{t}: {c} acks [{f:.2f}..{l:.2f}]" for n, t, c, f, l in self.eras)
        gap = self.longest_gap
        return (f"probe: {len(self.acks)} acks, longest gap {gap if gap is None else round(gap, 3)} s; eras {eras or 'none'}; violations {self.violations}; "
                f"lost {len(self.lost)} {self.lost[:10]}; unexpected {len(self.unexpected)} {self.unexpected[:10]}")


class SplitBrainProbe:
    def __init__(self, nodes=de.NODES, interval=0.1, dsn=de.DSN):
        self.nodes = list(nodes)
        self.interval = interval
        self.dsn = dsn
        self.run = None
        self.acks = []
        self.sent_ids = set()          # COMMIT sent (acknowledged or not): may be present
        self.errors = {n: 0 for n in self.nodes}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._inflight = {}
        self._t0 = None

    def prepare(self, timeout=60):
        def create(conn):
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, "
                            "node text NOT NULL, tli int NOT NULL, at timestamptz DEFAULT now())")
                cur.execute(f"CREATE SEQUENCE IF NOT EXISTS {RUNS}")
                cur.execute("SELECT nextval(%s)", (RUNS,))
                return cur.fetchone()[0]
        self.run = with_retries(self.dsn, create, timeout)
        return self.run

    def now(self):
        return time.monotonic() - self._t0

    def start(self, t0=None):
        """t0: a time.monotonic() origin to share with the writer's clock."""
        if self.run is None:
            self.prepare()
        self._t0 = time.monotonic() if t0 is None else t0
        for i, node in enumerate(self.nodes):
            t = threading.Thread(target=self._loop, args=(i, node), daemon=True, name=f"probe-{node}")
            t.start()
            self._threads.append(t)
        threading.Thread(target=self._watchdog, daemon=True, name="probe-watchdog").start()
        return self

    def stop(self, timeout=30):
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _watchdog(self):
        while not self._stop.is_set() or any(t.is_alive() for t in self._threads):
            now = time.monotonic()
            with self._lock:
                for node, (deadline, conn) in list(self._inflight.items()):
                    if now > deadline:
                        abandon_socket(conn)
                        del self._inflight[node]
            time.sleep(0.1)
            if self._stop.is_set() and not any(t.is_alive() for t in self._threads):
                return

    def _loop(self, index, node):
        conn, seq = None, 0
        dsn = de.node_dsn(node, connect_timeout=1)
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(dsn)
                    with conn.cursor() as cur:
                        cur.execute("SET statement_timeout = 0")   # a cancel would fake an ack
                    conn.commit()
                seq += 1
                ident = self.run * RUN_SPAN + index * NODE_SPAN + seq
                sent = self.now()
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} (id, node, tli) VALUES (%s, %s, "
                                "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)"
                                " RETURNING tli", (ident, node))
                    tli = cur.fetchone()[0]
                with self._lock:
                    self.sent_ids.add(ident)
                    self._inflight[node] = (time.monotonic() + COMMIT_ABANDON, conn)
                del conn.notices[:]
                try:
                    conn.commit()
                finally:
                    with self._lock:
                        self._inflight.pop(node, None)
                acked = self.now()
                if any("synchronous replication" in n for n in conn.notices):
                    raise psycopg2.OperationalError("sync wait cancelled: not an acknowledgement")
                with self._lock:
                    self.acks.append(Ack(node, ident, tli, sent, acked))
            except psycopg2.Error:
                # Read-only standby, node down, connection cut: no acknowledgement.
                with self._lock:
                    self.errors[node] += 1
                discard(conn)
                conn = None
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))
        discard(conn)

    # -- judging

    def eras(self):
        groups = {}
        with self._lock:
            acks = list(self.acks)
        for a in acks:
            groups.setdefault((a.node, a.tli), []).append(a)
        return groups

    def check(self, present_ids=None):
        groups = self.eras()
        violations = []
        keys = sorted(groups, key=lambda k: (k[1], min(a.acked for a in groups[k])))
        for old in keys:
            for new in keys:
                if old[0] == new[0]:
                    continue
                if old[1] == new[1] and old < new:
                    violations.append(f"{old[0]} and {new[0]} both acknowledged writes on timeline {old[1]}")
                elif old[1] < new[1]:
                    last_sent = max(a.sent for a in groups[old])
                    first_ack = min(a.acked for a in groups[new])
                    if last_sent > first_ack:
                        violations.append(
                            f"{old[0]} (timeline {old[1]}) acknowledged a write sent at +{last_sent:.3f} s, "
                            f"after {new[0]} (timeline {new[1]}) had acknowledged one at +{first_ack:.3f} s")
        result = ProbeResult(acks=list(self.acks), violations=violations,
                             eras=[(n, t, len(g), min(a.acked for a in g), max(a.acked for a in g))
                                   for (n, t), g in sorted(groups.items(),
                                                           key=lambda kv: min(a.acked for a in kv[1]))])
        if present_ids is not None:
            present = set(present_ids)
            result.lost = sorted(a.id for a in self.acks if a.id not in present)
            result.unexpected = sorted(present - self.sent_ids)
        return result

    def read_back(self, timeout=60):
        low, high = self.run * RUN_SPAN, (self.run + 1) * RUN_SPAN - 1

        def read(conn):
            with conn.cursor() as cur:
                cur.execute(f"SELECT id FROM {TABLE} WHERE id BETWEEN %s AND %s", (low, high))
                return {r[0] for r in cur}
        return with_retries(self.dsn, read, timeout)
