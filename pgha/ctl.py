"""Operator commands against the arbiter.

    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] status
    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] switchover [NODE]
    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] rebuild --confirm --epoch N --primary NODE
    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] reload [--print-signed]
The credential is the operator's key file (operator.keys from pgha-keys
generate), or the reader's for status only; --key-file, else the
environment variable PGHA_OPERATOR_KEY_FILE.
"""
import argparse
import json
import os
import sys

from pgha import keys, protocol

KEY_FILE_ENV = "PGHA_OPERATOR_KEY_FILE"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgha.ctl", description="Ask the arbiter")
    parser.add_argument("--arbiter", default="127.0.0.1:5430", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--key-file", default=os.environ.get(KEY_FILE_ENV),
                        help=f"operator (or reader) key file (default: ${KEY_FILE_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the cluster's decision and each node's last report")
    switch = sub.add_parser("switchover", help="planned hand-over to the standby (or NODE)")
    switch.add_argument("node", nargs="?")
    add_rebuild_command(sub)
    add_reload_command(sub)
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
        return 2
    if args.command == "rebuild":
        return rebuild(parser, args, host, int(port), credential)
    if args.command == "reload":
        return reload(args, host, int(port), credential)
    message = {"type": "status"} if args.command == "status" else {"type": "switchover", "to": args.node}
    try:
        reply = protocol.call(host, int(port), message, timeout=5.0, credential=credential)
    except (OSError, protocol.ProtocolError) as exc:
        print(f"ctl: arbiter {args.arbiter} unreachable: {exc}", file=sys.stderr)
        return 1
    if reply.get("type") == "error":
        print(f"ctl: {reply['error']}", file=sys.stderr)
        return 1
    if args.command == "status" and reply.get("rebuilding"):
        print_rebuild_status(reply)
    elif args.command == "status":
        print(f"epoch {reply['epoch']}, primary {reply['primary']}, standby "
              f"{'promotable' if reply['promotable'] else 'NOT promotable'}")
        for name, node in reply["nodes"].items():
            report = node.get("report") or {}
            seen = node.get("last_seen_ago")
            action = report.get("last_action")
            print(f"  {name}: {report.get('pg', 'unknown')} {report.get('role') or ''}"
                  f"{'' if seen is None else f', last report {seen:.1f}s ago'}"
                  f"{'' if action is None else f', last action {action}'}")
        if "-v" in (argv or sys.argv):
            print(json.dumps(reply, indent=1))
    else:
        print(f"switchover to {reply['switchover_to']} requested: the primary hands over at its next heartbeat")
    return 0


# -- rebuilding a lost arbiter state (arbiter.py --rebuild; pgha.rebuild) -----------------

def add_rebuild_command(sub):
    rebuild_cmd = sub.add_parser("rebuild", help="confirm the rebuild proposal of an arbiter started "
                                                 "with --rebuild (see `status` for it)")
    rebuild_cmd.add_argument("--confirm", action="store_true", required=True,
                             help="required: this writes the arbiter's state")
    rebuild_cmd.add_argument("--epoch", type=int, required=True, help="the proposed epoch, as shown by status")
    rebuild_cmd.add_argument("--primary", required=True, help="the proposed primary, as shown by status")


def rebuild(parser, args, host, port, credential):
    message = {"type": "rebuild", "epoch": args.epoch, "primary": args.primary}
    try:
        reply = protocol.call(host, port, message, timeout=5.0, credential=credential)
    except (OSError, protocol.ProtocolError) as exc:
        print(f"ctl: arbiter {args.arbiter} unreachable: {exc}", file=sys.stderr)
        return 1
    if reply.get("type") != "ok":
        print(f"ctl: {reply.get('error', reply)}", file=sys.stderr)
        return 1
    print(f"state rebuilt: epoch {reply['epoch']}, primary {reply['primary']}; the arbiter serves normally")
    return 0


# -- reload (pgha.reload): the arbiter now, the nodes at their next heartbeat ------------

def add_reload_command(sub):
    cmd = sub.add_parser("reload", help="the arbiter re-reads its settings and tells every node to re-read "
                                        "its own (like SIGHUP to each daemon)")
    cmd.add_argument("--print-signed", action="store_true",
                     help="print the signed request instead of sending it (a body for POST /reload on a "
                          "node's REST API; valid for auth.WINDOW seconds, once)")


def reload(args, host, port, credential):
    message = {"type": "reload"}
    if args.print_signed:
        print(json.dumps(credential.sign({"v": protocol.VERSION, **message})))
        return 0
    try:
        reply = protocol.call(host, port, message, timeout=5.0, credential=credential)
    except (OSError, protocol.ProtocolError) as exc:
        print(f"ctl: arbiter {args.arbiter} unreachable: {exc}", file=sys.stderr)
        return 1
    if reply.get("type") != "ok":
        print(f"ctl: {reply.get('error', reply)}", file=sys.stderr)
        return 1
    applied = ", ".join(reply.get("applied") or ()) or "none"
    print(f"arbiter reloaded (changed: {applied}); the nodes reload at their next heartbeat "
          f"(generation {reply['reload_generation']})")
    if reply.get("restart_needed"):
        print(f"arbiter settings that need a restart: {', '.join(reply['restart_needed'])}")
    return 0


def print_rebuild_status(reply):
    proposal = reply.get("proposal")
    print("REBUILDING: the arbiter lost its state and tells every node to wait")
    if proposal:
        print(f"proposal: epoch {proposal['epoch']}, primary {proposal['primary']}\n"
              f"confirm with: python -m pgha.ctl rebuild --confirm --epoch {proposal['epoch']} "
              f"--primary {proposal['primary']}")
    else:
        print(f"no proposal: {reply.get('proposal_problem')}")
    for name, node in (reply.get("nodes") or {}).items():
        if node is None:
            print(f"  {name}: not heard from")
            continue
        report = node.get("report") or {}
        print(f"  {name}: acted on epoch {node['acted_epoch']}, PostgreSQL {report.get('pg', 'unknown')} "
              f"{report.get('role') or ''}, last report {node['last_seen_ago']:.1f}s ago")


if __name__ == "__main__":
    sys.exit(main())
