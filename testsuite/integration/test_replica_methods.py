"""Replicas from a backup (issue 20 item 5): the node settings
create_replica_methods / replica_methods as Patroni's, with a real pgBackRest
(Debian's package) repository beside the local cluster and Patroni's own
example method (`pgbackrest --stanza=main --delta restore`, no_params).

Before any backup exists the method fails and the standby falls back to
pg_basebackup (the next method); after a full backup, `pgha-ctl reinit`
makes the standby's copy from the repository, restored into a folder beside
its data directory (not over it), and the copy catches up from the archive
and the primary: synchronous and promotable again, no acknowledged write lost.

Then a new cluster is bootstrapped from that backup (the node setting
bootstrap_method, Patroni's custom bootstrap): its first primary restores
the backup beside its empty data directory, recovers the archive to its end
and promotes itself, and its standby clones from it."""
import os
import shutil
import subprocess

import pytest
from conftest import WriteRun, running_cluster, superuser, wait_for
from test_cluster import log_text, sql
from test_operations import ctl_run

PGBACKREST = shutil.which("pgbackrest")
pytestmark = pytest.mark.skipif(PGBACKREST is None and not os.environ.get("PGHA_NO_SKIPS"),
                                reason="pgbackrest is not installed (apt-get install pgbackrest)")


def conf_path(cluster):
    return os.path.join(cluster.dir, "pgbackrest", "pgbackrest.conf")


def as_postgres(cluster, *args):
    """Run a pgBackRest command as the postgres OS user (it owns the data and the repository)."""
    env = {**os.environ, "PGPASSWORD": cluster.passwords["admin_password"]}
    return subprocess.run(["runuser", "-u", "postgres", "--", PGBACKREST, f"--config={conf_path(cluster)}",
                           "--stanza=main", *args], env=env, capture_output=True, text=True, timeout=300)


def write_pgbackrest_conf(cluster):
    """The repository and its settings in the cluster's folder, owned by postgres."""
    folder = os.path.dirname(conf_path(cluster))
    os.makedirs(folder)
    with open(conf_path(cluster), "w") as f:
        f.write(f"[global]\nrepo1-path={folder}/repo\nlock-path={folder}/lock\nlog-path={folder}/log\n"
                "log-level-file=off\nlog-level-console=warn\nstart-fast=y\ncompress-type=none\n"
                f"[main]\npg1-path={cluster.pgdata('pgsql-1')}\npg1-port={cluster.pg_ports['pgsql-1']}\n"
                f"pg1-socket-path={os.path.join(cluster.dir, 'pgsql-1', 'run')}\npg1-user=kronos\n")
    subprocess.run(["chown", "-R", "postgres:postgres", folder], check=True)


@pytest.fixture
def cluster(request):
    folder = os.path.join(os.environ.get("PGHA_TEST_DIR", "/var/tmp/pgha-test"), "replica-methods")
    conf = os.path.join(folder, "pgbackrest", "pgbackrest.conf")
    method = {"command": f"{PGBACKREST} --config={conf} --stanza=main --delta restore", "no_params": True}
    archive = {name: {"pg_parameters": {
        "archive_mode": "on",
        "archive_command": f"{PGBACKREST} --config={conf} --stanza=main --pg1-path={folder}/{name}/data "
                           "archive-push %p"}} for name in ("pgsql-1", "pgsql-2")}
    yield from running_cluster(request, "replica-methods", before_start=write_pgbackrest_conf,
                               node_overrides={"create_replica_methods": ["pgbackrest", "basebackup"],
                                               "replica_methods": {"pgbackrest": method}},
                               per_node_overrides=archive)


def test_a_standby_and_a_new_cluster_made_from_a_pgbackrest_backup(cluster, request):
    # No stanza yet: the first method failed and pg_basebackup made the copy.
    log = log_text(cluster, "pgsql-2")
    assert "replica method pgbackrest failed" in log and "trying the next replica method, basebackup" in log, log
    for step in (("stanza-create",), ("backup", "--type=full")):
        done = as_postgres(cluster, *step)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    superuser(cluster, "pgsql-1", "CREATE TABLE after_backup AS SELECT 42 AS v")     # the archive or the primary has it
    before = len(log_text(cluster, "pgsql-2"))
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, 30)
        assert ctl_run(cluster, "reinit", "pgsql-2", "--force", "--wait", "300") == 0
        assert run.wait_for_acks(10, 30)
    run.check()
    log = log_text(cluster, "pgsql-2")[before:]
    assert "replica method pgbackrest made the copy" in log and "clone from" not in log, log   # no pg_basebackup
    status = cluster.wait_healthy(timeout=60)
    assert (status["primary"], status["epoch"], status["promotable_members"]) == ("pgsql-1", 1, ["pgsql-2"])
    wait_for(lambda: sql(cluster, "pgsql-2", "SELECT v FROM after_backup") == [(42,)], 30,
             "the row written after the backup on the restored standby")
    assert not os.path.exists(cluster.pgdata("pgsql-2") + ".restore")

    # A new cluster from the backup and the archive: the row written after the backup is there.
    # The segment the switch completed, read once: the current position moves
    # on (a checkpoint after the switch starts the next segment, which is not
    # archived until it too is complete).
    [(segment,)] = sql(cluster, "pgsql-1", "SELECT pg_walfile_name(pg_switch_wal() - 1)")
    wait_for(lambda: sql(cluster, "pgsql-1", "SELECT last_archived_wal IS NOT NULL AND last_archived_wal >= "
                                             f"'{segment}' FROM pg_stat_archiver")
             == [(True,)], 60, "the WAL with the row archived")
    conf = conf_path(cluster)
    # pgBackRest's archive-get checks that it runs in pg1-path: the new cluster's data directory.
    pgdata = os.path.join(os.path.dirname(cluster.dir), "bootstrap-from-backup", "pgsql-1", "data")
    restore = {"command": f"{PGBACKREST} --config={conf} --stanza=main --delta restore", "no_params": True,
               "recovery_conf": {"restore_command": f"{PGBACKREST} --config={conf} --stanza=main "
                                                    f'--pg1-path={pgdata} archive-get %f "%p"',
                                 "recovery_target_action": "promote"}}
    # Its first primary connects as the backup's superuser: the same passwords.
    made = running_cluster(request, "bootstrap-from-backup", passwords=cluster.passwords,
                           per_node_overrides={"pgsql-1": {"bootstrap_method": restore}})
    fresh = next(made)
    assert fresh.pgdata("pgsql-1") == pgdata
    try:
        log = log_text(fresh, "pgsql-1")
        assert "creating the cluster from a backup" in log and "the backup is restored and recovered" in log, log
        assert "creating a new cluster in" not in log       # no initdb
        assert sql(fresh, "pgsql-1", "SELECT v FROM after_backup") == [(42,)]
        assert sql(fresh, "pgsql-1", "SELECT pg_is_in_recovery()") == [(False,)]
        status = fresh.wait_healthy(timeout=60)
        assert (status["primary"], status["promotable_members"]) == ("pgsql-1", ["pgsql-2"])
        wait_for(lambda: sql(fresh, "pgsql-2", "SELECT v FROM after_backup") == [(42,)], 30,
                 "the new cluster's standby streaming the restored data")
        conf_text = open(os.path.join(fresh.pgdata("pgsql-1"), "pgha.conf")).read()
        assert "recovery_target_action" not in conf_text, "the recovery parameters stay for that start only"
        assert not os.path.exists(fresh.pgdata("pgsql-1") + ".restore")
    finally:
        next(made, None)
