"""The fault suite: each failure the HA model must survive, on the compose cluster.

Every scenario runs the workload writer (harness.workload.Writer, through the
multi-host DSN with target_session_attrs=read-write) and the split-brain probe
(harness/probe.py: direct writes to each node every 100 ms; see its
docstring for the overlap rule) from before the fault until the cluster is
healed and healthy again, and then asserts (Run.assert_safe):

* lost = 0        every acknowledged write is on the final primary;
* unexpected = 0  no row appears whose COMMIT was never sent;
* no split brain  no older-timeline primary acknowledged a write sent after a
                  newer-timeline primary had acknowledged one, and every probe
                  write acknowledged by any node survives on the final primary;
* exactly one writable primary at the end, the other node a streaming
  synchronous standby through its replication slot on the same timeline, and
  the arbiter naming that primary with the standby promotable.

Scenario-specific expectations (failover or not, who is primary afterwards,
how long writes stopped) are asserted in each test. Results go to
out/faults/results.jsonl and out/faults/<scenario>.txt; on a failure the
docker-compose logs go to out/faults/<test>.log.

Run:  pytest -v testsuite/faults/test_faults.py     (root, docker available)
"""
import threading
import time

import psycopg2
import pytest

from harness import docker as de
from harness.scenario import Run, wait_for, wait_new_primary

pytestmark = pytest.mark.faults

# Generous upper bounds: shared 2-core machines. Defaults: heartbeat 0.5 s,
# lease 3 s, promotion after lease + 1 s margin.
FAILOVER_BOUND = 30.0        # fault -> writes acknowledged by the new primary
STALL_BOUND = 20.0           # standby lost -> writes flowing again on the primary
NO_FAILOVER_GAP = 8.0        # longest write gap allowed where no failover should happen
OBSERVE = 10.0               # lease + margin + slack: long enough that a wrong failover would show


def other(node):
    return next(n for n in de.NODES if n != node)


def kill_standby(cluster, run, acks):
    """Kill the standby: writes resume on the primary within the stall bound
    and the arbiter marks the dead standby not promotable."""
    t = run.mark_fault()
    cluster.kill(run.standby)
    run.wait_acks(acks, timeout=STALL_BOUND + 30, since=t, node=run.primary)
    wait_for(lambda: (s := cluster.status()) and s.get("promotable") is False, timeout=30,
             what="dead standby marked not promotable")


def standby_takes_over(cluster, run, since, acks=20):
    """The standby is promoted and takes `acks` writes within the failover
    bound of the fault at `since`; those acks."""
    assert wait_new_primary(cluster, run.primary, timeout=FAILOVER_BOUND + 30) == run.standby
    return run.wait_acks(acks, timeout=FAILOVER_BOUND, since=since, node=run.standby)


def assert_old_primary_fenced(cluster, node):
    """The old primary must not be a writable PostgreSQL: stopped, or in recovery.
    Asked from inside its container (it may be cut off from the host)."""
    cmd = ("psql", f"host=127.0.0.1 port={de.PG_PORT} dbname={de.DATABASE} user={de.ADMIN_USER} "
           f"password={de.ADMIN_PASSWORD} connect_timeout=2", "-Atc", "SELECT pg_is_in_recovery()")
    proc = cluster.exec(node, *cmd, check=False, timeout=30)
    assert proc.returncode != 0 or proc.stdout.strip() == "t", (
        f"old primary {node} still runs a writable PostgreSQL: {proc.stdout.strip()!r}")


def test_image_plumbing(healthy_cluster):
    """The image holds PostgreSQL 15, psycopg2 and the network tools the suite uses."""
    c = healthy_cluster
    for node in de.NODES:
        out = c.exec(node, "sh", "-c",
                     "ls /usr/lib/postgresql/15/bin/postgres /usr/lib/postgresql/15/bin/pg_rewind "
                     "/usr/lib/postgresql/15/bin/pg_basebackup && python3 -c 'import psycopg2' && "
                     "iptables -V && ip -V && pkill -V && id -un postgres").stdout
        assert "pg_rewind" in out and "postgres" in out
        users = c.exec(node, "ps", "-eo", "user:20,comm").stdout
        assert any(line.split()[:2] == ["postgres", "postgres"] for line in users.splitlines()), users


