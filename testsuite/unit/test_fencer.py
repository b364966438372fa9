"""The fencer (pgha/fencer.py) and the daemon's handle on it (pgha/fencing.py):
real fencer processes against a stand-in postmaster, a process whose
command line reads "postgres ... -D PGDATA" and whose pid is in
PGDATA/postmaster.pid, as pg_ctl leaves them."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pgha import fencer as fencer_program
from pgha.fencing import Fencer, is_fencer

# How late past a deadline the stand-in postmaster may die: generous, since a
# loaded shared machine delays the fencer's wake-up (the lower bounds stay exact).
SLACK = 2.0
# The stand-in sets its SIGQUIT disposition itself: a test run started in the
# background of a non-interactive shell inherits SIGQUIT ignored, as PostgreSQL
# (which installs its own handler) never would.
SLEEPER = ("import signal, sys, time\n"
           "signal.signal(signal.SIGQUIT, signal.SIG_IGN if 'ignore-quit' in sys.argv else signal.SIG_DFL)\n"
           "time.sleep(600)")


@pytest.fixture
def site(tmp_path):
    """A fake PGDATA and state folder; every process started here is killed at the end."""
    pgdata, state = tmp_path / "data", tmp_path / "state"
    pgdata.mkdir()
    started = []
    yield Site(str(pgdata), str(state), started)
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for fencer in Site.fencers_of(str(state)):
        os.kill(fencer, signal.SIGKILL)


class Site:
    def __init__(self, pgdata, state, started):
        self.pgdata, self.state, self.started = pgdata, state, started

    def postmaster(self, data_dir=None, argv0="postgres", pid_file_dir=None, ignore_quit=False):
        """Start a stand-in postmaster and write its pid file."""
        args = [argv0, "-c", SLEEPER, "-D", data_dir or self.pgdata] + (["ignore-quit"] if ignore_quit else [])
        proc = subprocess.Popen(args, executable=sys.executable, start_new_session=True)
        self.started.append(proc)
        time.sleep(0.1)     # let it ignore SIGQUIT before anyone may send it
        with open(os.path.join(self.pgdata, "postmaster.pid"), "w") as f:
            f.write(f"{proc.pid}\n{pid_file_dir or self.pgdata}\n1700000000\n5432\n")
        return proc

    def fencer(self):
        handle = Fencer(self.state, self.pgdata)
        assert handle.start() is False
        return handle

    @staticmethod
    def fencers_of(state):
        fifo = os.path.join(state, "fencer.fifo")
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and is_fencer(int(p), fifo)]


def dead_within(proc, seconds):
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_armed_deadline_passing_kills_the_postmaster_in_time(site):
    pg = site.postmaster()
    fencer = site.fencer()
    armed_at = time.monotonic()
    fencer.arm(1.0)
    assert not dead_within(pg, 0.8), "fenced before the deadline"
    assert dead_within(pg, 0.2 + SLACK), "not fenced within deadline + SLACK"
    assert time.monotonic() - armed_at < 1.0 + SLACK
    assert pg.returncode == -signal.SIGQUIT
    assert site.fencers_of(site.state) == [fencer.pid], "the fencer must keep running after fencing"


def test_rearming_before_the_deadline_keeps_it_alive(site):
    pg = site.postmaster()
    fencer = site.fencer()
    for _ in range(8):      # 2 s in all, against a 0.6 s lease renewed every 0.25 s
        fencer.arm(0.6)
        assert not dead_within(pg, 0.25)
    assert dead_within(pg, 0.6 + SLACK), "the last lease was not enforced"


def test_disarm_keeps_it_alive_and_a_later_arm_still_works(site):
    pg = site.postmaster()
    fencer = site.fencer()
    fencer.arm(0.5)
    fencer.disarm()
    assert not dead_within(pg, 1.0)
    fencer.arm(0.3)
    assert dead_within(pg, 0.8)


def test_follow_writes_only_when_the_deadline_grows(site):
    pg = site.postmaster()
    fencer = site.fencer()
    writes = []
    send = fencer._send
    fencer._send = lambda command: writes.append(command) or send(command)
    until = time.monotonic() + 0.5
    fencer.follow(lambda: until)
    fencer.follow(lambda: until + 0.01)     # under WRITE_STEP: not written
    fencer.follow(lambda: until - 0.2)      # a lease never shrinks: not written
    assert len(writes) == 1
    fencer.follow(lambda: None)
    fencer.follow(lambda: None)
    assert writes[1:] == ["disarm"]
    assert not dead_within(pg, 0.8)


def test_follow_without_waiting_skips_a_busy_handle(site):
    site.postmaster()
    fencer = site.fencer()
    writes = []
    send = fencer._send
    fencer._send = lambda command: writes.append(command) or send(command)
    until = time.monotonic() + 5.0
    with fencer._lock:      # another thread holds the handle (e.g. restarting the fencer)
        assert fencer.follow(lambda: until, wait=False) is False
    assert writes == []
    assert fencer.follow(lambda: until, wait=False) is True
    assert len(writes) == 1
    fencer.disarm()


def test_cap_never_extends_an_armed_deadline(site):
    pg = site.postmaster()
    fencer = site.fencer()
    fencer.arm(0.5)
    fencer.cap(5.0)
    assert dead_within(pg, 0.5 + SLACK)


def test_cap_arms_a_disarmed_fencer(site):
    pg = site.postmaster()
    fencer = site.fencer()
    fencer.cap(0.4)
    assert dead_within(pg, 0.4 + SLACK)


@pytest.mark.parametrize("impostor", ["other data dir", "not postgres", "pid file names another dir"])
def test_a_process_that_is_not_this_postmaster_is_never_signalled(site, tmp_path, impostor):
    other = str(tmp_path / "other")
    pg = {"other data dir": lambda: site.postmaster(data_dir=other),
          "not postgres": lambda: site.postmaster(argv0="python3"),
          "pid file names another dir": lambda: site.postmaster(pid_file_dir=other)}[impostor]()
    fencer = site.fencer()
    fencer.arm(0.2)
    assert not dead_within(pg, 1.0)


def test_a_postmaster_ignoring_sigquit_is_killed(site):
    pg = site.postmaster(ignore_quit=True)
    fencer = site.fencer()
    fencer.arm(0.1)
    assert not dead_within(pg, 0.1 + fencer_program.KILL_AFTER - 0.3)
    assert dead_within(pg, 1.0)
    assert pg.returncode == -signal.SIGKILL


def test_a_restarted_handle_adopts_the_running_fencer(site):
    pg = site.postmaster()
    first = site.fencer()
    first.arm(30)
    second = Fencer(site.state, site.pgdata)
    assert second.start() is True
    assert second.pid == first.pid
    assert site.fencers_of(site.state) == [first.pid]
    second.disarm()
    assert not dead_within(pg, 0.5)
    second.arm(0.3)
    assert dead_within(pg, 0.3 + SLACK)


def test_a_restarted_handle_caps_the_old_deadline(site):
    """A restarted daemon's grace never outlasts the lease its predecessor armed."""
    pg = site.postmaster()
    site.fencer().arm(0.6)
    second = Fencer(site.state, site.pgdata)
    assert second.start() is True
    second.cap(30)
    assert dead_within(pg, 0.6 + SLACK)


