"""Durable storage: files written safely, and the arbiter's decision store.

save_json/load_json: JSON through pgha.files.write_durably (a temporary file
created with its final mode, never through a planted link, fsynced, renamed,
the folder fsynced). A reader sees either the old content or the new, never a
torn write, and once a write returns the new content survives a crash.

StateStore: where the arbiter keeps its decision (epoch, primary,
promotable, paused, a scheduled switchover) and its event history. The arbiter uses only this
interface; FileStore is today's implementation, one JSON file plus a
JSON-lines history beside it.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pgha.cluster_config import frozen, parameters_problem
from pgha.cluster_state import ClusterState, ScheduledRestart
from pgha.files import write_durably


def save_json(path: str, data: Any) -> None:
    write_durably(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_json(path: str) -> Any:
    """The saved object, or None when there is no file yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class NodeStateError(Exception):
    """The node's own state file is unreadable or damaged; the message names it, on one line."""


@dataclass(frozen=True)
class NodeState:
    acted_epoch: int                # the highest epoch the node acted on; 0: none yet
    lease_time: float | None        # the cluster's lease as last heard; None: not saved (older versions)
    # The last operator orders carried out (their ids): a daemon restarted before
    # the arbiter heard "done" does not make a second copy or restart again.
    reinit_done: int = 0
    restart_done: int = 0


def load_node_state(path: str) -> NodeState:
    """A node's state file, read once. A damaged acted_epoch is an error, never
    read as 0: that would let the node obey an older decision. A lease_time
    that is not a positive number is left out (the default serves)."""
    try:
        saved = load_json(path)
    except (OSError, ValueError) as exc:
        raise NodeStateError(f"node state file {path} is unreadable or damaged ({_one_line(exc)}); "
                             "restore it, or put the highest epoch this node acted on in it as "
                             '{"acted_epoch": N}') from None
    if saved is None:
        return NodeState(0, None)
    epoch = saved.get("acted_epoch") if isinstance(saved, dict) else None
    if type(epoch) is not int or epoch < 0:
        shown = repr(saved) if len(repr(saved)) <= 100 else repr(saved)[:100] + "..."
        raise NodeStateError(f"node state file {path} is damaged (no whole 'acted_epoch' in {_one_line(shown)}); "
                             'restore it, or put the highest epoch this node acted on in it as {"acted_epoch": N}')
    lease = saved.get("lease_time")
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < math.inf:
        lease = None
    done = {name: saved.get(name) for name in ("reinit_done", "restart_done")}
    done = {name: value if type(value) is int and value > 0 else 0 for name, value in done.items()}   # else: none
    return NodeState(epoch, None if lease is None else float(lease), **done)


class StateStoreError(Exception):
    """The decision cannot be read or written; the message says where and why, on one line."""


class StaleStateError(StateStoreError):
    """Compare-and-set refused: another writer saved a decision first."""


