"""Operations on a real local cluster: SIGHUP and `pgha.ctl reload` apply
log_level and a PostgreSQL parameter without restarting PostgreSQL (and name
what needs a restart); callbacks run on a failover, and one that hangs does
not delay it."""
import os
import signal
import time

import pytest

from harness.localcluster import LocalCluster
from pgha import ctl
from testsuite.integration.conftest import BASE, finish, next_port, wait_for
from testsuite.integration.test_cluster import log_text, primary_is, sql

FAILOVER_BOUND = 12.0   # lease 1.8 s + margin 0.4 s + heartbeats, with room for a loaded machine


@pytest.fixture
def make_cluster(request):
    made = []

    def make(**node_overrides):
        cluster = LocalCluster(os.path.join(BASE, request.node.name[:40]), base_port=next_port(),
                               node_overrides=node_overrides)
        cluster.prepare(fresh=True)
        made.append(cluster)
        return cluster
    yield make
    for cluster in made:
        finish(cluster, request)


def write_script(cluster, name, body):
    """An executable shell script in the cluster's folder; its path."""
    path = os.path.join(cluster.dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def append_settings(cluster, member, text):
    with open(os.path.join(cluster.dir, f"{member}.py"), "a") as f:
        f.write(text)


def test_sighup_and_ctl_reload_apply_settings_without_a_restart(make_cluster):
    cluster = make_cluster()
    cluster.start()
    cluster.wait_healthy(timeout=120)
    postmaster = cluster.postmaster_pid("pgsql-1")
    assert sql(cluster, "pgsql-1", "SHOW work_mem") == [("4MB",)]

    # SIGHUP to the node daemon: log level and work_mem now; a port and shared_buffers need a restart.
    append_settings(cluster, "pgsql-1", 'log_level = "DEBUG"\n'
                    'pg_parameters = {"work_mem": "7MB", "shared_buffers": "64MB"}\napi_port = 1\n')
    cluster.send_signal("pgsql-1", signal.SIGHUP)
    wait_for(lambda: sql(cluster, "pgsql-1", "SHOW work_mem") == [("7MB",)], 20, "work_mem 7MB on pgsql-1")
    wait_for(lambda: "PostgreSQL applies these parameters only after a restart: shared_buffers"
             in log_text(cluster, "pgsql-1"), 10, "the pending restart named")
    text = log_text(cluster, "pgsql-1")
    assert "reload: log_level changed from 'INFO' to 'DEBUG'" in text
    assert "reload: changed but applied only after a restart: api_port" in text
    assert cluster.postmaster_pid("pgsql-1") == postmaster      # no restart

    # A file with an error is refused with one line; the node keeps running on its settings.
    append_settings(cluster, "pgsql-1", 'log_level = "LOUD"\n')
    cluster.send_signal("pgsql-1", signal.SIGHUP)
    wait_for(lambda: "reload refused, keeping the running settings: setting 'log_level'"
             in log_text(cluster, "pgsql-1"), 10, "the refused reload")
    assert "DEBUG    pgsql-1 node: reload: reading the settings again (asked by SIGHUP)" in log_text(cluster, "pgsql-1")
    append_settings(cluster, "pgsql-1", 'log_level = "DEBUG"\n')

    # pgha.ctl reload: the arbiter reloads itself and both nodes reload at their next heartbeat.
    for name in ("pgsql-1", "pgsql-2"):
        append_settings(cluster, name, 'pg_parameters = {"work_mem": "9MB"}\n')
    append_settings(cluster, "arbiter", "failover_margin = 1.5\n")
    assert ctl.main(["--arbiter", f"127.0.0.1:{cluster.arbiter_port}", "--key-file",
                     cluster.key_file("operator"), "reload"]) == 0
    for name in ("pgsql-1", "pgsql-2"):
        wait_for(lambda: sql(cluster, name, "SHOW work_mem") == [("9MB",)], 20, f"work_mem 9MB on {name}")
        assert "the arbiter asks the nodes to reload (generation 1)" in log_text(cluster, name)
    assert "reload: failover_margin changed from 0.4 to 1.5" in log_text(cluster, "arbiter")
    assert cluster.postmaster_pid("pgsql-1") == postmaster
    assert cluster.healthy()


def test_callbacks_run_on_a_failover_and_a_hanging_one_does_not_delay_it(make_cluster):
    cluster = make_cluster()
    calls = os.path.join(cluster.dir, "callbacks.txt")
    # Records its arguments; hangs when the node starts as a replica, so that
    # pgsql-2's callback is still hanging when it must take over.
    script = write_script(cluster, "callback.sh", f'echo "$1 $2 $3" >> {calls}\n[ "$2" = replica ] && exec sleep 600\nexit 0')
    open(calls, "w").close()
    os.chmod(calls, 0o666)
    cluster.node_overrides = {"on_role_change": script, "on_start": script, "callback_timeout": 25.0}
    cluster.prepare()
    cluster.start()
    cluster.wait_healthy(timeout=120)
    wait_for(lambda: "on_role_change replica pgsql-2" in open(calls).read(), 20, "pgsql-2's replica callback")
    assert "on_role_change primary pgsql-1" in open(calls).read()
    assert "killed after" not in log_text(cluster, "pgsql-2")       # still hanging

    killed = time.monotonic()
    cluster.kill_host("pgsql-1")
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), FAILOVER_BOUND, "pgsql-2 promoted within the bound")
    took = time.monotonic() - killed
    assert "killed after" not in log_text(cluster, "pgsql-2"), "the failover waited for the callback"
    # The promoted node's callback runs once the hanging one is killed at its timeout.
    wait_for(lambda: "on_role_change primary pgsql-2" in open(calls).read(), 40, "pgsql-2's primary callback")
    assert "killed after the 25s timeout (callback_timeout)" in log_text(cluster, "pgsql-2")
    print(f"promoted {took:.1f}s after the kill")


def test_a_failing_pre_promote_holds_the_promotion_until_it_succeeds(make_cluster):
    """Issue 21: pre_promote (e.g. a fencing script) runs before the node
    promotes itself; while it fails the standby is not promoted (the arbiter's
    decision stands, the script is run again), and once it succeeds the
    promotion goes on."""
    cluster = make_cluster()
    allow = os.path.join(cluster.dir, "allow-promotion")
    script = write_script(cluster, "pre_promote.sh", f'[ -e {allow} ] || {{ echo "old primary not fenced yet" >&2; exit 1; }}')
    cluster.node_overrides = {"pre_promote": script}
    cluster.prepare()
    cluster.start()
    cluster.wait_healthy(timeout=120)
    cluster.kill_host("pgsql-1")
    # Refused, and tried again (at most every 2 s): the arbiter decided, the node stays a standby.
    wait_for(lambda: log_text(cluster, "pgsql-2").count("pre_promote replica: exit status 1") >= 2,
             FAILOVER_BOUND + 10, "pgsql-2's pre_promote refusing twice")
    status = cluster.status()       # one snapshot
    assert status["primary"] == "pgsql-2" and status["nodes"]["pgsql-2"]["report"]["role"] == "standby", status
    assert "old primary not fenced yet" in log_text(cluster, "pgsql-2")     # the script's stderr, in the log
    open(allow, "w").close()
    wait_for(primary_is(cluster, "pgsql-2", epoch=2), 20, "pgsql-2 promoted once pre_promote succeeds")
    assert sql(cluster, "pgsql-2", "SELECT NOT pg_is_in_recovery()") == [(True,)]
