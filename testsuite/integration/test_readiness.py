"""systemd readiness from the real daemons (pgha/sdnotify.py's two call
sites). A local cluster is started with NOTIFY_SOCKET set, as systemd's
Type=notify sets it, on a datagram socket that learns each sender's pid as
systemd does (SO_PASSCRED): the arbiter says READY=1 once, when its port
already answers; each node once (after its first heartbeat); nobody else
sends: PostgreSQL, which speaks the same protocol, does not inherit the
variable."""
import os
import socket
import struct
import time

from harness.localcluster import NODES, LocalCluster
from pgha.postgres import read_postmaster_pid
from testsuite.integration.conftest import BASE, finish, next_port

CREDENTIALS = struct.Struct("3i")   # struct ucred: pid, uid, gid


def notify_socket(folder):
    """A datagram socket the daemons' user may send to, passing credentials."""
    os.makedirs(folder, mode=0o755, exist_ok=True)
    path = os.path.join(folder, "notify")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(path)
    os.chmod(path, 0o666)
    return path, sock


def receive(sock, timeout):
    """(sender pid, message), or None when nothing came within `timeout`."""
    sock.settimeout(max(timeout, 0.01))
    try:
        data, ancillary, _flags, _address = sock.recvmsg(256, socket.CMSG_SPACE(CREDENTIALS.size))
    except socket.timeout:
        return None
    pids = [CREDENTIALS.unpack(body[:CREDENTIALS.size])[0] for level, kind, body in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    return (pids[0] if pids else None), data


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_each_daemon_says_ready_once(request, monkeypatch):
    cluster = LocalCluster(os.path.join(BASE, "readiness"), base_port=next_port())
    cluster.prepare(fresh=True)
    path, sock = notify_socket(os.path.join(cluster.dir, "systemd"))
    monkeypatch.setenv("NOTIFY_SOCKET", path)     # the daemons' environment is this process's
    try:
        cluster.start()
        daemons = {proc.pid: key for key, proc in cluster.procs.items()}
        said, arbiter_answered = [], None
        deadline = time.monotonic() + 60
        while len({pid for pid, _ in said}) < len(daemons) and time.monotonic() < deadline:
            got = receive(sock, deadline - time.monotonic())
            if got is None:
                break
            said.append(got)
            if daemons.get(got[0]) == "arbiter":
                arbiter_answered = answers(cluster.arbiter_port)   # at once: ready means listening
        cluster.wait_healthy(timeout=120)
        while (got := receive(sock, 0.5)) is not None:     # nothing more: once each, and nobody else
            said.append(got)
        assert sorted((daemons.get(pid, f"pid {pid}"), data) for pid, data in said) == \
            [("arbiter", b"READY=1"), ("pgsql-1", b"READY=1"), ("pgsql-2", b"READY=1")]
        assert arbiter_answered is True
        for name in NODES:
            postmaster = read_postmaster_pid(cluster.pgdata(name))
            with open(f"/proc/{postmaster}/environ", "rb") as f:
                assert b"NOTIFY_SOCKET=" not in f.read(), name
    finally:
        sock.close()
        finish(cluster, request)
