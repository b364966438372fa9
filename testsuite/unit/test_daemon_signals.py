"""The arbiter stops on SIGTERM whichever of its threads the kernel hands the
signal to.

Its accept loop sleeps in the main thread without a timeout, and Python runs
a signal handler only when the main thread next runs: a SIGTERM taken by a
connection's thread used to wait for the next new connection (a leading
arbiter on etcd kept its leadership and went on answering; CI saw one hang
for 30 s). kill(2) aimed at a thread id delivers the process's signal to that
thread, which is how the test makes the kernel's rare choice every time.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from harness.procs import cpu_seconds, listening_within, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_arbiter(tmp_path):
    from pgha import keys
    keys.generate(str(tmp_path / "keys"), ["pgsql-1", "pgsql-2"])
    port = free_port()
    settings = tmp_path / "arbiter-settings.py"
    settings.write_text(f"state_file = {str(tmp_path / 'state.json')!r}\nlisten_host = '127.0.0.1'\n"
                        f"listen_port = {port}\nkey_file = {str(tmp_path / 'keys' / 'arbiter.keys')!r}\n"
                        f"log_file = {str(tmp_path / 'arbiter.log')!r}\n")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "arbiter.py"), "--settings", str(settings),
                             "--init"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert listening_within(port, 20), (tmp_path / "arbiter.log").read_text()
    return proc, port


def other_threads(pid, at_least, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        if len(tids) >= at_least:
            return tids
        time.sleep(0.05)
    raise AssertionError(f"the arbiter has fewer than {at_least} threads besides its main one")


def test_a_sigterm_taken_by_a_connection_thread_stops_the_arbiter(tmp_path):
    proc, port = start_arbiter(tmp_path)
    try:
        quiet = socket.create_connection(("127.0.0.1", port))     # a connection: its own thread
        threads = other_threads(proc.pid, 1)
        os.kill(threads[-1], signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM to a connection's thread did not stop the arbiter") from None
        quiet.close()
    finally:
        stop_process(proc, grace=0)
    assert code == 0
    assert "stopping on SIGTERM" in (tmp_path / "arbiter.log").read_text()


def test_sighup_wakes_the_loop_and_the_arbiter_still_serves(tmp_path):
    """The wakeup pipe is drained: a signal's byte does not leave the loop spinning."""
    proc, port = start_arbiter(tmp_path)
    try:
        before = cpu_seconds(proc.pid)
        for _ in range(3):
            proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert cpu_seconds(proc.pid) - before < 0.5, "the loop spins after a signal"
        assert listening_within(port, 5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_process(proc, grace=0)

