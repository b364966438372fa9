"""What an arbiter that acts only while it leads asks of its election
(pgha.arbiter_leader, pgha.arbiter_service), apart from any store: the file
backend never loads the etcd modules. pgha.leadership.Leadership is the
etcd one; a new shared store brings its own (pgha.arbiter_backend)."""
from __future__ import annotations

from typing import Any, Protocol

from pgha.arbiter_link import NOT_LEADER


class LeaderElection(Protocol):
    """A backend's store guards its writes with term() itself
    (pgha.arbiter_backend: the etcd store compares the term in every
    transaction)."""
    address: str                    # "host:port" nodes reach this arbiter at
    store_problem: str | None       # the last failure of the shared store, for status

    def term(self) -> int | None:
        """This arbiter's term while it may act as leader, else None."""

    def leader_hint(self) -> str | None:
        """The address of the arbiter that leads, as last seen."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stop campaigning and give up leadership at once (another takes over now)."""


def not_the_leader(election: LeaderElection) -> dict[str, Any]:
    """The reply of an arbiter that does not lead: where the leader is (pgha.arbiter_link follows it)."""
    return {"type": "error", "error": NOT_LEADER, "leader": election.leader_hint()}
