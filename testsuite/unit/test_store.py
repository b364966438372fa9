"""The arbiter's state store (pgha/store.py), against the StateStore interface.

Every implementation runs the interface tests through the `backend` fixture
(FileStore, and EtcdStore against a real etcd: the session's etcd_server);
the file-specific ones (damaged content, a crash in the middle of a write)
follow, then the etcd-specific ones.
"""
import json
import os
import threading
import uuid
from dataclasses import replace

import pytest

from pgha import store
from pgha.decision import ClusterState
from pgha.store import FileStore, StaleStateError, StateStore, StateStoreError


class FileBackend:
    """One state file in a fresh folder; open() is a new handle on it (another writer)."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "state.json"

    def open(self) -> StateStore:
        return FileStore(str(self.path))


class EtcdBackend:
    """A fresh cluster name (so a fresh key) in the session's etcd; open() is a new client."""

    def __init__(self, server):
        self.server = server
        self.cluster = "t-" + uuid.uuid4().hex[:12]

    def open(self) -> StateStore:
        from pgha.etcd_client import EtcdClient, EtcdOptions
        from pgha.etcd_store import EtcdStore
        return EtcdStore(EtcdClient(EtcdOptions(tuple(self.server.endpoints), timeout=2.0)), "/pgha-test",
                         self.cluster)


@pytest.fixture(params=["file", "etcd"])
def backend(request, tmp_path):
    if request.param == "file":
        return FileBackend(tmp_path)
    return EtcdBackend(request.getfixturevalue("etcd_server"))


FIRST = ClusterState(epoch=1, primary="pgsql-1")


# -- the interface -------------------------------------------------------------------------

def test_first_start_finds_nothing(backend):
    assert backend.open().load() is None


def test_save_and_load_round_trip(backend):
    writer = backend.open()
    writer.save(FIRST, expected_epoch=None)
    assert writer.load() == FIRST
    promotable = replace(FIRST, promotable={"pgsql-2"})
    writer.save(promotable, expected_epoch=1)         # same epoch: the standby became promotable
    assert writer.load() == promotable
    failed_over = ClusterState(epoch=2, primary="pgsql-2")
    writer.save(failed_over, expected_epoch=1)
    assert backend.open().load() == failed_over         # a restarted arbiter reads it back


@pytest.mark.parametrize("stored, expected", [(None, 1), (FIRST, None), (FIRST, 2), (FIRST, 0)],
                         ids=["nothing-stored-expected-1", "stored-expected-none", "expected-newer",
                              "expected-older"])
def test_compare_and_set_mismatch_is_refused_and_writes_nothing(backend, stored, expected):
    if stored is not None:
        backend.open().save(stored, expected_epoch=None)
    with pytest.raises(StaleStateError) as err:
        backend.open().save(ClusterState(epoch=5, primary="pgsql-2", promotable={"pgsql-1"}), expected_epoch=expected)
    assert "another writer" in str(err.value) and "\n" not in str(err.value)
    assert backend.open().load() == stored


def test_the_second_of_two_writers_at_the_same_epoch_loses(backend):
    a, b = backend.open(), backend.open()
    a.save(FIRST, expected_epoch=None)
    a.save(ClusterState(2, "pgsql-2"), expected_epoch=1)
    with pytest.raises(StaleStateError):
        b.save(ClusterState(2, "pgsql-1", promotable={"pgsql-2"}), expected_epoch=1)
    assert backend.open().load() == ClusterState(2, "pgsql-2")


