"""A short randomised soak (~2-3 minutes) in CI; the long one is harness/bench_soak.py.

Random faults from the fault library, each held 2-6 s with the writer and the
split-brain probe running, healed, judged. Every cycle must end with nothing
lost, nothing unexpected, no split brain and a healthy synchronous pair.
PGHA_SOAK_SECONDS and PGHA_SOAK_SEED override the length and the seed.
"""
import os

import pytest

from harness import bench_soak as soak

pytestmark = [pytest.mark.faults, pytest.mark.soak]


def test_soak_short(healthy_cluster):
    seconds = float(os.environ.get("PGHA_SOAK_SECONDS", "120"))
    seed = int(os.environ.get("PGHA_SOAK_SEED", "20250520"))
    outcomes = soak.soak(healthy_cluster, seconds, seed=seed, hold=(2.0, 6.0),
                         log=lambda m: print(m, flush=True))
    rows, text = soak.table(outcomes)
    print(f"\nshort soak, seed {seed}:\n{text}")
    assert outcomes, "no fault cycle ran"
    failures = soak.bad(outcomes)
    assert not failures, "\n\n".join(o.summary() for o in failures) + "\n\n" + text
