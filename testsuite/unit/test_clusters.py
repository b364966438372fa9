"""One arbiter service, two clusters (pgha.clusters, pgha.arbiter_service): a
real server on loopback with authentication on, a fake clock, per-cluster
state files. The clusters reuse the same node names on purpose."""
import json
from types import SimpleNamespace

import pytest

from pgha import arbiter as arbiter_mod, auth, clusters, keys, limits, protocol
from pgha.arbiter import Arbiter, ArbiterServer
from pgha.arbiter_service import ArbiterService
from testsuite.helpers import FakeClock, serving
from testsuite.unit.test_arbiter import (P, S, heartbeat, make_promotable, make_settings, primary_report,
                                        standby_report)

KEYS = {P: (b"\x01" * 32,), S: (b"\x02" * 32,), "b/" + P: (b"\x05" * 32,), "b/" + S: (b"\x06" * 32,),
        "operator": (b"\x03" * 32,), "reader": (b"\x04" * 32,)}
TWO = {"main": {"nodes": [P, S], "initial_primary": P}, "b": {"nodes": [P, S], "initial_primary": P}}


class Service:
    def __init__(self, tmp_path, with_auth=True):
        self.clock = FakeClock()
        self.settings = make_settings(tmp_path / "arbiter-state.json", clusters=TWO)
        self.specs = clusters.served(self.settings)
        self.arbiters = {name: Arbiter(self.settings, clock=self.clock, init=True, cluster=spec)
                         for name, spec in self.specs.items()}
        verifier = arbiter_mod.service_verifier(KEYS, self.specs, "main") if with_auth else None
        self.server = ArbiterServer(ArbiterService(self.arbiters, "main"), "127.0.0.1", 0, idle_timeout=10.0,
                                    verifier=verifier)

    def ask(self, identity, message):
        credential = auth.Credential(identity, KEYS[identity])
        return protocol.call(*self.server.server_address, message, timeout=5.0, credential=credential)

    def beat(self, cluster, node, epoch, report, identity=None):
        identity = identity or (node if cluster == "main" else f"{cluster}/{node}")
        return self.ask(identity, {**heartbeat(node, epoch, report), "cluster": cluster})


@pytest.fixture
def two(tmp_path):
    service = Service(tmp_path)
    with serving(service.server):
        yield service


def fail_over_b(two):
    """b's primary goes silent after making its standby promotable; b's standby is promoted."""
    make_promotable(lambda report: two.beat("b", P, 1, report), two.clock, two.arbiters["b"])
    two.clock.advance(4.5)      # lease 3 s + margin 1 s
    return two.beat("b", S, 1, standby_report(grant_remaining=0.0))


def test_each_cluster_has_its_own_state_file_beside_state_file(two, tmp_path):
    assert json.loads((tmp_path / "arbiter-state.json").read_text())["primary"] == P
    assert json.loads((tmp_path / "arbiter-state.b.json").read_text())["epoch"] == 1
    assert clusters.state_file_for("/x/state.json", "b", home=False) == "/x/state.b.json"


def test_a_failover_in_one_cluster_leaves_the_other_untouched(two, tmp_path):
    main_before = (tmp_path / "arbiter-state.json").read_text()
    two.beat("main", P, 1, primary_report(1000, 900))
    reply = fail_over_b(two)
    assert reply["role"] == "primary" and reply["epoch"] == 2 and reply["cluster"] == "b"
    assert two.arbiters["b"].state.primary == S
    assert two.arbiters["main"].state.epoch == 1 and two.arbiters["main"].state.primary == P
    assert (tmp_path / "arbiter-state.json").read_text() == main_before
    # The history is per cluster too.
    b_events = [e["event"] for e in two.ask("operator", {"type": "history", "cluster": "b"})["events"]]
    main_events = [e["event"] for e in two.ask("operator", {"type": "history"})["events"]]
    assert "failover" in b_events and "failover" not in main_events


def test_replies_echo_the_cluster_and_clusters_lists_them(two):
    assert two.ask("reader", {"type": "status", "cluster": "b"})["cluster"] == "b"
    assert two.ask("operator", {"type": "clusters"})["clusters"] == ["b", "main"]
    assert "cluster" not in two.ask("operator", {"type": "status"})   # asked as always: the home cluster


def test_a_cluster_it_does_not_serve_is_refused_and_nothing_changes(two, tmp_path):
    before = sorted(p.read_text() for p in tmp_path.glob("arbiter-state*.json"))
    reply = two.ask("operator", {"type": "pause", "cluster": "zzz"})
    assert reply["type"] == "error" and "does not serve cluster 'zzz'" in reply["error"]
    assert sorted(p.read_text() for p in tmp_path.glob("arbiter-state*.json")) == before


