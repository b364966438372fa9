"""The REST API (pgha/api.py, health.py, metrics.py) on fake snapshots:
every health endpoint's status code in every role and state, the JSON
bodies, /metrics through a real Prometheus parser, and the HTTP edges
(404, 405, HEAD/OPTIONS, bad ?lag=, slow clients, a flood)."""
import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import abusers as abusers_mod
from pgha import api, health, limits, metrics, node_facts, pg_facts
from pgha.messages import Address, Report, ReplicationRow
from pgha.node_state import ClusterView, ClusterWatcher, History, LoopStats, Member, NodeSnapshot, StatePublisher

NOW = 1000.0
A1 = Address("127.0.0.1", 6431, 6441, "rep177")
A2 = Address("127.0.0.1", 6432, 6442, "rep98")

PRIMARY = NodeSnapshot(
    name="pgsql-1", taken_at=NOW - 0.2, pg="running", running_as="primary", lsn=5000, timeline=2,
    sync_standby="pgsql-2", replication=(ReplicationRow("pgsql-2", "streaming", "sync", 4900, 0.1),),
    acting_primary=True, instruction_role="primary", instruction_epoch=2, primary="pgsql-1",
    acted_epoch=2, lease_until={"arbiter": NOW + 2.5, "standby": NOW + 2.8}, arbiter_reachable=True,
    heartbeat_rtt=0.002, last_action="set_sync", failovers=1, loop=LoopStats(10, 0.5, 0.04))
STANDBY = NodeSnapshot(
    name="pgsql-2", taken_at=NOW - 0.2, pg="running", running_as="standby", lsn=4000, receive_lsn=4500,
    timeline=2, receiver="streaming", instruction_role="standby", instruction_epoch=2, primary="pgsql-1",
    primary_address=A1, upstream=A1, acted_epoch=2, grant_remaining=2.9, arbiter_reachable=True,
    heartbeat_rtt=0.003, last_action="start_standby")
# The arbiter's last status: the primary at LSN 5000, the standby 500 bytes behind.
VIEW = ClusterView(fetched_at=NOW - 1, epoch=2, primary="pgsql-1", promotable=True, members=(
    Member("pgsql-1", Report(pg="running", role="primary", lsn=5000, timeline=2, sync_standby="pgsql-2",
                             address=A1, lease_remaining={"arbiter": 2.5, "standby": 2.8}), 0.1),
    Member("pgsql-2", Report(pg="running", role="standby", lsn=4000, receive_lsn=4500, receiver="streaming",
                             address=A2), 0.2)))

CASES = {   # name: (snapshot, cluster view)
    "primary": (PRIMARY, VIEW),
    "primary, no arbiter status": (PRIMARY, None),
    "primary on the standby lease alone": (replace(PRIMARY, lease_until={"arbiter": 0, "standby": NOW + 1}), VIEW),
    "primary, leases run out": (replace(PRIMARY, lease_until={"arbiter": NOW - 0.1, "standby": NOW - 1}), VIEW),
    "primary, arbiter at a newer epoch": (PRIMARY, replace(VIEW, epoch=3, primary="pgsql-2")),
    "primary, not acting (fenced)": (replace(PRIMARY, acting_primary=False), VIEW),
    "primary, told to wait": (replace(PRIMARY, instruction_role="wait", instruction_reason="x"), VIEW),
    "primary, no instruction yet": (replace(PRIMARY, instruction_role=None, instruction_epoch=None), VIEW),
    "demoting: told standby, still primary": (replace(PRIMARY, acting_primary=False, instruction_role="standby"), VIEW),
    "standby": (STANDBY, VIEW),
    "standby, no arbiter status": (STANDBY, None),
    "standby, not streaming": (replace(STANDBY, receiver=None), VIEW),
    "standby of an old primary": (replace(STANDBY, upstream=A2), VIEW),
    "standby, told to be primary (promoting)": (replace(STANDBY, instruction_role="primary"), VIEW),
    "starting": (NodeSnapshot(name="pgsql-2", taken_at=NOW, pg="starting"), VIEW),
    "stopped": (NodeSnapshot(name="pgsql-2", taken_at=NOW, pg="stopped", instruction_role="wait"), VIEW),
    "HA loop stuck, primary": (replace(PRIMARY, taken_at=NOW - 30, lease_until={"arbiter": NOW - 27}), VIEW),
}
PATHS = ("/primary", "/master", "/leader", "/read-write", "/replica", "/standby", "/read-only",
         "/health", "/liveness", "/readiness", "/replica?lag=1000", "/replica?lag=100",
         "/read-only?lag=100")
