"""pgha-ctl (pgha/ctl.py) against the unit-test arbiter server (test_arbiter's
Running, authentication on): output formats, exit codes, who may run what,
and the arbiter's side of list, history, pause/resume, scheduled switchover
and manual failover."""
import argparse
import os
import json
from datetime import datetime, timezone

import pytest

from pgha import arbiter as arbiter_mod, ctl, keys, requests
from testsuite.unit.test_arbiter import P, S, Running, heartbeat, primary_report, standby_report
from testsuite.unit.test_arbiter_auth import KEYS, Signed, credential


@pytest.fixture
def running(tmp_path):
    r = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    r.wall = [1_700_000_000.0]
    r.arbiter.wall = lambda: r.wall[0]
    yield r
    r.stop()


@pytest.fixture
def as_who(monkeypatch):
    """ctl's credential comes from the key file's name: "operator.keys", "reader.keys", "pgsql-1.keys"."""
    monkeypatch.setattr(keys, "client_credential", lambda path: credential(path.split(".")[0]))


def run(running, *argv, who="operator"):
    return ctl.main(["--arbiter", "%s:%s" % running.address, "--key-file", f"{who}.keys", *argv])


def promotable_cluster(running):
    """Both nodes report; the standby becomes promotable."""
    primary, standby = Signed(running, credential(P)), Signed(running, credential(S))
    primary.ask(heartbeat(P, 1, primary_report(1000, 900)))
    running.clock.advance(0.5)
    primary.ask(heartbeat(P, 1, primary_report(1100, 1000)))
    standby.ask(heartbeat(S, 1, standby_report()))
    assert running.arbiter.state.promotable
    return primary, standby


def kill_primary_and_wait(running, standby, seconds=4.5):
    """The primary falls silent; the standby keeps reporting for `seconds`."""
    reply = None
    for _ in range(int(seconds / 0.5)):
        running.clock.advance(0.5)
        reply = standby.ask(heartbeat(S, 1, standby_report()))
    return reply


# -- list --------------------------------------------------------------------------------

def test_list_table_has_the_header_and_a_row_per_member(running, as_who, capsys):
    promotable_cluster(running)
    assert run(running, "list") == 0
    out = capsys.readouterr().out
    header, *table = out.splitlines()
    assert header == "+ Cluster: epoch 1, primary pgsql-1, standby promotable, not paused +"
    columns = [c.strip() for c in table[1].strip("|").split("|")]
    assert columns == ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Lease left", "Disk", "Epoch",
                       "Last action"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table[3:-1])}
    assert rows[P][:3] == [P, "127.0.0.1:5432", "Leader"]
    assert rows[S][:3] == [S, "127.0.0.1:5432", "Sync Standby"]
    assert rows[S][8] == "1" and rows[P][8] == "1"        # the epoch each node acted on
    assert rows[S][7] == "-"                               # no disk in these reports
    # lag: the primary at 1100, the standby replayed 900 -> 200 bytes
    assert rows[S][5] == "0.0" and rows[P][5] == "-"


def test_list_json_and_lag(running, as_who, capsys):
    promotable_cluster(running)
    assert run(running, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["epoch"], listed["primary"], listed["promotable"], listed["paused"]) == (1, P, True, False)
    members = {m["member"]: m for m in listed["members"]}
    assert members[S]["lag_bytes"] == 200 and members[S]["role"] == "Sync Standby"
    assert members[P]["lag_bytes"] is None and members[P]["epoch"] == 1


def test_list_watch_redraws_until_ctrl_c(running, as_who, capsys, monkeypatch):
    promotable_cluster(running)
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(ctl.time, "sleep", sleep)
    assert run(running, "list", "--watch", "0.5") == 0
    assert naps == [0.5, 0.5, 0.5]
    assert capsys.readouterr().out.count("+ Cluster: epoch 1") == 3


@pytest.mark.parametrize("who", ["reader", P])
def test_list_and_history_may_be_read_by_the_reader_and_a_node(running, as_who, capsys, who):
    assert run(running, "list", who=who) == 0
    assert run(running, "history", who=who) == 0
    assert run(running, "pause", who=who) == 1
    assert "authentication failed" in capsys.readouterr().err
    assert not running.arbiter.state.paused


# -- pause / resume ---------------------------------------------------------------------