def test_racing_writers_exactly_one_wins(backend):
    backend.open().save(FIRST, expected_epoch=None)
    names = [f"node-{n}" for n in range(8)]
    start = threading.Barrier(len(names))
    won, lost = [], []

    def write(name):
        writer = backend.open()
        start.wait()
        try:
            writer.save(ClusterState(2, name), expected_epoch=1)
            won.append(name)
        except StaleStateError:
            lost.append(name)

    threads = [threading.Thread(target=write, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(won) == 1 and len(lost) == len(names) - 1
    assert backend.open().load() == ClusterState(2, won[0])


def test_a_stale_write_is_a_store_error():
    """The arbiter reports any StateStoreError as 'cannot store its decision'."""
    assert issubclass(StaleStateError, StateStoreError)


@pytest.mark.parametrize("bad", [
    ClusterState(epoch="2", primary="pgsql-1"),
    ClusterState(epoch=2.0, primary="pgsql-1"),
    ClusterState(epoch=True, primary="pgsql-1"),
    ClusterState(epoch=0, primary="pgsql-1"),
    ClusterState(epoch=1, primary=None),
    ClusterState(epoch=1, primary=7),
    ClusterState(epoch=1, primary=""),
    ClusterState(epoch=1, primary="pgsql-1", promotable="false"),
    ClusterState(epoch=1, primary="pgsql-1", promotable=1),
    {"epoch": 1, "primary": "pgsql-1", "promotable": False},
], ids=["epoch-str", "epoch-float", "epoch-bool", "epoch-zero", "primary-none", "primary-int", "primary-empty",
        "promotable-str", "promotable-int", "a-dict"])
def test_values_of_the_wrong_type_are_refused_and_nothing_is_written(backend, bad):
    writer = backend.open()
    with pytest.raises(TypeError):
        writer.save(bad, expected_epoch=None)
    assert writer.load() is None


def test_paused_round_trips_and_old_states_load_unpaused(backend):
    writer = backend.open()
    writer.save(FIRST, expected_epoch=None)
    writer.save(replace(FIRST, paused=True), expected_epoch=1)
    assert backend.open().load() == replace(FIRST, paused=True)
    writer.save(FIRST, expected_epoch=1)
    assert backend.open().load().paused is False


# -- history (append_event / history) --------------------------------------------------------

def event(n, kind="failover"):
    return {"time": f"2024-01-01T00:00:{n % 60:02d}.000Z", "event": kind, "epoch": n, "reason": f"because {n}"}


def test_history_is_empty_at_first(backend):
    assert backend.open().history() == [] and backend.open().history(5) == []


def test_history_keeps_events_in_order_across_handles(backend):
    writer = backend.open()
    for n in range(1, 6):
        writer.append_event(event(n))
    assert backend.open().history() == [event(n) for n in range(1, 6)]     # a restarted arbiter reads it
    assert backend.open().history(2) == [event(4), event(5)]
    assert backend.open().history(100) == [event(n) for n in range(1, 6)]


def test_history_is_bounded_but_keeps_at_least_the_last_history_keep(backend, monkeypatch):
    monkeypatch.setattr(store, "HISTORY_KEEP", 10)
    writer = backend.open()
    for n in range(1, 36):
        writer.append_event(event(n))
        kept = backend.open().history()
        assert len(kept) <= 2 * 10 and kept[-min(n, 10):] == [event(m) for m in range(max(1, n - 9), n + 1)]
    assert kept[-1] == event(35)


# -- FileStore: what is on disk ---------------------------------------------------------------

def test_file_store_writes_plain_json_and_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    FileStore(str(path)).save(FIRST, expected_epoch=None)
    assert store.load_json(str(path)) == {"epoch": 1, "primary": "pgsql-1", "promotable": False}
    assert os.listdir(tmp_path) == ["state.json"]


def test_durable_replace_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    # the temporary file is renamed relative to the folder's descriptor (pgha.files)
    monkeypatch.setattr(os, "replace", lambda a, b, **fds: (
        calls.append(("replace", os.path.lexists(a) if not fds else _exists_at(a, fds["src_dir_fd"]))),
        real_replace(a, b, **fds)))
    FileStore(str(path)).save(FIRST, expected_epoch=None)
    assert calls == [("fsync", False), ("replace", True), ("fsync", True)]


def _exists_at(name, dir_fd):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("broken", ["fsync", "replace", "write"])
def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, broken):
    path = tmp_path / "state.json"
    writer = FileStore(str(path))
    writer.save(FIRST, expected_epoch=None)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if broken == "write":   # the disk fills after part of the new content was written
        real_write = os.write

        def filling(fd, data):
            real_write(fd, bytes(data[:10]))
            fail()

        monkeypatch.setattr(os, "write", filling)
    else:
        monkeypatch.setattr(os, broken, fail)
    with pytest.raises(StateStoreError) as err:
        writer.save(ClusterState(2, "pgsql-2"), expected_epoch=1)
    assert f"cannot write state file {path}" in str(err.value) and "No space left" in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]          # no partial temporary file either
    assert writer.load() == FIRST


