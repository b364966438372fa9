"""The packages (issue 20): a wheel and a Debian package built from this
checkout with the usual tools (`python3 -m build`, `dpkg-buildpackage`), the
wheel installed into a fresh virtualenv, the .deb with apt-get into a clean
Debian container (the fault suite's base image, made by harness/docker.py).

In the container, as on a fresh arbiter host: the commands run, the pgha
user and the folders exist with their owners, the arbiter set up as the
README says starts as pgha, says READY=1 on a NOTIFY_SOCKET (as systemd's
Type=notify waits for) and answers `pgha-ctl status`; then the packaged
logrotate file, run by the real logrotate, rotates the arbiter's log (the
new file is pgha's, and the arbiter writes on into it) and PostgreSQL's own
log (copied and truncated: its writer goes on at the start of the file).
"""
import ast
import re
import time
import tomllib

import pytest

from harness import docker as de
from testsuite import packaging

ROOT = packaging.ROOT
LAUNCHER = ROOT / "debian" / "launcher"
COMMANDS = ("pgha-node", "pgha-arbiter", "pgha-ctl", "pgha-keys")
run = packaging.run


# -- the wheel -----------------------------------------------------------------

def test_wheel_installs_into_a_fresh_virtualenv(built, tmp_path):
    wheel, _deb = built
    venv = tmp_path / "venv"
    run(["/usr/bin/python3", "-m", "venv", str(venv)])
    # --no-deps: no PyPI here; the dependencies are declared in the wheel (checked below).
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    for command in COMMANDS:
        assert "usage:" in run([str(venv / "bin" / command), "--help"], cwd=tmp_path)
    metadata = run([str(venv / "bin" / "pip"), "show", "pgha"])
    assert re.search(r"^Requires: psycopg2-binary$", metadata, re.M), metadata


# -- the Debian package ----------------------------------------------------------

