"""Passwords end to end (quoting for postgresql.conf, libpq and pgpass; the
settings checks) and files holding secrets (issue 9, item 2)."""
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import psycopg2.extensions
import pytest

from pgha import settings as s
from pgha.postgres import conninfo, find_bindir, PostgresError, pgpass_line, quote_conf
from pgha.settings import NODE_CHECKS, NODE_SPECS, SettingsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_DEFAULTS = os.path.join(ROOT, "node_settings.py")

NASTY = ["it's", "back\\slash", "trailing\\", "two  spaces ", "naïve€ßü 密码", "a:b", "''\\'\\\\", "=;#$%&",
         "tab\there", "\\n not a newline", "ends with '"]


# -- postgresql.conf: round trip through PostgreSQL's own parser (postgres -C) -------------

def _postgres_binary():
    try:
        bindir = find_bindir()
    except PostgresError:
        return None
    path = os.path.join(bindir, "postgres")
    return path if os.access(path, os.X_OK) else None


def _as_postgres_user():
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres OS user to run the PostgreSQL parser as")
    return dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])


@pytest.fixture
def parser_dir():
    """A folder the PostgreSQL parser's user can read (pytest's tmp_path is root's own, 0700)."""
    with tempfile.TemporaryDirectory(prefix="pgha-conf-") as folder:
        yield folder


@pytest.mark.parametrize("value", NASTY + ["x" * 200, ""])
def test_quote_conf_round_trips_through_postgresql(parser_dir, value):
    postgres = _postgres_binary()
    if postgres is None:
        pytest.skip("PostgreSQL binaries not installed")
    run_as = _as_postgres_user()
    data = os.path.join(parser_dir, "data")
    os.mkdir(data, 0o700)
    conf = os.path.join(parser_dir, "test.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(f"primary_conninfo = {quote_conf(value)}\ndata_directory = {quote_conf(data)}\n"
                "hba_file = '/dev/null'\nident_file = '/dev/null'\n")
    if run_as:
        for path in (parser_dir, data, conf):
            os.chown(path, run_as["user"], run_as["group"])
    result = subprocess.run([postgres, "-C", "primary_conninfo", "-c", f"config_file={conf}"],
                            capture_output=True, timeout=30, env={**os.environ, "LC_ALL": "C"}, **run_as)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == value + "\n"


def test_a_conf_value_cannot_hold_nul():
    with pytest.raises(ValueError):
        quote_conf("a\0b")


# -- libpq connection strings: parsed back by libpq itself ---------------------------------

@pytest.mark.parametrize("value", NASTY)
def test_conninfo_round_trips_through_libpq(value):
    text = conninfo(host="h", user="u", password=value, application_name="pgsql-1")
    assert psycopg2.extensions.parse_dsn(text)["password"] == value


def test_conninfo_inside_postgresql_conf_keeps_every_character():
    """primary_conninfo is a conninfo string inside a postgresql.conf string: quoted twice."""
    value = "it's \\ tricky"
    inner = conninfo(password=value)
    outer = quote_conf(inner)
    assert outer == "'password=''it\\\\''s \\\\\\\\ tricky'''"
    assert psycopg2.extensions.parse_dsn(inner)["password"] == value


# -- pgpass ------------------------------------------------------------------------------------

def test_pgpass_line_escapes_colon_and_backslash():
    assert pgpass_line("127.0.0.1", "*", "*", "app", "a:b\\c") == "127.0.0.1:*:*:app:a\\:b\\\\c\n"


def _pgpass_fields(line):
    """libpq's reading of a pgpass line (passwordFromFile): '\\' escapes the next character."""
    fields, current, escaped = [], "", False
    for char in line.rstrip("\n"):
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += char
    return fields + [current]


@pytest.mark.parametrize("value", NASTY)
def test_pgpass_line_reads_back(value):
    assert _pgpass_fields(pgpass_line("127.0.0.1", 5432, "testdb", "app", value)) == \
        ["127.0.0.1", "5432", "testdb", "app", value]


