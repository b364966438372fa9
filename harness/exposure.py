"""Watch every PostgreSQL of a cluster from outside, every few tens of ms:
which servers are writable, and whether the writable one has a synchronous
standby. The benchmarks turn the samples into "seconds with two writable
servers", "seconds writable without a synchronous standby (commits
acknowledged by one server alone)" and "when the old primary stopped taking
writes".

One connection per server, kept open and re-made when it breaks; a server
that does not answer counts as not writable.
"""
import threading
import time
from dataclasses import dataclass

import psycopg2

# Protected: a commit waits for a synchronous standby before it is
# acknowledged (one named in synchronous_standby_names; while it reconnects
# commits wait, they are not acknowledged without it).
PROBE_SQL = """
SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names') <> ''
"""


@dataclass(frozen=True)
class Sample:
    at: float                       # monotonic seconds
    writable: frozenset             # nodes answering pg_is_in_recovery() = false
    unprotected: frozenset          # writable nodes that acknowledge commits without a standby


class ExposureMonitor(threading.Thread):
    def __init__(self, dsns, interval=0.05):
        """dsns: node name -> libpq DSN of that one server."""
        super().__init__(daemon=True, name="exposure-monitor")
        self.dsns = dict(dsns)
        self.interval = interval
        self.samples = []
        self._conns = {}
        self._stopping = threading.Event()

    def run(self):
        while not self._stopping.is_set():
            started = time.monotonic()
            writable, unprotected = set(), set()
            for node in self.dsns:
                answer = self._probe(node)
                if answer is not None and not answer[0]:
                    writable.add(node)
                    if not answer[1]:
                        unprotected.add(node)
            # Dated when the answers are in, not when the sweep began: a frozen
            # server answers only once it resumes, and its answer says what it
            # was then, not during the freeze (it took no commit while frozen).
            self.samples.append(Sample(time.monotonic(), frozenset(writable), frozenset(unprotected)))
            self._stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
        for conn in self._conns.values():
            conn.close()

    def _probe(self, node):
        try:
            conn = self._conns.get(node)
            if conn is None or conn.closed:
                conn = psycopg2.connect(self.dsns[node], connect_timeout=1,
                                        options="-c statement_timeout=500")
                conn.autocommit = True
                self._conns[node] = conn
            with conn.cursor() as cur:
                cur.execute(PROBE_SQL)
                return cur.fetchone()
        except psycopg2.Error:
            conn = self._conns.pop(node, None)
            if conn is not None:
                conn.close()
            return None

    def stop(self):
        self._stopping.set()
        self.join(timeout=10)

    # -- what the samples say ------------------------------------------------

    def seconds(self, predicate, since=0.0):
        """Time covered by samples (after `since`) for which predicate(sample) holds."""
        total = 0.0
        samples = [s for s in self.samples if s.at >= since]
        for sample, following in zip(samples, samples[1:]):
            if predicate(sample):
                total += following.at - sample.at
        return total

    def unprotected_seconds(self, since=0.0):
        return self.seconds(lambda s: bool(s.unprotected), since)

    def split_brain_seconds(self, since=0.0):
        return self.seconds(lambda s: len(s.writable) > 1, since)

    def last_writable(self, node, since=0.0):
        """The last sample time at which `node` was writable, or None."""
        times = [s.at for s in self.samples if s.at >= since and node in s.writable]
        return times[-1] if times else None
