"""Loading and checking settings (pgha/settings.py, node_settings.py, arbiter_settings.py)."""
import os
import subprocess
import sys
import textwrap

import pytest

from pgha import settings as s
from pgha.settings import ARBITER_CHECKS, ARBITER_SPECS, NODE_CHECKS, NODE_SPECS, SettingsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_DEFAULTS = os.path.join(ROOT, "node_settings.py")
ARBITER_DEFAULTS = os.path.join(ROOT, "arbiter_settings.py")


@pytest.fixture
def write(tmp_path):
    def write(text, name="override.py"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)
    return write


def load_node(path=None):
    return s.load(NODE_DEFAULTS, NODE_SPECS, path, NODE_CHECKS)


def load_arbiter(path=None):
    return s.load(ARBITER_DEFAULTS, ARBITER_SPECS, path, ARBITER_CHECKS)


def error_of(loader, path):
    with pytest.raises(SettingsError) as err:
        loader(path)
    return str(err.value)


# -- defaults and overrides -----------------------------------------------------------

def test_node_defaults_load():
    settings = load_node()
    assert vars(settings).keys() == NODE_SPECS.keys()
    assert settings.name == "pgsql-1" and settings.pg_port == 5432 and settings.socket_dir is None


def test_arbiter_defaults_load():
    settings = load_arbiter()
    assert vars(settings).keys() == ARBITER_SPECS.keys()
    assert settings.nodes == ["pgsql-1", "pgsql-2"] and settings.lease_time == 1.8
    assert settings.strict_sync is False


def test_override_changes_only_what_it_names(write):
    path = write("""
        import os                       # modules, functions and _private names are not settings
        def _helper():
            return "pgsql-2"
        _base = "/srv"
        name = _helper()
        pg_port = 6543
        pgdata = os.path.join(_base, "data")
        hba_networks = ["10.0.0.0/24", "fd00::/64"]
    """)
    settings = load_node(path)
    assert (settings.name, settings.pg_port, settings.pgdata) == ("pgsql-2", 6543, "/srv/data")
    assert settings.hba_networks == ["10.0.0.0/24", "fd00::/64"]
    assert settings.peer_port == load_node().peer_port


def test_arbiter_override_accepts_int_for_a_number(write):
    settings = load_arbiter(write("lease_time = 4\nfailover_margin = 0.5\nstrict_sync = True\n"))
    assert (settings.lease_time, settings.failover_margin, settings.strict_sync) == (4, 0.5, True)


def test_optional_setting_may_be_set(write):
    assert load_node(write('socket_dir = "/run/pg"\nlog_file = None\n')).socket_dir == "/run/pg"


# -- errors, each naming the setting ------------------------------------------------------

