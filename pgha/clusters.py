"""Which clusters one arbiter service serves, and how their members are named.

The simple form of the arbiter's settings is one cluster: `cluster_name`,
`nodes`, `initial_primary`, `state_file`. The setting `clusters` (name ->
{"nodes": [a, b], "initial_primary": a}) serves many; then it lists every
cluster served, and `cluster_name` still names the service itself (its etcd
leader key) and its *home* cluster, should `clusters` hold one of that name.

Per cluster, the home cluster keeps what the simple form had: the state file
`state_file` and bare member names as key ids, so turning a one-cluster
arbiter into a many-cluster one changes nothing for that cluster. Every other
cluster C gets the state file `<state_file stem>.C<ext>` beside it (e.g.
arbiter-state.json -> arbiter-state.b.json; its history beside that, as
always) and key ids "C/NODE". A key id names exactly one (cluster, node):
names hold no "/", so a node key of one cluster never speaks for another,
even where node names repeat.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from pgha.topology import members_problem

SEPARATOR = "/"
DEFAULT = "main"        # cluster_name when a settings file predates it
MAX_NAME = 64           # a cluster's or node's name, in settings and on the wire


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster the arbiter serves."""
    name: str
    nodes: tuple[str, str]
    initial_primary: str
    state_file: str
    home: bool          # the cluster named cluster_name: bare key ids, state_file itself


def simple(settings: Any) -> ClusterSpec:
    """The one cluster of the simple form: cluster_name, nodes, initial_primary, state_file."""
    return ClusterSpec(getattr(settings, "cluster_name", DEFAULT), tuple(settings.nodes),  # type: ignore[arg-type]
                       settings.initial_primary,
                       settings.state_file, True)


def served(settings: Any) -> dict[str, ClusterSpec]:
    """Every cluster the arbiter's settings serve, by name (settings are checked)."""
    home = settings.cluster_name
    clusters: Mapping[str, Any] | None = getattr(settings, "clusters", None)
    if not clusters:
        return {home: simple(settings)}
    return {name: ClusterSpec(name, tuple(spec["nodes"]), spec["initial_primary"],
                              state_file_for(settings.state_file, name, name == home), name == home)
            for name, spec in clusters.items()}


def has_name_chars(value: str) -> bool:
    """Only letters, digits, '_', '-' and '.': never SEPARATOR, so a key id
    names exactly one (cluster, node)."""
    return all(c.isalnum() or c in "_-." for c in value)


def is_name(value: Any) -> bool:
    """A cluster's or a node's name: 1 to MAX_NAME of has_name_chars."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and has_name_chars(value)


def addressed(cluster: str | None, home: str) -> str:
    """The cluster a request is about: the one it names, else the home cluster."""
    return home if cluster is None else cluster


def state_file_for(state_file: str, cluster: str, home: bool) -> str:
    """The home cluster's state file is `state_file`; cluster C's sits beside it."""
    if home:
        return state_file
    stem, ext = os.path.splitext(state_file)
    return f"{stem}.{cluster}{ext}"


def member_id(cluster: str, node: str, home: bool) -> str:
    """The key id (keyring principal, a signed message's "from") of a node."""
    return node if home else f"{cluster}{SEPARATOR}{node}"


def members(specs: Mapping[str, ClusterSpec]) -> dict[str, tuple[str, str]]:
    """key id -> (cluster, node), for every node of every cluster served."""
    return {member_id(spec.name, node, spec.home): (spec.name, node)
            for spec in specs.values() for node in spec.nodes}


def settings_problem(settings: Any) -> str | None:
    """The arbiter's `clusters` setting checked: one line, or None."""
    clusters = getattr(settings, "clusters", None)
    if clusters is None:
        return None
    if not clusters:
        return "setting 'clusters' must name at least one cluster (or be None: the one cluster of 'nodes')"
    for name, spec in clusters.items():
        if not is_name(name):
            return f"setting 'clusters' has a cluster name {name!r} that is not an identifier (letters, digits, '_-.')"
        where = f"setting 'clusters' entry {name!r}"
        if not isinstance(spec, dict) or set(spec) != {"nodes", "initial_primary"}:
            return f"{where} must be {{\"nodes\": [A, B], \"initial_primary\": A}}, got {spec!r}"
        nodes = spec["nodes"]
        problem = members_problem(nodes) if isinstance(nodes, list) else f"must be a list, got {nodes!r}"
        if problem or not all(is_name(n) for n in nodes):
            return f"{where}: 'nodes' {problem or f'must name nodes by identifiers, got {nodes!r}'}"
        if spec["initial_primary"] not in nodes:
            return f"{where}: 'initial_primary' ({spec['initial_primary']!r}) must be one of its nodes {nodes!r}"
    return None
