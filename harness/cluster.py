"""What every cluster under test offers: who is primary, and the faults.

Two handles implement it:
  harness.localcluster.LocalCluster  the loopback cluster (run here, or loaded
                                     from the cluster.json it writes)
  harness.docker.ComposeCluster      the docker compose cluster
A handle supplies the primitives (ask the arbiter, is a node writable, kill a
node's PostgreSQL, kill a node's host); each fault is written once, here, on
top of them, and returns the name of the node it hit.
"""
from abc import ABC, abstractmethod
from typing import Any

from pgha import protocol

ARBITER_TIMEOUT = 3.0


class FaultError(Exception):
    """A fault could not be injected (or its target could not be found)."""


class ClusterHandle(ABC):
    """A cluster of two database nodes and an arbiter, seen from a test."""

    dsn: str                 # libpq DSN of the cluster (multi-host, read-write)

    @property
    @abstractmethod
    def nodes(self) -> list[str]:
        """The database nodes' names."""

    @abstractmethod
    def labels(self) -> dict[str, str]:
        """"host:port" -> node name, to name the server that acknowledged a write."""

    @abstractmethod
    def arbiter_call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request to the arbiter, its reply; FaultError, OSError or
        ProtocolError when it cannot be asked."""

    @abstractmethod
    def writable(self, node: str) -> bool:
        """True when the node's PostgreSQL answers and is not in recovery;
        False when it is a standby or does not answer."""

    @abstractmethod
    def kill_postgres(self, node: str) -> Any:
        """SIGKILL the node's PostgreSQL, like a crash; FaultError if none runs."""

    @abstractmethod
    def kill_host(self, node: str) -> None:
        """The node's host dies: its daemon and its PostgreSQL at once."""

    # -- built on the primitives ------------------------------------------------

    def primary(self) -> str:
        """The primary's name: the arbiter's word, else whichever node accepts writes."""
        try:
            return status_primary(self.arbiter_call({"type": "status"}))
        except (OSError, protocol.ProtocolError, FaultError) as exc:
            why = f"arbiter: {exc}"
        for node in self.nodes:
            if self.writable(node):
                return node
        raise FaultError(f"no primary found ({why}) and no node accepts writes")

    def standbys(self) -> list[str]:
        primary = self.primary()
        others = [n for n in self.nodes if n != primary]
        if not others:
            raise FaultError(f"no standby: the only node is {primary}")
        return others

    def kill_primary(self) -> str:
        victim = self.primary()
        self.kill_postgres(victim)
        return victim

    def kill_primary_host(self) -> str:
        victim = self.primary()
        self.kill_host(victim)
        return victim

    def stop_standby(self) -> str:
        victim = self.standbys()[0]
        self.kill_host(victim)
        return victim

    def switchover(self, to: str | None = None) -> str:
        """Ask the arbiter to hand the primary role to `to` (default: the standby)."""
        to = to or self.standbys()[0]
        reply = self.arbiter_call({"type": "switchover", "to": to})
        if reply.get("type") != "ok":
            raise FaultError(f"arbiter refused the switchover to {to}: {reply.get('error', reply)}")
        return to


def status_primary(reply: dict[str, Any]) -> str:
    if reply.get("type") != "status" or not reply.get("primary"):
        raise FaultError(f"arbiter status names no primary: {reply}")
    return reply["primary"]