def test_01_primary_postgres_killed(healthy_cluster):
    """SIGKILL the primary's PostgreSQL: writable again within the failover bound
    (a quick local restart or a failover), nothing lost, pair healthy again."""
    c = healthy_cluster
    with Run(c, "01-primary-postgres-kill") as run:
        run.settle()
        t = run.mark_fault()
        c.kill_postgres(run.primary)
        run.wait_acks(20, timeout=FAILOVER_BOUND + 30, since=t)
        run.heal_and_wait()
    run.assert_safe()
    assert run.result.recovered_after is not None and run.result.recovered_after < FAILOVER_BOUND, run.result.summary()


def test_02_primary_container_killed(healthy_cluster):
    """docker kill the primary (daemon and PostgreSQL gone): the standby is promoted;
    the old primary, started again, rejoins as standby."""
    c = healthy_cluster
    with Run(c, "02-primary-container-kill") as run:
        run.settle()
        t = run.mark_fault()
        c.kill(run.primary)
        standby_takes_over(c, run, t)
        assert run.heal_and_wait() == run.standby
    run.assert_safe()
    assert run.result.recovered_after < FAILOVER_BOUND, run.result.summary()
    assert c.node(run.primary)["in_recovery"], "old primary did not come back as a standby"


def test_03_primary_frozen_past_leases(healthy_cluster):
    """docker pause the primary past its leases (~8 s, until the standby is promoted),
    then resume it: it must fence itself before it can acknowledge anything."""
    c = healthy_cluster
    with Run(c, "03-primary-freeze") as run:
        run.settle()
        t = run.mark_fault()
        frozen_at = time.monotonic()
        c.pause(run.primary)
        # Keep it frozen at least 8 s and until the standby has been promoted and took writes.
        standby_takes_over(c, run, t, acks=5)
        time.sleep(max(0.0, 8.0 - (time.monotonic() - frozen_at)))
        resumed = run.now()
        c.unpause(run.primary)
        time.sleep(3.0)        # the resumed node's chance to (wrongly) acknowledge something
        # Writes *sent* after the resume: a commit sent just before the freeze whose
        # synchronous standby (the new primary) had flushed it may be acknowledged on
        # resume, and is safe (it is on the new primary; assert_safe's lineage check).
        late = [a for a in run.probe.acks if a.node == run.primary and a.sent > resumed]
        old_tli = {a.tli for a in run.probe.acks if a.node == run.primary and a.acked < t}
        late_old = [a for a in late if a.tli in old_tli]
        assert not late_old, f"resumed old primary acknowledged writes on its old timeline: {late_old[:5]}"
        run.heal_and_wait()
    run.assert_safe()
    assert run.result.primary_after == run.standby
    assert run.result.recovered_after < FAILOVER_BOUND, run.result.summary()


def test_04_primary_cut_from_arbiter(healthy_cluster):
    """iptables between primary and arbiter (both ways): the standby still grants
    the primary its lease, so there is no failover and writes go on."""
    c = healthy_cluster
    with Run(c, "04-primary-arbiter-cut") as run:
        run.settle()
        epoch = c.status()["epoch"]
        t = run.mark_fault()
        c.block(run.primary, "arbiter")
        time.sleep(OBSERVE)
        acks = run.acks_since(t)
        assert acks and {de.label_of(a.node) for a in acks} == {run.primary}, "writes did not go on on the primary"
        status = c.status()
        assert status["primary"] == run.primary and status["epoch"] == epoch, f"failover happened: {status}"
        assert c.writable_nodes() == [run.primary]
        run.heal_and_wait()
    run.assert_safe()
    assert run.result.primary_after == run.primary
    assert run.result.unavailability < NO_FAILOVER_GAP, run.result.summary()


def test_05_primary_isolated(healthy_cluster):
    """docker network disconnect the primary (no arbiter, no standby): the standby is
    promoted, the old primary fences itself, and after healing rejoins as standby."""
    c = healthy_cluster
    with Run(c, "05-primary-isolated") as run:
        run.settle()
        t = run.mark_fault()
        c.disconnect(run.primary)
        assert wait_new_primary(c, run.primary, timeout=FAILOVER_BOUND + 30) == run.standby
        assert_old_primary_fenced(c, run.primary)
        run.wait_acks(20, timeout=FAILOVER_BOUND, since=t, node=run.standby)
        assert_old_primary_fenced(c, run.primary)
        assert run.heal_and_wait() == run.standby
    run.assert_safe()
    assert run.result.recovered_after < FAILOVER_BOUND, run.result.summary()
    assert c.node(run.primary)["in_recovery"]


