"""Settings as data (TOML) and `--validate` (issue 20 item 6): a TOML file
runs nothing and is checked as a .py one is; --validate names what loading
cannot know (a misspelled PostgreSQL parameter, against the real server's
own list; a callback that is missing or not trusted; files not there)."""
import os
import subprocess
import sys

import pytest

from pgha import settings as settings_mod, validate
from pgha.postgres import Postgres

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_DEFAULTS = os.path.join(ROOT, "node_settings.py")
PASSWORDS = 'admin_password = "a1"\nreplication_password = "r1"\napp_password = "p1"\n'


def toml(tmp_path, text, name="node.toml"):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_a_toml_file_overrides_the_defaults_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = toml(tmp_path, PASSWORDS + f'name = "pgsql-2"\napi_port = 8009\ntags = {{ dc = "east" }}\n'
                                      f'pg_parameters = {{ work_mem = "8MB" }}\n# __import__("os").mknod("{marker}")\n')
    loaded = settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS, path)
    assert (loaded.name, loaded.api_port, loaded.tags, loaded.pg_parameters) == \
        ("pgsql-2", 8009, {"dc": "east"}, {"work_mem": "8MB"})
    assert not marker.exists()


@pytest.mark.parametrize("text, problem", [
    ('api_prot = 2\n', "unknown setting 'api_prot'"),
    ('api_port = "high"\n', "setting 'api_port' must be"),
    ('api_port = \n', "line 1"),
    ('admin_password = "s3cret"\nadmin_password = "x"\n', "line 2"),
], ids=["unknown", "wrong-type", "syntax", "duplicate-key"])
def test_a_bad_toml_file_is_one_line_that_shows_no_secret(tmp_path, text, problem):
    with pytest.raises(settings_mod.SettingsError) as caught:
        settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS, toml(tmp_path, text))
    assert problem in str(caught.value) and "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_toml_file_others_can_write_is_refused(tmp_path):
    path = toml(tmp_path, 'api_port = 8009\n')
    os.chmod(path, 0o666)
    with pytest.raises(settings_mod.SettingsError, match="writable by group or others"):
        settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS, path)


def test_parameter_names_are_checked_against_the_real_servers_list():
    known = Postgres(settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS)).parameter_names()
    assert {"shared_buffers", "work_mem", "max_slot_wal_keep_size"} <= known and len(known) > 200
    problems = validate.parameter_problems(["shared_bufers", "work_mem", "Work_Mem", "pg_stat_statements.track",
                                            "zzzz_nothing"], known)
    assert problems == ["pg_parameters: PostgreSQL has no parameter 'shared_bufers' (did you mean 'shared_buffers'?)",
                        "pg_parameters: PostgreSQL has no parameter 'zzzz_nothing'"]


def test_callback_scripts_must_exist_be_executable_and_trusted(tmp_path):
    good, plain, shared = (tmp_path / n for n in ("good.sh", "plain.txt", "shared.sh"))
    for path, mode in ((good, 0o755), (plain, 0o644), (shared, 0o777)):
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(mode)

    class Settings:
        on_role_change, on_start, on_stop = str(good), str(plain), str(shared)
        on_reload, on_restart, pre_promote = str(tmp_path / "missing.sh"), None, None
    assert validate.script_problems(Settings) == [
        f"on_start: {plain} is not an executable file",
        f"on_stop: {shared} is writable by group or others (mode 0777)",
        f"on_reload: {tmp_path / 'missing.sh'}: No such file or directory"]


def run(program, *argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, program), *argv], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_node_validate_lists_every_problem_and_exits_2_or_says_ok(tmp_path):
    keys = tmp_path / "pgsql-1.keys"
    keys.write_text("placeholder")
    keys.chmod(0o600)
    (tmp_path / "pg").mkdir()
    base = PASSWORDS + f'key_file = "{keys}"\npgdata = "{tmp_path / "pg" / "data"}"\n'
    bad = run("node.py", "--settings", toml(tmp_path, base + 'pg_parameters = { shared_bufers = "128MB" }\n'
                                            'on_role_change = "/nonexistent/cb.sh"\n'), "--validate")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "node: on_role_change: /nonexistent/cb.sh: No such file or directory",
        "node: pg_parameters: PostgreSQL has no parameter 'shared_bufers' (did you mean 'shared_buffers'?)"]
    good = run("node.py", "--settings", toml(tmp_path, base + 'pg_parameters = { shared_buffers = "128MB" }\n',
                                             "good.toml"), "--validate")
    assert (good.returncode, good.stderr) == (0, "") and "settings OK" in good.stdout


def test_arbiter_validate_names_a_missing_key_file_and_state_folder(tmp_path):
    path = toml(tmp_path, f'key_file = "{tmp_path / "none.keys"}"\nstate_file = "{tmp_path / "no" / "state.json"}"\n',
                "arbiter.toml")
    result = run("arbiter.py", "--settings", path, "--validate")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"arbiter: key_file: {tmp_path / 'none.keys'} does not exist",
                                          f"arbiter: state_file: the folder {tmp_path / 'no'} that holds it "
                                          "does not exist"]


def test_a_replica_or_bootstrap_method_whose_program_is_missing_is_named():
    from types import SimpleNamespace
    settings = SimpleNamespace(create_replica_methods=["pgbackrest", "basebackup"],
                               replica_methods={"pgbackrest": {"command": "no-such-restorer --stanza=main"}},
                               bootstrap_method={"command": "/no/such/bootstrapper restore"})
    assert validate.replica_method_problems(settings) == [
        "replica_methods: method pgbackrest: no-such-restorer is not an executable found on PATH",
        "bootstrap_method: /no/such/bootstrapper is not an executable found on PATH"]
    settings.replica_methods["pgbackrest"]["command"] = "sh -c true"
    settings.bootstrap_method = None
    assert validate.replica_method_problems(settings) == []
