"""TLS on the control ports (pgha.tls): a TLS LineServer and Connection talk;
a plain client, or a client whose certificate another CA signed, is refused
cleanly and the server carries on; pgha-keys tls writes safe files."""
import logging
import os
import shutil
import socket
import ssl
import stat

import pytest

from pgha import keys, protocol, requests, tls
from testsuite.helpers import raw_exchange, serving

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class _Echo(protocol.LineHandler):
    def answer(self, message):
        return {"type": "echo", "got": requests.kind_of_request(message).name}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    tls.generate(str(base / "ours"), ["arbiter", "operator"])
    tls.generate(str(base / "theirs"), ["operator"])
    return base


def _files(base, folder, member):
    d = base / folder
    return str(d / f"{member}.crt"), str(d / f"{member}.key"), str(base / "ours" / "ca.crt")


@pytest.fixture
def server(certs):
    srv = protocol.LineServer(("127.0.0.1", 0), _Echo)
    srv.tls_context = tls.server_context(*_files(certs, "ours", "arbiter"))
    with serving(srv):
        yield srv


def _ask(srv, context):
    host, port = srv.server_address[:2]
    return protocol.call(host, port, {"type": "status"}, timeout=3.0, tls_context=context)


def test_a_tls_connection_talks(server, certs):
    context = tls.client_context(*_files(certs, "ours", "operator"))
    conn = protocol.Connection(*server.server_address[:2], timeout=3.0, tls_context=context)
    try:
        assert conn.request({"type": "status"})["got"] == "status"
        assert conn.request({"type": "status"})["got"] == "status"     # the same TLS connection again
        assert isinstance(conn._sock, ssl.SSLSocket)
    finally:
        conn.close()


def test_a_plain_client_gets_no_json_and_the_server_carries_on(server, certs, caplog):
    with caplog.at_level(logging.WARNING, logger="pgha"):
        reply = raw_exchange(server.server_address[:2], protocol.encode({"type": "status"}), timeout=3.0)
        assert b'"type"' not in reply       # at most a TLS alert, never a JSON answer
        with pytest.raises((OSError, protocol.ProtocolError)):
            _ask(server, None)
    refusals = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(refusals) == 1           # one line (rate-limited per source), no traceback
    assert refusals[0].exc_info is None
    assert _ask(server, tls.client_context(*_files(certs, "ours", "operator")))["got"] == "status"


def test_a_certificate_from_another_ca_is_refused(server, certs):
    crt, key, _ = _files(certs, "theirs", "operator")
    context = tls.client_context(crt, key, str(certs / "ours" / "ca.crt"))   # trusts the server, but is not trusted
    with pytest.raises((OSError, protocol.ProtocolError)):
        _ask(server, context)
    assert _ask(server, tls.client_context(*_files(certs, "ours", "operator")))["got"] == "status"


def test_a_client_refuses_a_server_from_another_ca(server, certs):
    crt, key, _ = _files(certs, "theirs", "operator")
    context = tls.client_context(crt, key, str(certs / "theirs" / "ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        _ask(server, context)


def test_a_silent_client_does_not_block_accepts(server, certs, monkeypatch):
    monkeypatch.setattr(protocol.limits, "MESSAGE_DEADLINE", 0.5)
    with socket.create_connection(server.server_address[:2]):     # never starts its handshake
        assert _ask(server, tls.client_context(*_files(certs, "ours", "operator")))["got"] == "status"


def test_generated_keys_are_private_and_a_readable_key_is_refused(certs, tmp_path):
    for name in os.listdir(certs / "ours"):
        if name.endswith(".key"):
            assert stat.S_IMODE(os.stat(certs / "ours" / name).st_mode) == 0o600
    crt, key, ca = _files(certs, "ours", "operator")
    loose = tmp_path / "loose.key"
    shutil.copy(key, loose)
    os.chmod(loose, 0o640)
    with pytest.raises(tls.TLSError, match="readable by group or others"):
        tls.client_context(crt, str(loose), ca)


def test_pgha_keys_tls(tmp_path, capsys):
    folder = tmp_path / "certs"
    assert keys.main(["tls", "--dir", str(folder), "--nodes", "pgsql-1,pgsql-2", "--hosts", "10.0.0.5"]) == 0
    for member in ("ca", "arbiter", "pgsql-1", "pgsql-2", "operator"):
        assert (folder / f"{member}.crt").exists() and (folder / f"{member}.key").exists()
    assert keys.main(["tls", "--dir", str(folder), "--nodes", "pgsql-1,pgsql-2"]) == 2     # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_the_tls_settings_go_together():
    from types import SimpleNamespace
    assert tls.settings_problem(SimpleNamespace(tls_cert_file=None, tls_key_file=None, tls_ca_file=None)) is None
    assert tls.contexts(SimpleNamespace(tls_cert_file=None)) == (None, None)
    assert "go together" in tls.settings_problem(
        SimpleNamespace(tls_cert_file="a.crt", tls_key_file=None, tls_ca_file="ca.crt"))


def test_ctl_takes_the_tls_options(server, certs, tmp_path, capsys, monkeypatch):
    from pgha import ctl
    keys.generate(str(tmp_path / "k"), ["pgsql-1", "pgsql-2"])
    crt, key, ca = _files(certs, "ours", "operator")
    seen = {}

    def call(host, port, message, timeout, credential, tls_context=None):
        seen["tls"] = tls_context
        return {"type": "status", "epoch": 1, "primary": None, "nodes": {}}

    base = ["--arbiter", "127.0.0.1:1", "--key-file", str(tmp_path / "k" / "operator.keys")]
    ctl.main([*base, "--tls-ca", ca, "--tls-cert", crt, "--tls-key", key, "list", "--json"], call=call)
    assert isinstance(seen["tls"], ssl.SSLContext)
    with pytest.raises(SystemExit) as exit_:
        ctl.main([*base, "--tls-ca", ca, "list"], call=call)
    assert exit_.value.code == 2 and "go together" in capsys.readouterr().err
