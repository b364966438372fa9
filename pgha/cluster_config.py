"""The cluster-wide configuration: PostgreSQL parameters every member runs
with (Patroni's dynamic configuration, `postgresql.parameters`).

The arbiter keeps them in its durable decision (ClusterState.parameters,
with a version that grows at each change), hands them to every member in
each instruction, and each member writes them into pgha.conf under its own
node settings' pg_parameters (a host's own setting wins, as Patroni's local
configuration does) and reloads PostgreSQL; a parameter that needs a restart
shows as pending restart (pgha-ctl list, /patroni, metrics) until
`pgha-ctl restart --pending`.

The operator's request is checked for shape, size and policy; a stored
state and an instruction for shape and size only (a later, stricter
release still reads them), and each node leaves out, with an error line,
what its own release's policy refuses. Refused cluster-wide: what the node
writes itself (replication, its timings, roles, addresses); what makes a
host run a program or load code, names a host's file or folder, or belongs
to its archive, recovery or TLS (matched by the name's shape, so a new
parameter of that kind is refused too); and extensions' parameters. Those
stay in each node's own settings file, which only that host's administrator
can change, so an operator's key does not become a shell on every database
host. A member also leaves out what PostgreSQL itself refuses
(Postgres.refused_parameters, node_ops.apply_cluster_parameters).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from pgha.limits import clip
from pgha.settings import MANAGED_PARAMETERS

MAX_PARAMETERS = 64         # one instruction carries them all: they must fit a frame
MAX_VALUE = 256             # characters of one value
MAX_BYTES = 8192            # the parameters as JSON: every instruction and status reply carries them (64 KiB frames)
INT_LIMIT = 2 ** 63         # PostgreSQL's largest integer parameter is far below this
NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?\Z")    # a GUC name (an extension's has a dot)
MAX_NAME = 63

# What the node writes itself (pgha.conf) and the guarantees rest on: replication, its timings
# (the arbiter reads reply ages at wal_receiver_status_interval), roles and addresses.
# fsync and full_page_writes too: off, an acknowledged commit can be lost in a crash and pg_rewind refuses.
NODE_OWN = frozenset(MANAGED_PARAMETERS) | {
    "max_wal_senders", "max_replication_slots", "wal_sender_timeout", "wal_receiver_timeout",
    "wal_receiver_status_interval", "wal_retrieve_retry_interval", "promote_trigger_file",
    "fsync", "full_page_writes", "wal_sync_method"}
# Host-local by nature: a program to run, code to load, a host's file or folder, the host's
# archive and recovery, TLS files. Matched by their shape, so a parameter added in a later
# PostgreSQL release is refused too.
HOST_SUFFIXES = ("_command", "_file", "_files", "_keyfile", "_directory", "_dir", "_library", "_libraries",
                 "_path", "_provider", "_script", "_group", "_permissions", "_mode", "_filename")
HOST_PREFIXES = ("recovery_", "archive_", "restore_", "primary_", "ssl", "krb_", "include", "unix_socket")

Value = str | int | float | bool
Parameters = tuple[tuple[str, Value], ...]     # sorted (name, value) pairs: hashable, one order


def policy_problem(name: str) -> str | None:
    """Why `name` may not be set cluster-wide (whatever its value), or None."""
    if name in NODE_OWN:
        return f"{name} is managed by the node itself (replication, its timings, roles and addresses)"
    if "." in name:
        return (f"{name} is an extension's parameter (it may run code, and its library is loaded per host): "
                "set it in each node's settings (pg_parameters)")
    if name.endswith(HOST_SUFFIXES) or name.startswith(HOST_PREFIXES):
        return (f"{name} runs a program, loads code, names a host's file or belongs to the host's archive, "
                "recovery or TLS: set it in each node's settings (pg_parameters), not cluster-wide")
    return None


def shape_problem(name: Any, value: Any, removing: bool = False) -> str | None:
    """Why `name = value` is not a well-formed parameter, or None (what a
    stored state and an instruction are checked for: their policy is the
    request's, so a stricter release still reads what an older one stored)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME.match(name):
        return (f"{clip(repr(name), 70)} is not a parameter name (lower-case letters, digits and '_', "
                f"at most {MAX_NAME} characters)")
    if value is None and removing:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -INT_LIMIT < value < INT_LIMIT else f"{name}: {clip(repr(value), 30)} is out of range"
    if isinstance(value, float):
        return None if math.isfinite(value) and abs(value) < INT_LIMIT else f"{name}: {value!r} is out of range"
    if not isinstance(value, str):
        return f"{name}: the value must be a string, a number or true/false, got {clip(repr(value), 40)}"
    if len(value) > MAX_VALUE:
        return f"{name}: the value is longer than {MAX_VALUE} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name}: the value is not valid text (UTF-8)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{name}: the value holds a control character"
    return None


def parameter_problem(name: Any, value: Any, removing: bool = False) -> str | None:
    """Why `name = value` cannot be a cluster-wide parameter, or None.
    removing: value None is allowed (a change that removes the parameter)."""
    return shape_problem(name, value, removing) or policy_problem(name)


def parameters_problem(parameters: Any, removing: bool = False, policy: bool = True) -> str | None:
    """Why `parameters` (name -> value) cannot be cluster-wide parameters, or
    None. policy=False: only their shape and size (a stored state, an instruction)."""
    if not isinstance(parameters, Mapping):
        return f"parameters must be an object of name: value, got {clip(repr(parameters), 40)}"
    if len(parameters) > MAX_PARAMETERS:
        return f"at most {MAX_PARAMETERS} cluster-wide parameters, got {len(parameters)}"
    check = parameter_problem if policy else shape_problem
    for name, value in parameters.items():
        problem = check(name, value, removing)
        if problem:
            return problem
    size = len(json.dumps(parameters))
    if size > MAX_BYTES:
        return f"the parameters take {size} bytes as JSON, more than {MAX_BYTES}"
    return None


def allowed(parameters: Mapping[str, Value]) -> tuple[dict[str, Value], list[str]]:
    """(what a node may write, one line per parameter it leaves out): the
    node applies the policy of its own release to what the arbiter sends."""
    kept, refused = {}, []
    for name, value in parameters.items():
        problem = parameter_problem(name, value)
        if problem:
            refused.append(problem)
        else:
            kept[name] = value
    return kept, refused


def frozen(parameters: Mapping[str, Value]) -> Parameters:
    return tuple(sorted(parameters.items()))


def changed(current: Parameters, changes: Mapping[str, Value | None]) -> dict[str, Value]:
    """current with `changes` applied: a value sets, None removes (PATCH /config)."""
    result = dict(current)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def effective(cluster: Mapping[str, Value], local: Mapping[str, Any]) -> dict[str, Any]:
    """What a node writes: the cluster's parameters under its own pg_parameters
    (a host's own setting wins; GUC names are case-insensitive); true/false as on/off."""
    own = {name.lower() for name in local}
    return {**{k: _conf(v) for k, v in cluster.items() if k not in own}, **local}


def _conf(value: Value) -> Value:
    return ("on" if value else "off") if isinstance(value, bool) else value


def conf_text(value: Value) -> str:
    """A value as PostgreSQL reads it (true/false as on/off)."""
    return str(_conf(value))


def describe_changes(before: Mapping[str, Value] | Parameters, after: Mapping[str, Value] | Parameters) -> str:
    """One line naming what changed between two sets of parameters."""
    old, new = dict(before), dict(after)
    return ", ".join(f"{name} removed" if name not in new else f"{name}={new[name]!r}"
                     for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)) or "no change"


def same(a: Any, b: Any) -> bool:
    """Equal as JSON: true is not 1 here, as it is in Python."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
