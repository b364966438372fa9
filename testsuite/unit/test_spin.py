"""Spin checks the protocol model (models/pgha.pml, harness/spin_check.py):
the rules as they are give no counterexample within the bound, and every
planted bug gives one, so the checker is shown able to fail."""
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import spin_check

pytestmark = pytest.mark.skipif(bool(spin_check.tools_missing()),
                                reason="spin and gcc are not installed (Debian: apt-get install spin gcc; "
                                       "bin/test installs them)")


@pytest.fixture(scope="module")
def verdicts():
    """Every check's run, started at once on as many cores as there are (each
    pan is one CPU-bound process: two at a time halve the module's time on
    the 2-core CI machines); a test waits for its own."""
    with tempfile.TemporaryDirectory(prefix="pgha-spin-") as tmp, \
            ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)) or 1) as pool:
        futures = {}
        for i, check in enumerate(spin_check.CHECKS):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            futures[check.name] = pool.submit(spin_check.run, check, folder)
        yield futures
        for future in futures.values():     # none left running into the folder's removal
            future.cancel()


@pytest.mark.parametrize("check", spin_check.CHECKS, ids=lambda c: c.name)
def test_spin(check, verdicts):
    result = verdicts[check.name].result()
    print(result.line())
    if check.expect_error:
        assert result.errors > 0, f"Spin found no counterexample for a planted bug: {result.line()}"
    else:
        assert result.errors == 0, f"Spin found a counterexample: {result.line()}\n{result.output[-3000:]}"
        assert result.depth >= check.depth - 1, "the search did not reach its depth bound"
