"""Who is in the cluster and who stands by whom.

Today a cluster is exactly two database nodes: the primary and one
synchronous standby. The rules ask this value, never "the other node", so
that more standbys change this module and the rules, not every caller.
How many members a cluster may have is said here only (MIN_MEMBERS,
MAX_MEMBERS): the settings, the clusters table and the key tools check
their node lists with members_problem().
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MIN_MEMBERS = 2
MAX_MEMBERS = 2     # any number of members is issue 17: it raises this, and the rules follow


def members_problem(nodes: Iterable[object]) -> str | None:
    """What is wrong with `nodes` as a cluster's members, or None."""
    names = [str(n) for n in nodes]
    if MIN_MEMBERS <= len(names) <= MAX_MEMBERS and len(set(names)) == len(names):
        return None
    count = "exactly two" if MIN_MEMBERS == MAX_MEMBERS == 2 else f"{MIN_MEMBERS} to {MAX_MEMBERS}"
    return f"must name {count} different nodes, got {names!r}"


@dataclass(frozen=True)
class Topology:
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = members_problem(self.members)
        if problem:
            raise ValueError(f"a cluster's members {problem}")

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def standbys(self, primary: str) -> tuple[str, ...]:
        """The members that stand by `primary`, in order of preference."""
        return tuple(name for name in self.members if name != primary)

    def standby_of(self, primary: str) -> str:
        """The synchronous standby of `primary` (the one standby of a pair)."""
        return self.standbys(primary)[0]
