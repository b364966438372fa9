"""One arbiter service, many clusters: each request goes to its cluster's Arbiter.

A request names its cluster ("cluster"; absent: the service's home cluster,
settings.cluster_name, when it serves one); the reply echoes a named one. A request
for a cluster the service does not serve, or a heartbeat from a node that is
not a member of the cluster it names, is refused with one error and changes
nothing. Each cluster has its own Arbiter (state, memory, topology, store,
history): decisions in one never touch another. Authentication binds a node's
key to its cluster before any of this runs (auth.cluster_scope).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from pgha import clusters, logs, reload, requests
from pgha.errors import ProtocolError
from pgha.election import LeaderElection, not_the_leader
from pgha.limits import clip

log = logs.get("arbiter")

SHOWN_CLUSTERS = 5      # an error names at most this many of the clusters served


class ArbiterService:
    """handlers: name -> what answers that cluster's requests (an Arbiter, or
    a LeadingArbiter in front of it); deciders: name -> the Arbiter itself
    (for a reload), the handlers when they are Arbiters; leadership: when
    several arbiter processes share the state, the reload request is the
    leader's (SIGHUP still reloads every process's own settings)."""

    def __init__(self, handlers: Mapping[str, Any], home: str, deciders: Mapping[str, Any] | None = None,
                 leadership: LeaderElection | None = None) -> None:
        self.handlers = dict(handlers)
        self.leadership = leadership    # several arbiter processes: the service's own kinds wait for the lead
        self.deciders = dict(deciders if deciders is not None else handlers)
        self.home = home
        self.settings_loader: Callable[[], Any] | None = None   # arbiter.py sets it: reload_settings
        # key id -> that sender's clock minus ours (auth.Verifier.skews; ArbiterServer sets it)
        self.clock_skews: Mapping[str, float] = {}

    @classmethod
    def single(cls, arbiter: Any) -> ArbiterService:
        return cls({arbiter.cluster.name: arbiter}, arbiter.cluster.name)

    def __str__(self) -> str:
        return _names(list(self.handlers))

    def resolve(self, cluster: str | None) -> tuple[str, Any]:
        """(name, its handler) for a request's "cluster"; ProtocolError when not served."""
        name = clusters.addressed(cluster, self.home)
        handler = self.handlers.get(name)
        if handler is not None:
            return name, handler
        if cluster is None:
            raise ProtocolError(f"this arbiter serves {len(self.handlers)} clusters ({self}): name one "
                                "(pgha-ctl --cluster NAME)")
        raise ProtocolError(f"this arbiter does not serve cluster {clip(repr(cluster))} (it serves {self})")

    def handle(self, request: requests.Request) -> dict[str, Any]:
        if isinstance(request, requests.Clusters):
            return {"type": "clusters", "clusters": sorted(self.handlers),
                    "home": self.home if self.home in self.handlers else None}
        if isinstance(request, requests.Reload):
            if self.leadership is not None and self.leadership.term() is None:
                return not_the_leader(self.leadership)
            return self._reload(request.cluster)
        named = getattr(request, "cluster", None)
        name, handler = self.resolve(named)
        reply: dict[str, Any] = handler.handle(request)
        if reply.get("type") == "status" and isinstance(reply.get("nodes"), dict):
            reply = {**reply, "nodes": self._with_skews(name, reply["nodes"])}
        # Echoed to whoever named it (every node does); a tool that named none
        # asked the home cluster and gets its reply as it always was.
        return reply if named is None else {**reply, "cluster": name}

    def _with_skews(self, cluster: str, nodes: dict[str, Any]) -> dict[str, Any]:
        """Each node's entry with "clock_skew": its wall clock minus ours, in
        seconds, as its last authentic request showed (None: not heard)."""
        home = cluster == self.home
        return {name: {**entry, "clock_skew": self.clock_skews.get(clusters.member_id(cluster, name, home))}
                if isinstance(entry, dict) else entry for name, entry in nodes.items()}

    def is_member(self, request: requests.Request) -> bool:
        """A heartbeat in the name of a member of the cluster it names."""
        if not isinstance(request, requests.Heartbeat):
            return False
        handler = self.handlers.get(clusters.addressed(request.cluster, self.home))
        return handler is not None and request.node in handler.topology

    # -- reload: one settings file for every cluster ---------------------------------------

    def reload_settings(self) -> tuple[Any, str | None]:
        """Re-read the settings and apply them to every cluster; (reload.Diff, None)
        or (None, error). SIGHUP and pgha-ctl reload; Arbiter.reload_settings
        is this for its one cluster."""
        deciders = list(self.deciders.values())
        loader = self.settings_loader or deciders[0].settings_loader
        if loader is None:
            return None, "this arbiter was started without a settings loader"
        problems: list[str] = []
        new = reload.load_or_refuse(loader, problems.append)
        if new is None:
            log.error("%s", problems[0])
            return None, problems[0]
        diffs = [decider.apply_settings(new, announce=i == 0) for i, decider in enumerate(deciders)]
        return diffs[0], None

    def _reload(self, cluster: str | None) -> dict[str, Any]:
        """Settings for every cluster; the nodes of the named cluster (none
        named: of every cluster) re-read theirs at their next instruction.
        The one reload request path: Arbiter.handle never sees "reload"."""
        targets = [self.resolve(cluster)[0]] if cluster is not None else list(self.deciders)
        diff, error = self.reload_settings()
        if error:
            return {"type": "error", "error": error}
        generation = max(self.deciders[name].bump_reload_generation() for name in targets)
        log.info("reload requested by the operator: nodes of %s reload at their next heartbeat (generation %d)",
                 _names(targets), generation)
        reply = {"type": "ok", "reload_generation": generation, "applied": list(diff.applied),
                 "restart_needed": list(diff.restart_needed)}
        if cluster is not None:
            reply["cluster"] = cluster
        return reply


def _names(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:SHOWN_CLUSTERS])
    more = len(names) - SHOWN_CLUSTERS
    return shown + (f" and {more} more" if more > 0 else "")
