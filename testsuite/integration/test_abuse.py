"""Abusive clients against a real arbiter (issue 9): slow clients and a
connection flood held while the primary's host is killed, bad input that
must get an error reply and a clipped log line. Loopback only; every
client is bounded in count and time."""
import json
import os
import resource
import time

from conftest import wait_for
from harness.abusers import Abusers
from pgha import keys, protocol
from testsuite.helpers import raw_exchange

SLOW_CLIENTS = 500
FLOOD = 300
FAILOVER_BOUND = 10.0       # seconds from the kill to the new primary in `status` (target: ~5)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def status(cluster, timeout=3.0):
    return protocol.call(*cluster.arbiter, {"type": "status"}, timeout=timeout, credential=operator(cluster))


class OperatorLink:
    """An operator's monitoring connection, kept open: once its first signed
    request is answered it holds a member's slot, which the flood cannot take."""

    def __init__(self, cluster, timeout=3.0):
        self.conn = protocol.Connection(*cluster.arbiter, timeout=timeout, credential=operator(cluster))

    def status(self):
        return self.conn.request({"type": "status"})


def operator(cluster):
    return keys.client_credential(cluster.key_file("operator"))


def member(cluster, node):
    """The node's own credential: the messages below are a member's, only oversized."""
    return keys.node_keys(cluster.key_file(node), node)[0]


def test_failover_under_slow_clients_and_a_connection_flood(local_cluster):
    raise_nofile()
    link = OperatorLink(local_cluster)
    before = link.status()      # answered: from now on the link holds a member's slot
    old, epoch = before["primary"], before["epoch"]
    abusers = Abusers(local_cluster.arbiter, SLOW_CLIENTS, FLOOD)
    abusers.start()
    try:
        time.sleep(4)       # every slot taken, the slow clients mid-frame
        assert abusers.opened >= SLOW_CLIENTS + FLOOD
        answered = failed = 0
        killed_at = time.monotonic()
        local_cluster.kill_host(old)
        promoted_after = None
        while time.monotonic() - killed_at < 30:
            try:
                reply = link.status()
                if reply["type"] != "status":        # refused: "too many connections"
                    raise ConnectionRefusedError(reply.get("error"))
                answered += 1
                if reply["epoch"] > epoch and reply["primary"] != old:
                    promoted_after = time.monotonic() - killed_at
                    break
            except (OSError, protocol.ProtocolError):
                failed += 1
            time.sleep(0.25)
        assert promoted_after is not None, f"no failover within 30 s ({answered} status answered, {failed} failed)"
        assert promoted_after <= FAILOVER_BOUND, f"failover took {promoted_after:.1f}s under abuse"
        assert answered >= 3 * failed, f"status calls: {answered} answered, {failed} failed"
        assert abusers.dropped > 0, "the server never dropped a stranger (the flood did not reach the cap)"
        print(f"failover after {promoted_after:.1f}s; status {answered} answered, {failed} failed; "
              f"{abusers.opened} abusive connections opened, {abusers.dropped} dropped")
    finally:
        abusers.stop()
        link.conn.close()


def raw(cluster, data, timeout=5.0):
    """Send raw bytes on a fresh connection; everything the server says before closing."""
    return raw_exchange(cluster.arbiter, data, timeout)


def arbiter_log(cluster):
    with open(os.path.join(cluster.dir, "arbiter.log"), errors="replace") as f:
        return f.read()


def test_bad_input_gets_error_replies_and_clipped_log_lines(local_cluster):
    # JSON nested 30,000 deep: an error reply, no traceback, the server carries on.
    deep = raw(local_cluster, b'{"v":1,"type":"status","x":' + b"[" * 30000 + b"]" * 30000 + b"}\n")
    assert json.loads(deep)["type"] == "error" and "nested" in json.loads(deep)["error"]
    assert status(local_cluster)["type"] == "status"

    # A 60 KB node name, three times: refused, and logged once, clipped.
    name = "n" * 60000
    for _ in range(3):
        reply = json.loads(raw(local_cluster, protocol.encode({"type": "heartbeat", "node": name, "epoch": 1,
                                                               "report": {}})))
        assert reply["type"] == "error" and len(reply["error"]) <= 201
    time.sleep(0.5)
    log = arbiter_log(local_cluster)
    assert "n" * 200 not in log
    assert "Traceback" not in log and "RecursionError" not in log
    assert max(len(line) for line in log.splitlines()) < 1000

    # A padded report (the standby's own, with a 60 KB error and padding): status still answers.
    current = status(local_cluster)
    standby = next(n for n in current["nodes"] if n != current["primary"])
    report = dict(current["nodes"][standby]["report"], error="e" * 30000, padding="p" * 30000)
    reply = protocol.call(*local_cluster.arbiter, {"type": "heartbeat", "node": standby,
                                                   "epoch": current["epoch"], "report": report},
                          credential=member(local_cluster, standby))
    assert reply["type"] == "instruction"
    after = status(local_cluster)
    assert len(after["nodes"][standby]["report"].get("error") or "") <= 200
    # Too many replication rows: refused whole.
    rows = [{"name": "x", "state": "streaming"}] * 9
    signed = member(local_cluster, standby).sign({"v": protocol.VERSION, "type": "heartbeat", "node": standby,
                                                  "epoch": current["epoch"],
                                                  "report": dict(report, error=None, replication=rows)})
    reply = json.loads(raw(local_cluster, protocol.encode(signed)))
    assert reply["type"] == "error" and "rows" in reply["error"]
    wait_for(lambda: local_cluster.healthy(), 30, "the cluster healthy after the bad input")
