"""Readiness for systemd's Type=notify: "READY=1" over $NOTIFY_SOCKET.

The few lines of sd_notify(3) a daemon needs, without a dependency: one
datagram on the AF_UNIX socket systemd names in NOTIFY_SOCKET (a path, or
"@name" in the abstract namespace). Without NOTIFY_SOCKET (not under
systemd, or Type=simple) nothing is sent.

ready() sends once: it then removes NOTIFY_SOCKET from the environment, as
sd_notify's unset_environment does, so the processes started later
(PostgreSQL, which also speaks this protocol, and the callbacks) do not
inherit it, and later calls cost one dictionary look-up.
"""
from __future__ import annotations

import os
import socket
from typing import MutableMapping

from pgha import logs

log = logs.get("sdnotify")

ENV = "NOTIFY_SOCKET"


def notify(state: str, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager. False when
    NOTIFY_SOCKET is unset or names an address this code cannot reach."""
    address = environ.get(ENV, "")
    if address.startswith("@"):
        address = "\0" + address[1:]    # Linux abstract namespace
    elif not address.startswith("/"):
        return False    # unset, or a vsock address (systemd in a VM): not handled
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not tell systemd %s through %s=%s: %s", state, ENV, environ.get(ENV), exc)
        return False
    return True


def ready(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Say READY=1 once per process (see the module's docstring)."""
    if ENV not in environ:
        return False
    sent = notify("READY=1", environ)
    environ.pop(ENV, None)
    return sent
