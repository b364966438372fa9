"""cli.without_system_openssl: the node daemon without TLS maps no system
OpenSSL, signs byte-identically, and compares MACs in constant time.

Each case runs in a fresh interpreter: the choice is made before hashlib,
ssl or psycopg2 is first imported, which pytest's own process already did."""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgha import auth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = bytes(range(32))
MESSAGE = {"type": "report", "from": "pgsql-1", "ts": 1700000000.125, "nonce": "ab" * 16,
           "epoch": 7, "lsn": "0/3000060", "note": "\u00e9\u4e2d", "nested": {"b": [1, 2.5, None], "a": True}}

PRELUDE = """
import json, sys
from pgha import cli

class Settings:
    tls_cert_file = TLS_CERT
    system_openssl = SYSTEM_OPENSSL
"""


def run(body, tls_cert=None, system_openssl=False):
    """Runs PRELUDE + body in a fresh interpreter from the worktree; its stdout as JSON."""
    code = PRELUDE.replace("TLS_CERT", repr(tls_cert)).replace("SYSTEM_OPENSSL", repr(system_openssl)) \
        + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def system_openssl_mapped():
    """Python source for: the system's libcrypto/libssl (not psycopg2-binary's own) in this process's maps."""
    return ("sorted({l.split()[-1] for l in open('/proc/self/maps') "
            "if ('/libcrypto.so' in l or '/libssl.so' in l) and 'psycopg2' not in l})")


def test_node_entry_imports_neither_hashlib_nor_ssl_before_the_choice():
    # node.py calls cli.without_system_openssl right after loading the settings:
    # what it imported until then must not have loaded hashlib, ssl or psycopg2.
    loaded = run("""
        import node
        from pgha import settings
        print(json.dumps([m for m in ("hashlib", "_hashlib", "hmac", "ssl", "_ssl", "psycopg2")
                          if m in sys.modules]))
    """)
    assert loaded == []


def test_without_tls_no_system_openssl_and_the_same_signature():
    got = run(f"""
        cli.without_system_openssl(Settings())
        from pgha import keys, auth
        from pgha.node import Node
        import pgha.api, psycopg2, hashlib, hmac
        print(json.dumps({{
            "mapped": {system_openssl_mapped()},
            "sha256": hashlib.sha256.__module__,
            "compare_digest": hmac.compare_digest.__module__ + "." + hmac.compare_digest.__name__,
            "mac": auth.mac({KEY!r}, {MESSAGE!r}),
            "matches": auth._mac_matches(({KEY!r},), dict({MESSAGE!r}, mac=auth.mac({KEY!r}, {MESSAGE!r})))
                       is not None,
            "tampered": auth._mac_matches(({KEY!r},), dict({MESSAGE!r}, mac="0" * 64)) is not None,
        }}))
    """)
    assert got["mapped"] == []
    assert got["sha256"] == "_sha256"                     # Python's built-in, not OpenSSL's
    # _operator's constant-time comparison (what hmac falls back to without _hashlib)
    assert got["compare_digest"] == "_operator._compare_digest"
    assert got["mac"] == auth.mac(KEY, MESSAGE)            # this process signs with OpenSSL's
    assert got["matches"] and not got["tampered"]


@pytest.mark.parametrize("why", ["tls", "system_openssl setting"])
def test_with_tls_or_the_setting_hashlib_and_ssl_are_left_alone(why):
    got = run(f"""
        cli.without_system_openssl(Settings())
        import hashlib, ssl
        from pgha import auth
        print(json.dumps({{"mapped": {system_openssl_mapped()} != [],
                          "sha256": hashlib.sha256.__module__, "mac": auth.mac({KEY!r}, {MESSAGE!r})}}))
    """, tls_cert="/etc/pgha/node.crt" if why == "tls" else None, system_openssl=why != "tls")
    assert got["mapped"]
    assert got["sha256"] == "_hashlib"
    assert got["mac"] == auth.mac(KEY, MESSAGE)


def top_level_ssl_imports(source):
    """Line numbers of `import ssl` / `from ssl import` run when a module loads
    (at its top, or in a top-level if/try), not under `if TYPE_CHECKING`."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ssl" for a in node.names) or \
                    isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ssl":
                found.append(node.lineno)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
    visit(ast.parse(source).body)
    return found


def test_no_module_imports_ssl_at_its_top():
    """ssl only where a TLS context is made (pgha.tls) or used: a module
    importing it when it loads would map the system's OpenSSL in every
    daemon, setting or not (psycopg2 and http.client are what the setting is for)."""
    sources = sorted(Path(ROOT, "pgha").glob("*.py")) + [Path(ROOT, name) for name in
                                                        ("node.py", "arbiter.py", "logger.py")]
    offenders = {str(path.relative_to(ROOT)): lines for path in sources
                 if (lines := top_level_ssl_imports(path.read_text()))}
    assert offenders == {}


@pytest.mark.parametrize("source, found", [
    ("import os\nimport ssl\n", [2]),
    ("from ssl import SSLContext\n", [1]),
    ("try:\n    import ssl\nexcept ImportError:\n    ssl = None\n", [2]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ssl\n", []),
    ("def context():\n    import ssl\n    return ssl\n", []),
])
def test_the_ssl_import_check_finds_a_planted_import(source, found):
    assert top_level_ssl_imports(source) == found
