"""The synchronous set and the promotion quorum for any number of members:
rules S1-S5 and P2-P3 of docs/ha-model.md ("Any number of members"), as
pure functions over member names and WAL positions.

The primary's synchronous_standby_names is ANY k (names). The arbiter keeps
the set U durably, and `acks`: the fewest copies in U an acknowledged commit
may have. Any |U| - acks + 1 members of U then hold every acknowledged
commit between them. Two members are the special case of a U with one
member (the pair's "promotable" standby): the quorum is that standby alone.
The Spin model (models/pgha.pml) checks the same rules;
testsuite/unit/test_quorum.py walks them at random for 2 to 5 members.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass


def k_eff(k: int, names: Collection[str]) -> int:
    """How many of `names` acknowledge a commit: PostgreSQL is told ANY k_eff."""
    return min(k, len(names))


@dataclass(frozen=True)
class SyncSet:
    """What the arbiter keeps durably about synchronous replication."""
    members: frozenset[str] = frozenset()       # U: counted for a promotion
    names: frozenset[str] = frozenset()         # what the primary is told to name (S1)
    acks: int = 0                               # the fewest copies an acknowledged commit may have
    leaving: frozenset[str] = frozenset()       # of U: no longer named, still counted (S3)
    leaving_at: int | None = None               # the primary's LSN when its names first lacked them
    raising: tuple[int, int] | None = None      # (acks to come, the primary's LSN when its names first gave it)

    def quorum(self) -> int | None:
        """P2: how many members of U must report no grant before a
        promotion; None when none can be (no U, or commits may have been
        acknowledged by the primary alone)."""
        if not self.members or self.acks == 0:
            return None
        return len(self.members) - self.acks + 1


def next_sync_set(current: SyncSet, k: int, *, reported: Iterable[str], reported_k: int, ready: Iterable[str],
                  flushed: Mapping[str, int], primary_lsn: int) -> SyncSet:
    """The set after a report of the primary running read-write.

    k: the count the cluster asks for now (what the names sent will carry);
    reported, reported_k: the names and the count the primary uses now (a
    changed k reaches it with the next names, so the copies are counted by
    the smaller of the two until it reports the new one); ready: the members that may count
    (streaming, not nosync; outside U also flushed past the primary's
    position when the names it reports were first seen: the sync_since
    hand-shake); flushed: each standby's flush position in that report;
    primary_lsn: the primary's position in it."""
    reported, ready = frozenset(reported), frozenset(ready)
    members, acks = current.members, current.acks
    if not members:
        # S4: into an empty set the named members come together, once every
        # one holds what the primary acknowledged alone, and only those it
        # was told (a report that predates them is no confirmation); until
        # then the ready members are named, to catch up.
        if reported and reported <= ready and reported == current.names:
            return SyncSet(members=reported, names=reported, acks=min(k_eff(k, reported), k_eff(reported_k, reported)))
        return SyncSet(names=ready)
    if not members & ready:
        return SyncSet(names=ready)      # S2: nobody is promotable, so this is safe at once
    leaving, leaving_at = members - ready, None
    if leaving and not reported & leaving:
        # S3: the primary no longer names them. They stop counting once the
        # rest of U holds every commit acknowledged while they were named:
        # as many of the rest as a commit needs copies have flushed as far
        # as the primary's position when that was first seen.
        rest = members - leaving
        if current.leaving != leaving or current.leaving_at is None:
            leaving_at = primary_lsn
        elif _flushed_past(flushed, rest, current.leaving_at) >= min(acks, k_eff(k, rest)):
            members, leaving = rest, frozenset()
        else:
            leaving_at = current.leaving_at
    members = members | ready           # S4: a larger U only asks a larger quorum
    names = members - leaving
    # Fewer copies count at once (durable before the names are sent); more
    # only once that many members of U hold every commit so far.
    target = min(k_eff(k, names), k_eff(reported_k, reported))
    acks, raising = min(acks, target), None
    if target > acks:
        if current.raising is None or current.raising[0] != target:
            raising = (target, primary_lsn)
        elif _flushed_past(flushed, members, current.raising[1]) >= target:
            acks = target
        else:
            raising = current.raising
    return SyncSet(members=members, names=names, acks=acks, leaving=leaving, leaving_at=leaving_at,
                   raising=raising)


def _flushed_past(flushed: Mapping[str, int], members: Iterable[str], lsn: int) -> int:
    return sum(flushed.get(m, 0) >= lsn for m in members)


@dataclass(frozen=True)
class Standing:
    """A member of U as its last report shows it, at a promotion."""
    no_grant: bool              # it holds no grant to the old primary (and keeps its grants paused)
    position: int               # the WAL it has received
    fresh: bool                 # the report was sent after the quorum was complete (it echoes the round)
    promotable: bool = True     # running in recovery, recently heard, not nofailover
    priority: int = 1           # failover_priority


def quorum_complete(sset: SyncSet, standings: Mapping[str, Standing]) -> bool:
    """P2: enough members of U report no grant: the old primary can no longer write."""
    needed = sset.quorum()
    return needed is not None and sum(standings[m].no_grant for m in sset.members if m in standings) >= needed


def candidate(sset: SyncSet, standings: Mapping[str, Standing]) -> tuple[str | None, str]:
    """P2-P3: the member to promote, or None and why not. The most advanced
    of the quorum, judged on reports sent after the quorum was complete (its
    own excepted: it is promoted with the WAL it has); among equals the
    highest failover_priority; never one that is not promotable."""
    needed = sset.quorum()
    if needed is None:
        return None, "no member is known to hold every acknowledged commit"
    quorum = sorted(m for m in sset.members if m in standings and standings[m].no_grant)
    if len(quorum) < needed:
        return None, (f"{len(quorum)} of the {needed} members of the synchronous set needed "
                      f"({', '.join(sorted(sset.members))}) report no grant to the old primary")
    best: tuple[int, int, str] | None = None
    for name in quorum:
        me = standings[name]
        others = [standings[m] for m in quorum if m != name]
        if me.promotable and all(o.fresh and o.position <= me.position for o in others):
            best = max(best or (me.position, me.priority, name), (me.position, me.priority, name))
    if best is None:
        stale = [m for m in quorum if not standings[m].fresh]
        return None, ("waiting for positions reported after the quorum from " + ", ".join(stale) if stale
                      else "the most advanced member of the quorum may not be promoted (nofailover)")
    return best[2], "the most advanced of the quorum"