def test_the_fencer_survives_its_parent_and_still_fences(site):
    pg = site.postmaster()
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(fencer_program.__file__))!r})
        from pgha.fencing import Fencer
        fencer = Fencer({site.state!r}, {site.pgdata!r})
        fencer.start()
        fencer.arm(1.5)
        print(fencer.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)], stdout=subprocess.PIPE, text=True)
    site.started.append(parent)
    fencer_pid = int(parent.stdout.readline())
    parent.wait(timeout=10)
    assert parent.returncode == -signal.SIGKILL
    assert site.fencers_of(site.state) == [fencer_pid]
    assert not dead_within(pg, 0.5)
    assert dead_within(pg, 1.5 + SLACK), "a fencer whose daemon died did not enforce the lease"


def test_a_frozen_fencer_fences_as_soon_as_it_resumes(site):
    pg = site.postmaster()
    fencer = site.fencer()
    fencer.arm(0.3)
    os.kill(fencer.pid, signal.SIGSTOP)
    try:
        assert not dead_within(pg, 0.8)
    finally:
        os.kill(fencer.pid, signal.SIGCONT)
    assert dead_within(pg, SLACK)


def test_check_restarts_a_dead_fencer(site):
    pg = site.postmaster()
    fencer = site.fencer()
    old = fencer.pid
    assert fencer.check() is None
    os.kill(old, signal.SIGKILL)
    time.sleep(0.1)
    started = time.monotonic()
    message = fencer.check()
    assert message and "restarted" in message
    assert time.monotonic() - started < SLACK
    assert fencer.pid != old and site.fencers_of(site.state) == [fencer.pid]
    fencer.arm(0.2)
    assert dead_within(pg, 0.2 + SLACK), "the restarted fencer does not take commands"


def test_a_stale_pid_file_from_an_earlier_boot_is_not_taken_for_readiness(site, monkeypatch):
    """After a reboot or a container restart the pid file may name the very pid
    the new fencer gets: the handle must wait for the new one to be ready."""
    import subprocess
    pg = site.postmaster()
    real_popen = subprocess.Popen
    os.makedirs(site.state, exist_ok=True)

    def popen(*args, **kwargs):      # the stale file names the new fencer's pid, as it may after a boot
        proc = real_popen(*args, **kwargs)
        if not os.path.exists(os.path.join(site.state, "fencer.pid")):
            with open(os.path.join(site.state, "fencer.pid"), "w") as f:
                f.write(f"{proc.pid}\n")
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen)
    fencer = site.fencer()       # must not fail opening a FIFO nobody reads yet
    fencer.arm(0.2)
    assert dead_within(pg, 0.2 + SLACK), "the new fencer does not take commands"


def test_exit_ends_the_fencer_and_removes_its_pid_file(site):
    fencer = site.fencer()
    pid = fencer.pid
    fencer.arm(30)
    fencer.stop()
    assert site.fencers_of(site.state) == []
    assert not os.path.exists(os.path.join(site.state, "fencer.pid"))
    assert pid not in site.fencers_of(site.state)


@pytest.mark.parametrize("command, before, after", [
    ("arm 12.5", None, 12.5),
    ("arm 12.5", 20.0, 12.5),
    ("cap 12.5", 10.0, 10.0),
    ("cap 12.5", 20.0, 12.5),
    ("cap 12.5", None, 12.5),
    ("disarm", 3.0, None),
    ("exit", 3.0, False),
    ("arm nan", 3.0, 3.0),
    ("arm", 3.0, 3.0),
    ("launch 1", None, None),
    ("", 3.0, 3.0),
])
def test_commands(command, before, after):
    assert fencer_program.apply(command, before) == after


def test_bad_arguments_give_one_line_and_status_2():
    result = subprocess.run([sys.executable, "-I", "-S", fencer_program.__file__, "--pgdata"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
