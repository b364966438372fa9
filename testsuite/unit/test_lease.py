"""Leases and grants (pgha/lease.py) with a fake clock, plus the lease link server."""
import socket

import pytest

from pgha import protocol
from pgha.lease import GRANT_TAIL, Grants, Leases, PeerServer
from testsuite.helpers import FakeClock, serving


@pytest.fixture
def clock():
    return FakeClock()


# -- Leases: the primary's view ------------------------------------------------------------

def test_no_lease_at_start(clock):
    leases = Leases(clock)
    assert not leases.held()
    assert leases.remaining("arbiter") == leases.remaining("standby") == 0.0


def test_fencer_deadline_is_the_latest_granted_lease_never_the_restart_grace(clock):
    leases = Leases(clock)
    leases.renew("grace", clock(), 3.0)
    assert leases.held() and leases.deadline() <= clock()     # held by the daemon, not handed to the fencer
    leases.renew("arbiter", clock() - 1.0, 3.0)
    leases.renew("standby", clock() - 0.5, 3.0)
    assert leases.deadline() == clock() + 2.5


def test_lease_counts_from_the_time_the_request_was_sent(clock):
    leases = Leases(clock)
    sent_at = clock()
    clock.advance(0.75)                     # the reply took 0.75 s to come back
    leases.renew("arbiter", sent_at, 3.0)
    assert leases.remaining("arbiter") == 2.25
    clock.advance(2.0)
    assert leases.held()
    clock.advance(0.25)                     # exactly sent_at + 3.0
    assert not leases.held() and leases.remaining("arbiter") == 0.0


@pytest.mark.parametrize("source", ["arbiter", "standby"])
def test_either_lease_alone_is_enough(clock, source):
    leases = Leases(clock)
    leases.renew(source, clock(), 3.0)
    clock.advance(2.9)
    assert leases.held()
    clock.advance(0.2)
    assert not leases.held()


def test_renewals_extend_and_the_later_lease_counts(clock):
    leases = Leases(clock)
    leases.renew("arbiter", clock(), 3.0)
    clock.advance(1.0)
    leases.renew("standby", clock(), 3.0)
    clock.advance(2.5)                      # arbiter's ran out at +3, the standby's runs to +4
    assert leases.remaining("arbiter") == 0.0
    assert leases.remaining("standby") == pytest.approx(0.5)
    assert leases.held()
    clock.advance(0.6)
    assert not leases.held()


def test_a_late_reply_to_an_old_request_never_shortens_a_lease(clock):
    leases = Leases(clock)
    leases.renew("arbiter", 100.0, 3.0)
    leases.renew("arbiter", 99.0, 3.0)      # a reply to an earlier request, delivered late
    assert leases.remaining("arbiter") == pytest.approx(3.0)


# -- Grants: the standby's side --------------------------------------------------------------

def test_grants_nothing_before_the_arbiter_says_whom_to_follow(clock):
    grants = Grants(clock)
    granted, reason = grants.request("pgsql-1", 1, 3.0)
    assert not granted and reason


def test_grants_only_to_the_followed_primary_and_epoch(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 4)
    assert grants.request("pgsql-1", 4, 3.0) == (True, None)
    for node, epoch in [("pgsql-1", 3), ("pgsql-1", 5), ("pgsql-2", 4)]:
        granted, reason = grants.request(node, epoch, 3.0)
        assert not granted and f"not a standby of {node} at epoch {epoch}" == reason


def test_grant_remaining_counts_from_the_grant(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 1)
    grants.request("pgsql-1", 1, 3.0)
    clock.advance(1.0)
    assert grants.remaining_for_report() == pytest.approx(2.0 + GRANT_TAIL)    # reported past its end
    clock.advance(0.5)
    grants.request("pgsql-1", 1, 3.0)       # renewed: +3 from now
    assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)


def test_reporting_zero_remaining_pauses_grants(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 2)
    grants.request("pgsql-1", 2, 3.0)
    clock.advance(3.0)
    assert grants.remaining_for_report() == pytest.approx(GRANT_TAIL)     # ended, still reported
    clock.advance(GRANT_TAIL)
    assert grants.remaining_for_report() == 0.0
    # The arbiter may now act on "no grant": the old primary must not get one behind its back.
    granted, reason = grants.request("pgsql-1", 2, 3.0)
    assert not granted and "paused" in reason
    assert grants.remaining_for_report() == 0.0


