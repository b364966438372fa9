"""The node daemon's operations beside the HA loop: reload and callbacks.

NodeReloader re-reads the settings when asked (SIGHUP, or the arbiter's
reload_generation growing: pgha.ctl reload) and applies them between two
heartbeats, on the HA loop's own thread, so no action ever sees half-applied
settings. A settings file with an error is refused with one line; the node
keeps running with the settings it had.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

from pgha import callbacks, cluster_config, logs, reload
from pgha.postgres import PostgresError
from pgha.settings import NODE_SPECS

log = logs.get("node")


def callback_scripts(settings: Any) -> tuple[dict[str, str | None], float]:
    """The callbacks and their timeout from the settings (read at each event)."""
    return ({event: getattr(settings, event, None) for event in callbacks.EVENTS}, float(settings.callback_timeout))


class NodeReloader:
    def __init__(self, loader: Callable[[], Any] | None) -> None:
        self.loader = loader        # None: no settings file to re-read (tests)
        self._asked = threading.Event()
        self.asked_by = "SIGHUP"
        self.generation: int | None = None     # the arbiter's reload_generation last seen

    def ask(self, by: str = "SIGHUP") -> None:
        """Reload before the next heartbeat (safe from a signal handler)."""
        self.asked_by = by
        self._asked.set()

    def note_generation(self, generation: int) -> None:
        """The arbiter's reload_generation from an instruction: growing means
        an operator asked for a reload. The first one seen, or a smaller one
        (a restarted arbiter), only sets the mark."""
        if self.generation is not None and generation > self.generation:
            log.info("the arbiter asks the nodes to reload (generation %d)", generation)
            self.ask(f"the arbiter, generation {generation}")
        self.generation = generation

    def reload_if_asked(self, node: Any) -> reload.Diff | None:
        if not self._asked.is_set():
            return None
        self._asked.clear()
        log.debug("reload: reading the settings again (asked by %s)", self.asked_by)
        if self.loader is None:
            log.warning("reload asked, but this node has no settings file to re-read")
            return None
        new = reload.load_or_refuse(self.loader, log.error)
        if new is None:
            return None
        return apply(node, new)


def apply(node: Any, new: Any) -> reload.Diff:
    """Apply `new` settings to a running node: what can change now changes,
    the rest is named as needing a restart."""
    old = node.s
    diff = reload.settings_diff(old, new, NODE_SPECS)
    for line in reload.change_lines(old, new, diff, NODE_SPECS):
        log.info("%s", line)
    if not diff.applied and not diff.restart_needed:
        log.info("reload: no setting changed")
        return diff
    merged = reload.merge(old, new, diff)
    node.s = node.pg.s = merged     # callbacks read node.s at each event
    logs.reconfigure(merged.log_level, merged.log_file)
    if {"hba_networks", "pg_parameters", "pg_hba", "pg_ident"} & set(diff.applied):
        reload_postgres(node.pg, node.written_for_role)
    return diff


def apply_cluster_parameters(pg: Any, parameters: Mapping[str, Any],
                             written_for_role: Callable[[], Any] | None = None) -> None:
    """The cluster-wide parameters from an instruction (pgha-ctl edit-config),
    on the HA loop after the heartbeat's action: what this release's policy
    refuses and what PostgreSQL itself refuses (a misspelt name, a bad value:
    fatal at a start) are left out, each named in an error line; the rest is
    kept for every later write of pgha.conf and applied now with a reload."""
    new, refused = cluster_config.allowed(parameters)
    for line in refused:        # an arbiter of another release may allow what this node does not
        log.error("cluster configuration: left out: %s", line)
    for name, value in list(new.items()):
        if name in pg.refused_values and cluster_config.same(pg.refused_values[name], value):
            del new[name]       # PostgreSQL refused this very value before
    fresh = {name: value for name, value in new.items()
             if not cluster_config.same(pg.cluster_parameters.get(name, ()), value)}
    for name, line in pg.refused_parameters(fresh).items():
        log.error("cluster configuration: left out %s = %r: %s; fix it with pgha-ctl edit-config",
                  name, new[name], line)
        pg.refused_values[name] = new.pop(name)
    old = pg.cluster_parameters
    if cluster_config.same(new, old):
        return
    pg.cluster_parameters = new
    log.info("cluster configuration: %s", cluster_config.describe_changes(old, new))
    overridden = sorted(set(new) & {name.lower() for name in pg.s.pg_parameters})
    if overridden:
        log.info("cluster configuration: this node's own pg_parameters keep %s", ", ".join(overridden))
    reload_postgres(pg, written_for_role)


def pre_promote(settings: Any) -> str | None:
    """Run the pre_promote script, if one is set, and wait for it: None when
    it exited 0 (or there is none), else why the promotion must wait."""
    path = getattr(settings, "pre_promote", None)
    if not path:
        return None
    code = callbacks.run_script(path, "pre_promote", "replica", settings.name, float(settings.callback_timeout))
    if code == 0:
        return None
    how = "was killed at the callback_timeout" if code is None else f"exited with status {code}"
    return f"pre_promote {path} {how}: not promoting (tried again in {PRE_PROMOTE_RETRY:g}s at the earliest)"


PRE_PROMOTE_RETRY = 2.0     # s between runs of a failing pre_promote script


def reload_postgres(pg: Any, written_for_role: Callable[[], Any] | None = None) -> None:
    """Rewrite PostgreSQL's files and reload it; name what needs a restart.
    written_for_role: write_settings' arguments for the running server's role,
    when this daemon has not written them yet (it took over a running PostgreSQL)."""
    if pg.postmaster_pid() is None:
        log.info("reload: PostgreSQL is not running; its new settings apply when it starts")
        return
    try:
        if not pg.rewrite_settings(written_for_role):
            log.info("reload: PostgreSQL's files are written at its next start (this daemon has not "
                     "written them yet)")
            return
        pg.reload()
        pending = pg.pending_restart()
    except PostgresError as exc:
        log.error("reload: could not reload PostgreSQL: %s", exc)
        return
    log.info("reload: PostgreSQL reloaded (pgha.conf, pg_hba.conf)")
    if pending:
        log.warning("reload: PostgreSQL applies these parameters only after a restart: %s", ", ".join(pending))