NODE_ERRORS = [
    ("unknown-setting", "pg_prot = 5432", ["unknown setting 'pg_prot'"]),
    ("str-for-int", 'pg_port = "5432"', ["'pg_port'", "must be int", "'5432'"]),
    ("bool-for-int", "pg_port = True", ["'pg_port'", "must be int", "True"]),
    ("float-for-int", "arbiter_port = 5430.0", ["'arbiter_port'", "must be int"]),
    ("port-zero", "pg_port = 0", ["'pg_port'", "TCP port", "(got 0)"]),
    ("port-too-big", "peer_port = 65536", ["'peer_port'", "TCP port", "65536"]),
    ("bootstrap-no-command", "bootstrap_method = {'recovery_conf': {}}", ["'bootstrap_method'", 'no "command"']),
    ("bootstrap-bad-recovery-key", "bootstrap_method = {'command': 'x', 'recovery_conf': {'archive_command': 'sh'}}",
     ["'bootstrap_method'", "only restore_command, recovery_end_command and recovery_target*"]),
    ("bootstrap-two-line-value", "bootstrap_method = {'command': 'x', 'recovery_conf': {'restore_command': 'a\\nb'}}",
     ["'bootstrap_method'", "a one-line string"]),
    ("bootstrap-flag-not-bool", "bootstrap_method = {'command': 'x', 'keep_existing_recovery_conf': 'yes'}",
     ["'bootstrap_method'", "must be True or False"]),
    ("too-many-tags", "tags = {str(n): n for n in range(33)}", ["'tags'", "has 33 tags, at most 32"]),
    ("tag-out-of-range", "tags = {'x': 2 ** 64}", ["'tags'", "gives tag 'x' a value"]),
    ("tags-too-long", "tags = {str(n): 'v' * 250 for n in range(9)}", ["'tags'", "more than 2048 bytes"]),
    ("slot-bad-name", 'permanent_slots = {"Bad-Name": {"type": "physical"}}', ["'permanent_slots'", "Bad-Name"]),
    ("slot-bad-type", 'permanent_slots = {"s": {"type": "both"}}', ["'permanent_slots'", "slot 's'", "physical"]),
    ("slot-logical-no-plugin", 'permanent_slots = {"s": {"type": "logical", "database": "db"}}',
     ["'permanent_slots'", "slot 's'", "PLUGIN"]),
    ("slot-own-name", 'permanent_slots = {"rep177": {"type": "physical"}}', ["'permanent_slots'", "rep177", "own"]),
    ("replica-undefined", 'create_replica_methods = ["pgbackrest", "basebackup"]',
     ["'create_replica_methods'", "'pgbackrest'", "does not define"]),
    ("replica-none", 'create_replica_methods = []', ["'create_replica_methods'", "at least one"]),
    ("replica-twice", 'create_replica_methods = ["basebackup", "basebackup"]', ["'create_replica_methods'", "twice"]),
    ("replica-no-command", 'replica_methods = {"pgbackrest": {"no_params": True}}',
     ["'replica_methods'", "'pgbackrest'", "command"]),
    ("replica-bad-flag", 'replica_methods = {"b": {"command": "x", "no_params": "yes"}}',
     ["'replica_methods'", "no_params", "True or False"]),
    ("replica-builtin-name", 'replica_methods = {"basebackup": {"command": "x"}}', ["'replica_methods'", "basebackup"]),
    ("replica-bad-quotes", 'replica_methods = {"b": {"command": "pgbackrest --stanza=\'main restore"}}',
     ["'replica_methods'", "cannot be split"]),
    ("port-negative", "arbiter_port = -1", ["'arbiter_port'", "TCP port"]),
    ("required-set-to-none", "host = None", ["'host' is required"]),
    ("empty-string", 'pgdata = "  "', ["'pgdata'", "must not be empty"]),
    ("bad-name", 'name = "pg sql"', ["'name'", "letters, digits"]),
    ("bad-slot", 'slot_name = "Rep-1"', ["'slot_name'", "replication slot"]),
    ("bad-cidr", 'hba_networks = ["10.0.0.0/33"]', ["'hba_networks'", "'10.0.0.0/33'", "CIDR"]),
    ("not-a-network", 'hba_networks = ["127.0.0.1/32", "localhost"]', ["'hba_networks'", "'localhost'"]),
    ("no-networks", "hba_networks = []", ["'hba_networks'", "at least one network"]),
    ("networks-not-a-list", 'hba_networks = "10.0.0.0/8"', ["'hba_networks'", "must be list"]),
    ("networks-not-strings", "hba_networks = [10]", ["'hba_networks'", "list of strings"]),
    ("parameters-not-a-dict", "pg_parameters = []", ["'pg_parameters'", "must be dict"]),
    ("parameters-managed", "pg_parameters = {\"synchronous_commit\": \"local\"}",
     ["'pg_parameters'", "synchronous_commit", "manages itself"]),
    ("bad-log-level", 'log_level = "LOUD"', ["'log_level'", "DEBUG, INFO"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in NODE_ERRORS], ids=[c[0] for c in NODE_ERRORS])
def test_node_setting_errors(write, text, expected):
    message = error_of(load_node, write(text + "\n"))
    for part in expected:
        assert part in message
    assert "\n" not in message


ARBITER_ERRORS = [
    ("bool-for-number", "lease_time = True", ["'lease_time'", "must be int or float"]),
    ("int-for-bool", "strict_sync = 1", ["'strict_sync'", "must be bool"]),
    ("negative-time", "failover_margin = -1", ["'failover_margin'", "greater than 0"]),
    ("zero-heartbeat", "heartbeat_interval = 0", ["'heartbeat_interval'", "greater than 0"]),
    ("one-node", 'nodes = ["pgsql-1"]', ["'nodes'", "exactly two different nodes"]),
    ("three-nodes", 'nodes = ["a", "b", "c"]\ninitial_primary = "a"', ["'nodes'", "exactly two"]),
    ("same-node-twice", 'nodes = ["pgsql-1", "pgsql-1"]', ["'nodes'", "two different"]),
    ("bad-node-name", 'nodes = ["pgsql-1", "pg sql"]', ["'nodes'"]),
    ("nodes-not-strings", "nodes = [1, 2]", ["'nodes'", "list of strings"]),
    ("primary-not-a-node", 'initial_primary = "pgsql-3"', ["'initial_primary'", "'pgsql-3'", "one of 'nodes'"]),
    ("lease-shorter-than-two-heartbeats", "heartbeat_interval = 2.0", ["'lease_time'", "two heartbeat"]),
    ("bad-port", "listen_port = 70000", ["'listen_port'", "TCP port"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in ARBITER_ERRORS], ids=[c[0] for c in ARBITER_ERRORS])
def test_arbiter_setting_errors(write, text, expected):
    message = error_of(load_arbiter, write(text + "\n"))
    for part in expected:
        assert part in message


def test_lease_of_exactly_two_heartbeats_is_enough(write):
    assert load_arbiter(write("heartbeat_interval = 1.5\nlease_time = 3.0\n")).lease_time == 3.0


def test_missing_override_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    message = error_of(load_node, missing)
    assert missing in message and "does not exist" in message


def test_missing_setting_in_defaults(write):
    defaults = write('name = "pgsql-1"\n', name="defaults.py")
    with pytest.raises(SettingsError, match="missing setting 'admin_password'"):   # first, sorted
        s.load(defaults, NODE_SPECS)


def test_syntax_error_names_the_line(write):
    path = write('name = "pgsql-2"\npg_port = 5432\npeer_port = = 5433\nhost = "x"\n')
    message = error_of(load_node, path)
    assert path in message and "line 3" in message


def test_error_while_running_the_file_is_one_line(write):
    path = write("pg_port = 1 // 0\n")
    message = error_of(load_node, path)
    assert path in message and "\n" not in message and "Traceback" not in message
    assert "ZeroDivisionError" in message or "by zero" in message


# -- passwords are never echoed -------------------------------------------------------------

SECRET = "Hunter2Secret"


@pytest.mark.parametrize("text", [
    f"admin_password = ['{SECRET}']",                        # wrong type
    f"replication_password = {{'{SECRET}': 1}}",            # wrong type
    "admin_password = 4242424242",                           # int instead of str
    "replication_password = '   '",                          # fails the check (empty)
    "admin_password = None",                                 # required
], ids=["list", "dict", "int", "blank", "none"])
def test_password_errors_never_echo_the_value(write, text):
    message = error_of(load_node, write(text + "\n"))
    assert "password" in message
    for leaked in (SECRET, "4242424242", "'   '"):
        assert leaked not in message


def test_unquoted_password_is_not_echoed(write):
    """admin_password = Hunter2Secret (no quotes) raises NameError, whose text quotes the password."""
    message = error_of(load_node, write(f"admin_password = {SECRET}\n"))
    assert SECRET not in message


# -- the programs: exit 2, one line naming the setting, no traceback --------------------------

@pytest.mark.parametrize("program, text, setting", [
    ("node.py", 'pg_port = "x"', "pg_port"),
    ("node.py", "replication_password = 123456789", "replication_password"),
    ("node.py", "no_such_thing = 1", "no_such_thing"),
    ("node.py", "pg_port = (", "line 1"),
    ("arbiter.py", "lease_time = -3", "lease_time"),
    ("arbiter.py", 'nodes = ["pgsql-1", "pgsql-1"]', "nodes"),
    ("arbiter.py", 'initial_primary = "x"', "initial_primary"),
], ids=["node-bad-port", "node-password-type", "node-unknown", "node-syntax", "arbiter-lease",
        "arbiter-nodes", "arbiter-initial-primary"])
def test_program_rejects_bad_settings(tmp_path, program, text, setting):
    bad = tmp_path / "bad.py"
    bad.write_text(text + "\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--settings", str(bad)],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0] and lines[0].startswith(program[:-3] + ": ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "123456789" not in result.stderr


@pytest.mark.parametrize("program", ["node.py", "arbiter.py"])
def test_program_rejects_a_missing_settings_file(tmp_path, program):
    missing = str(tmp_path / "missing.py")
    result = subprocess.run([sys.executable, os.path.join(ROOT, program), "--settings", missing],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{program[:-3]}: settings file {missing} does not exist"]
