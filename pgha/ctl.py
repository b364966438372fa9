"""Operator commands against the arbiter (console script `pgha-ctl`, or `python -m pgha.ctl`).

    pgha-ctl [--arbiter HOST:PORT ...] [--key-file FILE] [--cluster NAME] COMMAND
      list [--json] [--watch [SECONDS]]    members as a table (like patronictl list)
      status [-v]                          the decision and each node's last report
      history [--json] [--limit N]         the arbiter's durable event log
      topology                             the table as a tree: who streams from whom
      version                              pgha-ctl's version and the arbiter's
      switchover [--to NODE] [--at TIME [--replace]]
                                           planned hand-over (TIME: ISO 8601 or +30s, +5m); --at is
                                           kept in the arbiter's state until due or flushed
      failover --to NODE [--allow-data-loss] [--primary-stopped]
                                           manual failover (refused if NODE could lose data)
        switchover and failover: [--force] (no question; needed without a terminal)
                                 [--wait SECONDS | --no-wait] (default: wait 60 s for the new primary
                                 and print it; exit 1 if it is not there)
      flush switchover | restart [MEMBER]  cancel the scheduled switchover, or the scheduled restarts
                                           and a pending restart order (of MEMBER alone if named)
      reinit MEMBER [--force] [--wait SECONDS | --no-wait]
                                           a standby makes a fresh copy of the primary (its old data
                                           kept until the copy is complete); waits until it streams
      restart [MEMBER] [--pending] [--force] [--wait SECONDS | --no-wait]
                                           restart PostgreSQL in place (a parameter that needs it):
                                           a standby leaves synchronous replication first, so no
                                           commit waits; the primary's writes stop meanwhile (switch
                                           over first to avoid that); no MEMBER: every member,
                                           standbys first, each waited for; --at TIME: scheduled
                                           (kept by the arbiter; due ones run one at a time,
                                           standbys first; --pending: only if one then waits)
      query [-m MEMBER | -r ROLE] -c SQL   run SQL on a member (password from PGPASSWORD or pgpass)
      show-config                          the cluster-wide PostgreSQL parameters (pgha.cluster_config)
      edit-config [-p NAME=VALUE ...] [--force]
                                           change them (without -p: in $EDITOR); shows a diff, asks,
                                           and the arbiter stores them; every member reloads
      pause | resume                       maintenance mode: no failover, nodes leave PostgreSQL alone
      rebuild --confirm --epoch N --primary NODE

      reload [--print-signed]              re-read the settings: the arbiter, then the nodes

--cluster NAME: which of a many-cluster arbiter's clusters (its setting
`clusters`) a command is about; without it, the arbiter's home cluster
(its cluster_name). On a many-cluster arbiter `list` and `status` without
--cluster show every cluster (list with a Cluster column).

--arbiter: several arbiters (state on etcd, one leads): pgha-ctl asks the
one that leads and follows a "not the leader" reply to it, as the nodes do
(pgha.arbiter_link). An arbiter that does not lead refuses every command
that changes or decides from the cluster's state.

The credential is the operator's key file (operator.keys from pgha-keys
generate), or the reader's (or a node's) for list, status and history.
When the arbiter port runs TLS (pgha.tls), --tls-ca/--tls-cert/--tls-key
name the CA and the operator's certificate. Options not given come from the
environment, then a settings file (pgha.ctl_settings: PGHA_ARBITERS,
PGHA_KEY_FILE or PGHA_OPERATOR_KEY_FILE, PGHA_CLUSTER, PGHA_TLS_CA/CERT/KEY;
~/.config/pgha/ctl). Output to a closed pipe (`list | head -2`) ends quietly.

Exit codes: 0 done; 1 refused by the arbiter, arbiter unreachable, not
confirmed, or a switchover/failover that did not complete within --wait;
2 usage error, no usable credential, or switchover/failover without a
terminal and without --force. Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, Callable

from pgha import arbiter_link, cluster_config, ctl_settings, keys, protocol, requests, settings, tls, version
from pgha.auth import SKEW_NOTICE
from pgha.errors import ProtocolError
from pgha.limits import clip, printable

KEY_FILE_ENV = "PGHA_OPERATOR_KEY_FILE"
TLS_OPTIONS = (("ca", "PGHA_TLS_CA", "cluster's CA certificate"), ("cert", "PGHA_TLS_CERT", "operator's certificate"),
               ("key", "PGHA_TLS_KEY", "operator's certificate key (0600)"))
OK, REFUSED, USAGE = 0, 1, 2
TIMEOUT = 5.0
WAIT = 60.0             # switchover, failover: seconds to wait for the new primary
REINIT_WAIT = 600.0     # reinit: seconds to wait for the fresh copy to stream (a clone takes its time)
RESTART_WAIT = 120.0    # restart: seconds to wait for each member to run (and a standby to stream) again
POLL = 0.25             # between status requests while waiting
STALE_HEARTBEATS = 3    # list: a report older than this many heartbeats is "unknown"
MB = 1024 * 1024


class Refused(Exception):
    """The arbiter refused or could not be reached: exit code 1, one line."""


class Usage(Exception):
    """A bad argument found after parsing (e.g. --at): exit code 2, one line."""


def confirm_and_wait(cmd: argparse.ArgumentParser, wait: float, waits_for: str, accepted: str) -> None:
    """--force, --wait SECONDS and --no-wait, as every command that asks and then waits has them."""
    cmd.add_argument("--force", action="store_true", help="no confirmation (needed when stdin is not a terminal)")
    cmd.add_argument("--wait", type=float, default=wait, metavar="SECONDS",
                     help=f"wait this long {waits_for} (default %(default)g); exit 1 if not")
    cmd.add_argument("--no-wait", dest="wait", action="store_const", const=0.0,
                     help=f"return once the arbiter has accepted {accepted}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgha-ctl", description="Ask the arbiter",
                                     epilog="Unset options come from the environment, then the settings file "
                                            "(pgha.ctl_settings: PGHA_ARBITERS, PGHA_KEY_FILE, ~/.config/pgha/ctl)")
    parser.add_argument("--arbiter", action="append",
                        help="HOST:PORT of an arbiter; several (repeated, or HOST:PORT,HOST:PORT): the one that "
                             f"leads answers (default: $PGHA_ARBITERS, else {ctl_settings.DEFAULT_ARBITER})")
    parser.add_argument("--key-file",
                        help=f"operator (or reader) key file (default: $PGHA_KEY_FILE or ${KEY_FILE_ENV})")
    parser.add_argument("--cluster", help="the cluster (on an arbiter serving several; default: its home "
                                          "cluster; list and status: every cluster)")
    for option, env, what in TLS_OPTIONS:
        parser.add_argument(f"--tls-{option}", help=f"TLS: the {what} (default: ${env}); all three or none")
    sub = parser.add_subparsers(dest="command", required=True)
    lister = sub.add_parser("list", help="the members as a table")
    lister.add_argument("--json", action="store_true", help="machine-readable output")
    lister.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status = sub.add_parser("status", help="the cluster's decision and each node's last report")
    status.add_argument("-v", action="store_true", help="also the arbiter's whole reply as JSON")
    status.add_argument("--print-signed", action="store_true",
                        help="print the signed request instead of sending it (the X-Pgha-Signed header for a "
                             "node's REST /cluster when api_cluster_key_file is set; valid once, for auth.WINDOW s)")
    history = sub.add_parser("history", help="the arbiter's event log (failovers, switchovers, pauses)")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=20, help="the last N events (default %(default)s)")
    switch = sub.add_parser("switchover", help="planned hand-over to the standby (or --to NODE)")
    switch.add_argument("node", nargs="?", help=argparse.SUPPRESS)    # the old positional form
    switch.add_argument("--to", "--candidate", dest="to", help="the node to hand over to (default: the standby)")
    switch.add_argument("--at", "--scheduled", dest="at", help="when: ISO 8601 time (UTC unless it has an offset) or +30s, +5m, +1h; "
                                     "kept in the arbiter's state until then (cancel: flush switchover)")
    switch.add_argument("--replace", action="store_true", help="with --at: replace a switchover already scheduled")
    fail = sub.add_parser("failover", help="manual failover to NODE (a switchover while the primary lives)")
    fail.add_argument("--to", "--candidate", dest="to", required=True, help="the node to promote")
    fail.add_argument("--primary-stopped", action="store_true",
                      help="the primary's daemon was stopped in maintenance mode and left PostgreSQL running "
                           "unfenced: you have stopped that PostgreSQL (the arbiter refuses the failover without this)")
    fail.add_argument("--allow-data-loss", action="store_true",
                      help="promote it even if it may lack acknowledged commits (DATA LOSS)")
    for cmd in (switch, fail):
        cmd.add_argument("--primary", "--leader", dest="expect_primary", metavar="NODE",
                         help="refuse unless NODE is the primary now (patronictl's --primary)")
        confirm_and_wait(cmd, WAIT, "for the new primary", "the request")
    reinit = sub.add_parser("reinit", help="a standby makes a fresh copy of the primary (pg_basebackup)")
    reinit.add_argument("member", help="the standby to copy afresh")
    confirm_and_wait(reinit, REINIT_WAIT, "for it to stream again", "the order")
    restart = sub.add_parser("restart", help="restart PostgreSQL in place on a member, or on every member "
                                             "(standbys first)")
    restart.add_argument("member", nargs="?", help="the member to restart (default: every member, standbys first)")
    restart.add_argument("--pending", action="store_true",
                         help="only the members whose PostgreSQL says a changed parameter waits for a restart "
                              "(with --at: then)")
    restart.add_argument("--at", "--scheduled", dest="at",
                         help="when: ISO 8601 time or +30s, +5m, +1h; kept in the arbiter's state until then, "
                              "due restarts run one after another, standbys first (cancel: flush restart)")
    confirm_and_wait(restart, RESTART_WAIT, "for each member to be back", "the order (one MEMBER only)")
    flush = sub.add_parser("flush", help="cancel something pending: `flush switchover` (a scheduled one), "
                                         "`flush restart [MEMBER]` (scheduled restarts and an order not carried "
                                         "out; of MEMBER alone if named)")
    flush.add_argument("what", choices=requests.FLUSHABLE)
    flush.add_argument("member", nargs="?", help="with restart: only this member's")
    sub.add_parser("version", help="pgha-ctl's version and the arbiter's")
    sub.add_parser("topology", help="the members as a tree: who streams from whom")
    add_query_command(sub)
    sub.add_parser("pause", help="maintenance mode on: no failover; nodes leave PostgreSQL alone")
    sub.add_parser("resume", help="maintenance mode off")
    add_rebuild_command(sub)
    add_reload_command(sub)
    add_config_commands(sub)
    return parser


def main(argv: list[str] | None = None,
         call: Callable[..., dict[str, Any]] | None = None) -> int:
    """call(host, port, message, timeout=, credential=): protocol.call unless a test passes another."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        found = ctl_settings.resolve({"arbiters": ",".join(args.arbiter or ()), "key_file": args.key_file,
                                      "cluster": args.cluster, "tls_ca": args.tls_ca, "tls_cert": args.tls_cert,
                                      "tls_key": args.tls_key}, os.environ)
        addresses = ctl_settings.addresses(found["arbiters"])
    except ctl_settings.SettingsError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return USAGE
    args.key_file, args.cluster = found["key_file"], found["cluster"]
    args.tls_ca, args.tls_cert, args.tls_key = found["tls_ca"], found["tls_cert"], found["tls_key"]
    if not args.key_file:
        parser.error(f"no credential: pass --key-file or set PGHA_KEY_FILE (or {KEY_FILE_ENV})")
    try:
        credential = keys.client_credential(args.key_file)
    except keys.KeyFileError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return USAGE
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        parser.error("--tls-ca, --tls-cert and --tls-key go together (all or none)")
    tls_context = None
    if all(given):
        try:
            tls_context = tls.client_context(args.tls_cert, args.tls_key, args.tls_ca)
        except tls.TLSError as exc:
            print(f"ctl: {exc}", file=sys.stderr)
            return USAGE
    if getattr(args, "print_signed", False):    # a body for POST /reload, a header for GET /cluster: nothing is sent
        request = about({"v": protocol.VERSION, "type": args.command}, args.cluster)
        print(json.dumps(credential.sign(request)))
        return OK
    send: Callable[[dict[str, Any]], dict[str, Any]]
    close: Callable[[], None]
    if call is None:        # the leading arbiter among the addresses, as the nodes find it
        link = arbiter_link.ArbiterLink(addresses, TIMEOUT, credential, tls_context)
        send, close = link.request, link.close
    else:                   # a test's stand-in for protocol.call, at the first address
        host, port = addresses[0]
        extra = {} if tls_context is None else {"tls_context": tls_context}

        def send(message: dict[str, Any]) -> dict[str, Any]:
            return call(host, port, message, timeout=TIMEOUT, credential=credential, **extra)

        def close() -> None:
            pass
    shown = ", ".join("%s:%s" % a for a in addresses)

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        message = checked(about(message, args.cluster))
        try:
            reply = send(message)
        except (OSError, protocol.ProtocolError) as exc:
            raise Refused(f"arbiter {shown} unreachable: {exc}") from None
        if reply.get("type") == "error":
            close()     # the arbiter may close after a refusal: the next request connects again
            raise Refused(printable(refusal(reply)))
        # Strings from the arbiter (node names, an operator's text) are shown
        # with control characters escaped; --json output escapes them itself.
        return reply if getattr(args, "json", False) else printable_tree(reply)

    try:
        return COMMANDS[args.command](args, ask)
    except Refused as exc:
        print(f"ctl: {' '.join(str(exc).split())}", file=sys.stderr)
        return REFUSED
    except Usage as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return OK
    except BrokenPipeError:
        # The reader left (`pgha-ctl list | head -2`): end quietly, and let
        # the interpreter's last flush go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    finally:
        close()