def test_launcher_runs_the_commands_pyproject_names():
    """debian/launcher's table and [project.scripts] name the same code."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    table = re.search(r"^COMMANDS = (\{.*\})$", LAUNCHER.read_text(), re.M).group(1)
    assert {name: f"{module}:main" for name, module in ast.literal_eval(table).items()} == scripts
    assert set(scripts) == set(COMMANDS)


def test_deb_holds_the_commands_units_and_logrotate_file(built):
    _wheel, deb = built
    listing = run(["dpkg-deb", "-c", str(deb)])
    for path in ["./usr/bin/" + c for c in COMMANDS] + [
            "./lib/systemd/system/pgha-node.service", "./lib/systemd/system/pgha-arbiter.service",
            "./etc/logrotate.d/pgha", "./usr/share/pgha/pgha/node.py", "./usr/share/pgha/node_settings.py"]:
        assert re.search(rf" {re.escape(path)}( -> |$)", listing, re.M), path
    fields = run(["dpkg-deb", "-f", str(deb), "Depends", "Recommends", "Suggests"])
    assert "python3-psycopg2" in fields and "Recommends: postgresql" in fields, fields
    assert "python3-etcd3gw" in fields, fields


@pytest.fixture(scope="module")
def container(built):
    """A container of the base image with the .deb copied in (nothing installed)."""
    packaging.docker_ready("package")
    name = packaging.unique("pgha-package-test")
    try:
        yield packaging.start_container(name, "arbiter", built[1])
    finally:
        packaging.remove_container(name)


ARBITER_SETTINGS = """\
listen_host = "127.0.0.1"
nodes = ["pgsql-1", "pgsql-2"]
initial_primary = "pgsql-1"
state_file = "/var/lib/pgha-arbiter/state.json"
key_file = "/etc/pgha/arbiter.keys"
log_file = "/var/log/pgha/arbiter/arbiter.log"
"""

# A stand-in for systemd's notify socket: prints the first datagram.
NOTIFY_LISTENER = ("import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                   "s.bind('/run/notify'); os.chmod('/run/notify', 0o666); print(s.recv(64).decode(), flush=True)")
# What `pg_ctl -l FILE` gives the postmaster: FILE opened once for appending.
PG_LOG_WRITER = ("import itertools, sys, time\n"
                 "for i in itertools.count():\n"
                 "    print(f'line {i}', flush=True); time.sleep(0.05)")


def test_deb_on_a_clean_debian(container):
    c = container
    # PostgreSQL's user, as postgresql-common makes it (the package recommends
    # PostgreSQL; installing it here would only cost time).
    c.sh("useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres")
    started = time.monotonic()
    c.sh("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
         "/root/pgha_*_all.deb logrotate", timeout=600)
    print(f"\n[package] apt-get update + install: {time.monotonic() - started:.1f} s")

    for command in COMMANDS:
        assert "usage:" in c.sh(f"{command} --help")

    assert re.fullmatch(r"pgha:x:\d+:\d+:[^:]*:/var/lib/pgha-arbiter:/usr/sbin/nologin\n",
                        c.sh("getent passwd pgha"))
    owners = c.sh("stat -c '%n %U:%G %a' /var/lib/pgha-arbiter /var/log/pgha /var/log/pgha/arbiter "
                  "/var/lib/pgha /var/log/pgha/node /etc/pgha")
    assert owners.splitlines() == ["/var/lib/pgha-arbiter pgha:pgha 750", "/var/log/pgha root:root 755",
                                   "/var/log/pgha/arbiter pgha:pgha 750", "/var/lib/pgha postgres:postgres 750",
                                   "/var/log/pgha/node postgres:postgres 750", "/etc/pgha root:root 755"]

    # The arbiter host as the README sets it up: keys, settings, first start with --init.
    c.sh("pgha-keys generate --dir /root/pgha-keys --nodes pgsql-1,pgsql-2 >/dev/null && "
         "install -o pgha -g pgha -m 0600 /root/pgha-keys/arbiter.keys /etc/pgha/arbiter.keys")
    c.sh(f"cat > /etc/pgha/arbiter.py <<'EOF'\n{ARBITER_SETTINGS}EOF")
    de.run(["docker", "exec", "-d", c.name, "sh", "-c", f'python3 -c "{NOTIFY_LISTENER}" > /run/notify.out'])
    c.wait_for("test -S /run/notify")
    de.run(["docker", "exec", "-d", "-u", "pgha", "-e", "NOTIFY_SOCKET=/run/notify", c.name,
            "sh", "-c", "exec pgha-arbiter --settings /etc/pgha/arbiter.py --init 2>/tmp/arbiter.err"])
    assert c.wait_for("grep -x READY=1 /run/notify.out") == "READY=1\n"
    ctl = "pgha-ctl --arbiter 127.0.0.1:5430 --key-file /root/pgha-keys/operator.keys"
    status = c.sh(f"{ctl} status")      # ready means answering: no wait here
    assert "epoch 1, primary pgsql-1" in status, status
    assert c.sh("stat -c '%U' /var/lib/pgha-arbiter/state.json") == "pgha\n"
    assert "listening on 127.0.0.1:5430" in c.sh("cat /var/log/pgha/arbiter/arbiter.log")

    # PostgreSQL's own log, held open for appending by its writer as pg_ctl -l does.
    de.run(["docker", "exec", "-d", "-u", "postgres", c.name, "sh", "-c",
            f'exec python3 -c "{PG_LOG_WRITER}" >> /var/lib/pgha/postgresql.log'])
    c.wait_for("grep -qx 'line 5' /var/lib/pgha/postgresql.log")

    c.sh("logrotate -f -s /tmp/logrotate.state /etc/logrotate.d/pgha")

    rotated = c.sh("cat /var/log/pgha/arbiter/arbiter.log.1")
    assert "listening on 127.0.0.1:5430" in rotated
    assert c.sh("stat -c '%U:%G %a' /var/log/pgha/arbiter/arbiter.log") == "pgha:pgha 640\n"
    c.sh(f"{ctl} reload")       # the arbiter logs the operator's request
    assert "reload requested by the operator" in c.wait_for(
        "grep 'reload requested by the operator' /var/log/pgha/arbiter/arbiter.log")
    assert "reload requested" not in c.sh("cat /var/log/pgha/arbiter/arbiter.log.1")

    # copytruncate: the old lines in postgresql.log.1, the writer goes on in postgresql.log from its start.
    last_rotated = int(c.sh("tail -n 1 /var/lib/pgha/postgresql.log.1").split()[1])
    assert c.sh("head -n 1 /var/lib/pgha/postgresql.log.1") == "line 0\n"
    c.wait_for(f"grep -qx 'line {last_rotated + 20}' /var/lib/pgha/postgresql.log")
    first_now = c.sh("head -c 100 /var/lib/pgha/postgresql.log").split("\n")[0]
    assert re.fullmatch(r"line \d+", first_now) and int(first_now.split()[1]) > last_rotated, first_now
    assert c.sh("stat -c '%U:%G' /var/lib/pgha/postgresql.log") == "postgres:postgres\n"
    assert c.sh("cat /tmp/arbiter.err", check=False).count("Traceback") == 0
