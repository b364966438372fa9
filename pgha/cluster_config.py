"""The cluster-wide configuration: PostgreSQL parameters every member runs
with (Patroni's dynamic configuration, `postgresql.parameters`).

The arbiter keeps them in its durable decision (ClusterState.parameters,
with a version that grows at each change), hands them to every member in
each instruction, and each member writes them into pgha.conf under its own
node settings' pg_parameters (a host's own setting wins, as Patroni's local
configuration does) and reloads PostgreSQL; a parameter that needs a restart
shows as pending restart (pgha-ctl list, /patroni, metrics) until
`pgha-ctl restart --pending`.

One check serves everywhere a set of parameters arrives: the operator's
request, the stored state, the instruction a node receives. A parameter the
node manages itself (roles, replication, addresses) is refused, and so is
one that makes a host run a program or load a library, or names a host's
file: those stay in each node's own settings file, which only that host's
administrator can change, so an operator's key never becomes a shell on
every database host.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from pgha.limits import clip
from pgha.settings import MANAGED_PARAMETERS

MAX_PARAMETERS = 64         # one instruction carries them all: they must fit a frame
MAX_VALUE = 256             # characters of one value
NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?\Z")    # a GUC name (an extension's has a dot)
MAX_NAME = 63

# Host-local by nature: they run a program, load code, or name a host's file.
HOST_ONLY = frozenset({
    "archive_command", "archive_library", "restore_command", "archive_cleanup_command", "recovery_end_command",
    "ssl_passphrase_command", "shared_preload_libraries", "local_preload_libraries",
    "session_preload_libraries", "dynamic_library_path", "data_directory", "config_file", "hba_file",
    "ident_file", "external_pid_file", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file",
    "ssl_crl_dir", "ssl_dh_params_file", "krb_server_keyfile", "log_directory", "log_filename",
    "stats_temp_directory", "data_directory_mode", "unix_socket_group", "unix_socket_permissions",
    "bonjour_name", "event_source", "include", "include_if_exists", "include_dir",
})

Value = str | int | float | bool
Parameters = tuple[tuple[str, Value], ...]     # sorted (name, value) pairs: hashable, one order


def parameter_problem(name: Any, value: Any, removing: bool = False) -> str | None:
    """Why `name = value` cannot be a cluster-wide parameter, or None.
    removing: value None is allowed (a change that removes the parameter)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME.match(name):
        return (f"{clip(repr(name), 70)} is not a parameter name (lower-case letters, digits and '_', "
                f"at most {MAX_NAME} characters)")
    if name in MANAGED_PARAMETERS:
        return f"{name} is managed by the node itself (replication, roles and addresses come from its settings)"
    if name in HOST_ONLY:
        return (f"{name} runs a program, loads code or names a host's file: set it in each node's settings "
                "(pg_parameters), not cluster-wide")
    if value is None and removing:
        return None
    if isinstance(value, bool) or isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name}: {value!r} is not a finite number"
    if not isinstance(value, str):
        return f"{name}: the value must be a string, a number or true/false, got {clip(repr(value), 40)}"
    if len(value) > MAX_VALUE:
        return f"{name}: the value is longer than {MAX_VALUE} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{name}: the value holds a control character"
    return None


def parameters_problem(parameters: Any, removing: bool = False) -> str | None:
    """Why `parameters` (name -> value) cannot be cluster-wide parameters, or None."""
    if not isinstance(parameters, Mapping):
        return f"parameters must be an object of name: value, got {clip(repr(parameters), 40)}"
    if len(parameters) > MAX_PARAMETERS:
        return f"at most {MAX_PARAMETERS} cluster-wide parameters, got {len(parameters)}"
    for name, value in parameters.items():
        problem = parameter_problem(name, value, removing)
        if problem:
            return problem
    return None


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
    (a host's own setting wins; GUC names are case-insensitive)."""
    own = {name.lower() for name in local}
    return {**{k: v for k, v in cluster.items() if k not in own}, **local}


def describe_changes(before: Mapping[str, Value] | Parameters, after: Mapping[str, Value] | Parameters) -> str:
    """One line naming what changed between two sets of parameters."""
    old, new = dict(before), dict(after)
    return ", ".join(f"{name} removed" if name not in new else f"{name}={new[name]!r}"
                     for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)) or "no change"
