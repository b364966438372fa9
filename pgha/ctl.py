"""Operator commands against the arbiter (console script `pgha-ctl`, or `python -m pgha.ctl`).

    pgha-ctl [--arbiter HOST:PORT] [--key-file FILE] [--cluster NAME] COMMAND
      list [--json] [--watch [SECONDS]]    members as a table (like patronictl list)
      status [-v]                          the decision and each node's last report
      history [--json] [--limit N]         the arbiter's durable event log
      switchover [--to NODE] [--at TIME]   planned hand-over (TIME: ISO 8601 or +30s, +5m)
      failover --to NODE [--force]         manual failover (refused if NODE could lose data)
      pause | resume                       maintenance mode: no failover, nodes leave PostgreSQL alone
      rebuild --confirm --epoch N --primary NODE

      reload [--print-signed]              re-read the settings: the arbiter, then the nodes

--cluster NAME: which of a many-cluster arbiter's clusters (its setting
`clusters`) a command is about; without it, the arbiter's home cluster
(its cluster_name). On a many-cluster arbiter `list` and `status` without
--cluster show every cluster (list with a Cluster column).

The credential is the operator's key file (operator.keys from pgha-keys
generate), or the reader's (or a node's) for list, status and history;
--key-file, else the environment variable PGHA_OPERATOR_KEY_FILE. When the
arbiter port runs TLS (pgha.tls), --tls-ca/--tls-cert/--tls-key (or
PGHA_TLS_CA/PGHA_TLS_CERT/PGHA_TLS_KEY) name the CA and the operator's certificate.

Exit codes: 0 done; 1 refused by the arbiter or arbiter unreachable;
2 usage error or no usable credential. Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from pgha import keys, protocol, tls

KEY_FILE_ENV = "PGHA_OPERATOR_KEY_FILE"
TLS_OPTIONS = (("ca", "PGHA_TLS_CA", "cluster's CA certificate"), ("cert", "PGHA_TLS_CERT", "operator's certificate"),
               ("key", "PGHA_TLS_KEY", "operator's certificate key (0600)"))
OK, REFUSED, USAGE = 0, 1, 2
MB = 1024 * 1024


class Refused(Exception):
    """The arbiter refused or could not be reached: exit code 1, one line."""


class Usage(Exception):
    """A bad argument found after parsing (e.g. --at): exit code 2, one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgha-ctl", description="Ask the arbiter")
    parser.add_argument("--arbiter", default="127.0.0.1:5430", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--key-file", default=os.environ.get(KEY_FILE_ENV),
                        help=f"operator (or reader) key file (default: ${KEY_FILE_ENV})")
    parser.add_argument("--cluster", help="the cluster (on an arbiter serving several; default: its home "
                                          "cluster; list and status: every cluster)")
    for option, env, what in TLS_OPTIONS:
        parser.add_argument(f"--tls-{option}", default=os.environ.get(env),
                            help=f"TLS: the {what} (default: ${env}); all three or none")
    sub = parser.add_subparsers(dest="command", required=True)
    lister = sub.add_parser("list", help="the members as a table")
    lister.add_argument("--json", action="store_true", help="machine-readable output")
    lister.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status = sub.add_parser("status", help="the cluster's decision and each node's last report")
    status.add_argument("-v", action="store_true", help="also the arbiter's whole reply as JSON")
    history = sub.add_parser("history", help="the arbiter's event log (failovers, switchovers, pauses)")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=20, help="the last N events (default %(default)s)")
    switch = sub.add_parser("switchover", help="planned hand-over to the standby (or --to NODE)")
    switch.add_argument("node", nargs="?", help=argparse.SUPPRESS)    # the old positional form
    switch.add_argument("--to", help="the node to hand over to (default: the standby)")
    switch.add_argument("--at", help="when: ISO 8601 time (UTC unless it has an offset) or +30s, +5m, +1h")
    fail = sub.add_parser("failover", help="manual failover to NODE (a switchover while the primary lives)")
    fail.add_argument("--to", required=True, help="the node to promote")
    fail.add_argument("--force", action="store_true",
                      help="promote it even if it may lack acknowledged commits (DATA LOSS)")
    sub.add_parser("pause", help="maintenance mode on: no failover; nodes leave PostgreSQL alone")
    sub.add_parser("resume", help="maintenance mode off")
    add_rebuild_command(sub)
    add_reload_command(sub)
    return parser


def main(argv: list[str] | None = None,
         call: Callable[..., dict[str, Any]] | None = None) -> int:
    """call(host, port, message, timeout=, credential=): protocol.call unless a test passes another."""
    parser = build_parser()
    args = parser.parse_args(argv)
    host, _, port = args.arbiter.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--arbiter must be HOST:PORT, got {args.arbiter!r}")
    if not args.key_file:
        parser.error(f"no credential: pass --key-file or set {KEY_FILE_ENV}")
    try:
        credential = keys.client_credential(args.key_file)
    except keys.KeyFileError as exc:
        print(f"ctl: {exc}", file=sys.stderr)
        return USAGE
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        parser.error("--tls-ca, --tls-cert and --tls-key go together (all or none)")
    extra: dict[str, Any] = {}
    if all(given):
        try:
            extra["tls_context"] = tls.client_context(args.tls_cert, args.tls_key, args.tls_ca)
        except tls.TLSError as exc:
            print(f"ctl: {exc}", file=sys.stderr)
            return USAGE
    if args.command == "reload" and args.print_signed:     # a body for POST /reload: nothing is sent
        request = about({"v": protocol.VERSION, "type": "reload"}, args.cluster)
        print(json.dumps(credential.sign(request)))
        return OK
    send = call or protocol.call

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        message = about(message, args.cluster)
        try:
            reply = send(host, int(port), message, timeout=5.0, credential=credential, **extra)
        except (OSError, protocol.ProtocolError) as exc:
            raise Refused(f"arbiter {args.arbiter} unreachable: {exc}") from None
        if reply.get("type") == "error":
            raise Refused(str(reply.get("error")))
        return reply

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