class StateStore(ABC):
    """The arbiter's durable decision."""

    @abstractmethod
    def load(self) -> ClusterState | None:
        """The saved decision, or None on a first start (nothing saved yet).
        Raises StateStoreError when it cannot be read or is damaged."""

    @abstractmethod
    def save(self, new: ClusterState, expected_epoch: int | None) -> None:
        """Store `new` durably, only if the stored decision still has
        `expected_epoch` (None: nothing stored yet). Raises StaleStateError,
        writing nothing, when it does not; StateStoreError when it cannot write.
        When save() returns, the decision survives a crash (invariant 3)."""

    # -- history: what happened, for operators (pgha.ctl history) ------------
    # An event is a flat JSON object: "time" (ISO 8601 UTC), "event" (its
    # kind: failover, switchover_requested, promotable, pause, resume, ...),
    # "epoch", and fields of its kind. The store keeps at least the last
    # HISTORY_KEEP events; older ones may be dropped.

    @abstractmethod
    def append_event(self, event: dict[str, Any]) -> None:
        """Add `event` at the end of the history. When it returns the event
        survives a crash (the arbiter appends a decision's event before it
        announces the decision). Raises StateStoreError when it cannot write."""

    @abstractmethod
    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last `limit` events (all kept ones when None), oldest first.
        Raises StateStoreError when the history cannot be read."""


def check_state(value: Any) -> ClusterState | None:
    """A ClusterState from its stored form, or None if any field is missing or
    of the wrong type. Checked, not coerced: bool("false") is True, and a wrong
    guess here could promote a standby that lacks commits.

    "promotable" is stored as yes/no (what earlier versions read) and, when
    yes, "promotable_members" names them. A yes without names was saved
    before names were stored: it is read as no one, not guessed from the
    settings (a member replaced meanwhile would be taken as holding every
    commit); the standby proves itself again within a few heartbeats."""
    if not isinstance(value, dict):
        return None
    epoch, primary, promotable = value.get("epoch"), value.get("primary"), value.get("promotable")
    paused = value.get("paused", False)     # absent in states saved before maintenance mode
    unfenced = value.get("primary_unfenced", False)     # absent unless set
    scheduled = _check_scheduled(value.get("scheduled_switchover"))     # absent: none scheduled
    parameters = value.get("parameters", {})        # absent: no cluster-wide parameters
    config_version = value.get("config_version", 0)
    restarts = _check_restarts(value.get("scheduled_restarts", []))     # absent: none scheduled
    if type(epoch) is int and epoch >= 1 and isinstance(primary, str) and primary \
            and type(promotable) is bool and type(paused) is bool and type(unfenced) is bool \
            and scheduled is not None and isinstance(parameters, dict) and parameters_problem(parameters, policy=False) is None \
            and type(config_version) is int and config_version >= 0 and restarts is not None:
        holders = _check_holders(value.get("promotable_members"), promotable, primary)
        if holders is None:
            return None
        return ClusterState(epoch=epoch, primary=primary, promotable=holders, paused=paused,
                            primary_unfenced=unfenced, scheduled_at=scheduled[0], scheduled_to=scheduled[1],
                            parameters=frozen(parameters), config_version=config_version,
                            scheduled_restarts=restarts)
    return None


def _check_holders(names: Any, promotable: bool, primary: str) -> frozenset[str] | None:
    """The members the stored promotable mark names, or None when damaged."""
    if names is None:
        return frozenset()      # no, or a yes saved before names were: no one until proven again
    if not isinstance(names, list) or not names or not promotable or \
            not all(isinstance(n, str) and n and n != primary for n in names) or len(set(names)) != len(names):
        return None
    return frozenset(names)


def _check_scheduled(value: Any) -> tuple[float | None, str | None] | None:
    """(at, to) of a stored scheduled switchover ((None, None): none), or None when damaged."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or set(value) - {"at", "to"}:
        return None
    at, to = _wall_time(value.get("at")), value.get("to")
    if at is None or not (to is None or isinstance(to, str) and to):
        return None
    return at, to


def _wall_time(at: Any) -> float | None:
    """A stored wall-clock time, or None when damaged."""
    from pgha.requests import AT_RANGE     # what an operator may name: a time status can show
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) \
            and AT_RANGE[0] <= at <= AT_RANGE[1]:
        return float(at)
    return None


def _check_restarts(value: Any) -> tuple[ScheduledRestart, ...] | None:
    """The stored scheduled restarts (one per member, sorted), or None when damaged."""
    if not isinstance(value, list):
        return None
    restarts = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"member", "at", "pending"} \
                or not isinstance(item["member"], str) or not item["member"] or _wall_time(item["at"]) is None \
                or type(item["pending"]) is not bool:
            return None
        restarts.append(ScheduledRestart(item["member"], float(item["at"]), item["pending"]))
    members = [r.member for r in restarts]
    return tuple(restarts) if members == sorted(set(members)) else None