def checked(message: dict[str, Any]) -> dict[str, Any]:
    """The message, once the arbiter's own check of every field (pgha.requests)
    passes; a Usage error before anything is sent."""
    try:
        requests.parse(dict(message))
    except ProtocolError as exc:
        raise Usage(str(exc)) from None
    return message


def refusal(reply: dict[str, Any]) -> str:
    """The arbiter's error; "not the leader" names where the leader is."""
    error = str(reply.get("error"))
    if arbiter_link.is_not_leader(reply):
        leader = reply.get("leader")
        error += f" (the leader is at {leader}: add --arbiter {leader})" if leader else " (no arbiter leads)"
    return error


Ask = Callable[[dict[str, Any]], dict[str, Any]]


def about(message: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """The message naming `cluster` unless it names one already; none: the
    arbiter's home cluster (the request as it was before clusters)."""
    if cluster and "cluster" not in message:
        return {**message, "cluster": cluster}
    return message


# -- list ------------------------------------------------------------------------------------

def served_clusters(args: argparse.Namespace, ask: Ask) -> list[str | None]:
    """The clusters list and status show: --cluster's, else every cluster of a
    many-cluster arbiter, else [None] (the one cluster, asked as always)."""
    if args.cluster:
        return [args.cluster]
    try:
        names = ask({"type": "clusters"}).get("clusters")
    except Refused:         # an arbiter from before clusters: the one cluster
        return [None]
    if not isinstance(names, list) or len(names) < 2:
        return [None]
    return [str(name) for name in names]


def statuses(args: argparse.Namespace, ask: Ask) -> dict[str | None, dict[str, Any]]:
    return {name: ask(about({"type": "status"}, name))
            for name in served_clusters(args, ask)}


def render_statuses(found: dict[str | None, dict[str, Any]], as_json: bool) -> str:
    if list(found) == [None] or len(found) == 1 and not as_json:
        return render_list(next(iter(found.values())), as_json)
    if as_json:
        return json.dumps({"clusters": {name: json.loads(render_list(status, True))
                                        for name, status in found.items()}}, indent=1)
    return render_many(found)


def cmd_list(args: argparse.Namespace, ask: Ask) -> int:
    if args.watch is None:
        print(render_statuses(statuses(args, ask), args.json))
        return OK
    if args.watch <= 0:
        raise Usage(f"--watch needs a positive number of seconds, got {args.watch}")
    while True:     # Ctrl-C ends it (main returns 0)
        try:
            text = render_statuses(statuses(args, ask), args.json)
        except Refused as exc:
            text = f"ctl: {exc}"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "")
        print(f"{stamp} (every {args.watch:g}s, Ctrl-C to stop)\n{text}", flush=True)
        time.sleep(args.watch)