def test_pause_is_durable_shown_everywhere_and_holds_back_a_failover(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    assert run(running, "pause") == 0
    assert "paused" in capsys.readouterr().out
    assert running.saved()["paused"] is True
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["paused"] is True
    reply = kill_primary_and_wait(running, standby, seconds=30)
    assert (reply["role"], reply["epoch"], reply["paused"]) == ("standby", 1, True)
    assert run(running, "list") == 0 and "PAUSED" in capsys.readouterr().out
    assert run(running, "status") == 0 and "PAUSED" in capsys.readouterr().out
    assert run(running, "switchover", "--force") == 1
    assert "paused" in capsys.readouterr().err
    # A restarted arbiter is still paused.
    assert arbiter_mod.Arbiter(running.settings, clock=running.clock).state.paused

    assert run(running, "resume") == 0
    assert "paused" not in running.saved()
    reply = standby.ask(heartbeat(S, 1, standby_report()))
    assert (reply["role"], reply["epoch"]) == ("primary", 2)
    assert [e["event"] for e in running.arbiter.store.history()][-4:] == ["pause", "switchover_refused", "resume", "failover"]


def test_pause_twice_says_so(running, as_who, capsys):
    assert run(running, "pause") == 0 and run(running, "pause") == 0
    assert "already" in capsys.readouterr().out
    assert [e["event"] for e in running.arbiter.store.history()].count("pause") == 1


# -- history ----------------------------------------------------------------------------

def test_history_lists_the_failover_with_reason_and_lsns(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    kill_primary_and_wait(running, standby)
    assert running.arbiter.state.epoch == 2
    assert run(running, "history", "--json") == 0
    events = json.loads(capsys.readouterr().out)
    [failover] = [e for e in events if e["event"] == "failover"]
    assert (failover["epoch"], failover["old_primary"], failover["new_primary"]) == (2, P, S)
    assert failover["old_primary_lsn"] == 1100 and failover["new_primary_lsn"] == 900
    assert "silent" in failover["reason"]
    assert datetime.fromisoformat(failover["time"].replace("Z", "+00:00")) == \
        datetime.fromtimestamp(running.wall[0], timezone.utc)
    assert [e["event"] for e in events] == ["initialised", "promotable", "failover"]

    assert run(running, "history", "--limit", "1") == 0
    out = capsys.readouterr().out
    assert "failover" in out and "0/44C" in out and "0/384" in out and "initialised" not in out


def test_history_shows_control_characters_escaped(running, as_who, capsys):
    """Issue 19: operator-supplied text (a target, a reason) reached the
    terminal raw: a cursor move or a faked line. Shown escaped; --json keeps
    the text (json escapes it)."""
    hostile = "pgsql-9\x1b[2J\x1b[H\nepoch 99 failover FAKE\r\x07"
    running.arbiter.store.append_event({"time": "2026-12-06T00:00:00Z", "event": "switchover_refused",
                                        "epoch": 1, "to": hostile, "reason": hostile})
    assert run(running, "history") == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\r\x07") and "FAKE" in out
    assert all(line.startswith(("+", "|")) for line in out.splitlines()), "a line was faked"
    assert "pgsql-9\\x1b[2J\\x1b[H\\nepoch 99" in out
    assert run(running, "history", "--json") == 0
    assert json.loads(capsys.readouterr().out)[-1]["to"] == hostile


def test_history_limit_must_be_positive(running, as_who, capsys):
    assert run(running, "history", "--limit", "0") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_history_reply_fits_one_frame(running):
    for n in range(300):
        running.arbiter.store.append_event({"time": "t", "event": "x", "epoch": n, "reason": "r" * 190})
    reply = running.arbiter.handle(requests.parse({"type": "history", "limit": 1000}))
    assert reply["truncated"] and reply["events"][-1]["epoch"] == 299
    assert len(json.dumps(reply)) < 64 * 1024


# -- switchover --at --------------------------------------------------------------------

def test_parse_at():
    assert ctl.parse_at("+30s", 100.0) == 130.0
    assert ctl.parse_at("+2m", 100.0) == 220.0
    assert ctl.parse_at("+3", 100.0) == 103.0
    assert ctl.parse_at("2024-01-01T00:00:10Z", 0) == 1704067210.0
    assert ctl.parse_at("2024-01-01T00:00:10", 0) == 1704067210.0
    with pytest.raises(ctl.Usage):
        ctl.parse_at("tomorrow", 0)


def test_switchover_at_starts_when_its_time_comes(running, as_who, capsys, monkeypatch):
    primary, standby = promotable_cluster(running)
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "switchover", "--at", "+3s", "--force") == 0
    assert "scheduled" in capsys.readouterr().out
    running.wall[0] += 2.9
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["relinquish"] is False
    assert run(running, "list") == 0 and "scheduled" in capsys.readouterr().out
    running.wall[0] += 0.2
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["relinquish"] is True
    kinds = [e["event"] for e in running.arbiter.store.history()]
    assert kinds[-2:] == ["switchover_scheduled", "switchover_requested"]


def test_switchover_bad_at_is_a_usage_error(running, as_who, capsys):
    assert run(running, "switchover", "--at", "soon") == 2
    err = capsys.readouterr().err
    assert err.startswith("ctl: --at 'soon'") and err.count("\n") == 1


def test_a_due_switchover_that_cannot_happen_is_refused_in_the_history(running, as_who, capsys, monkeypatch):
    primary = Signed(running, credential(P))
    primary.ask(heartbeat(P, 1, primary_report(1000, 900)))          # not promotable yet
    monkeypatch.setattr(ctl.time, "time", lambda: running.wall[0])
    assert run(running, "switchover", "--at", "+1s", "--force") == 0
    running.wall[0] += 1
    assert primary.ask(heartbeat(P, 1, primary_report(1000, 900)))["relinquish"] is False
    assert running.arbiter.store.history()[-1]["event"] == "switchover_refused"
    assert not running.arbiter.state.scheduled and "scheduled_switchover" not in running.saved()


# -- failover --to ----------------------------------------------------------------------

def test_failover_to_the_promotable_standby_with_a_live_primary_is_a_switchover(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    assert run(running, "failover", "--to", S, "--force", "--no-wait") == 0
    assert "switching over" in capsys.readouterr().out
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["relinquish"] is True


def test_failover_to_a_non_promotable_standby_is_refused_unless_forced(running, as_who, capsys):
    primary, standby = Signed(running, credential(P)), Signed(running, credential(S))
    primary.ask(heartbeat(P, 1, primary_report(1000, 900)))
    standby.ask(heartbeat(S, 1, standby_report()))
    assert run(running, "failover", "--to", S, "--force") == 1
    err = capsys.readouterr().err
    assert "not promotable" in err and err.count("\n") == 1
    kill_primary_and_wait(running, standby, seconds=5)
    assert run(running, "failover", "--to", S, "--force") == 1
    assert "--allow-data-loss" in capsys.readouterr().err
    assert run(running, "failover", "--to", S, "--force", "--allow-data-loss", "--no-wait") == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "FORCED" in captured.out
    reply = standby.ask(heartbeat(S, 1, standby_report()))
    assert (reply["role"], reply["epoch"]) == ("primary", 2)
    failover = running.arbiter.store.history()[-1]
    assert failover["event"] == "failover" and "forced" in failover["reason"]


def test_failover_needs_to_and_the_operator(running, as_who, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(running, "failover")
    assert exit_.value.code == 2
    assert run(running, "failover", "--to", S, "--force", who="reader") == 1


def test_unreachable_arbiter_is_exit_1_on_one_line(as_who, capsys):
    assert ctl.main(["--arbiter", "127.0.0.1:1", "--key-file", "operator.keys", "list"]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and err.count("\n") == 1


def test_format_lsn():
    assert ctl.format_lsn(0x16B374D48) == "1/6B374D48"
    assert ctl.format_lsn(None) == "-"


# -- several arbiters, settings from the environment and a file, a closed pipe ----------------

class FollowerOf:
    """A Leadership that does not lead and names `leader` as the one that does."""
    store_problem = None

    def __init__(self, leader):
        self.address, self.hint = "127.0.0.1:2", "%s:%s" % leader

    def term(self):
        return None

    def leader_hint(self):
        return self.hint


@pytest.fixture
def follower(tmp_path, running):
    """A second arbiter that does not lead: it points at `running`."""
    from pgha.arbiter_leader import LeadingArbiter
    from pgha.arbiter_service import ArbiterService
    (tmp_path / "follower").mkdir()
    other = Running(tmp_path / "follower", verifier=arbiter_mod.verifier(KEYS, [P, S]))
    leading = LeadingArbiter(other.arbiter, FollowerOf(running.address))
    other.server.service = ArbiterService({other.arbiter.cluster.name: leading}, other.arbiter.cluster.name)
    yield other
    other.stop()


def test_several_arbiters_the_command_reaches_the_leader(running, follower, as_who, capsys):
    addresses = ["%s:%s" % follower.address, "%s:%s" % running.address]
    assert ctl.main(["--arbiter", addresses[0], "--arbiter", addresses[1], "--key-file", "operator.keys",
                     "pause"]) == 0
    assert running.arbiter.state.paused and not follower.arbiter.state.paused
    capsys.readouterr()
    assert ctl.main(["--arbiter", ",".join(addresses), "--key-file", "operator.keys", "resume"]) == 0
    assert not running.arbiter.state.paused and "resumed" in capsys.readouterr().out


def test_only_a_follower_named_says_where_the_leader_is(running, follower, as_who, capsys):
    assert ctl.main(["--arbiter", "%s:%s" % follower.address, "--key-file", "operator.keys", "pause"]) == 1
    err = capsys.readouterr().err
    assert err == "ctl: not the leader (the leader is at %s:%s: add --arbiter %s:%s)\n" % (running.address * 2)
    assert not running.arbiter.state.paused and not follower.arbiter.state.paused


def test_arbiters_and_key_file_from_the_environment_then_the_settings_file(running, as_who, capsys, tmp_path,
                                                                           monkeypatch):
    for name in ("PGHA_ARBITERS", "PGHA_KEY_FILE", "PGHA_OPERATOR_KEY_FILE", "PGHA_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings = tmp_path / "pgha" / "ctl"
    settings.parent.mkdir()
    settings.write_text(f"# pgha-ctl\narbiters = 127.0.0.1:1, {'%s:%s' % running.address}\n"
                        "key_file = reader.keys   # read-only\n")
    settings.chmod(0o600)
    assert ctl.main(["pause"]) == 1 and "authentication failed" in capsys.readouterr().err    # the reader's key
    monkeypatch.setenv("PGHA_KEY_FILE", "operator.keys")                       # the environment wins
    assert ctl.main(["pause"]) == 0 and running.arbiter.state.paused
    monkeypatch.setenv("PGHA_ARBITERS", "127.0.0.1:1")                         # and the command line over both
    assert ctl.main(["resume"]) == 1 and "unreachable" in capsys.readouterr().err
    assert ctl.main(["--arbiter", "%s:%s" % running.address, "resume"]) == 0


@pytest.mark.parametrize("text, mode, problem", [
    ("arbiters = 127.0.0.1:5430\n", 0o620, "is writable by group or others"),
    ("arbiter = 127.0.0.1:5430\n", 0o600, "line 1: expected `name = value`"),
    ("arbiters = nowhere\n", 0o600, "not an address host:port"),
], ids=["group-writable", "unknown-name", "bad-address"])
def test_a_settings_file_ctl_cannot_use_is_one_line_exit_2(tmp_path, monkeypatch, capsys, text, mode, problem):
    path = tmp_path / "ctl"
    path.write_text(text)
    path.chmod(mode)
    monkeypatch.setenv("PGHA_CTL_CONFIG", str(path))
    monkeypatch.delenv("PGHA_ARBITERS", raising=False)
    assert ctl.main(["--key-file", "operator.keys", "list"]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


def test_a_settings_file_owned_by_another_user_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """The same owner check as the daemons' settings and key files (files.untrusted_reason)."""
    path = tmp_path / "ctl"
    path.write_text("arbiters = 127.0.0.1:5430\n")
    path.chmod(0o600)
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user (CI runs as root)")
    stranger = 65534
    os.chown(path, stranger, -1)
    monkeypatch.setenv("PGHA_CTL_CONFIG", str(path))
    monkeypatch.delenv("PGHA_ARBITERS", raising=False)
    assert ctl.main(["--key-file", "operator.keys", "list"]) == 2
    err = capsys.readouterr().err
    assert f"is owned by uid {stranger}" in err and err.count("\n") == 1


def test_a_settings_file_that_is_a_folder_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGHA_CTL_CONFIG", str(tmp_path))
    monkeypatch.delenv("PGHA_ARBITERS", raising=False)
    assert ctl.main(["--key-file", "operator.keys", "list"]) == 2
    err = capsys.readouterr().err
    assert "not a regular file" in err and err.count("\n") == 1


def test_output_to_a_closed_pipe_ends_quietly(tmp_path):
    """`pgha-ctl list | head -2`: the reader is gone before ctl writes (the
    read end closed first, so every write fails): exit 0, nothing on stderr."""
    import os
    import subprocess
    import sys
    from pgha import keys as keys_mod
    keys_mod.generate(str(tmp_path / "k"), [P, S])
    ring = keys_mod.arbiter_keys(str(tmp_path / "k" / "arbiter.keys"), [P, S])
    r = Running(tmp_path, verifier=arbiter_mod.verifier(ring, [P, S]))
    try:
        read_end, write_end = os.pipe()
        os.close(read_end)
        for command in (["list"], ["history"], ["list", "--watch", "0.1"]):
            done = subprocess.run([sys.executable, "-m", "pgha.ctl", "--arbiter", "%s:%s" % r.address,
                                   "--key-file", str(tmp_path / "k" / "operator.keys"), *command],
                                  stdout=write_end, stderr=subprocess.PIPE, timeout=30,
                                  cwd=os.path.dirname(os.path.dirname(ctl.__file__)))
            assert (done.returncode, done.stderr) == (0, b""), command
        os.close(write_end)
    finally:
        r.stop()


def test_list_names_a_primary_left_unfenced_by_its_stopped_daemon():
    status = {"primary": "a", "nodes": {
        "a": {"report": {"pg": "running", "role": "primary", "unfenced": True}},
        "b": {"report": {"pg": "running", "role": "standby", "receiver": "streaming"}},
        "c": {}}}
    states = {row["member"]: row["state"] for row in ctl.list_rows(status)}
    assert states == {"a": "running, daemon stopped, unfenced", "b": "streaming", "c": "unknown"}


def test_list_shows_a_tags_column_only_when_a_member_has_tags():
    status = {"primary": "a", "nodes": {
        "a": {"report": {"pg": "running", "role": "primary"}},
        "b": {"report": {"pg": "running", "role": "standby", "receiver": "streaming"}}}}
    assert "Tags" not in ctl.render_list(status)
    status["nodes"]["b"]["report"]["tags"] = {"nofailover": True, "dc": "east"}
    lines = ctl.render_list(status).splitlines()
    assert "Tags" in lines[2], lines
    assert [line for line in lines if "| b " in line][0].endswith("| dc: east, nofailover: true |")
    assert [line for line in lines if "| a " in line][0].split("|")[-2].strip() == "-"
    assert json.loads(ctl.render_list(status, as_json=True))["members"][1]["tags"] == {"nofailover": True, "dc": "east"}


def test_disk_use_from_the_report_in_list_and_status():
    """Issue 19: the disks under PostgreSQL, as the node reports them, in
    `list` (used share and pg_wal's size) and `status` (with the free space)."""
    gb = 2 ** 30
    disk = {"data_size": 100 * gb, "data_free": 57 * gb, "wal_bytes": 96 * ctl.MB, "warning": 0}
    assert ctl.disk_text(disk) == "43% (WAL 96 MB)"
    assert ctl.disk_text(disk, long=True) == "43% used (58368 MB free), pg_wal 96 MB"
    full = {**disk, "data_free": 1 * gb, "warning": 1, "wal_size": 10 * gb, "wal_free": 5 * gb}
    assert ctl.disk_text(full) == "99%, pg_wal's disk 50% (WAL 96 MB) !"
    assert ctl.disk_text({"data_size": 0, "data_free": 0}) == "?"


def test_status_names_a_nodes_clock_skew_with_the_arbiter(capsys):
    node = {"report": {"pg": "running", "role": "primary"}, "last_seen_ago": 0.2}
    reply = {"epoch": 1, "primary": P, "promotable": True,
             "nodes": {P: {**node, "clock_skew": 60.04}, S: {**node, "clock_skew": 0.3}}}
    assert ctl.show_status(argparse.Namespace(v=False), reply) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("clock skew of +60.0 s with the arbiter (this node's clock is ahead)"), lines
    assert "clock skew" not in lines[2]
