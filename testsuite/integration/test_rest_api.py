"""The nodes' REST API on a real local cluster: health codes and /metrics
(parsed by prometheus_client) before and after a planned switchover, never
two nodes answering /primary with 200 at once, and the role history."""
import json
import threading
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from pgha import ctl, disk, rewind
from testsuite.integration.conftest import wait_for
from testsuite.integration.test_cluster import primary_is, sql


def get(cluster, node, path):
    url = f"http://127.0.0.1:{cluster.api_ports[node]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


def codes(cluster, node, paths=("/primary", "/replica", "/read-only", "/health", "/liveness", "/readiness")):
    return {path: get(cluster, node, path)[0] for path in paths}


def role_metric(cluster, node):
    status, body = get(cluster, node, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    roles = {s.labels["role"]: s.value for s in families["pgha_role"].samples}
    return max(roles, key=roles.get), families


def patroni_fields_are_real(cluster):
    """The fields Patroni's tools read, from the running PostgreSQL."""
    # Who each sender is comes from the facts query, at most FACTS_INTERVAL
    # (2 s) old: one read after the standby connected names its user.
    def primary_with_its_sender():
        body = json.loads(get(cluster, "pgsql-1", "/patroni")[1])
        rows = body.get("replication") or []
        return body if len(rows) == 1 and rows[0]["usename"] else None
    primary = wait_for(primary_with_its_sender, 10, "the primary's facts naming its standby")
    standby = json.loads(get(cluster, "pgsql-2", "/patroni")[1])
    assert primary["server_version"] >= 120000 and primary["patroni"]["scope"] == "main"
    assert primary["database_system_identifier"] == standby["database_system_identifier"]
    assert primary["postmaster_start_time"] and primary["dcs_last_seen"] > time.time() - 10
    row, = primary["replication"]
    assert row["application_name"] == "pgsql-2" and row["usename"] and row["sync_state"] == "sync"
    assert standby["sync_standby"] is True and standby["replication_state"] == "streaming"
    assert standby["xlog"]["paused"] is False and "sync_standby" not in primary
    assert "pending_restart" not in primary and "cluster_unlocked" not in primary


def test_health_codes_and_metrics_follow_a_switchover(local_cluster):
    cluster = local_cluster
    everything = {"/health": 200, "/liveness": 200, "/readiness": 200, "/read-only": 200}
    wait_for(lambda: codes(cluster, "pgsql-2")["/replica"] == 200, 20, "pgsql-2 /replica 200")
    assert codes(cluster, "pgsql-1") == {**everything, "/primary": 200, "/replica": 503}
    assert codes(cluster, "pgsql-2") == {**everything, "/primary": 503, "/replica": 200}
    role, families = role_metric(cluster, "pgsql-1")
    assert role == "primary"
    patroni_fields_are_real(cluster)
    assert [s.value for s in families["pgha_epoch"].samples] == [1]
    assert [s.value for s in families["pgha_sync_standby"].samples] == [1]
    assert role_metric(cluster, "pgsql-2")[0] == "standby"
    # The disks under PostgreSQL, read by the node itself (pgha/disk.py).
    disk_use = wait_for(lambda: json.loads(get(cluster, "pgsql-1", "/patroni")[1])["pgha"]["disk"], 10,
                        "pgsql-1's disk reading")
    assert disk_use["data"]["size_bytes"] > disk_use["data"]["free_bytes"] > 0 and disk_use["wal_directory_bytes"] >= 16 * 2**20
    assert [s.value for s in families["pgha_wal_directory_bytes"].samples] != []
    # The managed WAL cap for an absent standby reaches PostgreSQL (test_wal_retention sets its own).
    cap = rewind.max_slot_wal_keep_size({}, disk.filesystem(cluster.pgdata("pgsql-1") + "/pg_wal").total_bytes)
    assert sql(cluster, "pgsql-1", "SELECT setting || unit FROM pg_settings "
                                   "WHERE name = 'max_slot_wal_keep_size'")[0][0] == cap

    both = []       # moments both nodes said 200 on /primary
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if get(cluster, "pgsql-1", "/primary")[0] == 200 and get(cluster, "pgsql-2", "/primary")[0] == 200:
                both.append(time.monotonic())
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file", cluster.key_file("operator"),
                         "switchover", "--force"]) == 0
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "switchover to pgsql-2")
        wait_for(lambda: codes(cluster, "pgsql-2")["/primary"] == 200, 20, "pgsql-2 /primary 200")
        wait_for(lambda: codes(cluster, "pgsql-1")["/replica"] == 200, 60, "pgsql-1 /replica 200")
    finally:
        stop.set()
        watcher.join()
    assert both == [], "two nodes answered /primary with 200 at once"
    assert codes(cluster, "pgsql-2") == {**everything, "/primary": 200, "/replica": 503}
    assert codes(cluster, "pgsql-1") == {**everything, "/primary": 503, "/replica": 200}

    role, families = role_metric(cluster, "pgsql-2")
    assert role == "primary"
    assert [s.value for s in families["pgha_epoch"].samples] == [2]
    assert [s.value for s in families["pgha_failovers"].samples] == [1]
    assert role_metric(cluster, "pgsql-1")[0] == "standby"

    history = json.loads(get(cluster, "pgsql-2", "/pgha/history")[1])
    assert any(e["from"] == "standby" and e["to"] == "primary" and e["epoch"] == 2 for e in history), history
    # Patroni's /history: the timeline switch the promotion made, from PostgreSQL's history file.
    # Its new_leader (the member that made timeline 2) comes from the arbiter's status.
    switches = wait_for(lambda: (lambda rows: rows if rows and len(rows[0]) == 5 else None)(
        json.loads(get(cluster, "pgsql-2", "/history")[1])), 10, "pgsql-2's /history with its new leader")
    assert [row[0] for row in switches] == [1] and switches[0][1] > 0 and switches[0][3], switches
    assert switches[0][4] == "pgsql-2", switches
    def cluster_at_epoch_2():
        body = json.loads(get(cluster, "pgsql-1", "/cluster")[1] or b"{}")
        return body if body.get("epoch") == 2 else None
    members = {m["name"]: m for m in wait_for(cluster_at_epoch_2, 10, "pgsql-1's /cluster at epoch 2")["members"]}
    assert members["pgsql-2"]["role"] == "leader"
    # Every member's api_url, from its own reports to the arbiter (Patroni's /cluster has them).
    assert {name: m.get("api_url") for name, m in members.items()} == {
        name: f"http://{cluster.hosts[name]}:{cluster.api_ports[name]}/patroni" for name in ("pgsql-1", "pgsql-2")}
