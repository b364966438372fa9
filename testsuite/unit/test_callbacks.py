"""Callbacks (pgha/callbacks.py) with real scripts: arguments, exit status and
stderr logged, a hanging script (and its child) killed at the timeout, fire()
never blocking, events coalesced while one runs."""
import time

from pgha.callbacks import CallbackRunner, run_script


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_arguments_and_exit_status(tmp_path, caplog):
    out = tmp_path / "out"
    path = script(tmp_path, "cb", f'echo "$1 $2 $3" >> {out}\necho oops >&2\nexit 3\n')
    with caplog.at_level("INFO"):
        assert run_script(path, "on_role_change", "primary", "pgsql-1", 5.0) == 3
    assert out.read_text() == "on_role_change primary pgsql-1\n"
    assert "exit status 3" in caplog.text and "stderr: oops" in caplog.text


def test_a_hanging_callback_and_its_children_are_killed_at_the_timeout(tmp_path, caplog):
    pidfile = tmp_path / "child"
    path = script(tmp_path, "hang", f"sleep 60 & echo $! > {pidfile}\nwait\n")
    started = time.monotonic()
    assert run_script(path, "on_role_change", "primary", "n", 0.5) is None
    assert time.monotonic() - started < 3.0
    assert "killed after the 0.5s timeout" in caplog.text
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not alive(child)     # the whole process group went


def alive(pid):
    """Running, not a zombie nobody reaped (a killed orphan may stay one here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_missing_script_is_one_line(tmp_path, caplog):
    assert run_script(str(tmp_path / "nope"), "on_start", "replica", "n", 1.0) is None
    assert "cannot run" in caplog.text


def test_fire_returns_at_once_and_events_are_coalesced(tmp_path):
    out = tmp_path / "out"
    path = script(tmp_path, "slow", f'sleep 0.5\necho "$1 $2" >> {out}\n')
    scripts = {"on_role_change": path, "on_start": path, "on_stop": None}
    runner = CallbackRunner("n", lambda: (scripts, 5.0))
    started = time.monotonic()
    runner.fire("on_start", "replica")          # runs at once
    time.sleep(0.1)
    runner.fire("on_role_change", "replica")    # queued, then replaced
    runner.fire("on_role_change", "primary")
    runner.fire("on_stop", "stopped")           # no script: nothing queued
    assert time.monotonic() - started < 0.4
    runner.stop()
    assert out.read_text() == "on_start replica\non_role_change primary\n"


def test_a_hanging_callback_does_not_hold_the_next_one_past_the_timeout(tmp_path):
    out = tmp_path / "out"
    hang = script(tmp_path, "hang", "sleep 60\n")
    quick = script(tmp_path, "quick", f'echo "$1 $2" >> {out}\n')
    scripts = {"on_role_change": hang, "on_start": None, "on_stop": quick}
    runner = CallbackRunner("n", lambda: (scripts, 0.5))
    runner.fire("on_role_change", "primary")
    runner.fire("on_stop", "stopped")
    runner.stop(timeout=5.0)
    assert out.read_text() == "on_stop stopped\n"
    assert runner.idle()
