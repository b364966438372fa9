"""How long ago each standby last answered its primary, without trusting
that the two hosts' wall clocks agree.

pg_stat_replication's reply_time is stamped by the *standby's* clock, so
PostgreSQL's `clock_timestamp() - reply_time` on the primary is off by the
skew between the hosts: with the primary's clock a minute ahead a healthy
standby looks silent for a minute ("not streaming", and sync dropped), with
it behind a dead one looks alive for a minute longer. So the node also
watches reply_time *change*, on its own monotonic clock: a value first seen
at `first_seen` was sent between the poll before (`previous_poll`) and then,
so its true age lies in [now - first_seen, now - previous_poll]. The
clock-based age is used when it falls in that interval (clocks that agree:
exact); otherwise the clocks disagree and the age is now - first_seen, short
of the truth by at most the time between two polls (a heartbeat): a standby
that stops answering is seen silent that much later, never a live one as
silent. The standby answers at least every wal_receiver_status_interval
(REPLY_INTERVAL, set by pgha/postgres.py), so a value seen at our first
poll is taken as at most that old.
"""
from __future__ import annotations

REPLY_INTERVAL = 1.0     # wal_receiver_status_interval as pgha sets it, s


class ReplyAges:
    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, float, float]] = {}   # name -> (reply_time, first seen, upper)
        self._previous_poll: float | None = None

    def age(self, name: str, reply_time: float | None, clock_age: float, now: float) -> float:
        """The age to report for standby `name` at this poll (monotonic `now`)."""
        if reply_time is None:
            self._seen.pop(name, None)
            return clock_age
        seen = self._seen.get(name)
        if seen is None or seen[0] != reply_time:
            since = REPLY_INTERVAL if self._previous_poll is None else min(now - self._previous_poll, REPLY_INTERVAL)
            seen = (reply_time, now, since)
            self._seen[name] = seen
        low = now - seen[1]
        return clock_age if low <= clock_age <= low + seen[2] else low

    def polled(self, now: float, names: set[str]) -> None:
        """After each poll: forget standbys no longer listed."""
        self._previous_poll = now
        for gone in set(self._seen) - names:
            self._seen.pop(gone, None)