#                                      prim mast lead rw  repl stby ro  hlth live rdy lag1k lag100 ro100
EXPECTED = {
    "primary":                           (200, 200, 200, 200, 503, 503, 200, 200, 200, 200, 503, 503, 200),
    "primary, no arbiter status":        (200, 200, 200, 200, 503, 503, 200, 200, 200, 200, 503, 503, 200),
    "primary on the standby lease alone": (200, 200, 200, 200, 503, 503, 200, 200, 200, 200, 503, 503, 200),
    "primary, leases run out":           (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "primary, arbiter at a newer epoch": (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "primary, not acting (fenced)":      (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "primary, told to wait":             (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "primary, no instruction yet":       (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "demoting: told standby, still primary": (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "standby":                           (503, 503, 503, 503, 200, 200, 200, 200, 200, 200, 200, 503, 503),
    "standby, no arbiter status":        (503, 503, 503, 503, 200, 200, 200, 200, 200, 200, 503, 503, 503),
    "standby, not streaming":            (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "standby of an old primary":         (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "standby, told to be primary (promoting)": (503, 503, 503, 503, 503, 503, 503, 200, 200, 503, 503, 503, 503),
    "starting":                          (503, 503, 503, 503, 503, 503, 503, 503, 200, 503, 503, 503, 503),
    "stopped":                           (503, 503, 503, 503, 503, 503, 503, 503, 200, 503, 503, 503, 503),
    "HA loop stuck, primary":            (503, 503, 503, 503, 503, 503, 503, 200, 503, 503, 503, 503, 503),
}


@pytest.fixture
def server():
    state = StatePublisher("pgsql-1", clock=lambda: NOW, history=History(wall=lambda: 1700000000.0))
    srv = api.ApiServer("127.0.0.1", 0, state)
    srv.start()
    yield srv
    srv.stop()


def get(server, path, method="GET", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def show(server, snapshot, view):
    server.state.snapshot, server.state.cluster = snapshot, view


def test_every_case_has_a_row():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_health_endpoint_status_codes(server, case):
    show(server, *CASES[case])
    got = tuple(get(server, path)[0] for path in PATHS)
    assert dict(zip(PATHS, got)) == dict(zip(PATHS, EXPECTED[case]))


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_give_the_same_codes(server, method):
    show(server, PRIMARY, VIEW)
    assert get(server, "/primary", method)[0] == 200
    status, _, body = get(server, "/replica", method)
    assert status == 503 and (body == b"") == (method == "HEAD")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_state_changing_methods_are_not_allowed(server, method):
    status, headers, _ = get(server, "/switchover", method, body=b'{"leader": "pgsql-1"}')
    assert status == 405
    assert dict(headers)["Allow"] == "GET, HEAD, OPTIONS"


def test_unknown_path_is_404(server):
    assert get(server, "/nothing-here")[0] == 404
    assert get(server, "/primary/extra")[0] == 404


@pytest.mark.parametrize("text, value", [("0", 0), ("1048576", 1 << 20), ("16MB", 16 << 20), ("16mb", 16 << 20),
                                         ("1kB", 1024), ("2GB", 2 << 30), ("5 B", 5), ("1TB", 1 << 40)])
def test_lag_units(text, value):
    assert health.parse_lag(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5MB", "1s", "ten", "16XB"])
def test_bad_lag_is_a_400(server, text):
    show(server, STANDBY, VIEW)
    with pytest.raises(ValueError):
        health.parse_lag(text)
    status, _, body = get(server, "/replica?lag=" + text.replace(" ", "+"))
    assert status == 400 and b"lag" in body


@pytest.mark.parametrize("mode", ["", "replay", "APPLY", "x" * 100])
def test_bad_readiness_mode_is_a_400(server, mode):
    show(server, STANDBY, VIEW)
    status, _, body = get(server, "/readiness?lag=1MB&mode=" + mode)
    assert status == 400 and b"mode must be apply or write" in body and len(body) < 200
    assert get(server, "/replica?mode=" + mode)[0] == 200      # read on /readiness alone, as Patroni


def test_lag_with_units_on_the_standby(server):
    show(server, STANDBY, VIEW)     # 500 bytes behind
    assert get(server, "/replica?lag=1kB")[0] == 200
    assert get(server, "/replica?lag=499")[0] == 503
    assert get(server, "/replica?lag=500")[0] == 200
    stale = replace(VIEW, fetched_at=NOW - health.CLUSTER_VIEW_MAX_AGE - 1)
    show(server, STANDBY, stale)    # too old to know the lag: not "small enough"
    assert get(server, "/replica?lag=1GB")[0] == 503
    assert get(server, "/replica")[0] == 200


def test_node_json_on_the_primary(server):
    show(server, PRIMARY, VIEW)
    for path in ("/", "/patroni", "/primary"):
        status, headers, body = get(server, path)
        node = json.loads(body)
        assert dict(headers)["Content-Type"] == "application/json"
        assert node["state"] == "running" and node["role"] == "primary" and node["timeline"] == 2
        assert node["xlog"] == {"location": 5000}
        assert node["replication"][0]["application_name"] == "pgsql-2"
        assert node["replication"][0]["lag_bytes"] == 100
        assert node["pgha"]["epoch"] == 2 and node["pgha"]["writable_primary"] is True
        assert node["pgha"]["lease_remaining"] == {"arbiter": 2.5, "standby": 2.8}
        assert node["pgha"]["last_action"] == "set_sync" and node["pgha"]["promotable"] is True


def test_node_json_on_the_standby(server):
    show(server, STANDBY, VIEW)
    node = json.loads(get(server, "/patroni")[2])
    assert node["role"] == "replica"
    # Patroni's xlog adds replayed_timestamp and paused (None/False without PostgreSQL's facts).
    assert node["xlog"] == {"received_location": 4500, "replayed_location": 4000,
                            "replayed_timestamp": None, "paused": False}
    assert node["lag_bytes"] == 500 and node["pgha"]["lease_remaining"] is None


def test_cluster_from_the_arbiter_status(server):
    show(server, STANDBY, VIEW)
    cluster = json.loads(get(server, "/cluster")[2])
    assert cluster["source"] == "arbiter" and cluster["epoch"] == 2 and cluster["primary"] == "pgsql-1"
    members = {m["name"]: m for m in cluster["members"]}
    assert members["pgsql-1"]["role"] == "leader" and members["pgsql-1"]["port"] == 6431
    assert members["pgsql-2"]["role"] == "sync_standby" and members["pgsql-2"]["state"] == "streaming"
    assert members["pgsql-2"]["lag"] == 500


def test_cluster_without_the_arbiter_status_is_this_node_alone(server):
    show(server, STANDBY, None)
    cluster = json.loads(get(server, "/cluster")[2])
    assert [m["name"] for m in cluster["members"]] == ["pgsql-2"]
    assert "this node only" in cluster["source"]


def test_history_records_role_changes_with_reasons():
    state = StatePublisher("pgsql-2", clock=lambda: NOW, history=History(length=3, wall=lambda: 1700000000.0))
    state.publish(replace(STANDBY, pg="stopped", running_as=None))
    state.publish(STANDBY)
    state.publish(STANDBY)        # no change: no event
    state.publish(replace(STANDBY, running_as="primary", acted_epoch=3, last_action="promote_running_standby"))
    state.publish(replace(STANDBY, running_as="primary", pg="stopped", acted_epoch=3, fences=1))
    events = health.role_history_json(state.history.events())
    assert [(e["from"], e["to"]) for e in events] == [("stopped", "standby"), ("standby", "primary"),
                                                      ("primary", "stopped")]
    assert events[1]["epoch"] == 3 and events[1]["reason"] == "promote_running_standby"
    assert events[2]["reason"] == "fenced: no lease left"
    assert events[0]["time"] == "2023-11-14T22:13:20.000+00:00"
    state.publish(STANDBY)        # bounded: the oldest goes
    assert len(state.history.events()) == 3


def test_history_endpoint(server):
    server.state.history.add(3, "standby", "primary", "promote_running_standby")
    # Our role history moved to /pgha/history: /history is Patroni's timeline list.
    assert json.loads(get(server, "/pgha/history")[2]) == [
        {"time": "2023-11-14T22:13:20.000+00:00", "epoch": 3, "from": "standby", "to": "primary",
         "reason": "promote_running_standby"}]


def parse(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families, family, name=None, **labels):
    values = [s.value for s in families[family].samples
              if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, (family, labels, values)
    return values[0]


def test_metrics_on_the_primary_parse_and_say_primary(server):
    show(server, PRIMARY, VIEW)
    status, headers, body = get(server, "/metrics")
    assert status == 200 and dict(headers)["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    families = parse(text)
    assert sample(families, "pgha_role", role="primary") == 1
    assert sample(families, "pgha_role", role="standby") == 0
    assert sample(families, "pgha_epoch") == 2 and sample(families, "pgha_timeline") == 2
    assert sample(families, "pgha_replication_lag_bytes", standby="pgsql-2") == 100
    assert sample(families, "pgha_sync_standby") == 1 and sample(families, "pgha_promotable") == 1
    assert sample(families, "pgha_lease_remaining_seconds", source="arbiter") == 2.5
    assert sample(families, "pgha_heartbeat_rtt_seconds") == 0.002
    assert families["pgha_failovers"].type == "counter"     # the parser strips _total
    assert sample(families, "pgha_failovers", "pgha_failovers_total") == 1
    assert sample(families, "pgha_fences", "pgha_fences_total") == 0
    assert families["pgha_ha_loop_duration_seconds"].type == "summary"
    assert sample(families, "pgha_ha_loop_duration_seconds", "pgha_ha_loop_duration_seconds_count") == 10
    assert sample(families, "pgha_ha_loop_duration_seconds", "pgha_ha_loop_duration_seconds_sum") == 0.5
    for name in families:       # every family has HELP and TYPE lines
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text


def test_metrics_on_the_standby_and_when_unknown():
    families = parse(metrics.render(STANDBY, VIEW, NOW))
    assert sample(families, "pgha_role", role="standby") == 1
    assert sample(families, "pgha_role", role="primary") == 0
    assert sample(families, "pgha_replication_lag_bytes", standby="pgsql-2") == 500
    assert sample(families, "pgha_lease_remaining_seconds", source="arbiter") == 0
    assert "pgha_sync_standby" not in families
    families = parse(metrics.render(replace(STANDBY, pg="stopped", running_as=None, heartbeat_rtt=None), None, NOW))
    assert sample(families, "pgha_role", role="none") == 1 and sample(families, "pgha_postgres_running") == 0
    for unknown in ("pgha_promotable", "pgha_replication_lag_bytes", "pgha_timeline", "pgha_heartbeat_rtt_seconds"):
        assert unknown not in families       # left out, not invented


def test_label_values_are_escaped():
    families = parse(metrics.render(replace(PRIMARY, replication=(ReplicationRow('a"b\\c', "streaming"),)), VIEW, NOW))
    assert sample(families, "pgha_replication_lag_bytes", standby='a"b\\c') == 5000


def test_answers_are_fast(server):
    show(server, PRIMARY, VIEW)
    started = time.perf_counter()
    for _ in range(50):
        get(server, "/metrics")
    assert (time.perf_counter() - started) / 50 < 0.01


def test_a_silent_client_is_dropped_and_others_are_served(server, monkeypatch):
    monkeypatch.setattr(api, "REQUEST_DEADLINE", 0.3)     # the whole request (was a per-read timeout)
    show(server, PRIMARY, VIEW)
    silent = socket.create_connection(server.server_address, timeout=5)
    try:
        silent.sendall(b"GET /primary HTTP/1.1\r\n")    # and never finishes the request
        assert get(server, "/primary")[0] == 200
        assert silent.recv(1024) == b""                 # closed by the server after its timeout
    finally:
        silent.close()


def test_a_flood_of_idle_connections_does_not_stop_answers(server, monkeypatch):
    monkeypatch.setattr(api, "REQUEST_DEADLINE", 1.0)
    show(server, PRIMARY, VIEW)
    idle = [socket.create_connection(server.server_address, timeout=5) for _ in range(api.MAX_CLIENTS + 20)]
    try:
        time.sleep(1.5)     # the idle ones time out; those over the limit were closed at once
        assert get(server, "/primary")[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_long_request_line_is_refused(server):
    status, _, _ = get(server, "/" + "x" * 70000)
    assert status == 414


def test_disabled_when_no_bind_address():
    state = StatePublisher("pgsql-1")
    assert api.start(None, 8008, state) is None
    assert api.start("", 8008, state) is None


def test_cluster_view_parses_the_arbiter_status():
    status = {"type": "status", "epoch": 4, "primary": "pgsql-2", "promotable": False, "switchover_to": None,
              "nodes": {"pgsql-1": None, "pgsql-2": {"last_seen_ago": 0.3, "report": Report(
                  pg="running", role="primary", lsn=7).to_wire()}}}
    view = ClusterView.from_status(status, NOW)
    assert view.epoch == 4 and view.primary == "pgsql-2" and view.promotable is False
    assert view.member("pgsql-1").report is None and view.member("pgsql-2").report.lsn == 7
    restart = {"member": "pgsql-1", "at": "2026-01-02T00:00:00Z", "in": 5.0, "pending": False}
    view = ClusterView.from_status({**status, "restarts_scheduled": [restart, "junk", {"member": 7}],
                                    "timelines": {"2": "pgsql-2", "x": "pgsql-1", "3": 5}}, NOW)
    assert view.scheduled_restarts == {"pgsql-1": restart} and view.timelines == {2: "pgsql-2"}
    for junk in (["2"], "2", {"\u00b2": "pgsql-1"}, {"9" * 40: "pgsql-1"}):
        assert ClusterView.from_status({**status, "timelines": junk}, NOW).timelines == {}
    with pytest.raises(ValueError):
        ClusterView.from_status({"type": "error", "error": "no"}, NOW)


def test_a_taken_port_is_one_clear_error(server):
    with pytest.raises(OSError, match=r"REST API cannot listen on 127.0.0.1:\d+: .*api_port"):
        api.start("127.0.0.1", server.server_address[1], StatePublisher("pgsql-1"))


# -- the cluster view is fetched only while the API is read ---------------------

class FakeFetch:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"type": "status", "epoch": self.calls, "primary": "pgsql-1", "nodes": {}}


def test_an_unread_api_asks_the_arbiter_nothing_and_a_reader_gets_a_fresh_view():
    clock = [100.0]
    publisher = StatePublisher("pgsql-1", clock=lambda: clock[0])
    fetch = FakeFetch()
    watcher = ClusterWatcher(publisher, fetch, interval=2.0, wait=5.0)
    watcher.start()
    try:
        time.sleep(0.2)
        assert fetch.calls == 0                     # idle: no status request
        assert publisher.read_cluster().epoch == 1  # no view yet: the reader waits for one
        clock[0] += 1.0
        assert publisher.read_cluster().epoch == 1  # within the interval: the same view, no request
        time.sleep(0.1)
        assert fetch.calls == 1
        clock[0] += 2.0                             # older than the interval, still usable
        assert publisher.read_cluster().epoch == 1  # served at once, refreshed behind it
        wait_for_value(lambda: publisher.cluster.epoch, 2)
    finally:
        watcher.stop()


def wait_for_value(read, value, timeout=5.0):
    deadline = time.monotonic() + timeout
    while read() != value:
        assert time.monotonic() < deadline, f"still {read()!r}, not {value!r}"
        time.sleep(0.01)


# -- Patroni's paths, filters and fields ------------------------------------------------

ASYNC_VIEW = replace(VIEW, members=(replace(VIEW.members[0], report=replace(VIEW.members[0].report,
                                                                             sync_standby="pgsql-3")),
                                    VIEW.members[1]))
ROLES = {   # Patroni's four states of a node: (snapshot, view)
    "primary": (PRIMARY, VIEW),
    "sync standby": (STANDBY, VIEW),
    "async standby": (STANDBY, ASYNC_VIEW),
    "stopped": (NodeSnapshot(name="pgsql-2", taken_at=NOW, pg="stopped", instruction_role="wait"), VIEW),
}
PATRONI_PATHS = {   # path: codes on (primary, sync standby, async standby, stopped), as Patroni answers
    "/": (200, 503, 503, 503),
    "/primary": (200, 503, 503, 503),
    "/master": (200, 503, 503, 503),
    "/leader": (200, 503, 503, 503),
    "/read-write": (200, 503, 503, 503),
    "/standby-leader": (503, 503, 503, 503),
    "/standby_leader": (503, 503, 503, 503),
    "/replica": (503, 200, 200, 503),
    "/read-only": (200, 200, 200, 503),
    "/sync": (503, 200, 503, 503),
    "/synchronous": (503, 200, 503, 503),
    "/async": (503, 503, 200, 503),
    "/asynchronous": (503, 503, 200, 503),
    "/read-only-sync": (200, 200, 503, 503),
    "/quorum": (503, 503, 503, 503),
    "/read-only-quorum": (200, 503, 503, 503),
    "/health": (200, 200, 200, 503),
    "/liveness": (200, 200, 200, 200),
    "/readiness": (200, 200, 200, 503),
    "/readiness?lag=100": (200, 503, 503, 503),
    "/readiness?lag=1MB": (200, 200, 200, 503),
    # the standby has received to 4500 and replayed to 4000 of the primary's 5000
    "/readiness?lag=700": (200, 503, 503, 503),
    "/readiness?lag=700&mode=apply": (200, 503, 503, 503),
    "/readiness?lag=700&mode=write": (200, 200, 200, 503),
    "/readiness?lag=1000&mode=apply": (200, 200, 200, 503),
    "/sync?lag=100": (503, 503, 503, 503),
    "/async?lag=1kB": (503, 503, 200, 503),
    "/replica?replication_state=streaming": (503, 200, 200, 503),
    "/replica?replication_state=in+archive+recovery": (503, 503, 503, 503),
    "/patroni": (200, 200, 200, 200),
    "/cluster": (200, 200, 200, 200),
    "/config": (200, 200, 200, 200),
    "/history": (200, 200, 200, 200),
}


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("role", list(ROLES))
def test_patroni_paths_in_each_role(server, role, method):
    show(server, *ROLES[role])
    column = list(ROLES).index(role)
    got = {path: get(server, path, method)[0] for path in PATRONI_PATHS}
    assert got == {path: codes[column] for path, codes in PATRONI_PATHS.items()}


def test_sync_and_async_need_the_arbiter_status(server):
    show(server, STANDBY, None)     # Patroni answers 503 on both without its DCS
    assert (get(server, "/sync")[0], get(server, "/async")[0], get(server, "/replica")[0]) == (503, 503, 200)


def test_tag_filters(server):
    tagged = replace(STANDBY, tags={"dc": "east", "nofailover": True, "weight": 3})
    show(server, tagged, VIEW)
    assert get(server, "/replica?tag_dc=east")[0] == 200
    assert get(server, "/replica?tag_dc=east&tag_nofailover=true&tag_weight=3")[0] == 200
    assert get(server, "/replica?tag_dc=west")[0] == 503
    assert get(server, "/replica?tag_rack=1")[0] == 503           # a tag the node does not have
    assert get(server, "/read-only?tag_nofailover=True")[0] == 503   # non-strings compare lower-case
    show(server, replace(PRIMARY, tags={"dc": "east"}), VIEW)
    assert get(server, "/primary?tag_dc=west")[0] == 200          # leader paths ignore tags
    assert get(server, "/read-only?tag_dc=west")[0] == 503
    show(server, replace(STANDBY, tags={"noloadbalance": True}), VIEW)
    assert get(server, "/replica")[0] == 503 and get(server, "/health")[0] == 200


def test_liveness_holds_in_pause_when_the_loop_is_stuck(server):
    stuck = replace(PRIMARY, taken_at=NOW - 30)
    show(server, stuck, VIEW)
    assert get(server, "/liveness")[0] == 503
    show(server, stuck, replace(VIEW, paused=True))
    assert get(server, "/liveness")[0] == 200


FACTS = pg_facts.PgFacts(
    server_version=150004, postmaster_start_time=1700000000.5, system_identifier="7268616322854375442",
    replay_timestamp=1700000100.25, replay_paused=True, pending_restart=True,
    senders=(pg_facts.Sender("pgsql-2", "repuser", "127.0.0.1", 1),),
    history=(pg_facts.TimelineSwitch(1, 25623960, "no recovery target specified", 1700000050.0),))


def test_patroni_fields_on_the_primary(server):
    show(server, replace(PRIMARY, scope="main", tags={"clonefrom": True}, facts=FACTS,
                         arbiter_last_seen=1700000200.7), VIEW)
    node = json.loads(get(server, "/patroni")[2])
    assert node["server_version"] == 150004
    assert node["postmaster_start_time"] == "2023-11-14 22:13:20.500000+00:00"
    assert node["database_system_identifier"] == "7268616322854375442"
    assert node["dcs_last_seen"] == 1700000200 and node["tags"] == {"clonefrom": True}
    assert node["pending_restart"] is True and "cluster_unlocked" not in node and "pause" not in node
    assert node["patroni"] == {"version": health.PATRONI_VERSION, "scope": "main", "name": "pgsql-1"}
    row = node["replication"][0]
    assert (row["usename"], row["client_addr"], row["sync_priority"], row["sync_state"]) == \
        ("repuser", "127.0.0.1", 1, "sync")
    assert "sync_standby" not in node and node["pgha"]["sync_standby"] == "pgsql-2"
    assert json.loads(get(server, "/history")[2]) == [
        [1, 25623960, "no recovery target specified", "2023-11-14T22:14:10+00:00"]]
    # Patroni's new_leader: the member that made timeline 2, from the arbiter's status.
    show(server, replace(PRIMARY, facts=FACTS), replace(VIEW, timelines={2: "pgsql-1", 3: "pgsql-2"}))
    assert json.loads(get(server, "/history")[2]) == [
        [1, 25623960, "no recovery target specified", "2023-11-14T22:14:10+00:00", "pgsql-1"]]


def test_patroni_fields_on_the_standby(server):
    show(server, replace(STANDBY, facts=FACTS), VIEW)
    assert json.loads(get(server, "/patroni")[2])["sync_standby"] is True
    show(server, replace(STANDBY, facts=FACTS), replace(VIEW, paused=True, primary=None))
    node = json.loads(get(server, "/patroni")[2])
    assert "sync_standby" not in node and node["replication_state"] == "streaming"
    assert node["xlog"]["replayed_timestamp"] == "2023-11-14 22:15:00.250000+00:00"
    assert node["xlog"]["paused"] is True
    assert node["pause"] is True and node["cluster_unlocked"] is True
    show(server, STANDBY, ASYNC_VIEW)
    assert "sync_standby" not in json.loads(get(server, "/patroni")[2])


def test_cluster_in_patroni_shape(server):
    scheduled = {"at": "2026-01-01T00:00:00+00:00", "in": 60.0, "to": "pgsql-2"}
    primary = replace(VIEW.members[0], report=replace(VIEW.members[0].report, api_url="http://10.0.0.1:8008/patroni",
                                                      tags={"nofailover": False, "dc": "west"}))
    stale_ours = replace(VIEW.members[1], report=replace(VIEW.members[1].report, tags={"dc": "old"}))
    show(server, replace(STANDBY, scope="main", tags={"dc": "east"}),
         replace(VIEW, scheduled_switchover=scheduled, members=(primary, stale_ours),
                 scheduled_restarts={"pgsql-2": {"member": "pgsql-2", "at": "2026-01-02T00:00:00Z", "pending": True}}))
    cluster = json.loads(get(server, "/cluster")[2])
    assert cluster["scope"] == "main"
    assert cluster["scheduled_switchover"] == {"at": "2026-01-01T00:00:00+00:00", "from": "pgsql-1",
                                               "to": "pgsql-2"}
    members = {m["name"]: m for m in cluster["members"]}
    assert "lag" not in members["pgsql-1"] and members["pgsql-2"]["tags"] == {"dc": "east"}   # ours as they are now
    assert members["pgsql-1"]["tags"] == {"nofailover": False, "dc": "west"}
    assert members["pgsql-1"]["api_url"] == "http://10.0.0.1:8008/patroni" and "api_url" not in members["pgsql-2"]
    assert members["pgsql-2"]["scheduled_restart"] == {"schedule": "2026-01-02T00:00:00Z", "restart_pending": True}
    assert "scheduled_restart" not in members["pgsql-1"]
    assert (members["pgsql-2"]["receive_lag"], members["pgsql-2"]["replay_lag"]) == (500, 1000)
    show(server, STANDBY, replace(VIEW, members=(VIEW.members[0], Member("pgsql-2", None, None))))
    members = {m["name"]: m for m in json.loads(get(server, "/cluster")[2])["members"]}
    assert members["pgsql-2"]["lag"] == "unknown" and members["pgsql-2"]["role"] == "replica"


def test_config(server):
    show(server, STANDBY, replace(VIEW, paused=True))
    assert json.loads(get(server, "/config")[2]) == {"ttl": 1.8, "loop_wait": 0.5, "synchronous_mode": True,
                                                     "synchronous_mode_strict": True, "pause": True,
                                                     "postgresql": {"parameters": {}}}
    show(server, replace(STANDBY, cluster_parameters={"work_mem": "8MB", "max_connections": 200}), VIEW)
    assert json.loads(get(server, "/config")[2])["postgresql"] == {
        "parameters": {"work_mem": "8MB", "max_connections": 200}}


def test_timeline_history_file_parsing():
    text = "1\t0/1870B98\tno recovery target specified\n\n2\t0/3000000\tbefore 2000-01-01\n"
    assert pg_facts.parse_history(text, {2: 10.0}) == (
        pg_facts.TimelineSwitch(1, 0x1870B98, "no recovery target specified", 10.0),
        pg_facts.TimelineSwitch(2, 0x3000000, "before 2000-01-01", None))


def test_the_publisher_keeps_when_the_arbiter_last_answered():
    walls = iter([100.0, 200.0, 300.0])
    state = StatePublisher("pgsql-2", clock=lambda: NOW, wall=lambda: next(walls))
    state.publish(STANDBY)
    assert state.snapshot.arbiter_last_seen == 100.0
    state.publish(replace(STANDBY, arbiter_reachable=False))
    assert state.snapshot.arbiter_last_seen == 100.0      # kept while the arbiter is silent
    state.publish(STANDBY)
    assert state.snapshot.arbiter_last_seen == 200.0


# -- Patroni's metric families -----------------------------------------------------

def test_patroni_metrics_with_patronis_meanings():
    primary = parse(metrics.render(replace(PRIMARY, scope="main", facts=FACTS, arbiter_last_seen=1700000200.0),
                                   VIEW, NOW))
    standby = parse(metrics.render(replace(STANDBY, scope="main", facts=FACTS), VIEW, NOW))
    # Same ending, opposite sides: ours is 1 on the primary, Patroni's on the synchronous standby.
    assert sample(primary, "pgha_sync_standby") == 1 and sample(primary, "patroni_sync_standby") == 0
    assert sample(standby, "patroni_sync_standby") == 1
    assert sample(parse(metrics.render(STANDBY, ASYNC_VIEW, NOW)), "patroni_sync_standby") == 0
    assert (sample(primary, "patroni_primary"), sample(primary, "patroni_replica")) == (1, 0)
    assert (sample(standby, "patroni_primary"), sample(standby, "patroni_replica")) == (0, 1)
    assert sample(primary, "patroni_xlog_location") == 5000 and sample(standby, "patroni_xlog_location") == 0
    assert sample(standby, "patroni_xlog_received_location") == 4500
    assert sample(standby, "patroni_xlog_replayed_location") == 4000
    assert sample(standby, "patroni_xlog_replayed_timestamp") == 1700000100.25
    assert sample(standby, "patroni_xlog_paused") == 1 and sample(standby, "patroni_postgres_streaming") == 1
    assert sample(primary, "patroni_postgres_server_version") == 150004
    assert sample(primary, "patroni_postmaster_start_time") == 1700000000.5
    assert sample(primary, "patroni_pending_restart") == 1 and sample(primary, "patroni_is_paused") == 0
    assert sample(primary, "patroni_dcs_last_seen") == 1700000200
    assert sample(primary, "patroni_cluster_unlocked") == 0 and sample(primary, "patroni_postgres_timeline") == 2
    assert sample(primary, "patroni_version") == 40000 and sample(primary, "patroni_postgres_state") == 5
    unlocked = parse(metrics.render(STANDBY, replace(VIEW, primary=None, paused=True), NOW))
    assert sample(unlocked, "patroni_cluster_unlocked") == 1 and sample(unlocked, "patroni_is_paused") == 1
    stopped = parse(metrics.render(ROLES["stopped"][0], VIEW, NOW))
    assert sample(stopped, "patroni_postgres_running") == 0 and sample(stopped, "patroni_postgres_state") == 12
    assert sample(stopped, "patroni_postgres_server_version") == 0
    for families in (primary, standby, stopped):     # Patroni's labels on every series, ours included
        for family in families.values():
            for s in family.samples:
                assert s.labels["name"] and "scope" in s.labels, (family.name, s)
    assert {s.labels["scope"] for f in primary.values() for s in f.samples} == {"main"}


def promtool_problems(text):
    """promtool check metrics' complaints about an exposition (empty: none)."""
    import shutil
    import subprocess
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: bin/setup installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip() if result.returncode else ""


@pytest.mark.parametrize("role", list(ROLES))
def test_promtool_finds_no_problem(role):
    snapshot, view = ROLES[role]
    assert promtool_problems(metrics.render(replace(snapshot, scope="main", facts=FACTS), view, NOW)) == ""


def test_promtool_catches_a_planted_problem():
    text = metrics.render(PRIMARY, VIEW, NOW)
    planted = text.replace("# TYPE pgha_failovers_total counter", "# TYPE pgha_failovers_total gauge") \
        .replace("pgha_failovers_total", "pgha_failovers")
    planted = planted.replace("# TYPE pgha_failovers gauge", "# TYPE pgha_failovers counter")
    assert "_total" in promtool_problems(planted)


class _Connection:
    """A psycopg2 connection's shape: each query is recorded; `gate`, when
    set, holds every query until it is set."""

    def __init__(self, queries, rows, gate=None):
        self.queries, self.rows, self.gate, self.closed = queries, rows, gate, False

    def cursor(self):
        connection = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def execute(self, sql, params=None):
                connection.queries.append(sql)
                if connection.gate is not None:
                    connection.gate.wait(10)
                if sql != pg_facts.FACTS_SQL:
                    raise AssertionError("no history file: not read")

            def fetchall(self):
                return connection.rows(len(connection.queries))
        return Cursor()

    def close(self):
        self.closed = True


def test_facts_are_read_at_most_every_interval_and_at_once_after_a_stop(tmp_path):
    now = [0.0]
    queries = []

    class Settings:
        api_bind, tags, pgdata, disk_warning_percent = "127.0.0.1", {"dc": "east"}, str(tmp_path), 90

    def rows(count):
        return [(150004, 1.0, "1", None, False, count > 3, [], [])]
    watcher = node_facts.FactsWatcher(lambda: Settings, lambda: _Connection(queries, rows), clock=lambda: now[0])
    assert watcher.read_once().facts is None and queries == []     # PostgreSQL not running yet: no query
    watcher.note("running")
    first = watcher.read_once()
    assert first.facts is not None and first.disk is not None and len(queries) == 1
    now[0] = 1.9
    assert watcher.read_once().facts is first.facts and len(queries) == 1     # within the interval: the last ones
    now[0] = 2.0
    assert watcher.read_once().facts is not first.facts and len(queries) == 2
    watcher.note("stopped")
    assert watcher.read_once().facts is None
    watcher.note("running")
    assert watcher.read_once().facts is not None and len(queries) == 3       # running again: read at once
    Settings.api_bind = None
    assert watcher.read_once().facts is None and len(queries) == 3           # no REST API: no query
    assert pg_facts.snapshot_fields(Settings, "main", None) == {"scope": "main", "tags": {"dc": "east"}, "facts": None}


def test_the_facts_thread_queries_by_itself_and_a_hung_query_does_not_wedge_it(tmp_path):
    """It reads on its own (the HA loop only notes PostgreSQL's state:
    test_node_actions checks the loop never queries for facts); once a hung
    query returns, a stop noted meanwhile is taken at once."""
    queries, gate = [], threading.Event()

    class Settings:
        api_bind, tags, pgdata, disk_warning_percent = "127.0.0.1", {}, str(tmp_path), 90
    watcher = node_facts.FactsWatcher(lambda: Settings, lambda: _Connection(queries, lambda n: [], gate))
    watcher.start()
    try:
        watcher.note("running")
        wait_until(lambda: queries, 5, "the thread's own query")
        watcher.note("stopped")         # while its query hangs
        gate.set()
        wait_until(lambda: watcher.latest.disk is not None and watcher.latest.facts is None, 5,
                   "a reading taken after the hung query, with PostgreSQL stopped")
    finally:
        gate.set()
        watcher.stop()
        watcher.join(5)
    assert not watcher.is_alive()


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {seconds}s"
        time.sleep(0.01)


def test_a_slow_loris_of_hundreds_cannot_blind_the_primary_check(server, caplog):
    """Issue 19: 33 connections sending a byte a second made every /primary
    probe fail (0 of 60). 300 such clients and 100 silent ones now: the
    probe (HAProxy's default 2 s check timeout) keeps getting 200, and each
    source's drops are logged once."""
    limits.raise_open_files_limit()
    show(server, PRIMARY, VIEW)
    caplog.set_level(logging.WARNING, logger=api.log.name)
    answers, abusers = abusers_mod.probe_under_loris(server.server_address[1], slow=300, flood=100, seconds=8.0)
    share = abusers_mod.summary(answers)[0]
    print(f"/primary under a slow-loris of 300 + 100 silent: {abusers_mod.describe(answers)} "
          f"({abusers.opened} attacker connections opened, {abusers.dropped} dropped by the server)")
    assert abusers.opened >= 400 and abusers.dropped > 0
    assert share >= 0.9      # 0 of 40 before; 100% since the listen queue holds the flood (a dropped SYN costs 1 s)
    logged = [r.getMessage() for r in caplog.records if r.name == api.log.name]
    assert logged, "the drops were not logged"
    # thousands of drops; at most one line per source (2) and reason (evicted, refused, deadline)
    assert len(logged) <= 6, f"logged more than once per source and reason: {logged}"


def test_a_check_accepted_before_its_request_arrived_waits_for_a_slot(server):
    """With every slot held by slow clients, a connection whose request comes a
    moment after it was accepted waits (the waiting room) and is then served,
    taking a slow client's place; one that stays silent is turned away (503)."""
    show(server, PRIMARY, VIEW)
    server.slots.stranger_slots = server.slots.per_source = 2
    slow = [socket.create_connection(server.server_address, timeout=5) for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(b"GET /primary HTTP/1.1\r\n")      # never finished
        wait_for_value(lambda: server.slots.counts()[1], 2)     # every slot held by a slow client
        late = socket.create_connection(server.server_address, timeout=5)
        silent = socket.create_connection(server.server_address, timeout=5)
        parked_at = time.monotonic()
        wait_for_value(lambda: len(server.waiting_room.parked), 2)     # both accepted, silent, waiting
        late.sendall(b"GET /primary HTTP/1.0\r\n\r\n")
        assert late.recv(64).startswith(b"HTTP/1.0 200")
        assert silent.recv(64).startswith(b"HTTP/1.0 503")
        assert time.monotonic() - parked_at >= api.PARK_WAIT * 0.9, "turned away before it could wait"
        late.close()
        silent.close()
    finally:
        for sock in slow:
            sock.close()


@pytest.fixture
def guarded(tmp_path):
    from pgha import keys
    keys.generate(str(tmp_path), ["pgsql-1", "pgsql-2"])
    state = StatePublisher("pgsql-1", clock=lambda: NOW, history=History(wall=lambda: 1700000000.0))
    srv = api.ApiServer("127.0.0.1", 0, state, reader=api.reader_verifier(str(tmp_path / "reader.keys"), "pgsql-1"))
    srv.start()
    yield srv, tmp_path
    srv.stop()


def test_cluster_behind_the_reader_key_when_a_setting_asks_for_it(guarded, capsys):
    """Issue 19: /cluster (every member's view) was readable without a key.
    With api_cluster_key_file set it answers only a fresh status request
    signed with the reader's key (pgha-ctl status --print-signed), once."""
    from pgha import ctl
    server, folder = guarded
    show(server, PRIMARY, VIEW)
    status, _, body = get(server, "/cluster")
    assert status == 401 and b"--print-signed" in body
    assert get(server, "/primary")[0] == 200                   # the health checks stay open
    assert ctl.main(["--arbiter", "127.0.0.1:1", "--key-file", str(folder / "reader.keys"),
                     "status", "--print-signed"]) == 0
    signed = capsys.readouterr().out.strip()
    status, _, body = get(server, "/cluster", headers={api.SIGNED_HEADER: signed})
    assert status == 200 and json.loads(body)["members"]
    assert get(server, "/cluster", headers={api.SIGNED_HEADER: signed})[0] == 401      # replayed
    assert ctl.main(["--arbiter", "127.0.0.1:1", "--key-file", str(folder / "pgsql-1.keys"),
                     "status", "--print-signed"]) == 2                                  # a node holds no reader key
    forged = json.dumps({**json.loads(signed), "nonce": "0" * 32})
    assert get(server, "/cluster", headers={api.SIGNED_HEADER: forged})[0] == 401     # MAC no longer matches
    assert get(server, "/cluster", headers={api.SIGNED_HEADER: "{not json"})[0] == 401


def test_an_unsafe_reader_key_file_is_one_line(tmp_path):
    from pgha import keys
    keys.generate(str(tmp_path), ["pgsql-1", "pgsql-2"])
    with pytest.raises(OSError) as err:
        api.reader_verifier(str(tmp_path / "pgsql-1.keys"), "pgsql-1")
    assert "holds neither" in str(err.value) and "\n" not in str(err.value)
