"""Files written as root never follow a planted link; files trusted must be
owned by root or this user and writable only by them (issue 19, item 6).

The attacker is an unprivileged user (PostgreSQL's OS user, or anyone a
database superuser can become with COPY ... TO PROGRAM) who can write into
the folders a daemon run as root writes to. Each test plants what that user
could plant and checks that the other file is untouched.
"""
import os
import stat

import pytest

from pgha import cli, fencer, files, keys
from pgha import settings as settings_mod
from pgha.settings import NODE_SPECS, SettingsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534      # the attacker's uid
VICTIM = "root's own file\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the hazard is a daemon run as root")


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "elsewhere" / "shadow"
    path.parent.mkdir()
    path.write_text(VICTIM)
    os.chmod(path, 0o644)
    return path


def untouched(victim):
    info = os.stat(victim)
    return victim.read_text() == VICTIM and (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644)


@pytest.fixture
def folder(tmp_path):
    """A folder the attacker can write to, as a data directory is."""
    path = tmp_path / "pgdata"
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


def plant(link, target):
    os.symlink(target, link)
    os.lchown(link, NOBODY, NOBODY)


def test_a_link_planted_at_the_old_temporary_name_is_never_followed(folder, victim):
    target = folder / "pgha.conf"
    target.write_text("old\n")
    plant(folder / "pgha.conf.tmp", victim)      # the name write_durably used before
    files.write_durably(str(target), "new\n", owner=(NOBODY, NOBODY))
    assert untouched(victim)
    assert target.read_text() == "new\n" and os.stat(target).st_uid == NOBODY
    assert os.path.islink(folder / "pgha.conf.tmp")
    assert sorted(os.listdir(folder)) == ["pgha.conf", "pgha.conf.tmp"], "a temporary file was left"


def test_a_link_planted_at_the_target_is_replaced_not_followed(folder, victim):
    plant(folder / "pg_hba.conf", victim)
    files.write_durably(str(folder / "pg_hba.conf"), "host all all 127.0.0.1/32 scram-sha-256\n")
    assert untouched(victim)
    assert not os.path.islink(folder / "pg_hba.conf")


def test_a_link_planted_at_the_targets_folder_is_refused(folder, victim):
    plant(folder / "state", victim.parent)       # the daemon's state folder, swapped for a link
    with pytest.raises(files.UnsafePathError) as err:
        files.write_durably(str(folder / "state" / "rewind.pgpass"), "*:*:*:u:secret\n")
    assert "symbolic link owned by uid 65534" in str(err.value) and "\n" not in str(err.value)
    assert untouched(victim)
    assert os.listdir(victim.parent) == ["shadow"]


def test_a_link_planted_higher_up_is_refused(folder, victim):
    (victim.parent / "state").mkdir()
    plant(folder / "up", victim.parent)
    with pytest.raises(files.UnsafePathError):
        files.write_durably(str(folder / "up" / "state" / ".initdb-pw"), "secret\n")
    assert os.listdir(victim.parent / "state") == []


def test_a_link_root_made_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")         # an administrator's link (like /var/run)
    files.write_durably(str(tmp_path / "alias" / "pgha.conf"), "x\n")
    assert (real / "pgha.conf").read_text() == "x\n"


def test_key_rotation_never_follows_a_planted_link(tmp_path, victim):
    os.chown(tmp_path, NOBODY, NOBODY)
    keys.generate(str(tmp_path), ["pgsql-1", "pgsql-2"])
    for name in os.listdir(tmp_path):
        plant(tmp_path / (name + ".tmp"), victim)
    keys.rotate(str(tmp_path), "pgsql-1")
    assert untouched(victim)


def test_the_fencers_pid_file_never_follows_a_planted_link(folder, victim):
    pidfile = folder / "fencer.pid"
    plant(folder / f"fencer.pid.{os.getpid()}.tmp", victim)     # the name it used before
    fencer.write_pidfile(str(pidfile))
    assert untouched(victim)
    assert pidfile.read_text() == f"{os.getpid()}\n"


# -- files the daemon trusts ------------------------------------------------------------------

def settings_file(tmp_path, mode, uid=0):
    path = tmp_path / "node.py"
    path.write_text("name = 'pgsql-1'\nimport os; os.environ['PGHA_RAN'] = 'yes'\n")
    os.chmod(path, mode)
    os.chown(path, uid, 0)
    return str(path)


@pytest.mark.parametrize("mode, uid, says", [
    (0o666, 0, "writable by group or others (mode 0666)"),
    (0o620, 0, "writable by group or others (mode 0620)"),
    (0o600, NOBODY, "owned by uid 65534"),
])
def test_a_settings_file_others_can_write_is_refused_before_it_runs(tmp_path, monkeypatch, mode, uid, says):
    monkeypatch.delenv("PGHA_RAN", raising=False)
    path = settings_file(tmp_path, mode, uid)
    with pytest.raises(SettingsError) as err:
        settings_mod.load(os.path.join(ROOT, "node_settings.py"), NODE_SPECS, path)
    assert says in str(err.value) and path in str(err.value) and "\n" not in str(err.value)
    assert "PGHA_RAN" not in os.environ, "its code ran"


def test_a_settings_file_only_root_can_write_is_loaded(tmp_path, monkeypatch):
    monkeypatch.delenv("PGHA_RAN", raising=False)
    loaded = settings_mod.load(os.path.join(ROOT, "node_settings.py"), NODE_SPECS, settings_file(tmp_path, 0o644))
    assert loaded.name == "pgsql-1"


def test_a_daemon_refuses_a_key_file_another_user_owns(tmp_path, capsys):
    keys.generate(str(tmp_path), ["pgsql-1", "pgsql-2"])
    path = str(tmp_path / "pgsql-1.keys")
    assert cli.load_keys("node", keys.node_keys, path, "pgsql-1", None)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SystemExit) as exit_:
        cli.load_keys("node", keys.node_keys, path, "pgsql-1", None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key file" in err and "owned by uid 65534" in err


@pytest.mark.parametrize("name", ["pg_hba.conf", "postgresql.conf"])
def test_managed_files_are_never_read_through_a_planted_link(folder, victim, name):
    """A database superuser can replace pg_hba.conf with a link to a file
    only root may read: the node, run as root, refuses to read it rather
    than copy that file's text into one PostgreSQL's user owns."""
    from types import SimpleNamespace
    from pgha import postgres
    for other in ("pg_hba.conf", "postgresql.conf"):
        (folder / other).write_text("# kept\n")
    (folder / name).unlink()
    plant(folder / name, victim)
    pg = postgres.Postgres(SimpleNamespace(pg_bindir=None, pgdata=str(folder), socket_dir=None, state_dir=None,
                                           pg_os_user="postgres"))
    with pytest.raises(postgres.PostgresError, match="a link or not a regular file"):
        pg._ensure_include() if name == "postgresql.conf" else pg._read(str(folder / name))
    assert untouched(victim) and os.path.islink(folder / name)
    assert VICTIM not in "".join(p.read_text() for p in folder.iterdir() if not p.is_symlink())
