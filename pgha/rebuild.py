"""Rebuilding a lost arbiter state from what the nodes report.

`arbiter.py --rebuild` runs the arbiter in this mode: no node changes role,
each node's highest epoch acted on and its running role are collected, and
`status` shows a proposal. The state is written only when an operator
confirms exactly that proposal (`python -m pgha.ctl rebuild --confirm
--epoch N --primary NODE`).

Writes keep flowing meanwhile (issue 19): a heartbeat is answered "wait",
except when the proposal's primary is the status quo its standby still
leases (keep_leased): the primary runs as primary at the proposal's epoch
and the standby acted on that epoch, runs in recovery and reports a grant
outstanding. Then the primary is told to stay primary at that epoch with the
standby and synchronous standby it reports (so it keeps renewing its
standby lease: a "wait" stopped that, and its fencer stopped PostgreSQL a
lease later), and the standby to stay its standby (so its grants go on).
Nothing changes role and nothing is saved before the confirmation.

The proposal is deliberately narrow: epoch = the highest epoch any node
reports having acted on, primary = the node that acted on that epoch and
runs PostgreSQL as primary now. Anything less clear (no node running as
primary, two of them, the primary behind the other node's epoch) gives no
proposal and a reason; the state must then be restored by hand.

Pure: the clock is an input; arbiter.py does the I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pgha.cluster_state import ClusterState
from pgha.messages import PRIMARY, STANDBY, WAIT, Instruction, Report
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
        kept = keep_leased(self.topology, self.heard, node, now, self.fresh_within, self.started_at)
        return kept or Instruction(epoch=max(1, epoch), role=WAIT,
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
        return ClusterState(epoch=proposal.epoch, primary=proposal.primary), None

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


def keep_leased(topology: Topology, heard: dict[str, Heard], node: str, now: float, fresh_within: float,
                started_at: float | None = None) -> Instruction | None:
    """What `node` is told while the state is rebuilt when the proposal is
    the primary its standby still leases: the status quo, at the proposal's
    epoch (see the module's docstring). None: "wait"."""
    proposal, _ = propose(topology, heard, now, fresh_within, started_at)
    if proposal is None:
        return None
    primary, standby = proposal.primary, topology.standby_of(proposal.primary)
    ours, theirs = heard.get(primary), heard.get(standby)
    if ours is None or theirs is None or now - theirs.at > fresh_within:
        return None
    leased = (theirs.epoch == proposal.epoch and theirs.report.running_as == STANDBY
              and theirs.report.grant_remaining > 0)
    if not leased:
        return None
    if node == primary:
        return Instruction(epoch=proposal.epoch, role=PRIMARY, standby=standby,
                           standby_address=theirs.report.address, sync_standby=ours.report.sync_standby)
    if node == standby and ours.report.address is not None:
        return Instruction(epoch=proposal.epoch, role=STANDBY, primary=primary,
                           primary_address=ours.report.address)
    return None
