"""The typed core passes mypy, with the configuration in pyproject.toml
([tool.mypy]: which files, and that every function there states its types)."""
from pathlib import Path

from mypy import api      # in requirements.txt: a missing mypy fails here, it does not skip

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_no_error(monkeypatch):
    monkeypatch.chdir(ROOT)           # the configured file list is relative to the checkout
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental",
                                "--cache-dir", "/dev/null"])
    assert status == 0, out + err
    assert "Success: no issues found" in out