COLUMNS = ("Member", "Host", "Role", "State", "TL", "Lag in MB", "Lease left", "Disk", "Epoch", "Last action")


def list_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per member from the arbiter's status reply (what --json prints)."""
    nodes = status.get("nodes") or {}
    primary_name = status.get("primary")
    stale_after = STALE_HEARTBEATS * (status.get("heartbeat_interval") or settings.HEARTBEAT_INTERVAL)
    primary_node = (nodes.get(primary_name) or {}) if primary_name else {}
    primary_stale = (primary_node.get("last_seen_ago") or 0) > stale_after
    primary = {} if primary_stale else primary_node.get("report") or {}
    primary_lsn = primary.get("lsn") if primary.get("pg") == "running" and primary.get("role") == "primary" \
        else None
    rows = []
    for name, node in nodes.items():
        node = node or {}
        age = node.get("last_seen_ago")
        old = age is not None and age > stale_after
        # A daemon stopped in pause said it left PostgreSQL running unfenced: its
        # last report stays what is known (with its age), never "unknown"; the
        # mark is also in the stored decision, which an arbiter restart keeps.
        unfenced = bool((node.get("report") or {}).get("unfenced")) or \
            (name == primary_name and bool(status.get("primary_unfenced")))
        stale = old and not unfenced
        report = {} if stale else node.get("report") or {}
        if unfenced:
            report = {**report, "unfenced": True}
        running = report.get("pg") == "running"
        role = report.get("role") if running else None
        lag = None
        if role == "standby" and primary_lsn is not None:
            lag = max(0, primary_lsn - max(report.get("lsn") or 0, report.get("receive_lsn") or 0))
        leases = report.get("lease_remaining")
        address = (node.get("report") or {}).get("address") or {}
        rows.append({
            "member": name,
            "host": f"{address['host']}:{address['pg_port']}" if address.get("host") else None,
            "role": _role(name, role, primary_name, primary.get("sync_standby"), stale),
            "state": "unknown" + f" (report {age:.1f}s old)" if stale else
            _state(report) + (" (pending restart)" if report.get("pending_restart") else "") +
            (f" (report {age:.1f}s old)" if old else ""),
            "stale": stale,
            "timeline": report.get("timeline"),
            "lag_bytes": lag,
            "lease_left": max(leases.values()) if leases else None,
            "disk": report.get("disk"),
            "epoch": node.get("epoch"),
            "last_action": report.get("last_action"),
            "last_seen_ago": age,
            "tags": (node.get("report") or {}).get("tags") or {},   # settings: still true when the report is old
        })
    return rows


def disk_text(disk: dict[str, Any], long: bool = False) -> str:
    """The report's disk use: "43% (WAL 96 MB)", "!" when past the node's warning
    share; long: with the free space, and pg_wal's own disk when it has one."""
    def used(size: Any, free: Any) -> str:
        return f"{100 * (size - free) / size:.0f}%" if isinstance(size, int) and isinstance(free, int) and size > 0 \
            else "?"
    text = used(disk.get("data_size"), disk.get("data_free"))
    if long and isinstance(disk.get("data_free"), int):
        text += f" used ({disk['data_free'] / MB:.0f} MB free)"
    if "wal_size" in disk:
        text += f", pg_wal's disk {used(disk.get('wal_size'), disk.get('wal_free'))}"
    wal = disk.get("wal_bytes")
    if isinstance(wal, int):
        text += f", pg_wal {wal / MB:.0f} MB" if long else f" (WAL {wal / MB:.0f} MB)"
    return text + (" !" if disk.get("warning") else "")


def _state(report: dict[str, Any]) -> str:
    if not report:
        return "unknown"
    if report.get("unfenced"):      # its daemon stopped in pause (docs/ha-model.md, maintenance mode)
        return "running, daemon stopped, unfenced"
    return "streaming" if report.get("receiver") == "streaming" else report.get("pg", "unknown")


def _role(name: str, running_as: str | None, primary: str | None, sync_name: str | None,
          stale: bool = False) -> str:
    if stale:
        return "Leader (unknown)" if name == primary else "unknown"
    if running_as == "primary":
        return "Leader" if name == primary else "Primary (NOT the arbiter's)"
    if running_as == "standby":
        return "Sync Standby" if name == sync_name else "Replica"
    return "Leader (down)" if name == primary else "-"