def test_06_replication_link_cut(healthy_cluster):
    """iptables between primary and standby only; both still reach the arbiter.
    Writes resume on the primary within the stall bound, no failover, and the
    standby is not promotable until it has caught up again."""
    c = healthy_cluster
    with Run(c, "06-replication-cut") as run:
        run.settle()
        epoch = c.status()["epoch"]
        t = run.mark_fault()
        c.block(run.primary, run.standby)
        run.wait_acks(20, timeout=STALL_BOUND + 30, since=t, node=run.primary)
        status = wait_for(lambda: (s := c.status()) and s.get("promotable") is False and s,
                          timeout=30, what="standby marked not promotable")
        assert status["primary"] == run.primary and status["epoch"] >= epoch
        time.sleep(OBSERVE)
        status = c.status()
        assert status["primary"] == run.primary and status["promotable"] is False, status
        assert c.writable_nodes() == [run.primary]
        run.heal_and_wait()      # healthy includes: sync again and promotable again
    run.assert_safe()
    assert run.result.primary_after == run.primary
    assert run.result.recovered_after is None or run.result.recovered_after < STALL_BOUND, run.result.summary()


def test_07_standby_killed_and_restarted(healthy_cluster):
    """docker kill the standby: writes resume on the primary; the restarted standby
    catches up and is synchronous (and promotable) again."""
    c = healthy_cluster
    with Run(c, "07-standby-kill") as run:
        run.settle()
        kill_standby(c, run, acks=20)
        assert c.status()["primary"] == run.primary
        time.sleep(2)   # the primary runs on alone a while before the standby returns
        assert run.heal_and_wait() == run.primary
    run.assert_safe()
    assert run.result.recovered_after is None or run.result.recovered_after < STALL_BOUND, run.result.summary()


def test_08_arbiter_killed_and_restarted(healthy_cluster):
    """docker kill the arbiter: no failover, writes go on; restarted, it keeps its state."""
    c = healthy_cluster
    with Run(c, "08-arbiter-kill") as run:
        run.settle()
        before = c.status()
        t = run.mark_fault()
        c.kill("arbiter")
        time.sleep(OBSERVE)
        acks = run.acks_since(t + OBSERVE - 3)
        assert acks and {de.label_of(a.node) for a in acks} == {run.primary}, "writes stopped without the arbiter"
        assert c.writable_nodes() == [run.primary]
        c.start("arbiter")
        after = wait_for(c.status, timeout=30, what="arbiter answering again")
        assert (after["epoch"], after["primary"]) == (before["epoch"], before["primary"]), (before, after)
        assert run.heal_and_wait() == run.primary
    run.assert_safe()
    assert run.result.unavailability < NO_FAILOVER_GAP, run.result.summary()


def test_09_arbiter_restarted_right_after_failover(healthy_cluster):
    """Fail over (kill the primary's container), then restart the arbiter at once:
    the new epoch and primary survive the restart."""
    c = healthy_cluster
    with Run(c, "09-arbiter-restart-after-failover") as run:
        run.settle()
        epoch = c.status()["epoch"]
        t = run.mark_fault()
        c.kill(run.primary)
        assert wait_new_primary(c, run.primary, timeout=FAILOVER_BOUND + 30) == run.standby
        decided = c.status()
        assert decided["epoch"] > epoch
        c.kill("arbiter")
        c.start("arbiter")
        after = wait_for(c.status, timeout=30, what="arbiter answering again")
        assert (after["epoch"], after["primary"]) == (decided["epoch"], run.standby), (decided, after)
        run.wait_acks(20, timeout=FAILOVER_BOUND, since=t, node=run.standby)
        assert run.heal_and_wait() == run.standby
    run.assert_safe()


def test_10_double_fault(healthy_cluster):
    """Standby killed (writes continue without it), then the primary killed: the
    standby, back but behind, must not be promoted; when the primary returns no
    acknowledged write is lost."""
    c = healthy_cluster
    with Run(c, "10-double-fault") as run:
        run.settle()
        kill_standby(c, run, acks=30)
        epoch = c.status()["epoch"]
        c.kill(run.primary)
        c.start(run.standby)          # back, but it misses the last writes
        time.sleep(OBSERVE)
        status = c.status()
        assert status["primary"] == run.primary and status["epoch"] == epoch, f"behind standby promoted: {status}"
        assert c.writable_nodes() == [], "a node is writable while the only up-to-date one is dead"
        c.start(run.primary)
        assert run.heal_and_wait() == run.primary
    run.assert_safe()


