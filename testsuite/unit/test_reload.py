"""Reload without restart (pgha/reload.py, node_ops.py, the arbiter's reload):
what changed, what applies now, what needs a restart, a refused file, the
shrinking lease_time transition, and reload_generation reaching the nodes."""
from types import SimpleNamespace

from pgha import auth, node_ops, reload, settings
from pgha.messages import Instruction
from testsuite.unit.test_arbiter import P, S, Running, heartbeat, primary_report, standby_report
from testsuite.unit.test_arbiter_auth import KEYS, Signed, credential
from pgha import arbiter as arbiter_mod

SPECS = {"log_level": settings.Spec(str), "pg_parameters": settings.Spec(dict), "pg_port": settings.Spec(int),
         "admin_password": settings.Spec(str, secret=True), "name": settings.Spec(str)}
OLD = SimpleNamespace(log_level="INFO", pg_parameters={}, pg_port=5432, admin_password="old-secret", name="n1")


def test_nothing_changed():
    assert reload.settings_diff(OLD, SimpleNamespace(**vars(OLD)), SPECS) == reload.Diff((), ())


def test_runtime_settings_apply_and_the_others_need_a_restart():
    new = SimpleNamespace(**{**vars(OLD), "log_level": "DEBUG", "pg_parameters": {"work_mem": "8MB"},
                             "pg_port": 5433, "admin_password": "new-secret"})
    diff = reload.settings_diff(OLD, new, SPECS)
    assert diff.applied == ("log_level", "pg_parameters")
    assert diff.restart_needed == ("pg_port", "admin_password")
    merged = reload.merge(OLD, new, diff)
    assert (merged.log_level, merged.pg_parameters, merged.pg_port, merged.admin_password) == \
        ("DEBUG", {"work_mem": "8MB"}, 5432, "old-secret")
    lines = reload.change_lines(OLD, new, diff, SPECS)
    assert lines == ["reload: log_level changed from 'INFO' to 'DEBUG'",
                     "reload: pg_parameters changed from {} to {'work_mem': '8MB'}",
                     "reload: changed but applied only after a restart: pg_port, admin_password"]
    assert not any("secret" in line for line in lines)


def test_a_secret_runtime_setting_is_named_without_its_value():
    specs = {"token": settings.Spec(str, secret=True)}
    diff = reload.settings_diff(SimpleNamespace(token="a"), SimpleNamespace(token="b"), specs, frozenset({"token"}))
    assert reload.change_lines(SimpleNamespace(token="a"), SimpleNamespace(token="b"), diff, specs) == \
        ["reload: token changed"]


def test_every_node_runtime_setting_is_a_node_setting():
    assert reload.NODE_RUNTIME <= set(settings.NODE_SPECS)
    assert reload.ARBITER_RUNTIME <= set(settings.ARBITER_SPECS)


def test_a_bad_file_is_refused_with_one_line():
    said = []

    def bad():
        raise settings.SettingsError("setting 'log_level' must be DEBUG, INFO, WARNING or ERROR (got 'LOUD')")
    assert reload.load_or_refuse(bad, said.append) is None
    assert said == ["reload refused, keeping the running settings: setting 'log_level' must be DEBUG, INFO, "
                    "WARNING or ERROR (got 'LOUD')"]


# -- lease_time: growing applies at once, shrinking only after the old leases ran out --------

def test_growing_the_lease_needs_no_transition():
    assert reload.LeaseTransition.after_change(3.0, 5.0, 1.0, now=100.0) is None


def test_shrinking_the_lease_keeps_the_old_one_for_the_rules_until_it_ran_out():
    t = reload.LeaseTransition.after_change(6.0, 3.0, 1.0, now=100.0)
    assert t == reload.LeaseTransition(old_lease=6.0, until=107.0)
    assert t.rules_lease(3.0, 106.9) == 6.0
    assert t.rules_lease(3.0, 107.0) == 3.0
    # Shrinking again mid-way keeps the longest lease that may still be held.
    t2 = reload.LeaseTransition.after_change(3.0, 2.0, 1.0, now=101.0, current=t)
    assert t2.old_lease == 6.0 and t2.until == 108.0


def reload_arbiter(running, **changes):
    values = {**vars(running.settings), **changes}
    running.arbiter.settings_loader = lambda: SimpleNamespace(**values)
    return running.arbiter.reload_settings()