def render_list(status: dict[str, Any], as_json: bool = False) -> str:
    if status.get("rebuilding"):
        return "\n".join(rebuild_status_lines(status))
    rows = list_rows(status)
    header = cluster_header(status)
    if as_json:
        return json.dumps({"epoch": status.get("epoch"), "primary": status.get("primary"),
                           "promotable": status.get("promotable"), "paused": bool(status.get("paused")),
                           "switchover_to": status.get("switchover_to"),
                           "switchover_scheduled": status.get("switchover_scheduled"),
                           "restarts_scheduled": status.get("restarts_scheduled") or [], "members": rows},
                          indent=1)
    tagged = any(r["tags"] for r in rows)
    return header + "\n" + table(COLUMNS + ("Tags",) * tagged, list_cells(rows, tagged))


def list_cells(rows: list[dict[str, Any]], tagged: bool = False) -> list[list[str]]:
    """The table's cells; with `tagged` a last column of each member's tags (as patronictl's)."""
    return [[r["member"], r["host"] or "-", r["role"], r["state"], _show(r["timeline"]),
             "-" if r["lag_bytes"] is None else f"{r['lag_bytes'] / MB:.1f}",
             "-" if r["lease_left"] is None else f"{r['lease_left']:.1f}s",
             "-" if not r["disk"] else disk_text(r["disk"]),
             _show(r["epoch"]), r["last_action"] or "-",
             *([", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(r["tags"].items()))
                or "-"] if tagged else [])] for r in rows]


def render_many(found: dict[str | None, dict[str, Any]]) -> str:
    """Every cluster of a many-cluster arbiter: a header line each, then one
    table with a Cluster column."""
    headers, cells = [], []
    for name, status in found.items():
        if status.get("rebuilding"):
            headers.append(f"+ Cluster {name}: " + " ".join(rebuild_status_lines(status)[:1]) + " +")
            continue
        headers.append(cluster_header(status, name))
        cells += [[str(name), *row] for row in list_cells(list_rows(status))]
    return "\n".join(headers) + "\n" + table(("Cluster", *COLUMNS), cells)


def cluster_header(status: dict[str, Any], name: str | None = None) -> str:
    line = (f"+ Cluster{'' if name is None else ' ' + name}: epoch {status.get('epoch')}, primary {status.get('primary')}, standby "
            f"{'promotable' if status.get('promotable') else 'NOT promotable'}"
            f"{', PAUSED (maintenance mode)' if status.get('paused') else ', not paused'}")
    if status.get("switchover_to"):
        line += f", switchover to {status['switchover_to']} pending"
    scheduled = status.get("switchover_scheduled")
    if scheduled:
        line += f", switchover to {scheduled.get('to') or 'the standby'} scheduled at {scheduled.get('at')}"
    for restart in status.get("restarts_scheduled") or ():
        line += f", {restart_text(restart)}"
    return line + " +"


def restart_text(restart: dict[str, Any]) -> str:
    """A scheduled restart from the status: "restart of pgsql-2 scheduled at T (if pending)"."""
    return (f"restart of {restart.get('member')} scheduled at {restart.get('at')}"
            f"{' (if pending)' if restart.get('pending') else ''}")


def table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([rule, line(columns), rule, *(line(r) for r in rows), rule])


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def printable_tree(value: Any) -> Any:
    """A reply with every string in it (keys too) passed through limits.printable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable_tree(v) for v in value]
    return value


# -- status ----------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace, ask: Ask) -> int:
    found = statuses(args, ask)
    for name, reply in found.items():
        if len(found) > 1:
            print(f"cluster {name}:")
        show_status(args, reply)
    return OK


def show_status(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    if reply.get("rebuilding"):
        print("\n".join(rebuild_status_lines(reply)))
        return OK
    print(f"epoch {reply['epoch']}, primary {reply['primary']}, standby "
          f"{'promotable' if reply['promotable'] else 'NOT promotable'}, "
          f"{'PAUSED (maintenance mode)' if reply.get('paused') else 'not paused'}")
    if reply.get("switchover_to"):
        print(f"switchover to {reply['switchover_to']} pending")
    scheduled = reply.get("switchover_scheduled")
    if scheduled:
        print(f"switchover to {scheduled.get('to') or 'the standby'} scheduled at {scheduled.get('at')} "
              f"(in {scheduled.get('in')}s; cancel: pgha-ctl flush switchover)")
    for restart in reply.get("restarts_scheduled") or ():
        print(f"{restart_text(restart)} (in {restart.get('in')}s; cancel: pgha-ctl flush restart)")
    for name, node in reply["nodes"].items():
        report = node.get("report") or {}
        seen = node.get("last_seen_ago")
        action = report.get("last_action")
        clone = report.get("clone_progress") or {}
        cloning = f", cloning {clone.get('percent')}% of {clone.get('total_bytes', 0) / MB:.0f} MB" if clone else ""
        disk = report.get("disk")
        skew = node.get("clock_skew")
        skewed = f", clock skew of {skew:+.1f} s with the arbiter (this node's clock is " \
            f"{'ahead' if skew > 0 else 'behind'})" if isinstance(skew, (int, float)) and abs(skew) >= SKEW_NOTICE else ""
        print(f"  {name}: {report.get('pg', 'unknown')} {report.get('role') or ''}"
              f"{'' if seen is None else f', last report {seen:.1f}s ago'}"
              f"{'' if action is None else f', last action {action}'}{cloning}{skewed}"
              f"{'' if not disk else ', disk ' + disk_text(disk, long=True)}")
    if args.v:
        print(json.dumps(reply, indent=1))
    return OK


# -- history ---------------------------------------------------------------------------------

def cmd_history(args: argparse.Namespace, ask: Ask) -> int:
    if args.limit < 1:
        raise Usage(f"--limit must be at least 1, got {args.limit}")
    reply = ask({"type": "history", "limit": args.limit})
    events = reply.get("events") or []
    if args.json:
        print(json.dumps(events, indent=1))
    else:
        print(render_history(events))
    return OK


HISTORY_COLUMNS = ("Time", "Epoch", "Event", "Old primary", "New primary", "Old LSN", "New LSN", "Details")


def render_history(events: list[dict[str, Any]]) -> str:
    if not events:
        return "no events recorded yet"
    rows = []
    for e in events:
        kind = e.get("event", "?")
        old = e.get("old_primary") or e.get("primary")
        new = e.get("new_primary") or e.get("to")
        details = e.get("reason") or ""
        if kind == "promotable":
            details = ("on" if e.get("promotable") else "off") + (f": {details}" if details else "")
        elif kind == "failover_requested":
            details = f"{e.get('how')}{', FORCED' if e.get('force') else ''}"
        elif kind == "switchover_scheduled":
            details = f"at {e.get('at')}"
        rows.append([str(e.get("time", "?")), _show(e.get("epoch")), kind, old or "-", new or "-",
                     format_lsn(e.get("old_primary_lsn")), format_lsn(e.get("new_primary_lsn")), details])
    return table(HISTORY_COLUMNS, rows)


def format_lsn(value: Any) -> str:
    """PostgreSQL's X/Y form of an LSN integer."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "-"
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# -- switchover, failover, pause, resume -----------------------------------------------------

