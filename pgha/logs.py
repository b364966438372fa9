"""Logging for the node and the arbiter.

Timestamps, levels, a distinct FAILOVER level for role changes (so an
operator can grep one word to see every promotion, demotion and fence),
colour only on a terminal, and an optional log file.

Rotation: the log file is written through logging.handlers.WatchedFileHandler,
which notices when logrotate renamed (or removed) the file and reopens the
path before the next line, so neither copytruncate nor a postrotate signal is
needed (docs/logrotate/pgha). A reload (SIGHUP) also applies a changed
log_file or log_level (reconfigure).

journald: under systemd, JOURNAL_STREAM names stderr's device and inode;
when stderr is that stream the lines carry no timestamp (the journal adds
its own) and no colour.
"""
import logging
import logging.handlers
import os
import sys

from pgha.limits import printable

FAILOVER = 35  # between WARNING and ERROR: always shown, never mistaken for a fault
logging.addLevelName(FAILOVER, "FAILOVER")

_COLOURS = {
    logging.DEBUG: "\033[2m",
    logging.INFO: "",
    logging.WARNING: "\033[33m",
    FAILOVER: "\033[1;35m",
    logging.ERROR: "\033[31m",
    logging.CRITICAL: "\033[1;31m",
}
_RESET = "\033[0m"
_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-8s {program} %(name)s: %(message)s"
_JOURNAL_FORMAT = "%(levelname)s {program} %(name)s: %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _Formatter(logging.Formatter):
    """One line per message: control characters in it (from a client, an
    operator, a PostgreSQL error) are shown escaped (limits.printable); a
    traceback after it stays as it is."""

    def formatMessage(self, record):
        record.message = printable(record.message)
        return super().formatMessage(record)


class _ColourFormatter(_Formatter):
    def format(self, record):
        text = super().format(record)
        colour = _COLOURS.get(record.levelno, "")
        return f"{colour}{text}{_RESET}" if colour else text


class _Logger(logging.Logger):
    def failover(self, msg, *args, **kwargs):
        if self.isEnabledFor(FAILOVER):
            self._log(FAILOVER, msg, args, **kwargs)


logging.setLoggerClass(_Logger)


def setup(program, level="INFO", log_file=None, stream=None):
    """Configure the root handlers once; every line names the program
    (e.g. "pgsql-1") and the module's logger ("node", "postgres")."""
    stream = stream or sys.stderr
    global _line_format
    line_format = _line_format = _FORMAT.format(program=program.replace("%", "%%"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(stream)
    if to_journal(stream):
        console.setFormatter(_Formatter(_JOURNAL_FORMAT.format(program=program.replace("%", "%%"))))
    else:
        formatter_class = _ColourFormatter if stream.isatty() else _Formatter
        console.setFormatter(formatter_class(line_format, _DATEFMT))
    root.addHandler(console)
    if log_file:
        root.addHandler(_file_handler(log_file, line_format))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return get("main")


_line_format = _FORMAT.format(program="pgha")    # setup() sets the program's


def _file_handler(log_file, line_format):
    handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(_Formatter(line_format, _DATEFMT))
    return handler


def reconfigure(level, log_file):
    """Apply a reloaded log_level and log_file: a new file path is opened
    (and the old one closed) only when it changed."""
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    current = [h for h in root.handlers if isinstance(h, logging.handlers.WatchedFileHandler)]
    wanted = os.path.abspath(log_file) if log_file else None
    if [h.baseFilename for h in current] == ([wanted] if wanted else []):
        return
    for handler in current:
        root.removeHandler(handler)
        handler.close()
    if wanted:
        root.addHandler(_file_handler(wanted, _line_format))


def to_journal(stream):
    """True when `stream` is the journal stream systemd gave this process."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def get(name):
    return logging.getLogger(name)
