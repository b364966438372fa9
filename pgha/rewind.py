"""What a rejoin needs beyond pg_rewind and pg_basebackup themselves: how much
WAL to keep so a crashed primary can be rewound, the restore command that
fetches missing WAL from the new primary, and a clone's progress.

Pure functions (no I/O); pgha/postgres.py runs the tools.

Why WAL goes missing. A primary that dies during a checkpoint has already
saved its replication slot's position as of that checkpoint's start. Its
crash recovery (pg_rewind runs it in single-user mode) ends with a
checkpoint that removes every segment older than that position, but
pg_rewind reads the target's WAL from the last *completed* checkpoint's
record, which can be up to one checkpoint distance earlier. The distance
from that checkpoint's start to the end of WAL stays within max_wal_size
while checkpoints keep their schedule (a checkpoint starts after
max_wal_size / (1 + checkpoint_completion_target) of WAL and spreads over
the completion target's share of the next); twice that leaves room for a
checkpoint that falls behind under a write burst. Kept on both nodes, it
also keeps the old timeline's WAL on the new primary, which the restore
command can fetch should the target still lack a segment.
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

DEFAULT_MAX_WAL_SIZE_MB = 1024      # PostgreSQL's default
# Keys of a replica method the node reads itself (settings.replica_methods); the rest become --KEY=VALUE.
REPLICA_METHOD_KEYS = ("command", "no_params", "keep_data", "no_master", "no_leader")
BOOTSTRAP_METHOD_KEYS = ("command", "no_params", "keep_existing_recovery_conf", "recovery_conf")
KEEP_FACTOR = 2
_UNITS_MB = {"kb": 1 / 1024, "mb": 1, "gb": 1024, "tb": 1024 * 1024}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT][bB])?\s*$")
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
FETCHED_MARK = "pgha fetch_wal: fetched"
_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\)")


def size_mb(value: object, default_mb: float) -> float:
    """A PostgreSQL size setting in MB (a bare number is in MB, as for
    max_wal_size); default_mb when it cannot be read."""
    if isinstance(value, bool):
        return default_mb
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else default_mb
    match = _SIZE.match(str(value))
    if not match:
        return default_mb
    number, unit = match.groups()
    return float(number) * _UNITS_MB[(unit or "mb").lower()]


def wal_keep_size(pg_parameters: dict) -> str:
    """The managed default for wal_keep_size: KEEP_FACTOR x max_wal_size
    (pg_parameters may set either; an explicit wal_keep_size wins, since
    pg_parameters is applied after this)."""
    max_wal = size_mb(pg_parameters.get("max_wal_size", DEFAULT_MAX_WAL_SIZE_MB), DEFAULT_MAX_WAL_SIZE_MB)
    return f"{_mb(max_wal * KEEP_FACTOR)}MB"


MAX_MB = 2 ** 31 - 1    # PostgreSQL's largest MB setting: a derived size past it would be refused (fatal at a start)


def _mb(value: float) -> int:
    return int(min(max(value, 0.0), MAX_MB))


# A replication slot keeps WAL for its standby while that standby is away;
# without a cap a standby gone for a day fills the primary's disk and
# PostgreSQL PANICs. Past the cap PostgreSQL invalidates the slot (the
# standby then rejoins by a clone: pgha/postgres.py recreates a lost slot).
SLOT_DISK_SHARE = 0.10    # of the filesystem that holds pg_wal


def max_slot_wal_keep_size(pg_parameters: dict, wal_fs_bytes: int | None) -> str:
    """The managed default for max_slot_wal_keep_size: SLOT_DISK_SHARE of
    the filesystem holding pg_wal, never below what wal_keep_size keeps
    anyway (a smaller cap would bound nothing). pg_parameters is applied
    after this, so an explicit max_slot_wal_keep_size (-1: no cap) wins."""
    keep = pg_parameters.get("wal_keep_size", wal_keep_size(pg_parameters))
    floor_mb = size_mb(keep, DEFAULT_MAX_WAL_SIZE_MB * KEEP_FACTOR)
    share_mb = (wal_fs_bytes or 0) * SLOT_DISK_SHARE / (1024 * 1024)
    return f"{_mb(max(floor_mb, share_mb))}MB"


def pgpass_line(host: str, port: int, user: str, password: str) -> str:
    """One ~/.pgpass line; ':' and '\\' escaped as libpq wants."""
    def esc(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace(":", "\\:")
    return ":".join(esc(v) for v in (host, port, "*", user, password)) + "\n"


def restore_command(python: str, script: str, host: str, port: int, user: str, passfile: str) -> str:
    """The restore_command pg_rewind --restore-target-wal runs for a segment
    the target lacks: fetch it from the source server. The password is read
    from passfile (0600), never passed on the command line."""
    args = [python, script, "--host", host, "--port", str(port), "--user", user, "--passfile", passfile]
    return " ".join(shlex.quote(a) for a in args) + " %f %p"


@dataclass(frozen=True)
class RewindOutcome:
    """What a successful pg_rewind did, for the log and the benchmark."""
    seconds: float
    fetched_segments: int               # WAL segments the restore command brought from the source

    @property
    def path(self) -> str:
        return "rewind+fetched-wal" if self.fetched_segments else "rewind"


def fetched_segments(stderr: str) -> int:
    return stderr.count(FETCHED_MARK)


@dataclass(frozen=True)
class CloneProgress:
    done_bytes: int
    total_bytes: int        # pg_basebackup's estimate; may grow while it copies
    percent: int

    def to_wire(self) -> dict:
        return {"done_bytes": self.done_bytes, "total_bytes": self.total_bytes, "percent": self.percent}

    def describe(self) -> str:
        return f"{self.percent}% ({self.done_bytes / 2**20:.0f} of {self.total_bytes / 2**20:.0f} MB)"


def parse_progress(line: str) -> CloneProgress | None:
    """A pg_basebackup --progress line ("12345/678901 kB (1%), 0/1 tablespace")."""
    match = _PROGRESS.search(line)
    if not match:
        return None
    done, total, percent = (int(g) for g in match.groups())
    return CloneProgress(done * 1024, total * 1024, percent)


def replica_method_command(method: dict, scope: str, datadir: str, connstring: str) -> list[str]:
    """The command line of a replica method (node settings replica_methods),
    as Patroni builds it: the command, then, unless no_params, --scope,
    --datadir (the folder to restore into), --role=replica and --connstring
    (the primary, without a password), then the method's other keys as
    --KEY=VALUE (in the process's arguments: never a secret there).
    Patroni's no_master / no_leader are read, not passed."""
    return _method_command(method, REPLICA_METHOD_KEYS, [f"--scope={scope}", f"--datadir={datadir}", "--role=replica",
                                                         f"--connstring={connstring}"])


def bootstrap_method_command(method: dict, scope: str, datadir: str) -> list[str]:
    """The command line of a custom bootstrap (node setting bootstrap_method),
    as Patroni builds it: the command, then, unless no_params, --scope and
    --datadir, then the method's other keys as --KEY=VALUE."""
    return _method_command(method, BOOTSTRAP_METHOD_KEYS, [f"--scope={scope}", f"--datadir={datadir}"])


def _method_command(method: dict, own_keys: tuple[str, ...], params: list[str]) -> list[str]:
    args = shlex.split(method["command"])
    if method.get("no_params"):
        return args
    return args + params + [f"--{key}={value}" for key, value in method.items() if key not in own_keys]