def cmd_switchover(args: argparse.Namespace, ask: Ask) -> int:
    if args.node and args.to and args.node != args.to:
        raise Usage(f"two targets: {args.node} and --to {args.to}")
    if args.replace and not args.at:
        raise Usage("--replace goes with --at (it replaces a scheduled switchover)")
    target = args.to or args.node
    message: dict[str, Any] = {"type": "switchover", "to": target}
    if args.expect_primary:     # checked again by the arbiter, under its lock
        message["primary"] = args.expect_primary
    if args.at:
        message["at"] = parse_at(args.at, time.time())
        if args.replace:
            message["replace"] = True
    checked(message)        # the arbiter's own check of every field (--at's range too), before anything is sent
    before = ask({"type": "status"})
    when = "at " + datetime.fromtimestamp(message["at"], timezone.utc).isoformat(timespec="seconds") \
        if args.at else "now"
    confirm(args, f"Switch over from {before.get('primary')} to {target or 'the standby'} {when}?", before)
    reply = ask(message)
    if args.at:
        replaced = f" (replacing the one at {reply['replaced']})" if reply.get("replaced") else ""
        print(f"switchover to {reply.get('switchover_to') or 'the standby'} scheduled at {reply.get('at')}"
              f"{replaced}: kept in the arbiter's state; cancel with `pgha-ctl flush switchover`")
        return OK
    print(f"switchover to {reply['switchover_to']} requested: the primary hands over at its next heartbeat")
    return wait_for_new_primary(args, ask, before, reply["switchover_to"], "switchover")


def confirm(args: argparse.Namespace, question: str, status: dict[str, Any]) -> None:
    """Ask on the terminal (patronictl's "Are you sure"); --force skips it. A
    stdin that is no terminal is refused (patronictl reads EOF and aborts):
    a script says --force. --wait below 0 is refused first; a wrong
    --primary (switchover, failover) too, before the question."""
    if args.wait < 0:
        raise Usage(f"--wait must be 0 or more seconds, got {args.wait:g}")
    expected = getattr(args, "expect_primary", None)
    if expected and expected != status.get("primary"):
        raise Refused(f"{expected} is not the primary ({status.get('primary')} is, at epoch "
                      f"{status.get('epoch')}): nothing sent")
    if args.force:
        return
    if not _is_tty(sys.stdin):
        raise Usage(f"{args.command}: stdin is not a terminal, nobody to confirm: pass --force")
    print(cluster_header(status))
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise Refused(f"{args.command} not confirmed: nothing sent")


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def wait_for_new_primary(args: argparse.Namespace, ask: Ask, before: dict[str, Any], target: str,
                         what: str) -> int:
    """After the arbiter accepted a switchover or failover: wait (--wait) for
    `target` to be the primary at a newer epoch and to report running as one;
    print the result; 0, or Refused (exit 1) on a dropped request or a timeout.
    Each check reads one status snapshot."""
    if args.wait <= 0:
        return OK
    epoch = before.get("epoch") or 0

    def look(status: dict[str, Any], last: bool) -> bool:
        outcome = switch_outcome(status, epoch, target)
        if outcome == "done":
            return True
        if outcome is not None and outcome != "deciding":
            raise Refused(f"{what} to {target} failed: {outcome}{last_failure(ask, epoch)}")
        if last:
            where = (f"{status.get('primary')} is the primary at epoch {status.get('epoch')} but has not yet "
                     "reported running as one" if outcome == "deciding" else
                     f"{status.get('primary')} is still the primary at epoch {status.get('epoch')}")
            raise Refused(f"{what} to {target}: no result after {args.wait:g}s ({where}); "
                          "see `pgha-ctl status` and `pgha-ctl history`")
        return False
    status, took = poll_status(ask, args.wait, look)
    print(f"{what} done: {target} is the primary at epoch {status['epoch']} ({took:.1f}s)")
    print(render_list(status))
    return OK


def poll_status(ask: Ask, seconds: float, look: Callable[[dict[str, Any], bool], bool]) -> tuple[dict[str, Any], float]:
    """One status snapshot every POLL until look(status, last) says done:
    (that status, seconds waited). `last` is True on the look after `seconds`;
    look raises Refused to end with a failure (it must, on the last look)."""
    started = time.monotonic()
    while True:
        status = ask({"type": "status"})
        last = time.monotonic() >= started + seconds
        if look(status, last):
            return status, time.monotonic() - started
        if last:        # a look that forgot to say why
            raise Refused(f"no result after {seconds:g}s; see `pgha-ctl status`")
        time.sleep(POLL)


def switch_outcome(status: dict[str, Any], epoch: int, target: str) -> str | None:
    """From one status snapshot: "done" (target decided at a newer epoch and
    reporting as primary), "deciding" (decided, not yet running as primary),
    None (still pending), else why it failed."""
    if (status.get("epoch") or 0) > epoch:
        if status.get("primary") != target:
            return f"{status.get('primary')} was promoted instead (epoch {status.get('epoch')})"
        node = (status.get("nodes") or {}).get(target) or {}
        report = node.get("report") or {}
        running = report.get("pg") == "running" and report.get("role") == "primary"
        return "done" if running and (node.get("epoch") or 0) >= status["epoch"] else "deciding"
    if status.get("paused"):
        return "the cluster was paused"
    if status.get("switchover_to") != target and status.get("failover_to") != target:
        return "the arbiter dropped the request"
    return None


def cmd_reinit(args: argparse.Namespace, ask: Ask) -> int:
    message = checked({"type": "reinit", "member": args.member})
    before = ask({"type": "status"})
    confirm(args, f"Reinitialize {args.member} (a fresh copy of {before.get('primary')}; its data is replaced)?",
            before)
    reply = ask(message)
    order = reply.get("order")
    if not isinstance(order, int):      # else "done" could be any stream, before any copy
        raise Refused(f"reinit of {args.member}: the arbiter's answer names no order ({clip(repr(reply), 80)})")
    print(f"reinit of {args.member} ordered: it starts once the primary has dropped it from synchronous "
          "replication")
    if args.wait <= 0:
        return OK

    def look(status: dict[str, Any], last: bool) -> bool:
        report = ((status.get("nodes") or {}).get(args.member) or {}).get("report") or {}
        if report.get("reinit_done") == order and report.get("receiver") == "streaming":
            return True
        if last:
            clone = report.get("clone_progress") or {}
            where = f"cloning, {clone.get('percent')}% done" if clone else f"{report.get('pg', 'no report')}"
            raise Refused(f"reinit of {args.member}: not streaming after {args.wait:g}s ({where}); see "
                          "`pgha-ctl status`")
        return False
    status, took = poll_status(ask, args.wait, look)
    print(f"reinit done: {args.member} streams from {status.get('primary')} again ({took:.1f}s)")
    print(render_list(status))
    return OK


