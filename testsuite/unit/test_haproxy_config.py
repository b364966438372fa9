"""harness/haproxy.py's rewrites of Patroni's example haproxy.cfg (Debian's
patroni package, bin/setup) and of our own docs/haproxy.cfg: only the ports
change, and a file that no longer has the lines it rewrites is one clear error."""
import os

import pytest

from harness.haproxy import PATRONI_EXAMPLE, SHIPPED, HAProxyError, patroni_example_config, shipped_config


class Cluster:
    nodes = ["pgsql-1", "pgsql-2"]
    hosts = {"pgsql-1": "127.0.0.1", "pgsql-2": "127.0.0.1"}
    pg_ports = {"pgsql-1": 7001, "pgsql-2": 7002}
    api_ports = {"pgsql-1": 7021, "pgsql-2": 7022}


def example():
    assert os.path.exists(PATRONI_EXAMPLE), f"{PATRONI_EXAMPLE} missing: bin/setup installs Debian's patroni"
    with open(PATRONI_EXAMPLE, encoding="utf-8") as f:
        return f.read()


def test_only_the_ports_change():
    original = example()
    text, backend = patroni_example_config(original, Cluster, 7030, 7031, 7032, "/tmp/s.sock")
    assert "*:" not in text and "bind 127.0.0.1:7030" in text and "bind 127.0.0.1:7032" in text
    assert "server pgsql-1 127.0.0.1:7001 maxconn 100 check port 7021" in text
    assert "server pgsql-2 127.0.0.1:7002 maxconn 100 check port 7022" in text
    writes = text.split(f"listen {backend}\n", 1)[1].split("\n\n", 1)[0]
    assert "option httpchk\n" in writes + "\n"          # Patroni's check, OPTIONS /, untouched
    assert "inter 3s fall 3 rise 2 on-marked-down shutdown-sessions" in writes
    reads = text.split(f"listen {backend}_replicas\n", 1)[1]
    assert "bind 127.0.0.1:7031" in reads and "option httpchk GET /replica" in reads
    # Every other line of Patroni's file is there as it was.
    kept = [line for line in original.splitlines() if "bind *:" not in line and "server " not in line]
    assert all(line in text.splitlines() for line in kept)


@pytest.mark.parametrize("change", [("bind *:5000", "bind *:6000"), ("check port 8009", "")])
def test_a_changed_example_is_one_clear_error(change):
    with pytest.raises(HAProxyError, match="example haproxy.cfg changed"):
        patroni_example_config(example().replace(*change), Cluster, 7030, 7031, 7032, "/tmp/s.sock")


def shipped():
    with open(SHIPPED, encoding="utf-8") as f:
        return f.read()


def test_the_shipped_file_runs_with_only_its_ports_and_socket_changed():
    original = shipped()
    text = shipped_config(original, Cluster, 7030, 7031, 7032, "/tmp/s.sock")
    assert "*:" not in text and "/run/haproxy" not in text and "stats socket /tmp/s.sock mode" in text
    for port in (7030, 7031, 7032):
        assert f"bind 127.0.0.1:{port}" in text
    assert text.count("server pgsql-1 127.0.0.1:7001 maxconn 500 check port 7021") == 2     # writes and reads
    assert text.count("server pgsql-2 127.0.0.1:7002 maxconn 500 check port 7022") == 2
    kept = [line for line in original.splitlines()
            if "bind *:" not in line and "server " not in line and "stats socket" not in line]
    assert all(line in text.splitlines() for line in kept)   # the checks and timings are the file's


@pytest.mark.parametrize("change", [("bind *:5001", "bind *:6001"), ("stats socket", "# stats socket")])
def test_a_changed_shipped_file_is_one_clear_error(change):
    with pytest.raises(HAProxyError, match="changed"):
        shipped_config(shipped().replace(*change), Cluster, 7030, 7031, 7032, "/tmp/s.sock")


def test_a_shipped_server_that_is_no_node_is_one_clear_error():
    with pytest.raises(HAProxyError, match="'pgsql-9'"):
        shipped_config(shipped().replace("server pgsql-2 pgsql-2:", "server pgsql-9 pgsql-9:"),
                       Cluster, 7030, 7031, 7032, "/tmp/s.sock")
