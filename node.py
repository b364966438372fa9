#!/usr/bin/env python3
"""The node daemon: runs on each database host beside PostgreSQL.

    python node.py [--settings FILE] [--validate]
"""
import os
import signal
import sys

from pgha import logs as logger
from pgha import cli, settings as settings_mod

DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_settings.py")


def main(argv=None):
    settings, args = cli.load_settings_and_flags("node", "PostgreSQL HA node daemon", DEFAULTS,
                                                 settings_mod.NODE_SPECS, settings_mod.NODE_CHECKS, argv=argv,
                                                 flags=(cli.VALIDATE,))
    if args.validate:
        from pgha import validate
        from pgha.postgres import Postgres
        return cli.validated("node", settings, args, lambda s: validate.node_problems(s, Postgres))
    cli.without_system_openssl(settings)     # first: before hashlib or psycopg2 is imported
    from pgha import keys
    node_keys = cli.load_keys("node", keys.node_keys, settings.key_file, settings.name, settings.cluster_name)
    cli.load_tls("node", settings)     # one clear line now for an unsafe or unusable TLS file
    log = logger.setup(settings.name, settings.log_level, settings.log_file)
    try:
        import psycopg2  # noqa: F401  (checked here for one clear line, not a traceback)
    except ImportError:
        log.error("the Python package psycopg2 is missing: pip install -r requirements.txt")
        return 1
    from pgha.node import Node
    from pgha.postgres import Postgres, PostgresError
    from pgha.store import NodeStateError
    try:
        loader = cli.settings_loader(DEFAULTS, settings_mod.NODE_SPECS, settings_mod.NODE_CHECKS,
                                     args.settings)
        node = Node(settings, Postgres(settings), node_keys, settings_loader=loader)
    except PostgresError as exc:
        log.error("%s", exc)
        return 1

    def stop(signum, _frame):
        log.info("stopping on %s", signal.Signals(signum).name)
        node.stop()

    def reload_on_hup(_signum, _frame):
        node.request_reload()   # applied between two heartbeats, on the HA loop's thread

    signal.signal(signal.SIGHUP, reload_on_hup)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.run()
    except (OSError, NodeStateError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
