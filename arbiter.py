#!/usr/bin/env python3
"""The arbiter: decides which node is primary and keeps that decision on disk.

    python arbiter.py [--settings FILE] [--init | --rebuild] [--cluster NAME] [--validate]

--init on a new cluster only; without it a missing state file stops the
arbiter (README: Arbiter state loss). With the setting `clusters` (many
clusters, pgha.clusters) --init and --rebuild apply to every cluster whose
state is missing, or with --cluster NAME to that one only.
"""
import os
import signal
import sys
import threading

from pgha import logs as logger
from pgha import arbiter_backend as backend, cli, clusters, keys, limits, settings as settings_mod
from pgha import sdnotify
from pgha.arbiter import ArbiterServer, StateFileError, service_verifier

DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arbiter_settings.py")


def main(argv=None):
    settings, flags = cli.load_settings_and_flags(
        "arbiter", "PostgreSQL HA arbiter", DEFAULTS, settings_mod.ARBITER_SPECS, settings_mod.ARBITER_CHECKS,
        argv=argv, flags=(("--init", "create the state (epoch 1, initial_primary) if there is none: a new cluster"),
                          ("--rebuild", "the state was lost: rebuild it from the nodes' reports, with an "
                                        "operator's confirmation (python -m pgha.ctl rebuild)"),
                          ("--cluster", "--init/--rebuild this cluster only (setting clusters); default: every "
                                        "cluster whose state is missing", "NAME"), cli.VALIDATE))
    if flags.validate:
        from pgha import validate
        return cli.validated("arbiter", settings, flags, validate.arbiter_problems)
    if flags.init and flags.rebuild:
        print("arbiter: --init and --rebuild exclude each other", file=sys.stderr)
        return 2
    if flags.cluster and not (flags.init or flags.rebuild):
        print("arbiter: --cluster goes with --init or --rebuild", file=sys.stderr)
        return 2
    specs = clusters.served(settings)
    keyring = cli.load_keys("arbiter", keys.arbiter_keys, settings.key_file, list(clusters.members(specs)))
    tls_server = cli.load_tls("arbiter", settings)[0]
    log = logger.setup("arbiter", settings.log_level, settings.log_file)
    limits.raise_open_files_limit()     # a connection flood must meet the connection cap, not EMFILE
    leadership = None
    try:
        arbiters = backend.build(settings, specs, init=flags.init, rebuild=flags.rebuild, only=flags.cluster)
        service, leadership = backend.serve(arbiters, settings)
        server = ArbiterServer(service, settings.listen_host, settings.listen_port,
                               idle_timeout=max(10.0, 20 * settings.heartbeat_interval),
                               verifier=service_verifier(keyring, specs, settings.cluster_name))
        server.tls_context = tls_server
    except StateFileError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.listen_host, settings.listen_port, exc.strerror)
        return 1

    stopping_on = []

    def stop(signum, _frame):       # no lock, no I/O here: the loop returns and main() steps down
        stopping_on.append(signum)
        server.stop_soon()

    def reload_on_hup(_signum, _frame):   # off the signal handler: it takes the arbiter's lock
        threading.Thread(target=service.reload_settings, name="reload", daemon=True).start()

    service.settings_loader = cli.settings_loader(DEFAULTS, settings_mod.ARBITER_SPECS,
                                                  settings_mod.ARBITER_CHECKS, flags.settings)
    signal.signal(signal.SIGHUP, reload_on_hup)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if len(specs) == 1:
        log.info("listening on %s:%s for nodes %s", settings.listen_host, settings.listen_port,
                 ", ".join(next(iter(specs.values())).nodes))
    else:
        log.info("listening on %s:%s for %d clusters: %s", settings.listen_host, settings.listen_port,
                 len(specs), service)
    if leadership is not None:
        leadership.start()
    sdnotify.ready()    # systemd (Type=notify): listening, its state loaded
    server.wake_on_signals()    # a SIGTERM taken by another thread still wakes the loop
    try:
        server.serve_forever()
    finally:
        if stopping_on:
            log.info("stopping on %s", signal.Signals(stopping_on[0]).name)
        if leadership is not None:
            leadership.stop()       # another arbiter takes over now, not after a lease TTL
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
