"""The arbiters' acting records (setting acting_record_file, pgha.arbiter_leader.ActingRecord:
"<wall time> <event> <term>" lines): when each leadership term acted, and the
check that no two terms ever acted at the same time. Used by the local etcd
tests (files on this host) and the compose fault suite (files read from the
arbiter containers)."""
from __future__ import annotations

from typing import Iterable


def intervals(records: Iterable[str]) -> dict[int, tuple[float, float]]:
    """(first, last) wall time each term acted, by term in order; records: every arbiter's record's text."""
    terms: dict[int, tuple[float, float]] = {}
    for text in records:
        for line in text.splitlines():
            at, event, term = line.split()
            if event == "act":
                first, last = terms.get(int(term), (float(at), float(at)))
                terms[int(term)] = (min(first, float(at)), max(last, float(at)))
    return dict(sorted(terms.items()))


def assert_never_two_acting(records: Iterable[str]) -> list[tuple[int, tuple[float, float]]]:
    """Each term stopped acting before the next one began; returns the terms' intervals."""
    terms = list(intervals(records).items())
    assert terms, "no arbiter recorded acting as leader"
    for (term_a, (_, end_a)), (term_b, (start_b, _)) in zip(terms, terms[1:]):
        assert end_a < start_b, f"term {term_a} acted until {end_a:.3f}, after term {term_b} began at {start_b:.3f}"
    return terms
