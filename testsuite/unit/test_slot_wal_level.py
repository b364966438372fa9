"""Permanent slots, the parts without a server: the wal_level the node writes
(logical while a logical slot is asked for or may be left in the data
directory: PostgreSQL refuses to start with one under replica)."""
from types import SimpleNamespace

import pytest

from pgha import postgres

LOGICAL = {"cdc": {"type": "logical", "database": "testdb", "plugin": "pgoutput"}}
PHYSICAL = {"archive": {"type": "physical"}}


def pg_with(tmp_path, slots, written=None, running=False, logical_left=0):
    pg = postgres.Postgres(SimpleNamespace(pg_bindir=None, pgdata=str(tmp_path), socket_dir=None, state_dir=None,
                                           pg_os_user="postgres", permanent_slots=slots))
    if written is not None:
        (tmp_path / postgres.CONF_FILE).write_text(f"port = '5432'\nwal_level = '{written}'\n")
    pg.postmaster_pid = lambda: 4242 if running else None
    pg.query = lambda sql, params=None: [(logical_left,)]
    return pg


@pytest.mark.parametrize("slots, written, running, left, level", [
    (LOGICAL, None, False, 0, "logical"),            # asked for
    (PHYSICAL, None, False, 0, "replica"),
    ({}, "replica", True, 0, "replica"),
    ({}, "logical", False, 0, "logical"),            # was logical, stopped: a slot may be left
    ({}, "logical", True, 1, "logical"),             # a logical slot left on the running server
    ({}, "logical", True, 0, "replica"),             # none left: back to replica
], ids=["logical-asked", "physical-only", "never-logical", "was-logical-stopped", "slot-left", "none-left"])
def test_wal_level_stays_logical_while_a_logical_slot_may_be_left(tmp_path, slots, written, running, left, level):
    assert pg_with(tmp_path, slots, written, running, left).wal_level() == level
