"""pgha/sdnotify.py: READY=1 reaches a real datagram socket where
NOTIFY_SOCKET points (a path, or "@name" in the abstract namespace), once;
nothing is sent without NOTIFY_SOCKET; a socket nobody listens on is a
warning, never an exception (the daemon runs on)."""
import logging
import os
import socket

import pytest

from pgha import sdnotify


@pytest.fixture
def listener(tmp_path):
    """A datagram socket like systemd's notify socket: (its path, the socket)."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield path, sock


def received(sock):
    """Every datagram waiting on `sock`, without blocking."""
    sock.setblocking(False)
    got = []
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got


def test_ready_is_sent_once_and_the_variable_removed(listener):
    path, sock = listener
    environ = {"NOTIFY_SOCKET": path, "OTHER": "kept"}
    assert sdnotify.ready(environ) is True
    assert sock.recv(4096) == b"READY=1"
    assert environ == {"OTHER": "kept"}     # children started later do not inherit it
    assert sdnotify.ready(environ) is False
    assert received(sock) == []


def test_ready_uses_the_process_environment_by_default(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ


def test_abstract_namespace_address():
    name = f"pgha-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.notify("STATUS=up", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STATUS=up"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_nothing_is_sent_without_a_usable_socket(environ, listener):
    _path, sock = listener
    assert sdnotify.notify("READY=1", environ) is False
    assert received(sock) == []


def test_a_socket_nobody_listens_on_is_a_warning(tmp_path, caplog):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "gone")}
    with caplog.at_level(logging.WARNING, logger="sdnotify"):
        assert sdnotify.ready(environ) is False
    assert "could not tell systemd READY=1" in caplog.text
    assert environ == {}    # said once: not retried every heartbeat
