#!/usr/bin/env python3
"""The arbiter: decides which node is primary and keeps that decision on disk.

    python arbiter.py [--settings FILE]
"""
import os
import signal
import sys

from pgha import logs as logger
from pgha import cli, keys, settings as settings_mod
from pgha.arbiter import Arbiter, ArbiterServer, StateFileError, verifier

DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arbiter_settings.py")


def main(argv=None):
    settings = cli.load_settings("arbiter", "PostgreSQL HA arbiter", DEFAULTS, settings_mod.ARBITER_SPECS,
                                 settings_mod.ARBITER_CHECKS, argv=argv)
    keyring = cli.load_keys("arbiter", keys.arbiter_keys, settings.key_file, settings.nodes)
    log = logger.setup("arbiter", settings.log_level, settings.log_file)
    try:
        arbiter = Arbiter(settings)
        server = ArbiterServer(arbiter, settings.listen_host, settings.listen_port,
                               idle_timeout=max(10.0, 20 * settings.heartbeat_interval),
                               verifier=verifier(keyring, settings.nodes))
    except StateFileError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.listen_host, settings.listen_port, exc.strerror)
        return 1

    def stop(signum, _frame):
        log.info("stopping on %s", signal.Signals(signum).name)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s:%s for nodes %s", settings.listen_host, settings.listen_port,
             ", ".join(settings.nodes))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
