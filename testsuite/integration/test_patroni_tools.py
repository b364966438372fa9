"""Patroni's users' own tools against a real local cluster, unchanged:
HAProxy with Patroni's example haproxy.cfg (Debian's patroni package; a
temp copy with the ports rewritten) routes writes only to the primary and
reads only to the standby, before and after a switchover and a failover;
check_patroni (PyPI) reports the state each node and the cluster should
have, and changes its answer when the state changes; and the harness's
`python -m harness.haproxy --cluster DIR` on a loaded cluster."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psycopg2
import pytest

from harness.haproxy import PATRONI_EXAMPLE, PatroniExampleHAProxy, app_password, binary
from harness.localcluster import APP_USER
from pgha import ctl
from testsuite.integration.conftest import superuser, wait_for
from testsuite.integration.test_cluster import primary_is

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK_PATRONI = os.path.join(os.path.dirname(sys.executable), "check_patroni")
OK, WARNING, CRITICAL = 0, 1, 2
# Patroni's example checks every 3 s, down after 3 failures, up after 2: a change takes up to ~10 s.
ROUTE_WAIT = 40


def where(port, dsn_password, tries=6):
    """(server port, in recovery) of `tries` fresh connections through an HAProxy port."""
    seen = set()
    for _ in range(tries):
        with psycopg2.connect(host="127.0.0.1", port=port, dbname="testdb", user=APP_USER, password=dsn_password,
                              connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute("SELECT inet_server_port(), pg_is_in_recovery()")
            seen.add(cur.fetchone())
        conn.close()
    return seen


def routed(proxy, primary, standby):
    """HAProxy's own view: writes UP only on `primary`, reads UP only on `standby` (None: on nobody)."""
    def check():
        servers = proxy.servers()
        return all(servers.get((proxy.write_backend, name)) == ("UP" if name == primary else "DOWN")
                   for name in proxy.cluster.nodes) and \
            all(servers.get((proxy.read_backend, name)) == ("UP" if name == standby else "DOWN")
                for name in proxy.cluster.nodes)
    return check


def assert_routes(cluster, proxy, primary, standby):
    """Wait for HAProxy to route as it should; returns how long that took."""
    start = time.monotonic()
    wait_for(routed(proxy, primary, standby), ROUTE_WAIT, f"HAProxy: writes to {primary}, reads to {standby}")
    took = time.monotonic() - start
    password = app_password(cluster)
    assert where(proxy.rw_port, password) == {(cluster.pg_ports[primary], False)}
    if standby is not None:
        assert where(proxy.ro_port, password) == {(cluster.pg_ports[standby], True)}
    return took


@pytest.mark.skipif(binary() is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_patroni_haproxy_cfg_routes(local_cluster):
    cluster = local_cluster
    assert os.path.exists(PATRONI_EXAMPLE), f"{PATRONI_EXAMPLE} missing: bin/setup installs Debian's patroni"
    proxy = PatroniExampleHAProxy(cluster, os.path.join(cluster.dir, "haproxy-patroni"),
                                  cluster.base_port + 30, cluster.base_port + 31, cluster.base_port + 32)
    proxy.start()
    try:
        with open(proxy.config) as f:
            assert "option httpchk\n" in f.read()      # Patroni's check: OPTIONS /
        assert_routes(cluster, proxy, "pgsql-1", "pgsql-2")
        assert ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file",
                         cluster.key_file("operator"), "switchover", "--force"]) == 0
        wait_for(primary_is(cluster, "pgsql-2", epoch=2), 60, "switchover to pgsql-2")
        after_switchover = assert_routes(cluster, proxy, "pgsql-2", "pgsql-1")
        cluster.kill_host("pgsql-2")
        wait_for(primary_is(cluster, "pgsql-1", epoch=3), 60, "failover to pgsql-1")
        after_failover = assert_routes(cluster, proxy, "pgsql-1", None)
        print(f"\nPatroni's haproxy.cfg: HAProxy's routes right {after_switchover:.1f} s after the switchover "
              f"and {after_failover:.1f} s after the failover (as the arbiter's status showed them)")
        cluster.start_node("pgsql-2")          # the old primary's host comes back as the standby
        assert_routes(cluster, proxy, "pgsql-1", "pgsql-2")
    finally:
        proxy.stop()


# -- check_patroni ---------------------------------------------------------------------

def check_patroni(cluster, node, *args):
    """check_patroni's (exit code, output) against one node's REST API."""
    endpoint = f"http://127.0.0.1:{cluster.api_ports[node]}"
    result = subprocess.run([CHECK_PATRONI, "-e", endpoint, "--timeout", "5", *args],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, (result.stdout + result.stderr).strip()


def code(cluster, node, *args):
    return check_patroni(cluster, node, *args)[0]


def operator(cluster, *args):
    return ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file", cluster.key_file("operator"),
                     *args])


