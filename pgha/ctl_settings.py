"""Where pgha-ctl finds what the command line does not say: the arbiters'
addresses, the key file, the cluster and the TLS files. The command line
first, then the environment, then the settings file:

    option         environment                                settings file
    --arbiter      PGHA_ARBITERS (HOST:PORT,HOST:PORT)        arbiters = HOST:PORT, HOST:PORT
    --key-file     PGHA_KEY_FILE (or PGHA_OPERATOR_KEY_FILE)  key_file = PATH
    --cluster      PGHA_CLUSTER                               cluster = NAME
    --tls-ca ...   PGHA_TLS_CA, PGHA_TLS_CERT, PGHA_TLS_KEY   tls_ca = PATH (tls_cert, tls_key)

The settings file is $PGHA_CTL_CONFIG, else $XDG_CONFIG_HOME/pgha/ctl, else
~/.config/pgha/ctl (absent: nothing from it). One `name = value` a line, `#`
starts a comment. It is read, never run, and refused when others than its
owner may write it (it names the key the operator signs with).
"""
from __future__ import annotations

import os
import stat
from typing import Mapping

from pgha import arbiter_link, files

DEFAULT_ARBITER = "127.0.0.1:5430"
CONFIG_ENV = "PGHA_CTL_CONFIG"
# setting -> the environment variables that give it, the first set wins
ENVIRONMENT = {
    "arbiters": ("PGHA_ARBITERS",),
    "key_file": ("PGHA_KEY_FILE", "PGHA_OPERATOR_KEY_FILE"),
    "cluster": ("PGHA_CLUSTER",),
    "tls_ca": ("PGHA_TLS_CA",),
    "tls_cert": ("PGHA_TLS_CERT",),
    "tls_key": ("PGHA_TLS_KEY",),
}
MAX_FILE = 64 * 1024


class SettingsError(Exception):
    """A settings file or value pgha-ctl cannot use: one line, exit code 2."""


def config_path(environ: Mapping[str, str]) -> tuple[str, bool]:
    """(the settings file, whether the environment named it: then it must exist)."""
    named = environ.get(CONFIG_ENV)
    if named:
        return named, True
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pgha", "ctl"), False


def read_file(path: str, required: bool) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)   # a planted FIFO must not hang ctl
    except FileNotFoundError:
        if required:
            raise SettingsError(f"{CONFIG_ENV}={path}: no such file") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"settings file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SettingsError(f"settings file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        untrusted = files.untrusted_reason(os.fstat(f.fileno()))     # the file opened, not the path again
        if untrusted:
            raise SettingsError(f"settings file {path} {untrusted}: chown it to root or this user "
                                f"and chmod go-w {path}")
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise SettingsError(f"settings file {path} is larger than {MAX_FILE} bytes")
    values: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = (part.strip() for part in line.partition("="))
        if not sep or name not in ENVIRONMENT:
            raise SettingsError(f"settings file {path} line {number}: expected `name = value` with a name "
                                f"among {', '.join(ENVIRONMENT)}")
        values[name] = value
    return values


def resolve(given: Mapping[str, str | None], environ: Mapping[str, str]) -> dict[str, str | None]:
    """Each setting from the command line (`given`), else the environment,
    else the settings file (read only when something is still missing)."""
    found: dict[str, str | None] = {}
    from_file: dict[str, str] | None = None
    for name, variables in ENVIRONMENT.items():
        value = given.get(name) or next((environ[v] for v in variables if environ.get(v)), None)
        if value is None:
            if from_file is None:
                from_file = read_file(*config_path(environ))
            value = from_file.get(name) or None
        found[name] = value
    return found


def addresses(text: str | None) -> list[tuple[str, int]]:
    """The arbiters from "HOST:PORT,HOST:PORT" (the default when None)."""
    listed = [part.strip() for part in (text or DEFAULT_ARBITER).split(",") if part.strip()]
    if not listed:
        raise SettingsError("no arbiter address")
    try:
        return [arbiter_link.parse_address(part) for part in listed]
    except ValueError as exc:
        raise SettingsError(f"--arbiter: {exc}") from None