def test_a_report_with_time_left_does_not_pause(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 2)
    grants.request("pgsql-1", 2, 3.0)
    clock.advance(2.0)
    assert grants.remaining_for_report() > 0
    assert grants.request("pgsql-1", 2, 3.0)[0]


def test_pause_at_start_before_any_grant(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 1)
    assert grants.remaining_for_report() == 0.0     # nothing granted yet: paused
    assert not grants.request("pgsql-1", 1, 3.0)[0]


def test_follow_resumes_after_a_pause(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 2)
    assert grants.remaining_for_report() == 0.0
    grants.follow("pgsql-1", 2)                     # the arbiter's reply keeps us its standby
    assert grants.request("pgsql-1", 2, 3.0) == (True, None)


def test_follow_of_a_new_primary_switches_whom_we_grant_to(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 2)
    grants.follow("pgsql-2", 3)
    assert not grants.request("pgsql-1", 2, 3.0)[0]
    assert grants.request("pgsql-2", 3, 3.0)[0]


def test_stop_refuses_everything(clock):
    grants = Grants(clock)
    grants.follow("pgsql-1", 2)
    assert grants.request("pgsql-1", 2, 3.0)[0]
    grants.stop()
    for node, epoch in [("pgsql-1", 2), ("pgsql-2", 2), ("pgsql-2", 3)]:
        assert not grants.request(node, epoch, 3.0)[0]
    # What was granted before stop() is still reported until it runs out.
    assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)
    clock.advance(3.0 + GRANT_TAIL)
    assert grants.remaining_for_report() == 0.0


# -- the lease link (PeerServer) over a real socket ----------------------------------------------

@pytest.fixture
def peer(clock):
    grants = Grants(clock)
    server = PeerServer("127.0.0.1", 0, grants, lambda: 3.0)
    with serving(server):
        yield server, grants


def test_peer_server_grants_and_refuses(peer, clock):
    server, grants = peer
    port = server.server_address[1]
    grants.follow("pgsql-1", 7)
    conn = protocol.Connection("127.0.0.1", port, timeout=2.0)
    try:
        assert conn.request({"type": "lease", "node": "pgsql-1", "epoch": 7}) == \
            {"v": 1, "type": "grant", "granted": True, "reason": None}
        assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)
        reply = conn.request({"type": "lease", "node": "pgsql-1", "epoch": 6})
        assert reply["type"] == "grant" and reply["granted"] is False and "epoch 6" in reply["reason"]
    finally:
        conn.close()


@pytest.mark.parametrize("message", [{"type": "status"}, {"type": "lease", "node": "pgsql-1"}],
                         ids=["wrong-type", "epoch-missing"])
def test_peer_server_answers_a_bad_request_with_one_error_and_closes(peer, message):
    server, grants = peer
    grants.follow("pgsql-1", 1)
    with socket.create_connection(server.server_address, timeout=2.0) as sock:
        reader = protocol.FrameReader(sock)
        sock.sendall(protocol.encode(message))
        reply = reader.read_frame(2.0)
        assert reply["type"] == "error" and reply["error"]
        assert reader.read_frame(2.0) is None      # closed
    assert grants.remaining_for_report() == 0.0        # nothing granted


def test_a_restarted_daemons_grants_count_the_last_daemons_grant_as_outstanding():
    """The previous daemon may have granted a lease just before it died:
    the new one reports it outstanding for a lease from its start (found by
    the Spin model and the simulation; docs/ha-model.md)."""
    clock = FakeClock(100.0)
    grants = Grants(clock)
    assert grants.remaining_for_report() == 0.0                 # a new node: nothing granted
    grants = Grants(clock)
    grants.assume_granted(3.0)
    assert grants.remaining_for_report() == pytest.approx(3.0 + GRANT_TAIL)
    clock.advance(3.0 + GRANT_TAIL)
    assert grants.remaining_for_report() == 0.0
    assert grants.request("pgsql-1", 1, 3.0) == (False, "grants paused until the arbiter confirms the primary")


def test_a_lease_heard_after_the_restart_counts_from_the_daemons_start():
    """A state file from before lease_time was saved: the default is assumed
    at start, and the cluster's (longer) lease once the arbiter says it."""
    clock = FakeClock(100.0)
    grants = Grants(clock)
    grants.assume_granted(1.8)
    clock.advance(1.0)
    grants.assume_granted(5.0, since=100.0)
    assert grants.remaining_for_report() == pytest.approx(4.0 + GRANT_TAIL)
    grants.assume_granted(1.0, since=100.0)                        # never shortened
    assert grants.remaining_for_report() == pytest.approx(4.0 + GRANT_TAIL)
