"""Test doubles and builders shared by the suites: a clock tests move by hand,
the reports a node sends the arbiter (the wire's dict form), whether a test
failed (for fixtures that show logs then), a line server run in a thread,
and a raw exchange with a server."""
import contextlib
import socket
import threading
from typing import Any, Iterator


def failed(item: Any, unknown: bool = False) -> bool:
    """Whether the test's setup or call failed, from the reports that
    testsuite/conftest.py keeps on the item; `unknown` when the call has no
    report yet (its setup broke off)."""
    reports = [getattr(item, f"rep_{when}", None) for when in ("setup", "call")]
    if reports[1] is None and unknown:
        return True
    return any(r is not None and r.failed for r in reports)


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def address(name: str, host: str | None = None) -> dict[str, Any]:
    """Where a node's PostgreSQL and lease link listen, and its slot."""
    return {"host": host or f"{name}.example", "pg_port": 5432, "peer_port": 5433,
            "slot": f"slot_{name.replace('-', '_')}"}


def row(name: str = "b", state: str = "streaming", sync_state: str = "sync", flush_lsn: int = 1000,
        reply_age: float = 0.1) -> dict[str, Any]:
    """One standby as the primary sees it (pg_stat_replication)."""
    return {"name": name, "state": state, "sync_state": sync_state, "flush_lsn": flush_lsn,
            "reply_age": reply_age}


def primary_report(name: str = "a", standby: str = "b", pg: str = "running", role: str = "primary",
                   lsn: int = 1000, flush_lsn: int = 1000, sync_standby: str | None = "default",
                   syncrep_wait: float = 0.0, replication: Any = "default", relinquished: bool = False,
                   host: str | None = None) -> dict[str, Any]:
    """A healthy primary's report: `standby` streams synchronously up to flush_lsn."""
    if sync_standby == "default":
        sync_standby = standby
    if replication == "default":
        replication = [row(name=standby, flush_lsn=flush_lsn)]
    report = {"pg": pg, "address": address(name, host), "relinquished": relinquished, "grant_remaining": 0.0}
    if pg == "running":
        report.update(role=role, lsn=lsn, sync_standby=sync_standby, syncrep_wait=syncrep_wait,
                      replication=replication if role == "primary" else [])
    return report


def standby_report(name: str = "b", pg: str = "running", role: str = "standby", grant_remaining: float = 0.0,
                   relinquished: bool = False, host: str | None = None) -> dict[str, Any]:
    """A standby's report: replaying at lsn 900, holding `grant_remaining` s of grant."""
    report = {"pg": pg, "address": address(name, host), "relinquished": relinquished,
              "grant_remaining": grant_remaining}
    if pg == "running":
        report.update(role=role, lsn=900, sync_standby=None, syncrep_wait=0.0, replication=[])
    return report


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run a socketserver in a daemon thread for the with-block, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server says before
    it closes (a reset or a timeout ends it too)."""
    received = b""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received
