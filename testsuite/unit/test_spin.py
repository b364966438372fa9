"""Spin checks the protocol model (models/pgha.pml, harness/spin_check.py):
the rules as they are give no counterexample within the bound, and every
planted bug gives one, so the checker is shown able to fail."""
import tempfile
from pathlib import Path

import pytest

from harness import spin_check

pytestmark = pytest.mark.skipif(bool(spin_check.tools_missing()),
                                reason="spin and gcc are not installed (Debian: apt-get install spin gcc; "
                                       "bin/test installs them)")


@pytest.mark.parametrize("check", spin_check.CHECKS, ids=lambda c: c.name)
def test_spin(check):
    with tempfile.TemporaryDirectory(prefix="pgha-spin-") as tmp:
        result = spin_check.run(check, Path(tmp))
    print(result.line())
    if check.expect_error:
        assert result.errors > 0, f"Spin found no counterexample for a planted bug: {result.line()}"
    else:
        assert result.errors == 0, f"Spin found a counterexample: {result.line()}\n{result.output[-3000:]}"
        assert result.depth >= check.depth - 1, "the search did not reach its depth bound"