DAMAGED = [
    ("not-json", "{", "cannot read state file"),
    ("empty", "", "cannot read state file"),
    ("binary", b"\xff\xfe\x00garbage", "cannot read state file"),
    ("a-list", "[1, 2]", "is damaged"),
    ("json-null", "null", "is damaged"),
    ("key-missing", '{"epoch": 3, "primary": "pgsql-1"}', "is damaged"),
    ("epoch-not-a-number", '{"epoch": "three", "primary": "pgsql-1", "promotable": false}', "is damaged"),
    ("epoch-float", '{"epoch": 2.5, "primary": "pgsql-1", "promotable": false}', "is damaged"),
    ("promotable-string", '{"epoch": 3, "primary": "pgsql-1", "promotable": "false"}', "is damaged"),
    ("huge", '{"epoch": "' + "x" * 10000 + '"}', "is damaged"),
]


@pytest.mark.parametrize("content, problem", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_a_damaged_file_is_a_clear_error_naming_it_and_is_never_overwritten(tmp_path, content, problem):
    path = tmp_path / "state.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    writer = FileStore(str(path))
    with pytest.raises(StateStoreError) as err:
        writer.load()
    message = str(err.value)
    assert f"state file {path}" in message and problem in message
    assert "\n" not in message and len(message) < 300
    with pytest.raises(StateStoreError):
        writer.save(FIRST, expected_epoch=None)
    with pytest.raises(StateStoreError):
        writer.save(ClusterState(4, "pgsql-2"), expected_epoch=3)
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_folder_in_place_of_the_file(tmp_path):
    with pytest.raises(StateStoreError, match=f"cannot read state file {tmp_path}"):
        FileStore(str(tmp_path)).load()


def test_a_file_in_a_missing_folder(tmp_path):
    writer = FileStore(str(tmp_path / "no" / "such" / "state.json"))
    assert writer.load() is None
    with pytest.raises(StateStoreError, match="cannot write state file"):
        writer.save(FIRST, expected_epoch=None)


def test_file_history_is_fsynced_json_lines_beside_the_state(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    writer = FileStore(str(tmp_path / "state.json"))
    writer.append_event(event(1))
    assert synced, "an appended event must be fsynced before append_event returns"
    path = tmp_path / "state.json.history.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == [event(1)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_file_history_skips_a_torn_last_line_and_appends_after_it(tmp_path):
    writer = FileStore(str(tmp_path / "state.json"))
    writer.append_event(event(1))
    with open(tmp_path / "state.json.history.jsonl", "a") as f:
        f.write('{"time": "2024-01-01T00:00:0')         # a crash in the middle of an append
    assert FileStore(str(tmp_path / "state.json")).history() == [event(1)]
    FileStore(str(tmp_path / "state.json")).append_event(event(2))
    assert FileStore(str(tmp_path / "state.json")).history() == [event(1), event(2)]


def test_file_history_unwritable_is_a_one_line_store_error(tmp_path):
    (tmp_path / "state.json.history.jsonl").mkdir()       # in the way: not a file
    with pytest.raises(StateStoreError) as err:
        FileStore(str(tmp_path / "state.json")).append_event(event(1))
    assert "history" in str(err.value) and "\n" not in str(err.value)


# -- EtcdStore: what only etcd does ---------------------------------------------------------------

def _etcd_store(endpoints, cluster, guard=None, timeout=2.0):
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import EtcdStore
    return EtcdStore(EtcdClient(EtcdOptions(tuple(endpoints), timeout=timeout)), "/pgha-test", cluster, guard)


def test_etcd_unreachable_is_one_clear_line_and_nothing_is_decided():
    writer = _etcd_store(["http://127.0.0.1:9", "http://127.0.0.1:1"], "gone", timeout=0.5)
    for attempt in (writer.load, lambda: writer.save(FIRST, expected_epoch=None)):
        with pytest.raises(StateStoreError) as err:
            attempt()
        message = str(err.value)
        assert "etcd unreachable" in message and "127.0.0.1:9" in message and "127.0.0.1:1" in message
        assert "\n" not in message and not isinstance(err.value, StaleStateError)


def test_etcd_a_dead_endpoint_is_skipped(etcd_server):
    writer = _etcd_store(["http://127.0.0.1:9"] + etcd_server.endpoints, "t-" + uuid.uuid4().hex[:12])
    writer.save(FIRST, expected_epoch=None)
    assert writer.load() == FIRST


def test_etcd_damaged_value_is_a_clear_error_and_never_overwritten(etcd_server):
    from pgha.etcd_client import EtcdClient, EtcdOptions
    cluster = "t-" + uuid.uuid4().hex[:12]
    client = EtcdClient(EtcdOptions(tuple(etcd_server.endpoints)))
    client.post("/kv/put", {"key": store_key_b64(cluster), "value": "e30="})   # "{}"
    writer = _etcd_store(etcd_server.endpoints, cluster)
    with pytest.raises(StateStoreError, match="is damaged") as err:
        writer.load()
    assert "\n" not in str(err.value) and f"/pgha-test/{cluster}/state" in str(err.value)
    with pytest.raises(StateStoreError):
        writer.save(FIRST, expected_epoch=None)
    assert client.get(f"/pgha-test/{cluster}/state").value == b"{}"


def store_key_b64(cluster):
    from pgha.etcd_client import b64
    return b64(f"/pgha-test/{cluster}/state")


def test_etcd_an_arbiter_whose_leadership_ended_cannot_write(etcd_server):
    """The guard compares the leader key's create_revision in the same transaction."""
    from pgha.etcd_client import EtcdClient, EtcdOptions, b64
    from pgha.etcd_store import leader_key, leadership_guard
    cluster = "t-" + uuid.uuid4().hex[:12]
    client = EtcdClient(EtcdOptions(tuple(etcd_server.endpoints)))
    key = leader_key("/pgha-test", cluster)
    reply = client.post("/kv/put", {"key": b64(key), "value": b64("a:1")})
    term = int(reply["header"]["revision"])
    writer = _etcd_store(etcd_server.endpoints, cluster, guard=leadership_guard(key, lambda: term))
    writer.save(FIRST, expected_epoch=None)                      # our term: written
    client.post("/kv/deleterange", {"key": b64(key)})             # lease expired ...
    client.post("/kv/put", {"key": b64(key), "value": b64("b:2")})    # ... another arbiter won
    with pytest.raises(StateStoreError, match="leadership ended") as err:
        writer.save(ClusterState(2, "pgsql-2"), expected_epoch=1)
    assert not isinstance(err.value, StaleStateError)
    assert writer.load() == FIRST
    idle = _etcd_store(etcd_server.endpoints, cluster, guard=leadership_guard(key, lambda: None))
    with pytest.raises(StateStoreError, match="not the leader"):
        idle.save(ClusterState(2, "pgsql-2"), expected_epoch=1)
    assert writer.load() == FIRST


def test_etcd_a_save_after_seeing_the_epoch_is_one_call_and_still_a_compare_and_set(etcd_server):
    """A store compares the key's revision it last saw instead of reading first;
    a key moved by another writer makes it read and compare the epoch, as before."""
    cluster = "t-" + uuid.uuid4().hex[:12]
    mine, other = (_etcd_store(etcd_server.endpoints, cluster) for _ in range(2))
    mine.save(FIRST, expected_epoch=None)
    calls = []
    real_post = mine.client.post
    mine.client.post = lambda path, body: (calls.append(path), real_post(path, body))[1]
    mine.save(ClusterState(2, "pgsql-2"), expected_epoch=1)
    assert calls == ["/kv/txn"] and other.load() == ClusterState(2, "pgsql-2")
    other.save(ClusterState(3, "pgsql-1"), expected_epoch=2)        # another writer moves the key
    with pytest.raises(StaleStateError):
        mine.save(ClusterState(3, "pgsql-2"), expected_epoch=2)
    assert other.load() == ClusterState(3, "pgsql-1")
    other.save(ClusterState(3, "pgsql-1", paused=True), expected_epoch=3)     # moved, same epoch
    mine.load()
    other.save(ClusterState(3, "pgsql-1"), expected_epoch=3)
    mine.save(ClusterState(4, "pgsql-2"), expected_epoch=3)          # stale revision, right epoch: written
    assert other.load() == ClusterState(4, "pgsql-2")


def test_etcd_history_is_counted_once_then_again_only_before_trimming(etcd_server, monkeypatch):
    monkeypatch.setattr(store, "HISTORY_KEEP", 3)
    cluster = "t-" + uuid.uuid4().hex[:12]
    writer = _etcd_store(etcd_server.endpoints, cluster)
    calls = []
    real_post = writer.client.post
    writer.client.post = lambda path, body: (calls.append(path), real_post(path, body))[1]
    for n in range(1, 4):
        writer.append_event(event(n))
    assert calls.count("/kv/range") == 1            # the first append counts
    for n in range(4, 9):
        writer.append_event(event(n))
    assert len(writer.history()) <= 2 * 3            # trimmed: counted again before it
    assert writer.history()[-3:] == [event(n) for n in range(6, 9)]


# -- the promotable mark names members --------------------------------------------------------

@pytest.mark.parametrize("stored, expected", [
    ({"epoch": 3, "primary": "pgsql-1", "promotable": True}, frozenset()),
    ({"epoch": 3, "primary": "pgsql-1", "promotable": False}, frozenset()),
    ({"epoch": 3, "primary": "pgsql-1", "promotable": True, "promotable_members": ["pgsql-2"]},
     frozenset({"pgsql-2"})),
], ids=["old-yes-is-no-one", "old-no", "names"])
def test_a_yes_saved_before_names_is_no_one_until_proven_again(stored, expected):
    """Not guessed from the settings: a member replaced meanwhile would be taken as holding every commit."""
    assert store.check_state(stored).promotable == expected


@pytest.mark.parametrize("stored", [
    {"epoch": 3, "primary": "pgsql-1", "promotable": False, "promotable_members": ["pgsql-2"]},
    {"epoch": 3, "primary": "pgsql-1", "promotable": True, "promotable_members": []},
    {"epoch": 3, "primary": "pgsql-1", "promotable": True, "promotable_members": ["pgsql-1"]},
    {"epoch": 3, "primary": "pgsql-1", "promotable": True, "promotable_members": "pgsql-2"},
    {"epoch": 3, "primary": "pgsql-1", "promotable": True, "promotable_members": ["b", "b"]},
], ids=["no-with-names", "yes-with-none", "names-the-primary", "not-a-list", "twice"])
def test_a_promotable_mark_that_cannot_be_read_is_damage_not_a_guess(stored):
    assert store.check_state(stored) is None


def test_the_stored_form_still_says_yes_or_no_for_older_readers(backend):
    state = ClusterState(epoch=4, primary="pgsql-1", promotable={"pgsql-2"})
    stored = store.state_to_stored(state)
    assert stored["promotable"] is True and stored["promotable_members"] == ["pgsql-2"]
    assert "promotable_members" not in store.state_to_stored(FIRST)     # as files were before
    writer = backend.open()
    writer.save(state, expected_epoch=None)
    assert backend.open().load() == state
