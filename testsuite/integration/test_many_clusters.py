"""One arbiter process serves two clusters: the real local cluster ("main")
and cluster "b" of simulated nodes (harness/simnode.py, the real signed
protocol) whose node names repeat main's. Cluster b fails over while main's
writes go on with its epoch unchanged."""
import os
import subprocess
import sys

import pytest

from testsuite.integration.conftest import WriteRun, running_cluster, wait_for

B_NODES = ["pgsql-1", "pgsql-2"]     # the same names as main's, on purpose (invariant 6)


@pytest.fixture
def two_clusters(request):
    yield from running_cluster(request, "many-clusters", extra_clusters={"b": B_NODES})


def ctl(cluster, *args):
    return subprocess.run([sys.executable, "-m", "pgha.ctl", "--arbiter", "127.0.0.1:%d" % cluster.arbiter_port,
                           "--key-file", cluster.key_file("operator"), *args],
                          capture_output=True, text=True, timeout=30)


def test_a_failover_in_a_simulated_cluster_leaves_the_real_one_writing(two_clusters):
    cluster = two_clusters
    cluster.start_simnode("b", "pgsql-1", "primary")
    cluster.start_simnode("b", "pgsql-2", "standby")
    wait_for(lambda: cluster.cluster_call("b", {"type": "status"}).get("promotable"), 30,
             "cluster b's simulated standby to be promotable")
    # Both state files, side by side (pgha.clusters).
    assert os.path.exists(os.path.join(cluster.dir, "arbiter-state.json"))
    assert os.path.exists(os.path.join(cluster.dir, "arbiter-state.b.json"))

    listed = ctl(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    assert "+ Cluster b: epoch 1, primary pgsql-1" in listed.stdout
    assert "+ Cluster main: epoch 1, primary pgsql-1" in listed.stdout
    assert "| Cluster |" in listed.stdout and "| b       |" in listed.stdout and "| main    |" in listed.stdout

    main_before = cluster.status()
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(20, timeout=30)
        run.mark_fault()
        cluster.stop_simnode("b", "pgsql-1")        # b's primary host dies
        b = wait_for(lambda: (lambda s: s if s.get("epoch") == 2 else None)(
            cluster.cluster_call("b", {"type": "status"})), 30, "cluster b to fail over")
        assert b["primary"] == "pgsql-2" and b["cluster"] == "b"
        assert run.wait_for_acks(50, timeout=20), "main's writes stopped while b failed over"
    run.check()
    main_after = cluster.status()
    assert (main_after["epoch"], main_after["primary"]) == (main_before["epoch"], main_before["primary"])
    events = cluster.cluster_call("b", {"type": "history"})["events"]
    assert any(e["event"] == "failover" and e["new_primary"] == "pgsql-2" for e in events)
    assert not any(e["event"] == "failover" for e in cluster.arbiter_call({"type": "history"})["events"])
    # A misdirected request for a cluster the arbiter does not serve: one error, nothing changed.
    refused = ctl(cluster, "--cluster", "nope", "pause")
    assert refused.returncode == 1 and "does not serve cluster 'nope'" in refused.stderr