def cmd_restart(args: argparse.Namespace, ask: Ask) -> int:
    before = ask({"type": "status"})
    primary = before.get("primary")
    nodes = before.get("nodes") or {}
    members = [args.member] if args.member else sorted(nodes, key=lambda name: (name == primary, name))  # standbys first
    if args.at:
        return schedule_restarts(args, ask, before, members)
    for member in members:
        checked({"type": "restart", "member": member})
    if args.pending:
        members = [m for m in members if ((nodes.get(m) or {}).get("report") or {}).get("pending_restart")]
        if not members:
            print("no member has a parameter waiting for a restart: nothing to do")
            return OK
    if not members:
        raise Refused("the arbiter names no members")
    if len(members) > 1 and args.wait == 0:
        raise Usage("restarting several members one after another needs --wait: give a MEMBER with --no-wait")
    which = ", ".join(members)
    writes = " (the primary's writes stop while it restarts)" if primary in members else ""
    confirm(args, f"Restart PostgreSQL on {which}{writes}?", before)
    for member in members:
        restart_one(args, ask, member)
    return OK


def schedule_restarts(args: argparse.Namespace, ask: Ask, before: dict[str, Any], members: list[str]) -> int:
    """restart --at: one scheduled restart per member, kept by the arbiter;
    with --pending each happens only if a parameter then waits for it."""
    at = parse_at(args.at, time.time())
    messages = [checked({"type": "restart", "member": m, "at": at, **({"pending": True} if args.pending else {})})
                for m in members]
    if not messages:
        raise Refused("the arbiter names no members")
    when = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    confirm(args, f"Restart PostgreSQL on {', '.join(members)} at {when}"
                  f"{' if a parameter then waits for a restart' if args.pending else ''}?", before)
    for message in messages:
        reply = ask(message)
        print(f"restart of {reply.get('member')} scheduled at {reply.get('at')}"
              f"{' (if a parameter then waits for it)' if reply.get('pending') else ''}: kept in the arbiter's "
              "state; cancel with `pgha-ctl flush restart`")
    return OK


def restart_one(args: argparse.Namespace, ask: Ask, member: str) -> None:
    reply = ask({"type": "restart", "member": member})
    order = reply.get("order")
    if not isinstance(order, int):      # else "done" could be any restart, or none
        raise Refused(f"restart of {member}: the arbiter's answer names no order ({clip(repr(reply), 80)})")
    print(f"restart of {member} ordered")
    if args.wait <= 0:
        return

    def look(status: dict[str, Any], last: bool) -> bool:
        # A standby is back once promotable again (in strict_sync mode: sync
        # is not dropped either way), so the next member, the primary above
        # all, restarts only with a standby that can take over.
        report = ((status.get("nodes") or {}).get(member) or {}).get("report") or {}
        if member == status.get("primary"):
            back = report.get("pg") == "running" and report.get("role") == "primary"
        else:
            back = report.get("receiver") == "streaming" and member in (status.get("promotable_members") or ())
        if report.get("restart_done") == order and back:
            return True
        if last:
            raise Refused(f"restart of {member}: not back after {args.wait:g}s ({report.get('pg', 'no report')}, "
                          f"{'promotable' if member in (status.get('promotable_members') or ()) else 'not promotable'}"
                          "); see `pgha-ctl status`; `pgha-ctl flush restart` cancels an order not carried out")
        return False
    status, took = poll_status(ask, args.wait, look)
    print(f"restart done: {member} runs again{'' if member == status.get('primary') else ', promotable'} "
          f"({took:.1f}s)")


def last_failure(ask: Ask, epoch: int) -> str:
    """The reason of the newest switchover_failed event at `epoch`, if any."""
    try:
        events = ask({"type": "history", "limit": 10}).get("events") or []
    except Refused:
        return ""
    reasons = [e.get("reason") for e in events if e.get("event") == "switchover_failed" and e.get("epoch") == epoch]
    return f" ({reasons[-1]})" if reasons and reasons[-1] else ""


_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([smh]?)$")


def parse_at(text: str, now: float) -> float:
    """Wall-clock seconds from "+30s", "+5m", "+1h", "+10" (seconds) or an ISO
    8601 time (UTC when it names no offset). A Usage error names the forms."""
    match = _RELATIVE.match(text.strip())
    if match:
        return now + float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Usage(f"--at {text!r}: expected an ISO 8601 time (2024-05-01T12:00:00Z) or +30s, +5m, +1h") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def cmd_failover(args: argparse.Namespace, ask: Ask) -> int:
    message = checked({"type": "failover", "to": args.to, "force": bool(args.allow_data_loss),
                       "primary_stopped": bool(args.primary_stopped),
                       **({"primary": args.expect_primary} if args.expect_primary else {})})
    before = ask({"type": "status"})
    risk = " even if it may lack acknowledged commits (DATA LOSS)" if args.allow_data_loss else ""
    confirm(args, f"Fail over from {before.get('primary')} to {args.to}{risk}?", before)
    if args.allow_data_loss:
        print(f"WARNING: forced failover to {args.to}: if it is not promotable it may lack acknowledged "
              "commits, which are then lost. The arbiter still waits for the old primary's lease to run out.",
              file=sys.stderr)
    reply = ask(message)
    if reply.get("how") == "switchover":
        print(f"the primary is alive: switching over to {args.to} (the primary hands over at its next heartbeat)")
    else:
        print(f"failover to {args.to} requested{' (FORCED)' if reply.get('forced') else ''}: it is promoted once "
              "the old primary's lease has run out")
    return wait_for_new_primary(args, ask, before, args.to, "failover")


def cmd_flush(args: argparse.Namespace, ask: Ask) -> int:
    if args.member and args.what != "restart":
        raise Usage("a MEMBER goes with `flush restart` (that member's restarts)")
    reply = ask({"type": "flush", "what": args.what, **({"member": args.member} if args.member else {})})
    cancelled = reply.get("cancelled") or {}
    if args.what == "restart":
        if cancelled.get("restart"):
            print(f"pending restart of {cancelled['restart']} cancelled")
        if cancelled.get("scheduled"):
            print(f"scheduled restarts of {', '.join(cancelled['scheduled'])} cancelled")
        return OK
    print(f"scheduled switchover to {cancelled.get('to') or 'the standby'} at {cancelled.get('at')} cancelled")
    return OK


def cmd_version(args: argparse.Namespace, ask: Ask) -> int:
    print(f"pgha-ctl version {version.VERSION}")
    status = ask({"type": "status"})
    print(f"arbiter version {status.get('arbiter_version') or 'unknown (it does not say: an arbiter older than pgha-ctl version)'}")
    return OK


def cmd_topology(args: argparse.Namespace, ask: Ask) -> int:
    print(render_topology(ask({"type": "status"})))
    return OK


