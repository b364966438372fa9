"""Abusive clients for the servers' tests and benchmarks: slow clients that
send one byte at a time (a slow-loris) and silent connections, each reopened
when the server drops it, and a probe that measures who still gets answered.
Loopback only; every client is bounded in count and time."""
import http.client
import selectors
import socket
import threading
import time

# A request that never completes: one header line after another, never the blank line.
HTTP_LORIS = b"GET /primary HTTP/1.1\r\nHost: pgha\r\nX-Slow: " + b"a" * 40 + b"\r\n"


class Abusers(threading.Thread):
    """`slow` clients from 127.0.0.1 that send one byte of `payload` every
    `interval` s (the first at once), and `flood` silent connections from
    127.0.0.2, each reopened when the server drops it."""

    def __init__(self, address, slow, flood, payload=b'{"v":1,"type":"status"}', interval=2.0):
        super().__init__(daemon=True)
        self.address = address
        self.payload = payload
        self.interval = interval
        self.wanted = [("127.0.0.1", True)] * slow + [("127.0.0.2", False)] * flood
        self.stop_event = threading.Event()
        self.opened = 0
        self.dropped = 0

    def _open(self, selector, source, slow):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            sock.connect_ex(self.address)
        except OSError:
            sock.close()
            return
        self.opened += 1
        selector.register(sock, selectors.EVENT_READ, (source, slow))

    def run(self):
        selector = selectors.DefaultSelector()
        for source, slow in self.wanted:
            self._open(selector, source, slow)
        byte, next_byte = 0, time.monotonic()
        while not self.stop_event.is_set():
            for key, _ in selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:        # dropped by the server: come back
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    self.dropped += 1
                    self._open(selector, *key.data)
            if time.monotonic() >= next_byte:
                for key in list(selector.get_map().values()):
                    if key.data[1]:
                        try:
                            key.fileobj.send(self.payload[byte % len(self.payload):][:1])
                        except OSError:
                            pass
                byte, next_byte = byte + 1, time.monotonic() + self.interval
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()

    def stop(self):
        self.stop_event.set()
        self.join(10)


def probe(port, path, seconds, every=0.2, timeout=2.0):
    """Ask GET `path` every `every` s for `seconds`, each on a new connection
    with HAProxy's default check timeout; returns (status or None, seconds) per try."""
    answers = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                status = response.status
            finally:
                conn.close()
        except OSError:
            status = None
        elapsed = time.perf_counter() - started
        answers.append((status, elapsed))
        time.sleep(max(0.0, every - elapsed))
    return answers


def summary(answers, wanted=200):
    """(share answered `wanted`, median and worst answer time in s of those)."""
    good = sorted(t for status, t in answers if status == wanted)
    if not good:
        return 0.0, None, None
    return len(good) / len(answers), good[len(good) // 2], good[-1]


def describe(answers):
    share, median, worst = summary(answers)
    times = "" if median is None else f", median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
    failed = {}
    for status, _ in answers:
        if status != 200:
            kind = "no answer" if status is None else str(status)
            failed[kind] = failed.get(kind, 0) + 1
    others = "".join(f", {count} {kind}" for kind, count in sorted(failed.items()))
    return f"{share:.0%} of {len(answers)} answered 200{times}{others}"


def probe_under_loris(port, slow=300, flood=100, seconds=10.0, path="/primary"):
    """The probe's answers while `slow` HTTP slow-loris clients (one byte a
    second) and `flood` silent connections attack the REST API on `port`."""
    abusers = Abusers(("127.0.0.1", port), slow, flood, payload=HTTP_LORIS, interval=1.0)
    abusers.start()
    try:
        time.sleep(2.0)     # all connected, every slot taken
        return probe(port, path, seconds), abusers
    finally:
        abusers.stop()
