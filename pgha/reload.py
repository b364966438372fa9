"""Reloading settings without a restart: what changed, and what can apply now.

settings_diff() is pure: the daemons (node_ops.NodeReloader,
arbiter.Arbiter.reload_settings) load the new file, call it, apply the
settings it calls applied and log the others as needing a restart.

Which settings apply at run time is listed here, per daemon, so that a new
setting is a restart-only setting until someone decides otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

# The node: logging, callbacks, and what a rewrite of pgha.conf / pg_hba.conf
# plus a PostgreSQL reload carries. Names, ports, data directory, users and
# passwords, keys and the REST API's address need a restart.
NODE_RUNTIME = frozenset({"log_level", "log_file", "hba_networks", "pg_parameters", "pg_hba", "pg_ident",
                          "on_role_change", "on_start", "on_stop", "on_reload", "on_restart",
                          "pre_promote", "callback_timeout", "stop_postgres_on_exit",
                          "create_replica_methods", "replica_methods"})

# The arbiter: logging and the cluster's timings (instructions carry them to
# the nodes). lease_time shrinks only after a transition (LeaseTransition).
ARBITER_RUNTIME = frozenset({"log_level", "log_file", "heartbeat_interval", "lease_time", "failover_margin",
                             "sync_stall_timeout", "standby_reply_timeout", "strict_sync"})


@dataclass(frozen=True)
class Diff:
    applied: tuple[str, ...]            # changed, and applied at run time
    restart_needed: tuple[str, ...]     # changed, kept at the old value until a restart


def settings_diff(old: Any, new: Any, specs: Mapping[str, Any],
                  runtime: frozenset[str] = NODE_RUNTIME) -> Diff:
    """The settings (names in specs) whose value differs between old and new,
    split into those that apply at run time and those needing a restart."""
    changed = [name for name in specs if getattr(old, name, None) != getattr(new, name, None)]
    return Diff(applied=tuple(n for n in changed if n in runtime),
                restart_needed=tuple(n for n in changed if n not in runtime))


def change_lines(old: Any, new: Any, diff: Diff, specs: Mapping[str, Any]) -> list[str]:
    """One log line per applied setting, one naming those that need a restart.
    A secret setting's value is never shown."""
    lines = []
    for name in diff.applied:
        if getattr(specs.get(name), "secret", False):
            lines.append(f"reload: {name} changed")
        else:
            lines.append(f"reload: {name} changed from {getattr(old, name, None)!r} to {getattr(new, name, None)!r}")
    if diff.restart_needed:
        lines.append("reload: changed but applied only after a restart: " + ", ".join(diff.restart_needed))
    return lines


def merge(old: Any, new: Any, diff: Diff) -> Any:
    """The settings the daemon runs with after a reload: the new values of the
    applied settings, the old value of every setting that needs a restart."""
    values = dict(vars(old))
    for name in diff.applied:
        values[name] = getattr(new, name)
    return type(old)(**values)


@dataclass(frozen=True)
class LeaseTransition:
    """A shrunk lease_time, while leases granted under the longer one may live.

    Instructions carry the new (short) lease at once, so every lease granted
    after the change is short; but a primary may still hold a lease granted
    just before it under the old length. Until `until` (the change + the old
    lease + the margin) the arbiter's rules keep waiting the old lease before
    they declare a silent primary gone, so a shrink never promotes the
    standby while the old primary may still think it holds a lease.
    """
    old_lease: float
    until: float

    @classmethod
    def after_change(cls, old_lease: float, new_lease: float, margin: float, now: float,
                     current: LeaseTransition | None = None) -> LeaseTransition | None:
        """The transition a change from old_lease to new_lease starts (None when
        it does not shrink), keeping a longer transition still running."""
        longest = max(old_lease, current.old_lease if current and now < current.until else 0.0)
        if new_lease >= longest:
            return current if current and now < current.until else None
        return cls(old_lease=longest, until=max(now + longest + margin, current.until if current else 0.0))

    def rules_lease(self, new_lease: float, now: float) -> float:
        """The lease the rules must wait out at `now`."""
        return max(new_lease, self.old_lease) if now < self.until else new_lease


def load_or_refuse(load: Callable[[], Any], say: Callable[[str], None]) -> Any | None:
    """Load the settings file again; on an error, say one line and return None
    (the daemon keeps its old settings)."""
    from pgha.settings import SettingsError
    try:
        return load()
    except SettingsError as exc:
        say(f"reload refused, keeping the running settings: {exc}")
        return None