def render_topology(status: dict[str, Any]) -> str:
    """The list table as a tree (patronictl topology): each member under the
    one whose pg_stat_replication names it, indented one "+ " per level."""
    if status.get("rebuilding"):
        return "\n".join(rebuild_status_lines(status))
    rows = {r["member"]: r for r in list_rows(status)}
    nodes = status.get("nodes") or {}
    upstream: dict[str, str] = {}
    for name, node in nodes.items():
        for row in ((node or {}).get("report") or {}).get("replication") or ():
            if row.get("name") in rows and row.get("name") != name:
                upstream.setdefault(row["name"], name)
    ordered: list[tuple[int, dict[str, Any]]] = []

    def add(name: str, depth: int, seen: frozenset[str]) -> None:
        ordered.append((depth, rows[name]))
        for child in sorted(c for c, up in upstream.items() if up == name and c not in seen):
            add(child, depth + 1, seen | {child})
    roots = [n for n in rows if n not in upstream]
    for root in sorted(roots, key=lambda n: (n != status.get("primary"), n)):
        add(root, 0, frozenset({root}))
    for name in rows:       # a streaming loop (no root): shown anyway
        if all(r["member"] != name for _, r in ordered):
            add(name, 0, frozenset({name}))
    cells = list_cells([r for _, r in ordered])
    for (depth, _), row in zip(ordered, cells):
        row[0] = "+ " * depth + row[0]
    return cluster_header(status) + "\n" + table(COLUMNS, cells)


def cmd_pause(args: argparse.Namespace, ask: Ask) -> int:
    reply = ask({"type": "pause"})
    print("paused (maintenance mode): no failover or switchover; the nodes leave PostgreSQL alone; "
          "leases and fencing still run" + ("" if reply.get("changed") else " (it already was)"))
    return OK


def cmd_resume(args: argparse.Namespace, ask: Ask) -> int:
    reply = ask({"type": "resume"})
    print("resumed: failover and switchover enabled" + ("" if reply.get("changed") else " (it was not paused)"))
    return OK


# -- rebuilding a lost arbiter state (arbiter.py --rebuild; pgha.rebuild) -----------------

def add_rebuild_command(sub: Any) -> None:
    rebuild_cmd = sub.add_parser("rebuild", help="confirm the rebuild proposal of an arbiter started "
                                                 "with --rebuild (see `status` for it)")
    rebuild_cmd.add_argument("--confirm", action="store_true", required=True,
                             help="required: this writes the arbiter's state")
    rebuild_cmd.add_argument("--epoch", type=int, required=True, help="the proposed epoch, as shown by status")
    rebuild_cmd.add_argument("--primary", required=True, help="the proposed primary, as shown by status")


def cmd_rebuild(args: argparse.Namespace, ask: Ask) -> int:
    reply = ask({"type": "rebuild", "epoch": args.epoch, "primary": args.primary})
    if reply.get("type") != "ok":
        raise Refused(str(reply.get("error", reply)))
    print(f"state rebuilt: epoch {reply['epoch']}, primary {reply['primary']}; the arbiter serves normally")
    return OK


# -- reload (pgha.reload): the arbiter now, the nodes at their next heartbeat ------------

def add_reload_command(sub: Any) -> None:
    cmd = sub.add_parser("reload", help="the arbiter re-reads its settings and tells every node to re-read "
                                        "its own (like SIGHUP to each daemon)")
    cmd.add_argument("--print-signed", action="store_true",
                     help="print the signed request instead of sending it (a body for POST /reload on a "
                          "node's REST API; valid for auth.WINDOW seconds, once)")


def cmd_reload(args: argparse.Namespace, ask: Ask) -> int:
    reply = ask({"type": "reload"})
    applied = ", ".join(reply.get("applied") or ()) or "none"
    print(f"arbiter reloaded (changed: {applied}); the nodes reload at their next heartbeat "
          f"(generation {reply['reload_generation']})")
    if reply.get("restart_needed"):
        print(f"arbiter settings that need a restart: {', '.join(reply['restart_needed'])}")
    return OK


def rebuild_status_lines(reply: dict[str, Any]) -> list[str]:
    proposal = reply.get("proposal")
    lines = ["REBUILDING: the arbiter lost its state and tells every node to wait"]
    if proposal:
        lines.append(f"proposal: epoch {proposal['epoch']}, primary {proposal['primary']}\n"
                     f"confirm with: python -m pgha.ctl rebuild --confirm --epoch {proposal['epoch']} "
                     f"--primary {proposal['primary']}")
    else:
        lines.append(f"no proposal: {reply.get('proposal_problem')}")
    for name, node in (reply.get("nodes") or {}).items():
        if node is None:
            lines.append(f"  {name}: not heard from")
            continue
        report = node.get("report") or {}
        lines.append(f"  {name}: acted on epoch {node['acted_epoch']}, PostgreSQL {report.get('pg', 'unknown')} "
                     f"{report.get('role') or ''}, last report {node['last_seen_ago']:.1f}s ago")
    return lines


# -- the cluster-wide configuration (pgha.cluster_config; patronictl show-config, edit-config) --

def add_config_commands(sub: Any) -> None:
    sub.add_parser("show-config", help="the cluster-wide PostgreSQL parameters every member runs with")
    cmd = sub.add_parser("edit-config", help="change the cluster-wide PostgreSQL parameters: with -p, or in "
                                             "$EDITOR; shows the change and asks before it is stored")
    cmd.add_argument("-p", "--pg", action="append", default=[], metavar="NAME=VALUE",
                     help="set a parameter (repeatable); VALUE null removes it")
    cmd.add_argument("--force", action="store_true", help="no confirmation (needed when stdin is not a terminal)")
    cmd.set_defaults(wait=0.0)


def cmd_show_config(args: argparse.Namespace, ask: Ask) -> int:
    print(config_text(config_of(ask({"type": "status"}))[0]))
    return OK


