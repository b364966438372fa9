"""pg_hba and pg_ident as the DBA writes them (settings pg_hba, pg_ident;
pgha/hba.py), on a real cluster: with the DBA's list the pair still
replicates (the node adds its own lines), a local peer login through the
DBA's ident map works, and a reload with a changed list rewrites the file and
reloads PostgreSQL: the login is refused from then on."""
import getpass
import os
import signal
import subprocess

import pytest

from harness.localcluster import LocalCluster
from pgha import hba
from pgha.postgres import find_bindir
from testsuite.integration.conftest import BASE, finish, next_port, wait_for
from testsuite.integration.test_node_ops import append_settings

APP_USER = "app"     # the local cluster's application role (LOGIN, no superuser)


@pytest.fixture
def cluster(request):
    os_user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    c = LocalCluster(os.path.join(BASE, "hba"), base_port=next_port(), node_overrides={
        "pg_hba": ["local all all peer map=dba", "host all all 127.0.0.1/32 scram-sha-256"],
        "pg_ident": [f"dba {os_user} {APP_USER}"]})
    c.prepare(fresh=True)
    c.start()
    try:
        c.wait_healthy(timeout=120)     # replication and its slot: the node's own lines are there
        yield c
    finally:
        finish(c, request)


def peer_login(cluster, node):
    """psql over the node's local socket as the daemons' OS user, without any password."""
    params = cluster.superuser_params(node)
    socket_dir = os.path.join(os.path.dirname(cluster.pgdata(node)), "run")
    cmd = [os.path.join(find_bindir(None), "psql"), "-h", socket_dir, "-p", str(params["port"]),
           "-U", APP_USER, "-d", params["dbname"], "-w", "-Atc", "SELECT current_user"]
    owner = {"user": cluster.user.pw_uid, "group": cluster.user.pw_gid, "extra_groups": []} if cluster.user else {}
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSFILE": os.devnull}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env, cwd="/", **owner)


def test_the_dbas_lines_in_order_and_a_peer_login_through_the_ident_map(cluster):
    for node in ("pgsql-1", "pgsql-2"):
        with open(os.path.join(cluster.pgdata(node), "pg_hba.conf")) as f:
            text = f.read()
        assert text.endswith(f"{hba.LISTED}\nlocal all all peer map=dba\n"
                             "host all all 127.0.0.1/32 scram-sha-256\n"), text
        login = peer_login(cluster, node)
        assert login.returncode == 0 and login.stdout == f"{APP_USER}\n", login.stderr

    # The DBA drops the peer line: a reload rewrites pg_hba.conf and reloads PostgreSQL.
    postmaster = cluster.postmaster_pid("pgsql-1")
    append_settings(cluster, "pgsql-1", 'pg_hba = ["host all all 127.0.0.1/32 scram-sha-256"]\n')
    cluster.send_signal("pgsql-1", signal.SIGHUP)
    refused = wait_for(lambda: (r := peer_login(cluster, "pgsql-1")).returncode != 0 and r, 20,
                       "the peer login refused after the reload")
    assert "no pg_hba.conf entry" in refused.stderr or "password" in refused.stderr, refused.stderr
    assert cluster.postmaster_pid("pgsql-1") == postmaster      # reloaded, not restarted
    assert peer_login(cluster, "pgsql-2").returncode == 0       # the other node keeps its own list
