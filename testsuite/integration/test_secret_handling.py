"""Secrets and state loss on a real local cluster (issue 9, items 2 and 4).

Passwords with quotes, backslashes, spaces, colons and non-ASCII characters
bootstrap, replicate synchronously, fail over and rejoin; nothing secret is
in process arguments, logs or files others can read. A deleted arbiter
state stops the arbiter; --rebuild with an operator's confirmation brings
the cluster back with the right primary and nothing lost.
"""
import glob
import os
import stat
import subprocess
import time

import psycopg2

from conftest import BASE, WriteRun, finish, next_port, wait_for
from harness.localcluster import LocalCluster
from pgha import ctl

NASTY = {
    "admin_password": "ad'min \\ pass",
    "replication_password": "rep\\'li:ca tion''\\",
    "app_password": "äpp ∂ 'quoted' \\x:y",
}


def secrets_visible(cluster):
    """Where any of the cluster's passwords shows: process arguments and the logs."""
    found = []
    ps = subprocess.run(["ps", "-eo", "pid,args", "ww"], capture_output=True, text=True, check=True).stdout
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                ps += "\n" + f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            pass
    logs = {path: open(path, encoding="utf-8", errors="replace").read()
            for path in glob.glob(os.path.join(cluster.dir, "*.log"))
            + glob.glob(os.path.join(cluster.dir, "*", "state", "postgresql.log"))}
    for setting, password in cluster.passwords.items():
        if password in ps:
            found.append(f"{setting} in process arguments")
        found += [f"{setting} in {path}" for path, text in logs.items() if password in text]
    return found


def check_private_files(cluster):
    for name in ("cluster.json", "secrets.json", "pgpass", "arbiter.py", "pgsql-1.py", "pgsql-2.py"):
        path = os.path.join(cluster.dir, name)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, f"{path} has mode {mode:04o}"
        if cluster.user:
            assert os.stat(path).st_uid == cluster.user.pw_uid, f"{path} not owned by {cluster.user.pw_name}"


def test_special_character_passwords_bootstrap_replicate_and_fail_over(request):
    cluster = LocalCluster(os.path.join(BASE, "secrets"), base_port=next_port(), passwords=NASTY)
    cluster.prepare(fresh=True)
    cluster.start()
    try:
        status = cluster.wait_healthy(timeout=120)     # bootstrap (initdb --pwfile), clone, sync streaming
        assert (status["primary"], status["epoch"]) == ("pgsql-1", 1)
        # the application connects through the pgpass file, without a password in its DSN
        pgpass = cluster.write_pgpass()
        check_private_files(cluster)
        conn = psycopg2.connect(cluster.dsn_for("pgsql-1", "pgsql-2", password=None), passfile=pgpass)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == ("app", False)
        conn.close()

        with WriteRun(cluster) as run:
            assert run.wait_for_acks(10, timeout=30)
            assert secrets_visible(cluster) == []
            run.mark_fault()
            cluster.kill_host("pgsql-1")
            wait_for(lambda: ((s := cluster.status())["primary"], s["epoch"]) == ("pgsql-2", 2), 60,
                     "pgsql-2 promoted")
            assert run.wait_for_acks(20, timeout=60), "writes did not resume on the new primary"
            # the old primary comes back: pg_rewind / pg_basebackup with the nasty passwords
            cluster.start_node("pgsql-1")
            status = cluster.wait_healthy(timeout=180)
            assert status["primary"] == "pgsql-2"
            assert run.wait_for_acks(10, timeout=30)
            assert secrets_visible(cluster) == []
        run.check()
    finally:
        finish(cluster, request)


def proposal(cluster):
    try:
        return cluster.status().get("proposal")
    except OSError:     # not listening yet
        return None


def test_a_lost_arbiter_state_stops_it_and_a_confirmed_rebuild_carries_on(local_cluster):
    cluster = local_cluster
    where = f"127.0.0.1:{cluster.arbiter_port}"
    state_file = os.path.join(cluster.dir, "arbiter-state.json")
    with WriteRun(cluster) as run:
        assert run.wait_for_acks(10, timeout=30)
        # a planned switchover first, so the right answer is not the initial primary
        assert ctl.main(["--arbiter", where, "--key-file", cluster.key_file("operator"), "switchover", "--force"]) == 0
        # one snapshot: healthy AND pgsql-2 primary in the same status (two calls could
        # see the healthy epoch-1 cluster, then the fresh epoch-2 decision, and the
        # arbiter would be killed in the middle of the hand-over)
        status = wait_for(lambda: (s := cluster.healthy_status()) and s["primary"] == "pgsql-2" and s, 90,
                          "pgsql-2 primary and healthy at epoch 2")
        assert status["epoch"] == 2
        run.mark_fault()

        cluster.kill("arbiter")
        os.unlink(state_file)
        refused = cluster.start_arbiter()
        assert refused.wait(timeout=30) == 1
        with open(os.path.join(cluster.dir, "arbiter.log")) as f:
            last = f.read().splitlines()[-1]
        assert "does not exist" in last and "--rebuild" in last
        assert not os.path.exists(state_file)
        assert run.wait_for_acks(10, timeout=30), "writes stopped without the arbiter"

        cluster.start_arbiter("--rebuild")
        wait_for(lambda: proposal(cluster) == {"epoch": 2, "primary": "pgsql-2"}, 30, "the rebuild proposal")
        assert not os.path.exists(state_file)
        # Writes keep flowing while the rebuild waits for the operator (issue 19: the
        # primary was told "wait" and fenced a lease later): past several lease times
        # the primary still commits and is still the proposal.
        time.sleep(3 * cluster.arbiter_setting("lease_time"))
        assert run.wait_for_acks(10, timeout=5), "writes stopped while the rebuild waited for the operator"
        assert proposal(cluster) == {"epoch": 2, "primary": "pgsql-2"}
        assert ctl.main(["--arbiter", where, "--key-file", cluster.key_file("operator"), "rebuild", "--confirm", "--epoch", "2", "--primary", "pgsql-1"]) == 1
        assert not os.path.exists(state_file)
        assert ctl.main(["--arbiter", where, "--key-file", cluster.key_file("operator"), "rebuild", "--confirm", "--epoch", "2", "--primary", "pgsql-2"]) == 0

        status = cluster.wait_healthy(timeout=60)
        assert (status["epoch"], status["primary"]) == (2, "pgsql-2")
        assert run.wait_for_acks(20, timeout=30)
    run.check()
    with open(state_file) as f:
        assert '"primary": "pgsql-2"' in f.read()