COLUMNS = ("Member", "Host", "Role", "State", "TL", "Lag in MB", "Lease left", "Epoch", "Last action")


def list_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per member from the arbiter's status reply (what --json prints)."""
    nodes = status.get("nodes") or {}
    primary_name = status.get("primary")
    primary = (nodes.get(primary_name) or {}).get("report") or {} if primary_name else {}
    primary_lsn = primary.get("lsn") if primary.get("pg") == "running" and primary.get("role") == "primary" \
        else None
    rows = []
    for name, node in nodes.items():
        node = node or {}
        report = node.get("report") or {}
        running = report.get("pg") == "running"
        role = report.get("role") if running else None
        lag = None
        if role == "standby" and primary_lsn is not None:
            lag = max(0, primary_lsn - max(report.get("lsn") or 0, report.get("receive_lsn") or 0))
        leases = report.get("lease_remaining")
        address = report.get("address") or {}
        rows.append({
            "member": name,
            "host": f"{address['host']}:{address['pg_port']}" if address.get("host") else None,
            "role": _role(name, role, primary_name, primary.get("sync_standby")),
            "state": ("streaming" if report.get("receiver") == "streaming" else report.get("pg", "unknown"))
            if report else "unknown",
            "timeline": report.get("timeline"),
            "lag_bytes": lag,
            "lease_left": max(leases.values()) if leases else None,
            "epoch": node.get("epoch"),
            "last_action": report.get("last_action"),
            "last_seen_ago": node.get("last_seen_ago"),
        })
    return rows


def _role(name: str, running_as: str | None, primary: str | None, sync_name: str | None) -> str:
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
                           "switchover_scheduled": status.get("switchover_scheduled"), "members": rows},
                          indent=1)
    return header + "\n" + table(COLUMNS, list_cells(rows))


def list_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["member"], r["host"] or "-", r["role"], r["state"], _show(r["timeline"]),
             "-" if r["lag_bytes"] is None else f"{r['lag_bytes'] / MB:.1f}",
             "-" if r["lease_left"] is None else f"{r['lease_left']:.1f}s",
             _show(r["epoch"]), r["last_action"] or "-"] for r in rows]


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
    return line + " +"


def table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([rule, line(columns), rule, *(line(r) for r in rows), rule])


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


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
    for name, node in reply["nodes"].items():
        report = node.get("report") or {}
        seen = node.get("last_seen_ago")
        action = report.get("last_action")
        clone = report.get("clone_progress") or {}
        cloning = f", cloning {clone.get('percent')}% of {clone.get('total_bytes', 0) / MB:.0f} MB" if clone else ""
        print(f"  {name}: {report.get('pg', 'unknown')} {report.get('role') or ''}"
              f"{'' if seen is None else f', last report {seen:.1f}s ago'}"
              f"{'' if action is None else f', last action {action}'}{cloning}")
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
    target = args.to or args.node
    message: dict[str, Any] = {"type": "switchover", "to": target}
    if args.at:
        message["at"] = parse_at(args.at, time.time())
    reply = ask(message)
    if args.at:
        print(f"switchover to {reply.get('switchover_to') or 'the standby'} scheduled at {reply.get('at')} "
              "(held in the arbiter's memory: an arbiter restart forgets it)")
    else:
        print(f"switchover to {reply['switchover_to']} requested: the primary hands over at its next heartbeat")
    return OK


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
    if args.force:
        print(f"WARNING: forced failover to {args.to}: if it is not promotable it may lack acknowledged "
              "commits, which are then lost. The arbiter still waits for the old primary's lease to run out.",
              file=sys.stderr)
    reply = ask({"type": "failover", "to": args.to, "force": bool(args.force)})
    if reply.get("how") == "switchover":
        print(f"the primary is alive: switching over to {args.to} (the primary hands over at its next heartbeat)")
    else:
        print(f"failover to {args.to} requested{' (FORCED)' if reply.get('forced') else ''}: it is promoted once "
              "the old primary's lease has run out")
    return OK


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


COMMANDS: dict[str, Callable[[argparse.Namespace, Ask], int]] = {
    "list": cmd_list, "status": cmd_status, "history": cmd_history, "switchover": cmd_switchover,
    "failover": cmd_failover, "pause": cmd_pause, "resume": cmd_resume, "rebuild": cmd_rebuild,
    "reload": cmd_reload,
}


if __name__ == "__main__":
    sys.exit(main())
