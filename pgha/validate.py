"""`node.py --validate` and `arbiter.py --validate`: what loading the
settings cannot know by itself.

Loading already checks every setting's type and range (pgha.settings).
This adds what needs the host: PostgreSQL parameter names in pg_parameters
against the server's own list (`postgres --describe-config`, so a misspelled
`shared_bufers` is named, with the name meant), callback scripts that exist,
are executable and are trusted (owned by root or this user, not writable by
others, as the settings files), and that the files the daemon reads (keys,
TLS, the state file's folder) are there. Each problem is one line; the
caller prints them and exits 2, or "settings OK" and 0.
"""
from __future__ import annotations

import difflib
import os
import shlex
import shutil
from typing import Any, Callable, Iterable

from pgha import callbacks, files

CALLBACKS = callbacks.EVENTS + ("pre_promote",)


def parameter_problems(parameters: Iterable[str], known: frozenset[str]) -> list[str]:
    """One line per pg_parameters name PostgreSQL does not know (extensions'
    names, with a dot, are left to the server: it takes any prefix.name)."""
    problems = []
    for name in parameters:
        lowered = name.lower()
        if "." in lowered or lowered in known:
            continue
        meant = difflib.get_close_matches(lowered, sorted(known), n=1)
        hint = f" (did you mean {meant[0]!r}?)" if meant else ""
        problems.append(f"pg_parameters: PostgreSQL has no parameter {name!r}{hint}")
    return problems


def script_problems(settings: Any, events: Iterable[str] = CALLBACKS) -> list[str]:
    """One line per callback script that is missing, not executable or not trusted."""
    problems = []
    for event in events:
        path = getattr(settings, event, None)
        if not path:
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            problems.append(f"{event}: {path}: {exc.strerror}")
            continue
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            problems.append(f"{event}: {path} is not an executable file")
            continue
        untrusted = files.untrusted_reason(info)
        if untrusted:
            problems.append(f"{event}: {path} {untrusted}")
    return problems


def replica_method_problems(settings: Any) -> list[str]:
    """One line per replica or bootstrap method whose program is not found (on PATH, or at its path)."""
    methods = [(f"replica_methods: method {name}", (getattr(settings, "replica_methods", None) or {}).get(name))
               for name in getattr(settings, "create_replica_methods", ())]
    methods.append(("bootstrap_method", getattr(settings, "bootstrap_method", None)))
    problems = []
    for label, method in methods:
        if method is None:
            continue
        program = shlex.split(method["command"])[0]
        if shutil.which(program) is None:
            problems.append(f"{label}: {program} is not an executable found on PATH")
    return problems


def file_problems(settings: Any, names: Iterable[str]) -> list[str]:
    """One line per file setting (set) whose file is not there."""
    return [f"{name}: {getattr(settings, name)} does not exist" for name in names
            if getattr(settings, name, None) and not os.path.exists(getattr(settings, name))]


def node_problems(settings: Any, postgres: Callable[[Any], Any]) -> list[str]:
    """postgres(settings): a pgha.postgres.Postgres (it runs PostgreSQL's tools as pg_os_user)."""
    problems = file_problems(settings, ("key_file", "tls_cert_file", "tls_key_file", "tls_ca_file",
                                        "api_cluster_key_file"))
    problems += script_problems(settings) + replica_method_problems(settings)
    try:
        problems += parameter_problems(settings.pg_parameters or {}, postgres(settings).parameter_names())
    except Exception as exc:    # noqa: BLE001 -- PostgresError (no binaries, no such user, the tool failed): one line
        problems.append(f"pg_parameters: cannot ask PostgreSQL for its parameters: {exc}")
    folder = os.path.dirname(os.path.abspath(settings.pgdata))
    if not os.path.isdir(folder):
        problems.append(f"pgdata: the folder {folder} that holds it does not exist")
    return problems


def arbiter_problems(settings: Any) -> list[str]:
    problems = file_problems(settings, ("key_file", "tls_cert_file", "tls_key_file", "tls_ca_file",
                                        "etcd_ca_file", "etcd_cert_file", "etcd_key_file"))
    folder = os.path.dirname(os.path.abspath(settings.state_file))
    if settings.state_backend == "file" and not os.path.isdir(folder):
        problems.append(f"state_file: the folder {folder} that holds it does not exist")
    return problems