def api_json(cluster, node, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.api_ports[node]}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_check_patroni_node_and_cluster(local_cluster):
    cluster = local_cluster
    assert os.path.exists(CHECK_PATRONI), "check_patroni is missing: requirements.txt installs it"
    wait_for(lambda: code(cluster, "pgsql-2", "node_is_replica", "--is-sync") == OK, 30,
             "check_patroni: pgsql-2 is the synchronous replica")
    node_checks = {     # (args): (on the primary, on the standby)
        ("node_is_primary",): (OK, CRITICAL),
        ("node_is_leader",): (OK, CRITICAL),
        ("node_is_leader", "--is-standby-leader"): (CRITICAL, CRITICAL),
        ("node_is_replica",): (CRITICAL, OK),
        ("node_is_replica", "--is-sync"): (CRITICAL, OK),
        ("node_is_replica", "--is-async"): (CRITICAL, CRITICAL),
        ("node_is_replica", "--max-lag", "1MB"): (CRITICAL, OK),
        ("node_is_alive",): (OK, OK),
        ("node_is_pending_restart",): (OK, OK),
        ("node_patroni_version", "--patroni-version", "4.0.0"): (OK, OK),
        ("node_patroni_version", "--patroni-version", "3.0.0"): (CRITICAL, CRITICAL),
        ("node_tl_has_changed", "--timeline", "1"): (OK, OK),
        ("node_tl_has_changed", "--timeline", "7"): (CRITICAL, CRITICAL),
    }
    config_hash = hashlib.md5(json.dumps(api_json(cluster, "pgsql-1", "/config")).encode()).hexdigest()
    cluster_checks = {  # the same answer from either node
        ("cluster_has_leader",): OK,
        ("cluster_has_replica", "--critical", "1:", "--sync-critical", "1:"): OK,
        ("cluster_has_replica", "--critical", "2:"): CRITICAL,
        ("cluster_node_count", "--critical", "2:", "--healthy-critical", "2:"): OK,
        ("cluster_node_count", "--healthy-critical", "3:"): CRITICAL,
        ("cluster_is_in_maintenance",): OK,
        ("cluster_has_scheduled_action",): OK,
        ("cluster_config_has_changed", "--hash", config_hash): OK,
        ("cluster_config_has_changed", "--hash", "0" * 32): CRITICAL,
    }
    got = {args: (code(cluster, "pgsql-1", *args), code(cluster, "pgsql-2", *args)) for args in node_checks}
    assert got == node_checks
    for node in cluster.nodes:
        got = {args: code(cluster, node, *args) for args in cluster_checks}
        assert got == cluster_checks, node

    # The answers follow the state: pause, a scheduled switchover, a parameter waiting for a restart.
    assert operator(cluster, "pause") == 0
    wait_for(lambda: code(cluster, "pgsql-2", "cluster_is_in_maintenance") == CRITICAL, 20, "maintenance seen")
    assert operator(cluster, "resume") == 0
    wait_for(lambda: code(cluster, "pgsql-2", "cluster_is_in_maintenance") == OK, 20, "maintenance over")
    assert operator(cluster, "switchover", "--at", "+1h", "--force") == 0
    wait_for(lambda: code(cluster, "pgsql-1", "cluster_has_scheduled_action") == CRITICAL, 20,
             "the scheduled switchover seen")
    superuser(cluster, "pgsql-1", "ALTER SYSTEM SET max_connections = 101")
    try:
        wait_for(lambda: code(cluster, "pgsql-1", "node_is_pending_restart") == CRITICAL, 20,
                 "pgsql-1 pending restart")
        assert code(cluster, "pgsql-2", "node_is_pending_restart") == OK
    finally:
        superuser(cluster, "pgsql-1", "ALTER SYSTEM RESET max_connections")
    wait_for(lambda: code(cluster, "pgsql-1", "node_is_pending_restart") == OK, 20, "pending restart cleared")

    # A cluster-wide change (pgha-ctl edit-config): /config changes on every member, and
    # a parameter that needs a restart is pending on both.
    assert operator(cluster, "edit-config", "-p", "max_connections=101", "-p", "work_mem=5MB", "--force") == 0
    for node in cluster.nodes:
        wait_for(lambda: code(cluster, node, "cluster_config_has_changed", "--hash", config_hash) == CRITICAL, 20,
                 f"check_patroni sees the changed configuration on {node}")
        wait_for(lambda: code(cluster, node, "node_is_pending_restart") == CRITICAL, 20, f"{node} pending restart")
        assert api_json(cluster, node, "/config")["postgresql"] == {"parameters": {"max_connections": 101,
                                                                                   "work_mem": "5MB"}}
    assert operator(cluster, "edit-config", "-p", "max_connections=null", "-p", "work_mem=null", "--force") == 0
    for node in cluster.nodes:
        wait_for(lambda: code(cluster, node, "cluster_config_has_changed", "--hash", config_hash) == OK, 20,
                 f"the first configuration again on {node}")
        wait_for(lambda: code(cluster, node, "node_is_pending_restart") == OK, 20, f"{node}: nothing pending")