# -- settings: unusable characters, private files, placeholders, distinct roles ---------------

def _write(tmp_path, text, mode=0o600, name="override.py"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return str(path)


def _load(path):
    return s.load(NODE_DEFAULTS, NODE_SPECS, path, NODE_CHECKS)


@pytest.mark.parametrize("char, name", [("\\n", "newline"), ("\\r", "carriage return"), ("\\0", "NUL")])
@pytest.mark.parametrize("setting", ["admin_password", "replication_password", "app_password"])
def test_unusable_characters_are_refused_naming_the_setting_not_the_value(tmp_path, char, name, setting):
    path = _write(tmp_path, f'{setting} = "Hunter2{char}Secret"\n')
    with pytest.raises(SettingsError) as err:
        _load(path)
    message = str(err.value)
    assert setting in message and name in message and "\n" not in message
    assert "Hunter2" not in message and "Secret" not in message


@pytest.mark.parametrize("value", NASTY)
def test_special_but_usable_passwords_load(tmp_path, value):
    path = _write(tmp_path, f"admin_password = {value!r}\nreplication_password = {value!r}\n"
                            f"app_password = {value!r}\n")
    assert _load(path).replication_password == value


# 0660 left this list: a file the group can write is now refused before its
# code runs (so before its passwords are known): test_files.py.
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_password_file_others_can_read_is_refused(tmp_path, mode):
    path = _write(tmp_path, 'admin_password = "Hunter2Secret"\n', mode=mode)
    with pytest.raises(SettingsError) as err:
        _load(path)
    message = str(err.value)
    assert path in message and "admin_password" in message and f"{mode:04o}" in message
    assert "chmod 600" in message and "Hunter2Secret" not in message


def test_a_private_password_file_and_a_public_file_without_passwords_load(tmp_path):
    assert _load(_write(tmp_path, 'admin_password = "Hunter2Secret"\n', mode=0o600)).admin_password \
        == "Hunter2Secret"
    assert _load(_write(tmp_path, "pg_port = 6000\n", mode=0o644, name="public.py")).pg_port == 6000


def test_the_shipped_defaults_hold_only_placeholders_and_may_stay_public():
    settings = s.load(NODE_DEFAULTS, NODE_SPECS, None, NODE_CHECKS)
    assert s.placeholder_passwords(settings, NODE_SPECS) == ["admin_password", "app_password",
                                                             "replication_password"]


def test_edited_defaults_holding_a_real_password_must_be_private(tmp_path):
    defaults = tmp_path / "node_settings.py"
    shutil.copy(NODE_DEFAULTS, defaults)
    text = defaults.read_text().replace('admin_password = "change-me"', 'admin_password = "Hunter2Secret"')
    defaults.write_text(text)
    os.chmod(defaults, 0o644)
    with pytest.raises(SettingsError, match="readable by group or others"):
        s.load(str(defaults), NODE_SPECS)


def test_roles_must_differ(tmp_path):
    with pytest.raises(SettingsError, match="three different roles"):
        _load(_write(tmp_path, 'app_user = "kronos"\n'))


def _run_node(tmp_path, text, mode=0o600):
    path = _write(tmp_path, text, mode=mode)
    return subprocess.run([sys.executable, os.path.join(ROOT, "node.py"), "--settings", path],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)


def test_node_refuses_the_placeholder_passwords(tmp_path):
    result = _run_node(tmp_path, 'admin_password = "Hunter2Secret"\n')
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "node: setting 'app_password' is still the shipped placeholder 'change-me': set real passwords in a "
        "--settings file (chmod 600)"]


def test_node_refuses_a_public_password_file(tmp_path):
    result = _run_node(tmp_path, 'admin_password = "Hunter2Secret"\n', mode=0o644)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "readable by group or others" in result.stderr and "Hunter2Secret" not in result.stderr
