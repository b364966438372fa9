"""A wait condition reads one snapshot (issue 19, the CI flake).

The integration test waited on `cluster.healthy() and cluster.status()["primary"]
== "pgsql-2"`: two status calls. The first could see the healthy epoch-1
cluster, the second the fresh epoch-2 decision whose target has not promoted
yet, and the test went on to kill the arbiter in the middle of the hand-over.
`healthy_status()` judges and returns one snapshot.
"""
from harness.localcluster import LocalCluster

HEALTHY_EPOCH_1 = {"type": "status", "epoch": 1, "primary": "pgsql-1", "promotable": True, "nodes": {
    "pgsql-1": {"report": {"role": "primary", "sync_standby": "pgsql-2"}},
    "pgsql-2": {"report": {"role": "standby"}}}}
# the switchover decided: pgsql-2 named, but it has not heard and still reports standby
DECIDED_EPOCH_2 = {"type": "status", "epoch": 2, "primary": "pgsql-2", "promotable": True, "nodes": {
    "pgsql-1": {"report": {"role": "standby"}},
    "pgsql-2": {"report": {"role": "standby"}}}}
HEALTHY_EPOCH_2 = {"type": "status", "epoch": 2, "primary": "pgsql-2", "promotable": True, "nodes": {
    "pgsql-1": {"report": {"role": "standby"}},
    "pgsql-2": {"report": {"role": "primary", "sync_standby": "pgsql-1"}}}}


def cluster_answering(*answers):
    cluster = LocalCluster.__new__(LocalCluster)
    queue = list(answers)
    cluster.status = lambda: queue.pop(0)
    return cluster


def test_the_two_call_condition_straddles_the_switchover():
    """The planted bug: the old condition says yes in the middle of the hand-over."""
    cluster = cluster_answering(HEALTHY_EPOCH_1, DECIDED_EPOCH_2)
    assert cluster.healthy() and cluster.status()["primary"] == "pgsql-2"


def test_one_snapshot_waits_for_the_target_to_be_primary():
    cluster = cluster_answering(HEALTHY_EPOCH_1, DECIDED_EPOCH_2, HEALTHY_EPOCH_2)
    seen = []
    for _ in range(3):
        status = cluster.healthy_status()
        seen.append(bool(status and status["primary"] == "pgsql-2"))
    assert seen == [False, False, True]


def test_healthy_is_the_snapshot_judgement():
    assert cluster_answering(HEALTHY_EPOCH_2).healthy()
    assert not cluster_answering(DECIDED_EPOCH_2).healthy()
    assert cluster_answering(HEALTHY_EPOCH_1).healthy_status() is HEALTHY_EPOCH_1
