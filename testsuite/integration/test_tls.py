"""A local cluster with TLS on the control ports (pgha.tls): it fails over
with nothing lost, and its arbiter and lease ports answer no plain JSON."""
import os

import pytest

from conftest import WriteRun, running_cluster, wait_for
from pgha import protocol
from testsuite.helpers import raw_exchange
from test_cluster import primary_is


@pytest.fixture
def tls_cluster(request):
    yield from running_cluster(request, "tls-" + request.node.name[:40], tls=True)


def _plain_reply(port):
    """What a plain (non-TLS) status request to `port` gets back: bytes, never a JSON line."""
    return raw_exchange(("127.0.0.1", port), protocol.encode({"type": "status"}))


def test_tls_cluster_fails_over_and_refuses_plain_requests(tls_cluster):
    cluster = tls_cluster
    assert cluster.tls and cluster.status()["primary"] == "pgsql-1"     # the harness speaks TLS
    for port in (cluster.arbiter_port, cluster.peer_ports["pgsql-2"]):
        reply = _plain_reply(port)
        assert b'"type"' not in reply and b'"v"' not in reply, reply[:80]
    with open(os.path.join(cluster.dir, "arbiter.log")) as f:
        assert "TLS handshake" in f.read()
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        run.mark_fault()
        cluster.kill_host("pgsql-1")
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "pgsql-2 promoted at epoch 2")
        assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
    run.check()
