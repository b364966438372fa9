"""The REST API (pgha/api.py, health.py, metrics.py) on fake snapshots:
every health endpoint's status code in every role and state, the JSON
bodies, /metrics through a real Prometheus parser, and the HTTP edges
(404, 405, HEAD/OPTIONS, bad ?lag=, slow clients, a flood)."""
import http.client
import json
import socket
import time
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgha import api, health, metrics
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
    assert node["xlog"] == {"received_location": 4500, "replayed_location": 4000}
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
    events = health.history_json(state.history.events())
    assert [(e["from"], e["to"]) for e in events] == [("stopped", "standby"), ("standby", "primary"),
                                                      ("primary", "stopped")]
    assert events[1]["epoch"] == 3 and events[1]["reason"] == "promote_running_standby"
    assert events[2]["reason"] == "fenced: no lease left"
    assert events[0]["time"] == "2023-11-14T22:13:20.000+00:00"
    state.publish(STANDBY)        # bounded: the oldest goes
    assert len(state.history.events()) == 3


def test_history_endpoint(server):
    server.state.history.add(3, "standby", "primary", "promote_running_standby")
    assert json.loads(get(server, "/history")[2]) == [
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
    monkeypatch.setattr(api._Handler, "timeout", 0.3)
    show(server, PRIMARY, VIEW)
    silent = socket.create_connection(server.server_address, timeout=5)
    try:
        silent.sendall(b"GET /primary HTTP/1.1\r\n")    # and never finishes the request
        assert get(server, "/primary")[0] == 200
        assert silent.recv(1024) == b""                 # closed by the server after its timeout
    finally:
        silent.close()


def test_a_flood_of_idle_connections_does_not_stop_answers(server, monkeypatch):
    monkeypatch.setattr(api._Handler, "timeout", 1.0)
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
