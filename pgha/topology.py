"""Who is in the cluster and who stands by whom.

Today a cluster is exactly two database nodes: the primary and one
synchronous standby. The rules ask this value, never "the other node", so
that more standbys change this module and the rules, not every caller.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.members) != 2 or len(set(self.members)) != 2:
            raise ValueError(f"a cluster has exactly two database nodes, got {list(self.members)!r}")

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def standbys(self, primary: str) -> tuple[str, ...]:
        """The members that stand by `primary`, in order of preference."""
        return tuple(name for name in self.members if name != primary)

    def standby_of(self, primary: str) -> str:
        """The synchronous standby of `primary` (the one standby of a pair)."""
        return self.standbys(primary)[0]
