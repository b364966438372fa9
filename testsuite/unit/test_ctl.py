"""pgha-ctl (pgha/ctl.py) against the unit-test arbiter server (test_arbiter's
Running, authentication on): output formats, exit codes, who may run what,
and the arbiter's side of list, history, pause/resume, scheduled switchover
and manual failover."""
import json
from datetime import datetime, timezone

import pytest

from pgha import arbiter as arbiter_mod, ctl, keys
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
    assert columns == ["Member", "Host", "Role", "State", "TL", "Lag in MB", "Lease left", "Epoch", "Last action"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table[3:-1])}
    assert rows[P][:3] == [P, "127.0.0.1:5432", "Leader"]
    assert rows[S][:3] == [S, "127.0.0.1:5432", "Sync Standby"]
    assert rows[S][7] == "1" and rows[P][7] == "1"        # the epoch each node acted on
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
    assert run(running, "switchover") == 1
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


def test_history_limit_must_be_positive(running, as_who, capsys):
    assert run(running, "history", "--limit", "0") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_history_reply_fits_one_frame(running):
    for n in range(300):
        running.arbiter.store.append_event({"time": "t", "event": "x", "epoch": n, "reason": "r" * 190})
    reply = running.arbiter.handle({"type": "history", "limit": 1000})
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
    assert run(running, "switchover", "--at", "+3s") == 0
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


def test_a_due_switchover_that_cannot_happen_is_refused_in_the_history(running, as_who, capsys):
    primary = Signed(running, credential(P))
    primary.ask(heartbeat(P, 1, primary_report(1000, 900)))          # not promotable yet
    assert run(running, "switchover", "--at", "2000-01-01T00:00:00Z") == 0
    assert primary.ask(heartbeat(P, 1, primary_report(1000, 900)))["relinquish"] is False
    assert running.arbiter.store.history()[-1]["event"] == "switchover_refused"
    assert running.arbiter.scheduled is None


# -- failover --to ----------------------------------------------------------------------

def test_failover_to_the_promotable_standby_with_a_live_primary_is_a_switchover(running, as_who, capsys):
    primary, standby = promotable_cluster(running)
    assert run(running, "failover", "--to", S) == 0
    assert "switching over" in capsys.readouterr().out
    assert primary.ask(heartbeat(P, 1, primary_report(1200, 1200)))["relinquish"] is True


def test_failover_to_a_non_promotable_standby_is_refused_unless_forced(running, as_who, capsys):
    primary, standby = Signed(running, credential(P)), Signed(running, credential(S))
    primary.ask(heartbeat(P, 1, primary_report(1000, 900)))
    standby.ask(heartbeat(S, 1, standby_report()))
    assert run(running, "failover", "--to", S) == 1
    err = capsys.readouterr().err
    assert "not promotable" in err and err.count("\n") == 1
    kill_primary_and_wait(running, standby, seconds=5)
    assert run(running, "failover", "--to", S) == 1
    assert "--force" in capsys.readouterr().err
    assert run(running, "failover", "--to", S, "--force") == 0
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