def config_of(status: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """(parameters, config_version) from a status reply; Refused when it has none."""
    if not isinstance(status.get("config_version"), int) or not isinstance(status.get("parameters"), dict):
        raise Refused("the arbiter does not say the cluster's configuration (rebuilding its state, or a release "
                      "without edit-config)")
    return status["parameters"], status["config_version"]


def config_text(parameters: dict[str, Any]) -> str:
    """The configuration as show-config prints it and edit-config edits it
    (Patroni's shape: postgresql.parameters)."""
    return json.dumps({"postgresql": {"parameters": parameters}}, indent=2, sort_keys=True)


def cmd_edit_config(args: argparse.Namespace, ask: Ask) -> int:
    status = ask({"type": "status"})
    current, read_version = config_of(status)
    changes = pg_changes(args.pg) if args.pg else edited_changes(current)
    wanted = cluster_config.changed(cluster_config.frozen(current), changes)
    if cluster_config.same(wanted, current):
        print("no change")
        return OK
    problem = cluster_config.parameters_problem(wanted)
    if problem:
        raise Usage(problem)
    print("\n".join(difflib.unified_diff(config_text(current).splitlines(), config_text(wanted).splitlines(),
                                         "before", "after", lineterm="")))
    confirm(args, "Apply these changes?", status)
    reply = ask({"type": "config", "parameters": changes, "version": read_version})
    print(f"configuration version {reply.get('config_version')} stored: every member reloads PostgreSQL at its "
          "next heartbeat; a parameter that needs a restart shows as pending restart in `list` "
          "(then: pgha-ctl restart --pending)")
    return OK


def pg_changes(pairs: list[str]) -> dict[str, Any]:
    """-p NAME=VALUE pairs as changes: numbers and true/false as such (as
    patronictl reads them), null removes, anything else is a string."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise Usage(f"-p takes NAME=VALUE, got {printable(pair)!r}")
        changes[name.strip()] = typed_value(text.strip())
    problem = cluster_config.parameters_problem(changes, removing=True)
    if problem:
        raise Usage(problem)
    return changes


INTEGER = re.compile(r"-?[0-9]+\Z")


def typed_value(text: str) -> Any:
    """An integer, true/false, null (remove) as such; anything else is the
    text as typed (a quoted one without its quotes): 1.10 stays "1.10"."""
    lowered = text.lower()
    if lowered in ("null", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if INTEGER.match(text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def edited_changes(current: dict[str, Any]) -> dict[str, Any]:
    """Open the configuration in $VISUAL/$EDITOR (else vi), as patronictl
    edit-config does; the changes the edit makes (a removed line or null
    removes). The file is read again by name: an editor may save a new one."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor and not _is_tty(sys.stdin):
        raise Usage("edit-config: stdin is not a terminal and no $EDITOR is set: pass -p NAME=VALUE")
    editor = editor or "vi"
    with tempfile.TemporaryDirectory(prefix="pgha-config-") as folder:
        path = os.path.join(folder, "config.json")
        with open(path, "w") as f:
            f.write(config_text(current) + "\n")
        try:
            done = subprocess.run(shlex.split(editor) + [path])
        except (OSError, ValueError) as exc:
            raise Usage(f"cannot run the editor {editor!r}: {exc}: nothing sent") from None
        if done.returncode != 0:
            raise Refused(f"the editor ({editor}) exited with status {done.returncode}: nothing sent")
        try:
            with open(path) as f:
                parameters = json.load(f)["postgresql"]["parameters"]
        except (OSError, ValueError, KeyError, TypeError):
            parameters = None
    if not isinstance(parameters, dict):
        raise Usage('the edited configuration must be JSON of the form {"postgresql": {"parameters": '
                    '{NAME: VALUE, ...}}}: nothing sent')
    problem = cluster_config.parameters_problem(parameters, removing=True)
    if problem:
        raise Usage(f"{problem}: nothing sent")
    changes: dict[str, Any] = {name: None for name in current if name not in parameters}
    changes.update({name: value for name, value in parameters.items() if not cluster_config.same(current.get(name), value)})
    return changes


# -- query: SQL on a member (patronictl query) ------------------------------------------

QUERY_TIMEOUT = 5       # seconds to connect


def add_query_command(sub: Any) -> None:
    cmd = sub.add_parser("query", help="run SQL on a member (found through the arbiter); the password from "
                                       "libpq's PGPASSWORD or pgpass file, never an option")
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("-m", "--member", help="this member")
    which.add_argument("-r", "--role", choices=("primary", "standby", "any"), default="primary",
                       help="the member running as (default %(default)s)")
    text = cmd.add_mutually_exclusive_group(required=True)
    text.add_argument("-c", "--command", dest="sql", help="the SQL")
    text.add_argument("-f", "--file", help="a file with the SQL ('-': stdin)")
    cmd.add_argument("-d", "--dbname", default=os.environ.get("PGDATABASE", "postgres"),
                     help="database (default: $PGDATABASE, else postgres)")
    cmd.add_argument("-U", "--username", default=os.environ.get("PGUSER"),
                     help="user (default: $PGUSER, else libpq's default)")
    cmd.add_argument("--json", action="store_true", help="rows as JSON objects")


def query_target(status: dict[str, Any], member: str | None, role: str) -> tuple[str, str, int]:
    """(member, host, port) to run a query on, from one status snapshot; Refused naming why none fits."""
    nodes = status.get("nodes") or {}
    if member is not None and member not in nodes:
        raise Refused(f"no member {member!r} (members: {', '.join(nodes)})")
    for name in [member] if member else sorted(nodes, key=lambda n: n != status.get("primary")):
        report = (nodes.get(name) or {}).get("report") or {}
        address = report.get("address") or {}
        running_as = report.get("role") if report.get("pg") == "running" else None
        if member is None and (running_as is None or role != "any" and running_as != role
                               or role == "primary" and name != status.get("primary")):
            continue
        if not address.get("host") or not address.get("pg_port"):
            raise Refused(f"{name} has not reported its address")
        return name, str(address["host"]), int(address["pg_port"])
    raise Refused(f"no member runs as {role} now (see pgha-ctl list)")


def cmd_query(args: argparse.Namespace, ask: Ask) -> int:
    if args.file:
        try:
            if args.file == "-":
                sql = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8") as f:
                    sql = f.read()
        except OSError as exc:
            raise Usage(f"--file: {exc.strerror or exc}: {args.file}") from None
    else:
        sql = args.sql
    name, host, port = query_target(ask({"type": "status"}), args.member, args.role)
    import psycopg2     # only here: every other command works without a PostgreSQL client library
    try:
        with psycopg2.connect(host=host, port=port, dbname=args.dbname, user=args.username,
                              connect_timeout=QUERY_TIMEOUT, application_name="pgha-ctl") as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
                columns = [d[0] for d in cur.description] if cur.description else []
                rows = cur.fetchall() if cur.description else []
                done = cur.statusmessage
        conn.close()
    except psycopg2.Error as exc:
        raise Refused(f"query on {name} ({host}:{port}): {' '.join(str(exc).split())}") from None
    if args.json:
        print(json.dumps([dict(zip(columns, row)) for row in rows], indent=1, default=str))
    elif columns:
        print(table(tuple(printable(c) for c in columns),
                    [[printable("NULL" if v is None else str(v)) for v in row] for row in rows]))
    else:
        print(printable(str(done)))
    return OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Ask], int]] = {
    "list": cmd_list, "status": cmd_status, "history": cmd_history, "switchover": cmd_switchover,
    "failover": cmd_failover, "pause": cmd_pause, "resume": cmd_resume, "rebuild": cmd_rebuild,
    "reload": cmd_reload, "flush": cmd_flush, "version": cmd_version, "topology": cmd_topology,
    "query": cmd_query, "reinit": cmd_reinit, "restart": cmd_restart, "show-config": cmd_show_config,
    "edit-config": cmd_edit_config,
}


if __name__ == "__main__":
    sys.exit(main())