def state_to_stored(state: ClusterState) -> dict[str, Any]:
    """The stored form of `state`; a TypeError for anything load() would call damaged."""
    if not isinstance(state, ClusterState):
        raise TypeError(f"not a ClusterState: {state!r}")
    stored: dict[str, Any] = {"epoch": state.epoch, "primary": state.primary, "promotable": bool(state.promotable)}
    if state.promotable:
        stored["promotable_members"] = sorted(state.promotable)
    if state.paused:    # absent when off: files stay as they were before maintenance mode
        stored["paused"] = True
    if state.primary_unfenced:
        stored["primary_unfenced"] = True
    if state.scheduled_at is not None:      # absent when none: files stay as they were before
        stored["scheduled_switchover"] = {"at": state.scheduled_at, "to": state.scheduled_to}
    if state.scheduled_restarts:
        stored["scheduled_restarts"] = [{"member": r.member, "at": r.at, "pending": r.pending}
                                        for r in state.scheduled_restarts]
    if state.parameters or state.config_version:    # absent until the first edit-config
        stored.update(state.config_view())
    if check_state(stored) != state:
        raise TypeError(f"not a valid cluster state: {state!r}")
    return stored


HISTORY_KEEP = 1000     # events every store keeps at least


class FileStore(StateStore):
    """One JSON file, replaced durably (save_json). Compare-and-set holds an
    exclusive lock on the file's folder, so two processes pointed at the same
    file cannot both win the same epoch.

    History: `<path>.history.jsonl` beside it, one event per line, appended
    and fsynced. Once it holds 2 * HISTORY_KEEP lines it is rewritten
    durably with the last HISTORY_KEEP (a crash leaves the old or the new
    file, never a torn one); a torn last line (a crash mid-append) is skipped
    when read."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.history_path = self.path + ".history.jsonl"
        self._history_lines: int | None = None     # counted at the first append
        self._history_lock = threading.Lock()

    def __str__(self) -> str:
        return self.path

    def load(self) -> ClusterState | None:
        try:
            saved = load_json(self.path)
        except (OSError, ValueError) as exc:
            raise StateStoreError(f"cannot read state file {self.path}: {_one_line(exc)}") from None
        if saved is None and not os.path.exists(self.path):
            return None
        state = check_state(saved)
        if state is None:
            shown = repr(saved) if len(repr(saved)) <= 100 else repr(saved)[:100] + "..."
            raise StateStoreError(f"state file {self.path} is damaged: {_one_line(shown)}")
        return state

    def save(self, new: ClusterState, expected_epoch: int | None) -> None:
        stored = state_to_stored(new)
        try:
            with _locked_folder(self.path):
                current = self.load()
                found = None if current is None else current.epoch
                if found != expected_epoch:
                    raise StaleStateError(
                        f"state file {self.path} holds epoch {found}, expected {expected_epoch}: "
                        "another writer saved a decision first; not overwriting it")
                save_json(self.path, stored)
        except OSError as exc:
            raise StateStoreError(f"cannot write state file {self.path}: {_one_line(exc)}") from None


    def append_event(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True, separators=(",", ":")) + "\n"
        try:
            with self._history_lock:
                if self._history_lines is None:
                    self._history_lines = len(self._read_history_lines())
                if self._history_lines >= 2 * HISTORY_KEEP:
                    kept = self._read_history_lines()[-(HISTORY_KEEP - 1):]
                    write_durably(self.history_path, "".join(kept) + line)
                    self._history_lines = len(kept) + 1
                    return
                created = not os.path.exists(self.history_path)
                fd = os.open(self.history_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    # After a torn append, start on a line of our own.
                    lead = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
                    os.write(fd, (lead + line).encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:     # the new name must survive a crash too
                    _fsync_folder(self.history_path)
                self._history_lines += 1
        except OSError as exc:
            raise StateStoreError(f"cannot append to history file {self.history_path}: {_one_line(exc)}") from None

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        try:
            lines = self._read_history_lines()
        except OSError as exc:
            raise StateStoreError(f"cannot read history file {self.history_path}: {_one_line(exc)}") from None
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue        # a torn line from a crash mid-append
            if isinstance(event, dict):
                events.append(event)
        return events[-limit:] if limit is not None and limit > 0 else events if limit is None else []

    def _read_history_lines(self) -> list[str]:
        """Whole lines only (ending in a newline): a torn tail is left out."""
        try:
            with open(self.history_path, encoding="utf-8", errors="replace") as f:
                return [line for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []


def _fsync_folder(path: str) -> None:
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _locked_folder:
    """An exclusive flock on the folder holding `path` (no lock file to leave behind)."""

    def __init__(self, path: str) -> None:
        self.folder = os.path.dirname(os.path.abspath(path))
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)      # releases the lock


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
