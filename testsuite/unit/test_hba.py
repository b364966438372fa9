"""pgha/hba.py: pg_hba.conf and pg_ident.conf rendered from the settings.
Tables: what the file becomes for the settings and the file found; the
settings checks."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgha import hba, settings as settings_mod

NODE_DEFAULTS = str(Path(__file__).resolve().parents[2] / "node_settings.py")

NEEDED = ["local all kronos scram-sha-256",
          "host all kronos 127.0.0.1/32 scram-sha-256", "host replication repuser 127.0.0.1/32 scram-sha-256",
          "host all kronos ::1/128 scram-sha-256", "host replication repuser ::1/128 scram-sha-256",
          "host all kronos 10.0.0.0/24 scram-sha-256", "host replication repuser 10.0.0.0/24 scram-sha-256"]
CLIENTS = ["host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256",
           "host all all 10.0.0.0/24 scram-sha-256"]
DEBIAN = "local all postgres peer\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
OLD_BLOCK = f"{hba.BEGIN}\nlocal all all scram-sha-256\n{hba.END}\n"


def settings(pg_hba=None, pg_ident=None, networks=("10.0.0.0/24",)):
    return SimpleNamespace(admin_user="kronos", replication_user="repuser", hba_networks=list(networks),
                           pg_hba=pg_hba, pg_ident=pg_ident)


def lines(*parts):
    return "\n".join(parts) + "\n"


@pytest.mark.parametrize("case, s, current, expected", [
    ("default: the block on top of the file as found (a Debian cluster's peer lines kept)",
     settings(), DEBIAN, lines(hba.BEGIN, *NEEDED, *CLIENTS, hba.END) + DEBIAN),
    ("default: an older block is replaced, never stacked",
     settings(), OLD_BLOCK + DEBIAN, lines(hba.BEGIN, *NEEDED, *CLIENTS, hba.END) + DEBIAN),
    ("default: rendering twice gives the same file",
     settings(), lines(hba.BEGIN, *NEEDED, *CLIENTS, hba.END) + DEBIAN,
     lines(hba.BEGIN, *NEEDED, *CLIENTS, hba.END) + DEBIAN),
    ("a list: the node's lines, then the DBA's in order; the old file is gone",
     settings(pg_hba=["local all postgres peer", "local all all peer map=dba", "host all all 0.0.0.0/0 reject"]),
     OLD_BLOCK + DEBIAN,
     lines(hba.BEGIN, *NEEDED, hba.END, hba.LISTED, "local all postgres peer", "local all all peer map=dba",
           "host all all 0.0.0.0/0 reject")),
    ("an empty list: only the node's own connections",
     settings(pg_hba=[]), DEBIAN, lines(hba.BEGIN, *NEEDED, hba.END, hba.LISTED)),
])
def test_render_hba(case, s, current, expected):
    assert hba.render_hba(current, s) == expected, case


def test_the_nodes_lines_name_only_its_users():
    """They come first, so they must not decide anyone else's login."""
    for line in hba.needed_lines("kronos", "repuser", ["10.0.0.0/24"]):
        assert line.split()[2] in ("kronos", "repuser"), line


@pytest.mark.parametrize("pg_ident, expected", [
    (None, None),
    ([], hba.IDENT_HEADER),
    (["dba postgres app", "dba alice app"], hba.IDENT_HEADER + "dba postgres app\ndba alice app\n"),
])
def test_render_ident(pg_ident, expected):
    assert hba.render_ident(settings(pg_ident=pg_ident)) == expected


@pytest.mark.parametrize("check, value, problem", [
    (hba.hba_lines, ["local all all peer", "# a comment", "hostssl all all 10.0.0.0/8 cert"], None),
    (hba.hba_lines, ["local all all peer\nhost all all 0.0.0.0/0 trust"], "no line break"),
    (hba.hba_lines, ["   "], "empty line"),
    (hba.hba_lines, ["all all 10.0.0.0/8 trust"], "does not start with a connection type"),
    (hba.ident_lines, ["dba postgres app", "# comment"], None),
    (hba.ident_lines, ["dba postgres"], "three fields"),
    (hba.ident_lines, ["dba postgres app\r"], "no line break"),
])
def test_settings_checks(check, value, problem):
    found = check(value)
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize("text, expected", [
    ('pg_hba = ["local all all peer", "all all trust"]', ["'pg_hba'", "connection type", "'all all trust'"]),
    ('pg_ident = ["dba postgres"]', ["'pg_ident'", "three fields"]),
    ('pg_hba = "local all all peer"', ["'pg_hba'", "must be list"]),
])
def test_a_node_settings_file_with_bad_lines_is_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "node.py"
    path.write_text(text + "\n")
    with pytest.raises(settings_mod.SettingsError) as err:
        settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS, str(path))
    assert all(part in str(err.value) for part in expected) and "\n" not in str(err.value), str(err.value)


def test_a_node_settings_file_with_lists_loads(tmp_path):
    path = tmp_path / "node.py"
    path.write_text('pg_hba = ["local all all peer map=dba"]\npg_ident = ["dba postgres app"]\n')
    loaded = settings_mod.load(NODE_DEFAULTS, settings_mod.NODE_SPECS, str(path))
    assert (loaded.pg_hba, loaded.pg_ident) == (["local all all peer map=dba"], ["dba postgres app"])
