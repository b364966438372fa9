"""Operator commands against the arbiter.

    python -m pgha.ctl [--arbiter HOST:PORT] status
    python -m pgha.ctl [--arbiter HOST:PORT] switchover [NODE]
"""
import argparse
import json
import sys

from pgha import protocol


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgha.ctl", description="Ask the arbiter")
    parser.add_argument("--arbiter", default="127.0.0.1:5430", help="HOST:PORT (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the cluster's decision and each node's last report")
    switch = sub.add_parser("switchover", help="planned hand-over to the standby (or NODE)")
    switch.add_argument("node", nargs="?")
    args = parser.parse_args(argv)
    host, _, port = args.arbiter.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--arbiter must be HOST:PORT, got {args.arbiter!r}")
    message = {"type": "status"} if args.command == "status" else {"type": "switchover", "to": args.node}
    try:
        reply = protocol.call(host, int(port), message, timeout=5.0)
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
            clone = report.get("clone_progress") or {}
            cloning = f", cloning {clone.get('percent')}% of {clone.get('total_bytes', 0) / 2**20:.0f} MB" \
                if clone else ""
            print(f"  {name}: {report.get('pg', 'unknown')} {report.get('role') or ''}"
                  f"{'' if seen is None else f', last report {seen:.1f}s ago'}"
                  f"{'' if action is None else f', last action {action}'}{cloning}")
        if "-v" in (argv or sys.argv):
            print(json.dumps(reply, indent=1))
    else:
        print(f"switchover to {reply['switchover_to']} requested: the primary hands over at its next heartbeat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
