"""Run before an etcd-backed arbiter of docker-compose.etcd.yml starts: the
containers start together, and the arbiter stops at once when etcd does not
answer yet (or, without --init, when there is no decision yet).

    python3 docker/await_etcd.py SETTINGS [--state] [--timeout SECONDS]

Waits until the arbiter's etcd answers and, with --state, until it holds the
cluster's decision (the first arbiter made it). Exit 0 when so, 1 (one line
on stderr) after the timeout.
"""
import argparse
import sys
import time

sys.path.insert(0, "/app")

from pgha import arbiter_backend, settings as settings_mod   # noqa: E402
from pgha.store import StateStoreError                        # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings")
    parser.add_argument("--state", action="store_true", help="also wait for the decision to exist")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    settings = settings_mod.load("/app/arbiter_settings.py", settings_mod.ARBITER_SPECS, args.settings,
                                 settings_mod.ARBITER_CHECKS)
    store = arbiter_backend.make_store(settings)
    deadline = time.monotonic() + args.timeout
    problem = "no answer yet"
    while time.monotonic() < deadline:
        try:
            if store.load() is not None or not args.state:
                return 0
            problem = f"{store} holds no decision yet"
        except StateStoreError as exc:
            problem = str(exc)
        time.sleep(0.5)
    print(f"await_etcd: not ready after {args.timeout:.0f} s: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