# -- harness.haproxy on a loaded cluster (issue 21 item 7) -----------------------------------

@pytest.mark.skipif(binary() is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_harness_haproxy_loaded_cluster(local_cluster):
    cluster = local_cluster
    rw, ro = cluster.base_port + 33, cluster.base_port + 34
    proc = subprocess.Popen([sys.executable, "-m", "harness.haproxy", "--cluster", cluster.dir,
                             "--rw-port", str(rw), "--ro-port", str(ro)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    haproxy = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("HAProxy: writes on"), line       # was: KeyError 'app_password'
        dsn_line = proc.stdout.readline()
        assert "--dsn" in dsn_line and "password=" in dsn_line     # the loaded cluster's secrets.json
        haproxy = haproxy_children(proc.pid)
        assert len(haproxy) == 1, haproxy
        wait_for(lambda: reachable(rw, app_password(cluster)), 20, "writes through harness.haproxy")
        proc.send_signal(signal.SIGKILL)       # the harness dies: HAProxy must not outlive it
        proc.wait(timeout=10)
        wait_for(lambda: not alive(haproxy[0]), 10, "HAProxy gone with its parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in haproxy:     # a failed run leaves no HAProxy behind
            if alive(pid):
                os.kill(pid, signal.SIGTERM)


def haproxy_children(parent):
    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return [int(pid) for pid, comm in (line.split(None, 1) for line in out.splitlines()) if "haproxy" in comm]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reachable(port, password):
    try:
        return bool(where(port, password, tries=1))
    except psycopg2.Error:
        return False


# -- Patroni-style writes with HTTP Basic credentials (issue 21 item 1) ----------------------

API_USER, API_PASSWORD = "patroni", "it's a s3cret: really"


def curl(cluster, node, method, path, body=None, password=API_PASSWORD):
    """(HTTP status, JSON reply) from curl, as a Patroni user's script sends it."""
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-u", f"{API_USER}:{password}",
            "-H", "Content-Type: application/json", f"http://127.0.0.1:{cluster.api_ports[node]}{path}"]
    if body is not None:
        args += ["--data-binary", json.dumps(body)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=90, check=True).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


@pytest.fixture
def writable_api(request):
    from testsuite.integration.conftest import BASE, running_cluster
    key_copy = os.path.join(BASE, "patroni-writes", "api-operator.keys")

    def give_the_nodes_an_operator_key(cluster):
        with open(cluster.key_file("operator"), "rb") as f:
            key = f.read()
        fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        if cluster.user:    # the node daemons run as postgres: the key is theirs to read
            os.chown(key_copy, cluster.user.pw_uid, cluster.user.pw_gid)
    yield from running_cluster(request, "patroni-writes", before_start=give_the_nodes_an_operator_key,
                               node_overrides={"api_authentication": {"username": API_USER, "password": API_PASSWORD},
                                               "api_operator_key_file": key_copy})


def test_patroni_style_switchover_and_config_with_the_apis_credentials(writable_api):
    cluster = writable_api
    code, reply = curl(cluster, "pgsql-2", "PATCH", "/config", {"pause": True}, password="wrong")
    assert code == 401 and not cluster.status()["paused"]
    code, reply = curl(cluster, "pgsql-1", "POST", "/switchover", {"leader": "pgsql-2", "candidate": "pgsql-1"})
    assert code == 412 and "pgsql-2 is not the primary" in reply["error"], reply
    code, reply = curl(cluster, "pgsql-1", "POST", "/switchover", {"leader": "pgsql-1", "candidate": "pgsql-2"})
    assert (code, reply["message"]) == (200, 'Successfully switched over to "pgsql-2"'), reply
    status = cluster.wait_healthy(timeout=60)
    assert (status["primary"], status["epoch"]) == ("pgsql-2", 2)
    code, reply = curl(cluster, "pgsql-1", "PATCH", "/config", {"postgresql": {"parameters": {"work_mem": "6MB"}}})
    assert code == 200 and reply["parameters"] == {"work_mem": "6MB"}, reply
    for node in cluster.nodes:
        wait_for(lambda: api_json(cluster, node, "/config")["postgresql"]["parameters"] == {"work_mem": "6MB"}, 20,
                 f"{node} has the new configuration")
