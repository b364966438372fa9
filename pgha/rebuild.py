"""Rebuilding a lost arbiter state from what the nodes report.

`arbiter.py --rebuild` runs the arbiter in this mode: every heartbeat is
answered with "wait" (so no node changes role), each node's highest epoch
acted on and its running role are collected, and `status` shows a proposal.
The state is written only when an operator confirms exactly that proposal
(`python -m pgha.ctl rebuild --confirm --epoch N --primary NODE`).

The proposal is deliberately narrow: epoch = the highest epoch any node
reports having acted on, primary = the node that acted on that epoch and
runs PostgreSQL as primary now. Anything less clear (no node running as
primary, two of them, the primary behind the other node's epoch) gives no
proposal and a reason; the state must then be restored by hand.

Pure: the clock is an input; arbiter.py does the I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pgha.decision import ClusterState
from pgha.messages import PRIMARY, WAIT, Instruction, Report
from pgha.topology import Topology


@dataclass(frozen=True)
class Heard:
    """One node's latest heartbeat during the rebuild."""
    epoch: int          # the highest epoch it acted on
    report: Report
    at: float           # arbiter clock


@dataclass(frozen=True)
class Proposal:
    epoch: int
    primary: str

    def to_wire(self) -> dict:
        return {"epoch": self.epoch, "primary": self.primary}


@dataclass
class Rebuild:
    topology: Topology
    fresh_within: float             # a report older than this no longer counts (seconds)
    started_at: float               # arbiter clock at the start of the rebuild
    heard: dict[str, Heard] = field(default_factory=dict)

    def on_heartbeat(self, node: str, epoch: int, report: Report, now: float) -> Instruction:
        self.heard[node] = Heard(epoch=epoch, report=report, at=now)
        return Instruction(epoch=max(1, epoch), role=WAIT,
                           reason="the arbiter is rebuilding its lost state and waits for an operator "
                                  "(python -m pgha.ctl rebuild)")

    def proposal(self, now: float) -> tuple[Proposal | None, str | None]:
        """(the proposal, None), or (None, why there is none)."""
        return propose(self.topology, self.heard, now, self.fresh_within, self.started_at)

    def confirm(self, epoch: int, primary: str, now: float) -> tuple[ClusterState | None, str | None]:
        """The state to save when (epoch, primary) is exactly the proposal; else (None, why not)."""
        proposal, problem = self.proposal(now)
        if proposal is None:
            return None, f"no proposal to confirm: {problem}"
        if (epoch, primary) != (proposal.epoch, proposal.primary):
            return None, (f"confirmation (epoch {epoch}, primary {primary}) does not match the proposal "
                          f"(epoch {proposal.epoch}, primary {proposal.primary})")
        # Not promotable: the standby must prove again that it holds every commit.
        return ClusterState(epoch=proposal.epoch, primary=proposal.primary, promotable=False), None

    def status_nodes(self, now: float) -> dict:
        nodes = {}
        for name in self.topology.members:
            heard = self.heard.get(name)
            nodes[name] = None if heard is None else {
                "acted_epoch": heard.epoch, "last_seen_ago": round(now - heard.at, 3),
                "report": heard.report.to_wire()}
        return nodes


def propose(topology: Topology, heard: dict[str, Heard], now: float, fresh_within: float,
            started_at: float | None = None) -> tuple[Proposal | None, str | None]:
    """started_at: a node not heard from is waited for until fresh_within after it
    (a live node reports by then; one that may hold a higher epoch must be heard)."""
    current = {name: h for name, h in heard.items() if name in topology and now - h.at <= fresh_within}
    if not current:
        return None, "no node has reported yet"
    silent = [name for name in topology.members if name not in heard]
    if silent and started_at is not None and now - started_at < fresh_within:
        return None, f"waiting up to {fresh_within:g}s for {silent[0]} to report"
    highest = max(h.epoch for h in heard.values())
    if highest < 1:
        return None, "no node has acted on any epoch (a new cluster: start the arbiter with --init)"
    primaries = sorted(name for name, h in current.items() if h.report.running_as == PRIMARY)
    if not primaries:
        return None, (f"no node runs PostgreSQL as primary (highest epoch acted on: {highest}); "
                      "restore the state file by hand")
    if len(primaries) > 1:
        return None, f"both {primaries[0]} and {primaries[1]} run PostgreSQL as primary; resolve by hand"
    primary = primaries[0]
    if current[primary].epoch != highest:
        behind = current[primary].epoch
        return None, (f"{primary} runs as primary but acted on epoch {behind}, while another node acted on "
                      f"epoch {highest}; resolve by hand")
    return Proposal(epoch=highest, primary=primary), None
