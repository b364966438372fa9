"""Optional TLS on the control ports (the arbiter port, the node-to-node lease link).

Mutual TLS with the cluster's own CA: a server asks every client for a
certificate signed by that CA; a client checks the server's certificate
against it. Hostnames are not checked (members are addressed by IP and the
CA signs only the cluster's members). HMAC signing (auth.py) stays on top:
TLS adds confidentiality, the keys still say who may do what.

    python -m pgha.keys tls --dir DIR --nodes pgsql-1,pgsql-2 [--hosts 10.0.0.1,...]

writes DIR/ca.crt, DIR/ca.key (keep the CA key offline), and MEMBER.crt /
MEMBER.key for arbiter, each node and operator (keys 0600, no passphrase).
"""
from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any, Sequence

# ssl is imported only by the context builders below, i.e. only when TLS is
# configured: it loads the system's OpenSSL (libcrypto + libssl, ~4 MB of
# resident memory per daemon) that a daemon without TLS has no use for.
if TYPE_CHECKING:
    import ssl

DAYS = 3650


class TLSError(Exception):
    """A TLS file is missing, unsafe or unusable; the message names it (never its content)."""


def _check_key_file(path: str) -> None:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise TLSError(f"TLS key file {path}: {exc.strerror}") from None
    if info.st_mode & 0o077:
        raise TLSError(f"TLS key file {path} is readable by group or others (mode "
                       f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")


def _load(context: ssl.SSLContext, cert: str, key: str, ca: str) -> ssl.SSLContext:
    import ssl
    _check_key_file(key)
    try:
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load TLS files (cert {cert}, key {key}, CA {ca}): "
                       f"{getattr(exc, 'strerror', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED     # mutual: both ends show a CA-signed certificate
    return context


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """For a server: requires a client certificate signed by `ca`."""
    import ssl
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """For a client: verifies the server against `ca` (not its hostname), shows its own certificate."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    return _load(context, cert, key, ca)


def settings_problem(settings: Any) -> str | None:
    """A settings check: the three tls_* settings go together."""
    given = [bool(getattr(settings, n, None)) for n in ("tls_cert_file", "tls_key_file", "tls_ca_file")]
    if any(given) and not all(given):
        return "settings 'tls_cert_file', 'tls_key_file' and 'tls_ca_file' go together (all or none)"
    return None


def enabled(settings: Any) -> bool:
    """Whether a member's settings turn TLS on (settings_problem: all three tls_* or none)."""
    return bool(getattr(settings, "tls_cert_file", None))


def contexts(settings: Any) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) contexts from a member's settings; (None, None) when TLS is off."""
    if not enabled(settings):
        return None, None
    files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    return server_context(*files), client_context(*files)


# -- generating certificates (openssl command-line tool) --------------------------

def _openssl(*args: str) -> None:
    try:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TLSError("the openssl command is not installed (apt-get install openssl)") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise TLSError(f"openssl {args[0]} failed: {last}")


def _new_key(path: str) -> None:
    # Created 0600 before openssl writes into it: never readable by others, even for a moment.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    _openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", path)
    os.chmod(path, 0o600)


def _san(hosts: Sequence[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def generate(folder: str, members: Sequence[str], hosts: Sequence[str] = ()) -> list[str]:
    """A CA and one certificate per member in `folder`; refuses to overwrite any."""
    planned = ["ca"] + list(members)
    paths = [os.path.join(folder, m + ext) for m in planned for ext in (".crt", ".key")]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        raise TLSError(f"{existing[0]} already exists: remove the old certificates or choose another --dir")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    ca_crt, ca_key = os.path.join(folder, "ca.crt"), os.path.join(folder, "ca.key")
    _new_key(ca_key)
    _openssl("req", "-new", "-x509", "-key", ca_key, "-out", ca_crt, "-days", str(DAYS),
             "-subj", "/CN=pgha cluster CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    san = _san(["127.0.0.1", "localhost", *hosts])
    written = [ca_crt]
    for member in members:
        crt, key = os.path.join(folder, member + ".crt"), os.path.join(folder, member + ".key")
        _new_key(key)
        with tempfile.TemporaryDirectory() as tmp:
            csr, ext = os.path.join(tmp, "req.csr"), os.path.join(tmp, "ext.cnf")
            with open(ext, "w") as f:
                f.write(f"basicConstraints=CA:FALSE\nsubjectAltName={san}\n"
                        "extendedKeyUsage=serverAuth,clientAuth\n")
            _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={member}")
            _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
                     "-out", crt, "-days", str(DAYS), "-extfile", ext)
        written += [crt, key]
    serial = os.path.join(folder, "ca.srl")
    if os.path.exists(serial):
        os.unlink(serial)
    return written
