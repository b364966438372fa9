"""The systemd units (docs/systemd, installed by the Debian package) as
systemd itself reads them: `systemd-analyze security --offline=yes` rates
their exposure (below 5 for each: the arbiter needs nothing but its port
and two folders; the node unit's top comment says what PostgreSQL keeps
open), and every line is one systemd knows (a misspelled directive would
only be a warning in the journal, its hardening silently gone)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "docs" / "systemd"
MAX_EXPOSURE = 5.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is missing (bin/setup installs systemd)")


def analyze(unit):
    """(overall exposure, systemd's warnings) for one unit file."""
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS / unit)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1)), [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("unit", ["pgha-arbiter.service", "pgha-node.service"])
def test_exposure_is_low_and_every_line_is_understood(unit):
    exposure, warnings = analyze(unit)
    assert warnings == []
    assert exposure < MAX_EXPOSURE, f"{unit}: exposure {exposure}"


def directives(unit):
    return dict(re.findall(r"^(\w+)=(.*)$", (UNITS / unit).read_text(), re.M))


@pytest.mark.parametrize("unit, user, folders", [
    ("pgha-arbiter.service", "pgha", {"StateDirectory": "pgha-arbiter", "LogsDirectory": "pgha/arbiter"}),
    ("pgha-node.service", "postgres", {"StateDirectory": "pgha", "LogsDirectory": "pgha/node"}),
])
def test_units_announce_readiness_and_own_their_folders(unit, user, folders):
    """Type=notify: the daemons send READY=1 (pgha/sdnotify.py); the folders
    the Debian package and the README's logrotate file name."""
    found = directives(unit)
    assert found["Type"] == "notify" and found["NotifyAccess"] == "main"
    assert found["User"] == user
    assert {k: found.get(k) for k in folders} == folders


def test_node_stop_reaches_the_daemon_alone():
    """KillMode=process: the daemon stops PostgreSQL and its fencer itself."""
    assert directives("pgha-node.service")["KillMode"] == "process"
