"""Logging for the node and the arbiter.

Timestamps, levels, a distinct FAILOVER level for role changes (so an
operator can grep one word to see every promotion, demotion and fence),
colour only on a terminal, and an optional log file.
"""
import logging
import sys

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
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _ColourFormatter(logging.Formatter):
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
    line_format = _FORMAT.format(program=program.replace("%", "%%"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(stream)
    formatter_class = _ColourFormatter if stream.isatty() else logging.Formatter
    console.setFormatter(formatter_class(line_format, _DATEFMT))
    root.addHandler(console)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(line_format, _DATEFMT))
        root.addHandler(file_handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return get("main")


def get(name):
    return logging.getLogger(name)