def test_a_node_key_of_one_cluster_cannot_speak_for_another(two):
    """Same node names in both clusters: main's pgsql-2 naming cluster b (a
    forged or misdirected heartbeat) is refused, and b does not fail over."""
    fail_over_prep = two.beat("b", P, 1, primary_report(1000, 900))
    assert fail_over_prep["type"] == "instruction"
    two.clock.advance(0.5)
    two.beat("b", P, 1, primary_report(1100, 1000))
    two.clock.advance(4.5)
    forged = two.beat("b", S, 1, standby_report(), identity=S)        # main's key, cluster b
    assert forged["type"] == "error" and forged["error"] == auth.FAILED
    also = two.ask("b/" + S, {"type": "status", "cluster": "main"})  # b's key reading main
    assert also["type"] == "error" and also["error"] == auth.FAILED
    assert two.arbiters["b"].state.epoch == 1 and two.arbiters["b"].state.primary == P


def test_a_node_that_is_not_a_member_of_the_named_cluster_is_refused(tmp_path):
    s = Service(tmp_path, with_auth=False)
    with serving(s.server):
        reply = protocol.call(*s.server.server_address, {**heartbeat("pgsql-9", 1, primary_report()),
                                                        "cluster": "b"})
        assert reply["type"] == "error" and "unknown node" in reply["error"]
        assert s.arbiters["b"].memory.reports == {}


def test_reload_names_one_cluster_or_every_cluster(two):
    loader_settings = make_settings(two.settings.state_file, clusters=TWO)
    two.arbiters["main"].settings_loader = lambda: loader_settings
    assert two.ask("operator", {"type": "reload", "cluster": "b"})["reload_generation"] == 1
    assert (two.arbiters["main"].reload_generation, two.arbiters["b"].reload_generation) == (0, 1)
    two.ask("operator", {"type": "reload"})
    assert (two.arbiters["main"].reload_generation, two.arbiters["b"].reload_generation) == (1, 2)


def test_member_slots_grow_with_the_clusters(two):
    assert limits.member_slots_for(1) == limits.MEMBER_SLOTS
    assert limits.member_slots_for(500) == 2000
    assert two.server.slots.member_slots == limits.MEMBER_SLOTS


@pytest.mark.parametrize("value, problem", [
    ({}, "at least one cluster"),
    ({"a/b": {"nodes": [P, S], "initial_primary": P}}, "not an identifier"),
    ({"b": {"nodes": [P, P], "initial_primary": P}}, "exactly two different nodes"),
    ({"b": {"nodes": [P, S, "x"], "initial_primary": P}}, "exactly two different nodes"),
    ({"b": {"nodes": [P, S], "initial_primary": "x"}}, "must be one of its nodes"),
    ({"b": {"nodes": [P, S]}}, "must be {"),
])
def test_clusters_setting_is_checked_in_one_line(value, problem):
    found = clusters.settings_problem(SimpleNamespace(clusters=value))
    assert found and problem in found and "\n" not in found


def test_the_member_count_is_said_in_topology_alone(monkeypatch, tmp_path):
    """Settings, the clusters table, the key tools and Topology all ask
    topology.members_problem: raising MAX_MEMBERS there admits three
    members everywhere, and nothing else does."""
    from pgha import settings as settings_mod, topology
    three = [P, S, "pgsql-3"]
    node_settings = SimpleNamespace(nodes=three, initial_primary=P, heartbeat_interval=0.5, lease_time=1.8)
    table = SimpleNamespace(clusters={"b": {"nodes": three, "initial_primary": P}})

    def refusals():
        found = {"settings": settings_mod._members(node_settings),
                 "clusters": clusters.settings_problem(table)}
        for name, check in (("keys", lambda: keys.check_nodes(three)),
                            ("topology", lambda: topology.Topology(tuple(three)))):
            try:
                check()
                found[name] = None
            except (keys.KeyFileError, ValueError) as exc:
                found[name] = str(exc)
        return found

    assert all(problem and "exactly two different nodes" in problem for problem in refusals().values())
    monkeypatch.setattr(topology, "MAX_MEMBERS", 3)
    assert not any(refusals().values()), refusals()


def test_add_cluster_keys_scope_the_node_to_its_cluster(tmp_path):
    keys.generate(str(tmp_path), [P, S])
    keys.add_cluster(str(tmp_path), "b", [P, S])
    credential, pair = keys.node_keys(str(tmp_path / "b" / f"{P}.keys"), P, "b")
    assert credential.identity == "b/" + P
    home, home_pair = keys.node_keys(str(tmp_path / f"{P}.keys"), P, "main")
    assert home.identity == P and home_pair != pair
    ring = keys.arbiter_keys(str(tmp_path / "arbiter.keys"), [P, S, "b/" + P, "b/" + S])
    assert ring["b/" + P] == credential.keys
    with pytest.raises(keys.KeyFileError):
        keys.add_cluster(str(tmp_path), "b", [P, S])