def test_arbiter_shrinking_the_lease_does_not_fail_over_early(tmp_path):
    r = Running(tmp_path, lease_time=6.0)
    try:
        c = r.client()
        r.make_promotable(c)
        diff, error = reload_arbiter(r, lease_time=3.0)
        assert error is None and diff.applied == ("lease_time",)
        # The instructions carry the short lease at once...
        assert c.ask(heartbeat(P, 1, primary_report(1200, 1200)))["lease_time"] == 3.0
        # ...but the primary may hold a 6 s lease from before: no failover after 3 s + margin.
        r.clock.advance(4.5)
        assert c.ask(heartbeat(S, 1, standby_report()))["role"] == "standby"
        r.clock.advance(3.0)    # past the old lease + margin since the primary's last heartbeat
        assert c.ask(heartbeat(S, 1, standby_report()))["role"] == "primary"
    finally:
        r.stop()


def test_arbiter_reload_with_a_bad_file_keeps_its_settings(tmp_path):
    r = Running(tmp_path)
    try:
        def bad():
            raise settings.SettingsError("settings file x, line 3: NameError while loading it")
        r.arbiter.settings_loader = bad
        diff, error = r.arbiter.reload_settings()
        assert diff is None and "keeping the running settings" in error
        assert r.arbiter.settings is r.settings
    finally:
        r.stop()


def test_arbiter_reload_names_what_needs_a_restart(tmp_path):
    r = Running(tmp_path)
    try:
        diff, _ = reload_arbiter(r, listen_port=1234, failover_margin=2.0)
        assert diff.applied == ("failover_margin",) and diff.restart_needed == ("listen_port",)
        assert r.arbiter.timings.failover_margin == 2.0 and r.arbiter.settings.listen_port != 1234
    finally:
        r.stop()


def test_ctl_reload_bumps_the_generation_the_instructions_carry(tmp_path):
    r = Running(tmp_path, verifier=arbiter_mod.verifier(KEYS, [P, S]))
    try:
        r.arbiter.settings_loader = lambda: r.settings
        node = Signed(r, credential(P))
        assert "reload_generation" not in node.ask(heartbeat(P, 1, primary_report()))
        # Only the operator may ask.
        assert Signed(r, credential("reader")).ask({"type": "reload"})["error"] == auth.FAILED
        assert r.arbiter.reload_generation == 0
        reply = Signed(r, credential("operator")).ask({"type": "reload"})
        assert reply["type"] == "ok" and reply["reload_generation"] == 1
        assert node.ask(heartbeat(P, 1, primary_report()))["reload_generation"] == 1
    finally:
        r.stop()


def test_a_node_reloads_when_the_generation_grows():
    r = node_ops.NodeReloader(loader=None)
    r.note_generation(3)                    # first seen: the node has just loaded its settings
    assert not r._asked.is_set()
    r.note_generation(3)
    assert not r._asked.is_set()
    r.note_generation(4)
    assert r._asked.is_set()
    r._asked.clear()
    r.note_generation(0)                    # a restarted arbiter: just the new mark
    assert not r._asked.is_set() and r.generation == 0


def test_instruction_carries_the_generation_on_the_wire():
    wire = Instruction(epoch=2, role="wait", reason="x", reload_generation=5).to_wire()
    assert Instruction.from_wire(wire).reload_generation == 5
    assert Instruction.from_wire({"type": "instruction", "epoch": 2, "role": "wait"}).reload_generation == 0


class FakePg:
    def __init__(self, running=True):
        self.s = None
        self.calls = []
        self.running = running

    def postmaster_pid(self):
        return 42 if self.running else None

    def rewrite_settings(self, written_for_role=None):
        self.calls.append("rewrite")
        return True

    def reload(self):
        self.calls.append("reload")

    def pending_restart(self):
        return ["shared_buffers"]


def test_node_apply_rewrites_and_reloads_postgres_only_for_its_settings(caplog):
    old = SimpleNamespace(**{name: None for name in settings.NODE_SPECS})
    old.log_level, old.log_file, old.pg_parameters, old.callback_timeout = "INFO", None, {}, 30.0
    pg = FakePg()
    node = SimpleNamespace(s=old, pg=pg, written_for_role=lambda: None)
    new = SimpleNamespace(**{**vars(old), "callback_timeout": 5.0})
    assert node_ops.apply(node, new).applied == ("callback_timeout",)
    assert pg.calls == [] and node.s.callback_timeout == 5.0 and pg.s is node.s
    newer = SimpleNamespace(**{**vars(new), "pg_parameters": {"shared_buffers": "64MB"}, "pg_port": 1})
    with caplog.at_level("INFO"):
        diff = node_ops.apply(node, newer)
    assert diff.applied == ("pg_parameters",) and diff.restart_needed == ("pg_port",)
    assert pg.calls == ["rewrite", "reload"]
    assert "applies these parameters only after a restart: shared_buffers" in caplog.text
    assert node.s.pg_port is None
