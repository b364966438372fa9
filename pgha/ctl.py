"""Operator commands against the arbiter.

    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] status
    python -m pgha.ctl [--arbiter HOST:PORT] [--key-file FILE] switchover [NODE]

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
    message = {"type": "status"} if args.command == "status" else {"type": "switchover", "to": args.node}
    try:
        reply = protocol.call(host, int(port), message, timeout=5.0, credential=credential)
    except (OSError, protocol.ProtocolError) as exc:
        print(f"ctl: arbiter {args.arbiter} unreachable: {exc}", file=sys.stderr)
        return 1
    if reply.get("type") == "error":
        print(f"ctl: {reply['error']}", file=sys.stderr)
        return 1
    if args.command == "status":
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


if __name__ == "__main__":
    sys.exit(main())
