"""The fault suite on the arbiter on etcd: docker-compose.yml plus
docker-compose.etcd.yml (3 etcd members, arbiters `arbiter` and `arbiter-2`,
one leading), its own compose project (harness.docker.etcd_suite_cluster).

One cluster for the module: `cluster` is overridden here, so conftest's
healthy_cluster heals and checks this one before each scenario. The subnet
is the suite's: bringing this project up takes the default project down,
so this module must run after every module that uses that one (pytest runs
modules in file-name order: this name sorts last). Each scenario runs the
writer and the split-brain probe (harness.scenario.Run) and ends with
Run.assert_safe, as in test_faults.py:

e1  the leading arbiter's container and the primary's killed by one command:
    the other arbiter leads and fails over; lost 0, no split brain, and the
    acting records show no two arbiters ever acted at once;
e2  one etcd member killed (the raft leader: the harder minority): nothing
    changes (epoch, primary, leader arbiter's store ok), writes go on;
e3  two etcd members killed (the majority): no arbiter leads, status says the
    store is unreachable, writes go on under the standby's lease, no failover;
    members restarted: an arbiter leads again, the cluster whole, same epoch.
"""
import json
import os
import time
import urllib.request

import pytest

from harness import acting
from harness import docker as de
from harness.scenario import Run, wait_for, wait_new_primary
from testsuite.faults.conftest import wait_ready
from testsuite.faults.test_faults import FAILOVER_BOUND, NO_FAILOVER_GAP, OBSERVE

pytestmark = pytest.mark.faults

ACTING_RECORD = "/var/lib/pgha-arbiter/acting.log"     # docker/arbiter-etcd.py


@pytest.fixture(scope="module")
def cluster(docker_prerequisites):
    c = de.etcd_suite_cluster()
    t = time.monotonic()
    de.free_subnet(project=c.project)       # the default project, when this session brought it up
    c.compose("down", "-v", "--remove-orphans", check=False, timeout=300)    # leftovers of a broken run
    c.compose("up", "--build", "-d", timeout=900)
    wait_ready(c, t, "etcd_cluster_ready", "etcd-startup", "etcd variant healthy {:.1f} s after down + up")
    yield c
    if not os.environ.get("PGHA_KEEP_CLUSTER"):
        c.compose("down", "-v", "--remove-orphans", check=False, timeout=300)


def acting_records(c):
    """Both arbiters' acting records (harness.acting), read from their containers."""
    return [c.exec(a, "cat", ACTING_RECORD, check=False).stdout for a in c.arbiters]


def etcd_leader(c):
    """The etcd member service that is raft leader now (asked over the gateway), or None."""
    ids = {}
    leader = None
    for member in c.others:
        request = urllib.request.Request(f"http://{de.ADDR[member]}:2379/v3/maintenance/status", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                status = json.loads(reply.read())
        except (OSError, ValueError):
            continue
        ids[status["header"]["member_id"]] = member
        leader = status.get("leader", leader)
    return ids.get(leader)


def test_e1_leading_arbiter_and_primary_killed_together(healthy_cluster):
    c = healthy_cluster
    with Run(c, "e1-leading-arbiter-and-primary-kill") as run:
        run.settle()
        leader = wait_for(c.leading_arbiter, 30, what="a leading arbiter")
        epoch = c.status()["epoch"]
        t = run.mark_fault()
        c.kill(leader, run.primary)
        assert wait_new_primary(c, run.primary, timeout=FAILOVER_BOUND + 30) == run.standby
        took = run.now() - t
        assert c.leading_arbiter() not in (None, leader), "the surviving arbiter does not lead"
        assert c.status()["epoch"] > epoch
        run.wait_acks(20, timeout=FAILOVER_BOUND, since=t, node=run.standby)
        assert run.heal_and_wait() == run.standby
    run.assert_safe()
    assert run.result.recovered_after < FAILOVER_BOUND, run.result.summary()
    terms = acting.assert_never_two_acting(acting_records(c))
    print(f"failover by the other arbiter {took:.1f} s after the kill; terms {[term for term, _ in terms]}")


def kill_etcd_members(c, run, count):
    """Kill `count` etcd members, the raft leader first (the harder case),
    and watch OBSERVE s: the primary takes writes all along. (The status
    before the fault, the members killed.)"""
    before = c.status()
    first = etcd_leader(c) or de.ETCD_MEMBERS[0]
    members = [first] + [m for m in de.ETCD_MEMBERS if m != first][:count - 1]
    t = run.mark_fault()
    c.kill(*members)
    time.sleep(OBSERVE)         # past the leadership's etcd lease, the arbiter's lease and a failover's wait
    acks = run.acks_since(t + OBSERVE - 3)
    assert acks and {de.label_of(a.node) for a in acks} == {run.primary}, f"writes stopped with {members} killed"
    return before, members


def test_e2_one_etcd_member_killed(healthy_cluster):
    c = healthy_cluster
    with Run(c, "e2-etcd-minority-kill") as run:
        run.settle()
        before, members = kill_etcd_members(c, run, 1)
        after = c.status()
        assert (after["epoch"], after["primary"]) == (before["epoch"], before["primary"]), (before, after)
        assert after["arbiter"]["leader"] and after["arbiter"]["state_store"] == "ok", after["arbiter"]
        assert c.writable_nodes() == [run.primary]
        assert run.heal_and_wait() == run.primary
    run.assert_safe()
    assert run.result.unavailability < NO_FAILOVER_GAP, run.result.summary()
    print(f"killed etcd member {members[0]}")


def test_e3_etcd_majority_killed(healthy_cluster):
    c = healthy_cluster
    with Run(c, "e3-etcd-majority-kill") as run:
        run.settle()
        before, members = kill_etcd_members(c, run, 2)
        for arbiter in c.arbiters:
            role = (c.status_of(arbiter) or {}).get("arbiter") or {}
            assert role.get("leader") is False, f"{arbiter} leads without an etcd majority: {role}"
            assert role.get("state_store", "").startswith("unreachable"), f"{arbiter}: {role}"
        assert c.writable_nodes() == [run.primary]
        assert c.node(run.standby)["in_recovery"]
        assert run.heal_and_wait() == run.primary       # members restarted with their data
        after = c.status()
        assert (after["epoch"], after["primary"]) == (before["epoch"], before["primary"]), (before, after)
    run.assert_safe()
    assert run.result.unavailability < NO_FAILOVER_GAP, run.result.summary()
    print(f"killed etcd members {members}")