def test_11_repeated_failovers(healthy_cluster):
    """Five failovers back and forth (docker kill the primary, start it again as
    standby): each promotion on a new, higher timeline; slots and sync right each time."""
    c = healthy_cluster
    with Run(c, "11-repeated-failovers") as run:
        run.settle()
        primary, standby = run.primary, run.standby
        tli = c.node(primary)["tli"]
        history = [(primary, tli)]
        for round_ in range(5):
            t = run.now() if round_ else run.mark_fault()
            c.kill(primary)
            assert wait_new_primary(c, primary, timeout=FAILOVER_BOUND + 30) == standby
            run.wait_acks(10, timeout=FAILOVER_BOUND, since=t, node=standby)
            assert run.heal_and_wait() == standby
            info = c.node(standby)
            assert info["tli"] > tli, f"round {round_}: timeline {info['tli']} not above {tli}"
            assert info["slots"].get(de.SLOT[primary]) is True, f"round {round_}: slots {info['slots']}"
            assert c.node(primary)["tli"] == info["tli"]
            primary, standby, tli = standby, primary, info["tli"]
            history.append((primary, tli))
        print("failover history:", history)
    run.assert_safe()


class LocalCommitClient:
    """A client that lowered synchronous_commit to local, writing straight to one
    node every 50 ms: the commits no HA manager can protect, and the ones a
    fenced old primary must stop acknowledging. Ack times on the run's clock."""

    TABLE = "pgha_local_commits"

    def __init__(self, run, node):
        self.run, self.node, self.acks = run, node, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        with psycopg2.connect(de.node_dsn(self.node)) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (id bigserial PRIMARY KEY, at float8)")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self):
        conn = None
        while not self._stop.wait(0.05):
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(de.node_dsn(self.node, connect_timeout=1),
                                            options="-c synchronous_commit=local -c statement_timeout=2000")
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.TABLE} (at) VALUES (%s)", (self.run.now(),))
                conn.commit()
                self.acks.append(self.run.now())
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def daemon_fault_on_primary(c, run, fault):
    """The node daemon alone killed or frozen on the primary while PostgreSQL runs
    on: its fencer stops PostgreSQL within the lease, the standby is promoted,
    and a local-commit client on the old primary gets nothing acknowledged after
    the new primary took its first write."""
    with LocalCommitClient(run, run.primary) as local:
        run.settle()
        t = run.mark_fault()
        fault(run.primary)
        first_new = min(a.end for a in standby_takes_over(c, run, t, acks=5))
        assert_old_primary_fenced(c, run.primary)
    late = [at for at in local.acks if at > first_new]
    assert not late, f"old primary acknowledged local commits after the promotion: {late[:5]}"
    last_local = max((at for at in local.acks), default=t)
    return last_local - t


def test_12_primary_daemon_killed(healthy_cluster):
    """kill -9 the node daemon alone on the primary (PostgreSQL keeps running)."""
    c = healthy_cluster
    with Run(c, "12-primary-daemon-kill") as run:
        refused_after = daemon_fault_on_primary(c, run, c.kill_daemon)
        assert run.heal_and_wait() == run.standby     # heal: the daemon starts again, rejoins
    run.assert_safe()
    print(f"old primary's last local commit {refused_after:.2f}s after its daemon died")


def test_13_primary_daemon_frozen(healthy_cluster):
    """SIGSTOP the node daemon alone on the primary for 10 s, then resume it."""
    c = healthy_cluster
    with Run(c, "13-primary-daemon-freeze") as run:
        frozen_at = time.monotonic()
        refused_after = daemon_fault_on_primary(c, run, c.freeze_daemon)
        time.sleep(max(0.0, 10.0 - (time.monotonic() - frozen_at)))
        assert run.heal_and_wait() == run.standby     # heal thaws it: it demotes and rejoins
    run.assert_safe()
    print(f"old primary's last local commit {refused_after:.2f}s after its daemon froze")
