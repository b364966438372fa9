"""Fault injection for tests.py: fire one fault, by name, at a cluster handle
(harness.cluster.ClusterHandle: the local or the compose cluster), now or at
a given time during the writes. Each fault returns the name of the node it hit.
"""
import threading

from harness.cluster import FaultError

FAULTS = ("kill-primary", "kill-primary-host", "stop-standby", "switchover")


def inject(target, fault):
    """Fire one fault by name; returns the node it hit."""
    if fault not in FAULTS:
        raise FaultError(f"unknown fault {fault!r} (choose from {', '.join(FAULTS)})")
    return getattr(target, fault.replace("-", "_"))()


class FaultThread(threading.Thread):
    """Fires `fault` when clock() reaches `at`; the outcome is in .result:
    {"fault", "at" (clock time it fired, None if never), "node", "error"}."""

    def __init__(self, target, fault, at, clock):
        super().__init__(daemon=True, name="fault")
        self.target, self.fault, self.at, self.clock = target, fault, at, clock
        self.cancelled = threading.Event()
        self.result = {"fault": fault, "at": None, "node": None, "error": None}

    def run(self):
        if self.cancelled.wait(max(0.0, self.at - self.clock())):
            return
        self.result["at"] = self.clock()
        try:
            self.result["node"] = inject(self.target, self.fault)
        except Exception as exc:   # reported as a failed injection, never lost in a thread
            self.result["error"] = str(exc) or type(exc).__name__

    def cancel(self):
        self.cancelled.set()
