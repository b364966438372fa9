"""Fixtures shared by unit tests: one real single-member etcd (Debian's
etcd-server) on loopback, started once per session in a temporary folder."""
import socket

import pytest

from harness import etcd


def _free_port_pair():
    """A port p with p and p + 1 free (etcd's client and peer ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on loopback")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """An EtcdCluster of one member; tests keep apart by key prefix."""
    if not etcd.available():
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server; bin/test installs it)")
    server = etcd.EtcdCluster(str(tmp_path_factory.mktemp("etcd")), _free_port_pair(), members=1, fsync=False)
    server.start(timeout=20)
    yield server
    server.stop()
