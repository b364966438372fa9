"""etcd members on loopback, from Debian's etcd-server package, for tests,
the local cluster (--etcd) and benchmarks.

    EtcdCluster(folder, base_port, members=3): member i listens for clients on
    base_port + 2i and for peers on base_port + 2i + 1; data in folder/etcd-<i>.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request

from harness.procs import stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def available() -> bool:
    return os.access(ETCD, os.X_OK)


class EtcdCluster:
    def __init__(self, folder: str, base_port: int, members: int = 3, fsync: bool = True) -> None:
        self.folder = os.path.abspath(folder)
        self.base_port = base_port
        self.names = [f"etcd-{i}" for i in range(members)]
        self.fsync = fsync      # False only where durability is not under test (fast unit fixtures)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def client_port(self, name: str) -> int:
        return self.base_port + 2 * self.names.index(name)

    def peer_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.client_port(name) + 1}"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client_port(n)}" for n in self.names]

    def start(self, timeout: float = 30.0) -> None:
        for name in self.names:
            self.start_member(name)
        self.wait_healthy(timeout)

    def start_member(self, name: str) -> None:
        data = os.path.join(self.folder, name)
        state = "existing" if os.path.exists(data) else "new"
        os.makedirs(self.folder, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_port(name)}"
        cmd = [ETCD, "--name", name, "--data-dir", data,
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", self.peer_url(name), "--initial-advertise-peer-urls", self.peer_url(name),
               "--initial-cluster", ",".join(f"{n}={self.peer_url(n)}" for n in self.names),
               "--initial-cluster-state", state, "--initial-cluster-token", f"pgha-{self.base_port}",
               # loopback: short raft timings, so a lost leader is replaced quickly
               "--heartbeat-interval", "50", "--election-timeout", "500"]
        if not self.fsync:
            cmd.append("--unsafe-no-fsync")
        log = open(os.path.join(self.folder, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def kill_member(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def healthy(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_port(name)}/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for name in names or list(self.procs):
            while not self.healthy(name):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {name} not healthy after {timeout:.0f}s "
                                       f"(log: {os.path.join(self.folder, name + '.log')})")
                time.sleep(0.1)

    def stop(self) -> None:
        for name in list(self.procs):
            stop_process(self.procs.pop(name))

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}
