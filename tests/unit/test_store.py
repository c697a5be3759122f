"""The embedded store: exact round trips, trimming, fork and SIGKILL durability, secure delete,
version and damage checks, quarantine."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path

import pytest

from jidocoder.daemon import store as store_module
from jidocoder.daemon.store import (
    SCHEMA_VERSION, TRIM_EVERY, DamagedStoreError, Registry, SessionStore, StoreVersionError,
    destroy_session_files, quarantine, session_db_path,
)
from jidocoder.errors import InvalidArgumentError, JidocoderError
from jidocoder.models import ActiveFile, Message, SessionState

SID = "session_0b6f3d9e-8c1a-4f2e-9a77-3c5d2e1f4a60"
OTHER = "session_7d2c1b0a-5e4f-4a3b-8c9d-0e1f2a3b4c5d"
T0 = datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)


def at(microseconds: int) -> datetime:
    return T0 + timedelta(microseconds=microseconds)


def message(n: int, role: str = "user") -> Message:
    return Message(role=role, content=f"message {n}", timestamp=at(n))


def file(path: str, n: int = 0) -> ActiveFile:
    return ActiveFile(path=path, added_at=at(n))


def run_in_child(body) -> int:
    """Fork; the child runs ``body`` and leaves by os._exit: 0 if it returned, 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def all_bytes(directory: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): data for path, data in all_bytes(directory).items()}


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every SQL statement run on connections opened during the test, in order."""
    seen: list[str] = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(seen.append)
        return conn

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    return seen


# --- SessionStore ------------------------------------------------------------------------------

def test_session_store_round_trips_exact_to_the_microsecond(tmp_path):
    paris = timezone(timedelta(hours=2))
    entry = {"last_accessed": at(7), "size": 12, "tags": ["a", "b"], "nested": {"when": at(8)}}
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
        db.append_message(Message(role="tool", content="ünï", timestamp=at(2).astimezone(paris)),
                          keep=10)
        db.add_file(file("/src/a.py", 3))
        db.add_file(file("/src/b.py", 4))
        db.put_index("/src/a.py", entry)
        messages, files, index = db.load()
    assert messages == [message(1), Message(role="tool", content="ünï", timestamp=at(2))]
    assert [m.timestamp.tzinfo for m in messages] == [UTC, UTC]
    assert files == [file("/src/a.py", 3), file("/src/b.py", 4)]
    assert index == {"/src/a.py": entry}
    assert index["/src/a.py"]["last_accessed"].utcoffset() == timedelta(0)


def test_reopen_after_close_sees_everything(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
        db.add_file(file("/a", 2))
        db.put_index("/a", {"last_accessed": at(3)})
        before = db.load()
    with SessionStore(tmp_path, SID) as db:
        assert db.load() == before
        assert before == ([message(1)], [file("/a", 2)], {"/a": {"last_accessed": at(3)}})


def test_full_durability_stores_the_same(tmp_path):
    with SessionStore(tmp_path, SID, durability="full") as db:
        db.append_message(message(1), keep=10)
    with SessionStore(tmp_path, SID, durability="full") as db:
        assert db.load()[0] == [message(1)]


def test_append_message_drops_the_oldest_past_keep_trim_every_at_a_time(tmp_path):
    keep, most = 3, 3 + TRIM_EVERY - 1
    with SessionStore(tmp_path, SID) as db:
        for n in range(most):
            db.append_message(message(n), keep=keep)
        assert db.load()[0] == [message(n) for n in range(most)]
        db.append_message(message(most), keep=keep)
        assert db.load()[0] == [message(n) for n in range(most + 1 - keep, most + 1)]
        for n in range(most + 1, most + 1 + TRIM_EVERY):
            db.append_message(message(n), keep=keep)
        assert db.load()[0] == [message(n) for n in range(most + 1 + TRIM_EVERY - keep,
                                                           most + 1 + TRIM_EVERY)]


def test_a_write_group_stores_its_writes_in_one_commit(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.begin_group()
        db.append_message(message(1), keep=10)
        db.add_file(file("/a", 2))
        db.append_message(message(3), keep=10)
        db.end_group()
        assert db.load() == ([message(1), message(3)], [file("/a", 2)], {})
        db.append_message(message(4), keep=10)  # and writes after it commit on their own again
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1), message(3), message(4)]


def test_a_failed_write_leaves_nothing_of_its_group_stored(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(0), keep=10)
        db.begin_group()
        db.append_message(message(1), keep=10)
        with pytest.raises(sqlite3.IntegrityError):  # content is NOT NULL
            db.append_message(Message.model_construct(role="user", content=None,
                                                      timestamp=at(9)), keep=10)
        with pytest.raises(RuntimeError, match="earlier write of this group failed"):
            db.append_message(message(2), keep=10)
        with pytest.raises(RuntimeError, match="none of them is stored"):
            db.end_group()
        assert db.load()[0] == [message(0)]
        db.append_message(message(3), keep=10)
        assert db.load()[0] == [message(0), message(3)]


def test_a_write_group_with_no_write_creates_no_lazy_file(tmp_path):
    db = SessionStore(tmp_path, SID, lazy=True)
    db.begin_group()
    db.end_group()
    assert not session_db_path(tmp_path, SID).exists()
    db.close()


def test_append_message_refuses_keep_below_one(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        with pytest.raises(InvalidArgumentError) as caught:
            db.append_message(message(0), keep=0)
        assert caught.value.field == "keep"
        assert db.load()[0] == []


def test_clear_messages_then_append_starts_a_new_conversation(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
        db.clear_messages()
        assert db.load()[0] == []
        db.append_message(message(2), keep=10)
        assert db.load()[0] == [message(2)]


def test_add_file_keeps_the_place_and_time_of_a_path_already_active(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.add_file(file("/a", 1))
        db.add_file(file("/b", 2))
        db.add_file(file("/a", 3))
        assert db.load()[1] == [file("/a", 1), file("/b", 2)]


def test_remove_file_removes_its_index_entry_and_ignores_absent_paths(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.add_file(file("/a", 1))
        db.add_file(file("/b", 2))
        db.put_index("/a", {"n": 1})
        db.put_index("/b", {"n": 2})
        db.remove_file("/a")
        db.remove_file("/never-added")
        assert db.load()[1:] == ([file("/b", 2)], {"/b": {"n": 2}})


def test_put_index_replaces_the_entry(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.put_index("/a", {"n": 1, "old": True})
        db.put_index("/a", {"n": 2})
        assert db.load()[2] == {"/a": {"n": 2}}


def test_forked_child_writes_are_seen_by_the_parent_after_waitpid(tmp_path):
    def child() -> None:
        db = SessionStore(tmp_path, SID)
        db.append_message(message(1), keep=10)
        db.add_file(file("/a", 2))
        db.put_index("/a", {"last_accessed": at(3)})
        db.close()

    assert wait_exit_code(run_in_child(child)) == 0
    with SessionStore(tmp_path, SID) as db:
        assert db.load() == ([message(1)], [file("/a", 2)], {"/a": {"last_accessed": at(3)}})


def test_a_write_that_returned_survives_sigkill(tmp_path):
    ready_read, ready_write = os.pipe()
    hold_read, hold_write = os.pipe()  # never written: the child blocks on it until killed

    def child() -> None:
        db = SessionStore(tmp_path, SID)
        db.append_message(message(1), keep=10)
        db.put_index("/a", {"n": 1})
        os.write(ready_write, b"!")
        os.read(hold_read, 1)

    pid = run_in_child(child)
    try:
        assert os.read(ready_read, 1) == b"!"
        os.kill(pid, signal.SIGKILL)
        assert wait_exit_code(pid) == -signal.SIGKILL
    finally:
        for fd in (ready_read, ready_write, hold_read, hold_write):
            os.close(fd)
    with SessionStore(tmp_path, SID) as db:
        assert db.load() == ([message(1)], [], {"/a": {"n": 1}})


def test_a_store_opened_before_fork_refuses_use_in_the_child(tmp_path):
    db = SessionStore(tmp_path, SID)
    db.append_message(message(1), keep=10)

    def child() -> None:
        with pytest.raises(RuntimeError, match="before a fork"):
            db.append_message(message(2), keep=10)
        db.close()  # must not close the parent's connection

    assert wait_exit_code(run_in_child(child)) == 0
    db.append_message(message(3), keep=10)
    assert db.load()[0] == [message(1), message(3)]
    db.close()


def test_destroy_session_files_leaves_no_file_even_after_a_crash(tmp_path):
    def child() -> None:  # leaves without closing: the -wal stays behind
        SessionStore(tmp_path, SID).append_message(message(1), keep=10)

    assert wait_exit_code(run_in_child(child)) == 0
    sessions = session_db_path(tmp_path, SID).parent
    # An exclusive lock keeps the WAL index in memory: no -shm. Strays from elsewhere go too.
    assert {p.name for p in sessions.iterdir()} == {f"{SID}.db", f"{SID}.db-wal"}
    for suffix in ("-shm", "-journal"):
        (sessions / f"{SID}.db{suffix}").write_bytes(b"stray")
    destroy_session_files(tmp_path, SID)
    assert list(sessions.iterdir()) == []
    destroy_session_files(tmp_path, SID)  # already gone: no error


def test_session_db_path_refuses_an_id_that_is_not_a_plain_file_name(tmp_path):
    assert session_db_path(tmp_path, SID) == tmp_path / "sessions" / f"{SID}.db"
    for bad in ("../escape", "a/b", "", ".hidden", 7):
        with pytest.raises(InvalidArgumentError) as caught:
            session_db_path(tmp_path, bad)
        assert caught.value.code == "invalid_session_id"


def test_unknown_durability_is_an_invalid_argument(tmp_path):
    with pytest.raises(InvalidArgumentError) as caught:
        SessionStore(tmp_path, SID, durability="paranoid")
    assert (caught.value.code, caught.value.field) == ("invalid_durability", "durability")


def test_a_new_store_starts_in_wal_mode_without_an_integrity_check(tmp_path, statements):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
        files = {p.name for p in session_db_path(tmp_path, SID).parent.iterdir()}
    assert "PRAGMA quick_check" not in statements  # nothing to check in a file made just now
    assert statements.index("PRAGMA journal_mode=WAL") < statements.index("BEGIN IMMEDIATE")
    assert files == {f"{SID}.db", f"{SID}.db-wal"}  # no -journal, and no -shm (exclusive lock)
    header = session_db_path(tmp_path, SID).read_bytes()[:100]
    assert header[18:20] == b"\x02\x02"  # WAL in the file header
    statements.clear()
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1)]
    assert "PRAGMA quick_check" in statements  # an existing file is checked


def test_a_session_store_holds_its_file_while_open(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
        other = sqlite3.connect(session_db_path(tmp_path, SID), timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("SELECT count(*) FROM messages").fetchone()
        other.close()
    with SessionStore(tmp_path, SID) as db:  # and lets it go when closed
        assert db.load()[0] == [message(1)]


def test_a_lazy_store_creates_no_file_until_its_first_write(tmp_path):
    sessions = tmp_path / "sessions"
    db = SessionStore(tmp_path, SID, lazy=True)
    assert db.load() == ([], [], {})
    assert not sessions.exists() or list(sessions.iterdir()) == []
    db.add_file(file("/a", 1))
    assert session_db_path(tmp_path, SID).exists()
    db.append_message(message(2), keep=10)
    db.put_index("/a", {"n": 3})
    assert db.load() == ([message(2)], [file("/a", 1)], {"/a": {"n": 3}})
    db.close()
    with SessionStore(tmp_path, SID, lazy=True) as db:  # the file exists: opened at once
        assert db.load() == ([message(2)], [file("/a", 1)], {"/a": {"n": 3}})


def test_a_lazy_store_that_was_closed_or_never_written_leaves_nothing(tmp_path):
    db = SessionStore(tmp_path, SID, lazy=True)
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.append_message(message(1), keep=10)
    with SessionStore(tmp_path, SID, lazy=True) as db:
        db.load()
    assert not session_db_path(tmp_path, SID).exists()


def test_a_lazy_store_made_before_fork_refuses_use_in_the_child(tmp_path):
    db = SessionStore(tmp_path, SID, lazy=True)

    def child() -> None:
        with pytest.raises(RuntimeError, match="before a fork"):
            db.append_message(message(1), keep=10)
        with pytest.raises(RuntimeError, match="before a fork"):
            db.load()
        assert not session_db_path(tmp_path, SID).exists()
        db.close()

    assert wait_exit_code(run_in_child(child)) == 0
    db.append_message(message(2), keep=10)
    assert db.load()[0] == [message(2)]
    db.close()


def test_a_new_store_ignores_a_stale_wal_left_by_an_earlier_one(tmp_path):
    def child() -> None:  # leaves without closing: its -wal holds the message
        SessionStore(tmp_path, SID).append_message(message(1), keep=10)

    assert wait_exit_code(run_in_child(child)) == 0
    session_db_path(tmp_path, SID).unlink()  # a destroy cut short after the first unlink
    with SessionStore(tmp_path, SID) as db:
        assert db.load() == ([], [], {})


# --- version and damage --------------------------------------------------------------------------

def make_newer_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("open_store", [
    lambda state_dir: SessionStore(state_dir, SID),
    lambda state_dir: Registry(state_dir),
], ids=["session", "registry"])
def test_newer_store_version_raises_and_leaves_the_files_unchanged(tmp_path, open_store):
    make_newer_db(session_db_path(tmp_path, SID))
    make_newer_db(tmp_path / "registry.db")
    before = snapshot(tmp_path)
    with pytest.raises(StoreVersionError) as caught:
        open_store(tmp_path)
    assert caught.value.code == "store_version"
    assert f"version {SCHEMA_VERSION + 1}" in caught.value.message
    assert snapshot(tmp_path) == before


def test_store_errors_are_jidocoder_errors():
    assert issubclass(StoreVersionError, JidocoderError)
    assert issubclass(DamagedStoreError, JidocoderError)
    assert DamagedStoreError("x").code == "store_damaged"


@pytest.mark.parametrize("content", [b"not a database at all" * 40, b"short garbage",
                                     b"SQLite format 3\x00" + b"\xff" * 4000],
                         ids=["garbage", "short", "bad-pages"])
def test_garbage_session_db_is_damaged(tmp_path, content):
    path = session_db_path(tmp_path, SID)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DamagedStoreError) as caught:
        SessionStore(tmp_path, SID).load()
    assert caught.value.code == "store_damaged"
    assert path.read_bytes() == content


def test_truncated_session_db_is_damaged(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        for n in range(200):
            db.append_message(Message(role="user", content="x" * 500, timestamp=at(n)), keep=1000)
    path = session_db_path(tmp_path, SID)
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedStoreError):
        SessionStore(tmp_path, SID).load()


@pytest.mark.parametrize("insert", [
    "INSERT INTO messages (role, content, timestamp) VALUES ('user', 'x', 'not a time')",
    "INSERT INTO messages (role, content, timestamp) VALUES ('user', 'x', 99e99)",
    "INSERT INTO active_files (path, added_at) VALUES ('/a', X'00')",
    "INSERT INTO file_index VALUES ('/a', X'c1')",
    "INSERT INTO file_index VALUES ('/a', X'93010203')",
], ids=["timestamp-text", "timestamp-huge", "added-at-blob", "entry-garbage", "entry-not-a-map"])
def test_an_unreadable_row_in_a_session_db_is_damaged(tmp_path, insert):
    SessionStore(tmp_path, SID).close()
    conn = sqlite3.connect(session_db_path(tmp_path, SID))
    conn.execute(insert)
    conn.commit()
    conn.close()
    with SessionStore(tmp_path, SID) as db, pytest.raises(DamagedStoreError):
        db.load()


def test_garbage_registry_is_damaged(tmp_path):
    (tmp_path / "registry.db").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DamagedStoreError):
        Registry(tmp_path)


def test_quarantine_moves_the_file_and_its_sidecars_with_a_reason(tmp_path):
    path = tmp_path / "registry.db"
    for suffix, data in (("", b"db"), ("-wal", b"wal"), ("-shm", b"shm")):
        Path(f"{path}{suffix}").write_bytes(data)
    moved = quarantine(tmp_path, path, "file is not a database")
    assert moved == tmp_path / "damaged" / "registry.db"
    assert (moved.read_bytes(), Path(f"{moved}-wal").read_bytes(),
            Path(f"{moved}-shm").read_bytes()) == (b"db", b"wal", b"shm")
    assert Path(f"{moved}.reason").read_text().startswith("file is not a database\n")
    assert not any(p.exists() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")))

    path.write_bytes(b"db again")
    again = quarantine(tmp_path, path, "second time")
    assert again == tmp_path / "damaged" / "registry.db.1"
    assert (moved.read_bytes(), again.read_bytes()) == (b"db", b"db again")
    assert Path(f"{again}.reason").read_text().startswith("second time\n")


# --- Registry ----------------------------------------------------------------------------------

def state(session_id: str, **metadata) -> SessionState:
    return SessionState.new(session_id, metadata=metadata, llm_config={"model": "m"})


def test_registry_round_trips_states_oldest_first(tmp_path):
    first, second = state(SID, n=1), state(OTHER, n=2)
    with Registry(tmp_path) as registry:
        registry.put(second.update(created_at=T0 + timedelta(days=1)))  # created later
        registry.put(first.update(created_at=T0))
    with Registry(tmp_path, durability="full") as registry:
        states, damaged = registry.load_all()
    assert damaged == []
    assert [s.session_id for s in states] == [SID, OTHER]
    assert states[0].created_at == T0 and states[0].metadata == {"n": 1}


def test_registry_put_replaces_the_state(tmp_path):
    with Registry(tmp_path) as registry:
        original = state(SID, n=1)
        registry.put(original)
        changed = original.update(metadata={"n": 2})
        registry.put(changed)
        assert registry.load_all() == ([changed], [])


def test_registry_delete_leaves_no_byte_of_the_id_in_any_file(tmp_path):  # docs/api.md §6
    survivors = [f"session_{n:08d}-keep-{'k' * 40}" for n in range(40)]
    registry = Registry(tmp_path)
    for round_ in range(3):  # several puts and updates of the id and of others
        registry.put(state(SID, round=round_, blob="y" * 300 * round_))
        for n, other in enumerate(survivors):
            registry.put(state(other, round=round_, pad="z" * (50 * n)))
    registry.delete(SID)
    assert {s.session_id for s in registry.load_all()[0]} == set(survivors)
    leaks = {path.name for path, data in all_bytes(tmp_path).items()
             if SID.encode() in data or SID[8:].encode() in data}
    assert leaks == set()
    assert {p.name for p in tmp_path.iterdir()} <= {"registry.db", "registry.db-wal",
                                                    "registry.db-shm"}
    registry.close()


def test_registry_delete_scrubs_ids_through_page_rebalancing(tmp_path):
    # Puts, updates and deletes of many sizes split and merge b-tree pages; with secure_delete and
    # a checkpoint alone, copies of deleted ids survive in rebuilt pages' unallocated gaps.
    rnd = random.Random(4)
    ids = [f"session_{n:04d}-{rnd.randbytes(8).hex()}" for n in range(60)]
    alive: list[str] = []
    leaked = []
    with Registry(tmp_path) as registry:
        for _ in range(300):
            if alive and rnd.random() < 0.3:
                gone = alive.pop(rnd.randrange(len(alive)))
                registry.delete(gone)
                if gone.encode() in b"".join(all_bytes(tmp_path).values()):
                    leaked.append(gone)
            else:
                session_id = rnd.choice(ids)
                registry.put(state(session_id, pad=session_id * rnd.randint(1, 40)))
                alive += [] if session_id in alive else [session_id]
        assert leaked == []
        assert sorted(s.session_id for s in registry.load_all()[0]) == sorted(alive)


def test_registry_delete_vacuums_rarely(tmp_path, statements):
    rnd = random.Random(7)
    ids = [f"session_{rnd.randbytes(16).hex()}" for _ in range(200)]
    with Registry(tmp_path) as registry:
        for session_id in ids:
            registry.put(state(session_id, pad="p" * rnd.randint(0, 1200)))
        statements.clear()
        for session_id in rnd.sample(ids, len(ids)):
            registry.delete(session_id)
            assert session_id.encode() not in b"".join(all_bytes(tmp_path).values())
        assert registry.load_all() == ([], [])
    vacuums = statements.count("VACUUM")
    assert vacuums <= len(ids) // 20, f"{vacuums} VACUUMs for {len(ids)} deletes"


def test_registry_delete_vacuums_when_the_file_still_holds_the_id(tmp_path, statements):
    with Registry(tmp_path) as registry:
        registry.put(state(SID))
        registry.put(state(OTHER, note=f"forked from {SID}"))  # a live copy: cannot be scrubbed
        statements.clear()
        registry.delete(SID)
        assert statements.count("VACUUM") == 1
        registry.delete(OTHER)
        assert statements.count("VACUUM") == 1  # nothing of OTHER left: no second one
    assert SID[8:].encode() not in b"".join(all_bytes(tmp_path).values())


def test_a_delete_cut_short_is_scrubbed_when_the_registry_is_next_opened(tmp_path, statements,
                                                                         monkeypatch):
    with Registry(tmp_path) as registry:
        registry.put(state(OTHER))
        registry.put(state(SID))
        with monkeypatch.context() as patch:
            patch.setattr(Registry, "_scrub", lambda self, session_id: None)  # "crashed" here
            registry.delete(SID)
    statements.clear()
    with Registry(tmp_path) as registry:
        assert statements.count("VACUUM") == 1
        assert [s.session_id for s in registry.load_all()[0]] == [OTHER]
    assert SID[8:].encode() not in b"".join(all_bytes(tmp_path).values())
    statements.clear()
    with Registry(tmp_path):
        assert "VACUUM" not in statements  # done once: an ordinary open does not scrub


def test_a_registry_from_before_the_scrub_marker_is_scrubbed_once_and_kept(tmp_path, statements):
    with Registry(tmp_path) as registry:
        registry.put(state(SID))
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.execute("DROP TABLE scrub_pending")
    conn.commit()
    conn.close()
    statements.clear()
    with Registry(tmp_path) as registry:
        assert statements.count("VACUUM") == 1
        assert [s.session_id for s in registry.load_all()[0]] == [SID]
    statements.clear()
    with Registry(tmp_path):
        assert "VACUUM" not in statements


def test_registry_delete_of_an_absent_id_is_fine(tmp_path):
    with Registry(tmp_path) as registry:
        registry.delete(SID)
        assert registry.load_all() == ([], [])


def test_damaged_registry_rows_are_reported_and_moved_out(tmp_path):
    good = state(SID, n=1)
    with Registry(tmp_path) as registry:
        registry.put(good)
    raw = {"session_bad": b"\xc1 not wire", "session_shape": store_module.wire.encode([1, 2]),
           "session_who": store_module.wire.encode(state(OTHER).serialize())}
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.executemany("INSERT INTO sessions VALUES (?, ?)", raw.items())
    conn.commit()
    conn.close()
    with Registry(tmp_path) as registry:
        states, damaged = registry.load_all()
        assert states == [good]
        assert sorted(session_id for session_id, _ in damaged) == sorted(raw)
        assert all(reason for _, reason in damaged)
        assert registry.load_all() == ([good], [])
    for session_id, blob in raw.items():
        assert (tmp_path / "damaged" / f"{session_id}.registry-row").read_bytes() == blob


def test_a_damaged_row_whose_id_is_not_a_file_name_or_state_not_bytes_is_still_moved(tmp_path):
    with Registry(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.executemany("INSERT INTO sessions VALUES (?, ?)", [("../../x", b"junk"), ("t", "text")])
    conn.commit()
    conn.close()
    with Registry(tmp_path) as registry:
        assert sorted(sid for sid, _ in registry.load_all()[1]) == ["../../x", "t"]
    assert (tmp_path / "damaged" / "..%2F..%2Fx.registry-row").read_bytes() == b"junk"
    assert (tmp_path / "damaged" / "t.registry-row").read_bytes() == b"text"


# Costs of open, load, each write, delete and put are measured in the docstring of
# jidocoder/daemon/store.py.
