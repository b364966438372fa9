"""Hooks for every suite. The suite imports the project's packages (pgha,
harness) from the checkout's root: pyproject.toml sets pytest's pythonpath,
and bin/test runs from there."""
import os
from collections import Counter

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (item.rep_setup, rep_call,
    rep_teardown), so fixtures can show logs when their test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter):
    """Say plainly what was skipped and why: a skip must never pass unnoticed.
    With PGHA_NO_SKIPS=1 (CI sets it) any skip fails the run."""
    reasons = Counter(_skip_reason(r) for r in terminalreporter.stats.get("skipped", []))
    if not reasons:
        return
    if os.environ.get("PGHA_NO_SKIPS") == "1":
        terminalreporter.write_line("PGHA_NO_SKIPS=1: a skipped test fails the run", red=True, bold=True)
    terminalreporter.section("skipped tests", sep="=", yellow=True, bold=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED {count} test{'s' if count != 1 else ''}: {reason}", yellow=True)


def _skip_reason(report):
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PGHA_NO_SKIPS") == "1" and exitstatus == 0:
        skipped = session.config.pluginmanager.get_plugin("terminalreporter").stats.get("skipped", [])
        if skipped:
            session.exitstatus = 1
