"""pg_hba.conf and pg_ident.conf: the lines this tool needs, and the DBA's own.

Pure: settings and the file's current text in, the new text out
(pgha.postgres writes it; a reload of pg_hba / pg_ident / hba_networks
rewrites it and reloads PostgreSQL).

The node needs three kinds of connection, each to a named user only:
its control connection over the local socket (admin_user), pg_rewind from
the other node (admin_user over TCP) and streaming replication and
pg_basebackup (replication_user over TCP), from loopback and hba_networks.
These lines come first (PostgreSQL uses the first line that matches, so no
DBA line can shadow them) and name no other user, so they never change how
anyone else logs in:

* settings pg_hba None (the default): the managed block goes on top of the
  file as it is (initdb's lines, or a Debian cluster's, with its
  `local all postgres peer`), plus client access for every user from
  hba_networks, as before;
* pg_hba a list of lines: the file is the managed block, then exactly those
  lines in their order (Patroni's postgresql.pg_hba); what was in the file is
  replaced.

pg_ident None leaves pg_ident.conf alone; a list of lines ("MAP SYSTEM-USER
PG-USER") makes it exactly those lines.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

BEGIN, END = "# pgha: begin (managed by node.py)", "# pgha: end"
LISTED = "# pgha: the node's settings pg_hba, in order"
IDENT_HEADER = "# Managed by pgha node.py: the node's settings pg_ident, in order.\n"
AUTH = "scram-sha-256"
LOOPBACK = ("127.0.0.1/32", "::1/128")
# The first word of a pg_hba.conf line (PostgreSQL 15's).
CONNECTION_TYPES = ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc",
                    "include", "include_if_exists", "include_dir")


def needed_lines(admin_user: str, replication_user: str, networks: Sequence[str]) -> list[str]:
    """The node's own connections (see the module's docstring)."""
    lines = [f"local all {admin_user} {AUTH}"]
    for network in [*LOOPBACK, *networks]:
        lines += [f"host all {admin_user} {network} {AUTH}",
                  f"host replication {replication_user} {network} {AUTH}"]
    return lines


def client_lines(networks: Sequence[str]) -> list[str]:
    """Without a pg_hba list: every user from loopback and hba_networks, with a password."""
    return [f"host all all {network} {AUTH}" for network in [*LOOPBACK, *networks]]


def render_hba(current: str, s: Any) -> str:
    """The new pg_hba.conf for settings `s` (admin_user, replication_user,
    hba_networks, pg_hba) and the file's `current` text."""
    block = needed_lines(s.admin_user, s.replication_user, s.hba_networks)
    if s.pg_hba is None:
        kept = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", "", current, flags=re.S)
        return "\n".join([BEGIN, *block, *client_lines(s.hba_networks), END]) + "\n" + kept
    return "\n".join([BEGIN, *block, END, LISTED, *s.pg_hba]) + "\n"


def render_ident(s: Any) -> str | None:
    """The new pg_ident.conf, or None to leave the file as it is."""
    if s.pg_ident is None:
        return None
    return IDENT_HEADER + "".join(f"{line}\n" for line in s.pg_ident)


# -- settings checks (pgha.settings: None when fine, else what is wrong) ------

def _each_line(value: list[str], entry_problem: Callable[[str], str | None]) -> str | None:
    """The first problem of the lines: a line break or an empty line, else
    entry_problem(line) for every line that is not a comment."""
    for line in value:
        if "\n" in line or "\r" in line:
            return f"holds {line!r}: one line per entry, no line break in it"
        if not line.strip():
            return "holds an empty line"
        problem = None if line.lstrip().startswith("#") else entry_problem(line)
        if problem:
            return problem
    return None


def hba_lines(value: list[str]) -> str | None:
    return _each_line(value, lambda line: None if line.split()[0] in CONNECTION_TYPES else (
        f"holds {line!r}, which does not start with a connection type ({', '.join(CONNECTION_TYPES[:6])}) or '#'"))


def ident_lines(value: list[str]) -> str | None:
    return _each_line(value, lambda line: None if len(line.split()) == 3 else (
        f"holds {line!r}, which is not MAP SYSTEM-USER PG-USER (three fields)"))
