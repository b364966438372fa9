"""Logging (pgha/logs.py): a rotated log file is followed (logrotate renames
it; the daemon keeps logging into a new file at the same path), reload
changes the level and the file, journald gets lines without timestamps."""
import io
import logging
import os

import pytest

from pgha import logs


@pytest.fixture(autouse=True)
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_a_renamed_log_file_is_reopened(tmp_path):
    path = tmp_path / "node.log"
    log = logs.setup("n1", "INFO", str(path), stream=io.StringIO())
    log.info("before rotation")
    os.rename(path, tmp_path / "node.log.1")        # what logrotate does (create mode)
    log.info("after rotation")
    assert "before rotation" in (tmp_path / "node.log.1").read_text()
    assert "after rotation" not in (tmp_path / "node.log.1").read_text()
    assert "after rotation" in path.read_text()


def test_reconfigure_changes_level_and_file(tmp_path):
    stream = io.StringIO()
    log = logs.setup("n1", "INFO", str(tmp_path / "a.log"), stream=stream)
    log.debug("hidden")
    logs.reconfigure("DEBUG", str(tmp_path / "b.log"))
    log.debug("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    assert "shown" not in (tmp_path / "a.log").read_text()
    assert "n1 main: shown" in (tmp_path / "b.log").read_text()
    logs.reconfigure("INFO", None)
    log.info("no file")
    assert "no file" not in (tmp_path / "b.log").read_text()


def test_journald_lines_carry_no_timestamp(tmp_path, monkeypatch):
    with open(tmp_path / "journal", "w+") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        logs.setup("n1", "INFO", stream=stream).warning("to the journal")
        stream.seek(0)
        assert stream.read() == "WARNING n1 main: to the journal\n"
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")     # another stream: the usual format
    stream = io.StringIO()
    logs.setup("n1", "INFO", stream=stream).warning("x")
    assert stream.getvalue()[:2] == "20"


def test_control_characters_are_escaped_in_every_log_line(tmp_path):
    """Issue 19: one escaping (limits.printable) for log lines and pgha-ctl:
    a message cannot fake a line or move the terminal's cursor; a traceback
    after it keeps its lines."""
    stream = io.StringIO()
    log = logs.setup("n1", "INFO", str(tmp_path / "n1.log"), stream=stream)
    log.warning("refused %s", "pgsql-9\x1b[2J\n2026-12-06 00:00:00.000 ERROR    fake line\r\x07")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("with a traceback")
    for text in (stream.getvalue(), (tmp_path / "n1.log").read_text()):
        first = text.splitlines()[0]
        assert first.endswith("refused pgsql-9\\x1b[2J\\n2026-12-06 00:00:00.000 ERROR    fake line\\r\\x07")
        assert not any(c in text for c in "\x1b\r\x07")
        assert "Traceback (most recent call last):\n" in text
