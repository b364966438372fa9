"""Leadership among arbiter processes (pgha.leadership) against a real etcd,
and the node's search for the leader (pgha.arbiter_link)."""
import time
import uuid

from pgha.arbiter_link import ArbiterLink, parse_address
from pgha.etcd_client import EtcdClient, EtcdOptions
from pgha.etcd_store import leader_key
from pgha.leadership import Leadership
from pgha.protocol import LineHandler, LineServer


def _pair(etcd_server, ttl=2):
    key = leader_key("/pgha-test", "t-" + uuid.uuid4().hex[:12])
    make = lambda address: Leadership(EtcdClient(EtcdOptions(tuple(etcd_server.endpoints))), key, address, ttl)
    return make("127.0.0.1:1001"), make("127.0.0.1:1002")


def test_one_leader_and_the_other_learns_where(etcd_server):
    a, b = _pair(etcd_server)
    a.step()
    b.step()
    assert a.term() is not None and b.term() is None
    assert b.leader_hint() == "127.0.0.1:1001" == a.leader_hint()


def test_a_longer_lease_than_asked_is_said_and_acting_still_ends_by_the_setting(etcd_server, caplog):
    class RaisesTtl(EtcdClient):      # etcd raises a TTL below its minimum (1.5 election timeouts)
        def lease_grant(self, ttl):
            lease, _ = super().lease_grant(ttl + 3)
            return lease, ttl + 3
    key = leader_key("/pgha-test", "t-" + uuid.uuid4().hex[:12])
    a = Leadership(RaisesTtl(EtcdOptions(tuple(etcd_server.endpoints))), key, "127.0.0.1:1001", 2)
    with caplog.at_level("WARNING"):
        a.step()
    assert "granted a 5s lease for etcd_lease_ttl 2s" in caplog.text
    assert a._valid_until <= time.monotonic() + a.ttl - a.safety


def test_a_stepped_down_leader_is_replaced_at_once(etcd_server):
    a, b = _pair(etcd_server)
    a.step()
    first = a.term()
    a.stop()                    # revokes its lease
    assert a.term() is None
    b.step()
    assert b.term() is not None and b.term() > first


def test_a_silent_leader_stops_acting_by_its_own_clock_before_etcd_frees_the_key(etcd_server):
    a, b = _pair(etcd_server, ttl=2)
    a.step()
    assert a.term() is not None
    # a stops renewing (frozen, cut off): it stops acting at ttl - safety ...
    time.sleep(a.ttl - a.safety + 0.05)
    assert a.term() is None
    b.step()
    assert b.term() is None     # ... while etcd still holds its key: nobody acts in between
    deadline = time.monotonic() + 5
    while b.term() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        b.step()
    assert b.term() is not None
    a.step()                    # a comes back: it learns its lease is gone and does not lead
    assert a.term() is None and a.leader_hint() == "127.0.0.1:1002"


class _Fixed(LineHandler):
    def answer(self, message):
        return self.server.reply


def _server(reply):
    server = LineServer(("127.0.0.1", 0), _Fixed)
    server.reply = reply
    import threading
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def test_the_link_follows_the_hint_and_remembers_the_leader():
    leader = _server({"type": "ok", "who": "leader"})
    follower = _server(None)
    lead_address = "127.0.0.1:%d" % leader.server_address[1]
    follower.reply = {"type": "error", "error": "not the leader", "leader": lead_address}
    dead = ("127.0.0.1", 9)
    try:
        link = ArbiterLink([dead, follower.server_address, leader.server_address], timeout=1.0)
        assert link.request({"type": "status"})["who"] == "leader"
        assert link.current == parse_address(lead_address)
        leader.reply = {"type": "error", "error": "not the leader", "leader": None}
        follower.reply = {"type": "error", "error": "not the leader", "leader": None}
        assert link.request({"type": "status"})["error"] == "not the leader"    # nobody leads
    finally:
        for s in (leader, follower):
            s.shutdown()
            s.server_close()
