"""The store's part in keeping data (docs/api.md §7): unknown row keys kept, failed sessions kept and
recovered, orphan and stray files sorted (never deleted), damaged rows moved out with a reason,
the order of a destroy's unlinks, and private modes whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from jidocoder import wire
from jidocoder.daemon import store as store_module
from jidocoder.daemon.store import (ORPHAN_ERROR, Registry, SessionFiles, SessionStore,
                                    classify_session_files, destroy_session_files, quarantine)
from jidocoder.errors import StorageError

from .test_store import OTHER, SID, message, state

THIRD = "session_3c5d2e1f-4a60-4b6f-9d9e-8c1a0b6f3d9e"


def raw_rows(state_dir: Path, table: str = "sessions") -> dict[str, object]:
    conn = sqlite3.connect(state_dir / "registry.db")
    try:
        return dict(conn.execute(f"SELECT session_id, state FROM {table}"))
    finally:
        conn.close()


def write_row(state_dir: Path, session_id: str, data: object, table: str = "sessions") -> None:
    conn = sqlite3.connect(state_dir / "registry.db")
    conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)",
                 (session_id, data if isinstance(data, bytes) else wire.encode(data)))
    conn.commit()
    conn.close()


# --- unknown fields ----------------------------------------------------------------------------

def test_a_row_with_unknown_fields_is_read_and_its_fields_written_back_unchanged(tmp_path):
    Registry(tmp_path).close()
    newer = state(SID, n=1).serialize()
    newer["priority"] = {"level": 3, "since": [1, 2]}
    newer["config"] = {**newer["config"], "sandbox": "strict"}
    write_row(tmp_path, SID, newer)
    with Registry(tmp_path) as registry:  # this version: reads it, changes a known field
        (loaded,), damaged = registry.load_all()
        assert damaged == [] and loaded.session_id == SID
        changed = loaded.update(metadata={"k": "v"})
        registry.put(changed)
    stored = wire.decode(raw_rows(tmp_path)[SID])
    assert stored == {**changed.serialize(), "priority": {"level": 3, "since": [1, 2]},
                      "config": {**changed.serialize()["config"], "sandbox": "strict"}}
    assert not (tmp_path / "damaged").exists() or not any((tmp_path / "damaged").iterdir())


def test_unknown_fields_follow_a_session_into_failed_and_back(tmp_path):
    Registry(tmp_path).close()
    write_row(tmp_path, SID, {**state(SID).serialize(), "future": 1})
    with Registry(tmp_path) as registry:
        (loaded,), _ = registry.load_all()
        registry.mark_failed(loaded.update(error="crashed 5 times"))
        assert wire.decode(raw_rows(tmp_path, "failed")[SID])["future"] == 1
    with Registry(tmp_path) as registry:
        (failed,) = registry.load_failed()
        assert registry.recover_failed(failed.update(error=None))
    assert wire.decode(raw_rows(tmp_path)[SID])["future"] == 1


# --- failed sessions ---------------------------------------------------------------------------

def test_mark_failed_moves_the_row_and_keeps_the_session_file(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
    live, other = state(SID, n=1), state(OTHER, n=2)
    with Registry(tmp_path) as registry:
        registry.put(live)
        registry.put(other)
        given_up = live.update(error="exit code 1, 5 times")
        registry.mark_failed(given_up)
        assert registry.load_all() == ([other], [])
        assert registry.load_failed() == [given_up]
    with Registry(tmp_path) as registry:  # kept across opens
        assert registry.load_failed() == [given_up]
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1)]


def test_recover_failed_makes_the_session_live_in_one_transaction(tmp_path):
    with Registry(tmp_path) as registry:
        registry.mark_failed(state(SID, n=1).update(error="crashed"))
        revived = state(SID, n=1).update(metadata={"back": True})
        assert registry.recover_failed(revived)
        assert registry.load_failed() == []
        assert registry.load_all() == ([revived], [])
        assert not registry.recover_failed(state(OTHER))  # not failed: nothing written
        assert registry.load_all() == ([revived], [])


def test_delete_removes_a_failed_row_too(tmp_path):
    with Registry(tmp_path) as registry:
        registry.mark_failed(state(SID).update(error="crashed"))
        registry.delete(SID)
        assert registry.load_failed() == []
    assert SID.encode() not in (tmp_path / "registry.db").read_bytes()


def test_a_version_1_registry_without_the_failed_table_gains_it_and_keeps_its_rows(tmp_path):
    old = state(SID, n=1)
    with Registry(tmp_path) as registry:
        registry.put(old)
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.execute("DROP TABLE failed")
    conn.commit()
    conn.close()
    with Registry(tmp_path) as registry:
        assert registry.load_all() == ([old], [])
        registry.mark_failed(old.update(error="x"))
        assert [s.session_id for s in registry.load_failed()] == [SID]
    assert wire.decode(raw_rows(tmp_path, "failed")[SID])["error"] == "x"


def test_adopt_orphan_offers_a_file_without_a_row_as_failed(tmp_path):
    other = state(OTHER)
    with Registry(tmp_path) as registry:
        registry.put(other)
        adopted = state(SID).update(error=ORPHAN_ERROR)
        assert registry.adopt_orphan(adopted) is True
        assert registry.load_failed() == [adopted]
        assert registry.adopt_orphan(adopted) is False and registry.adopt_orphan(other) is False
        assert registry.load_all()[0] == [other]


# --- files at start ------------------------------------------------------------------------------

def test_classify_sorts_erasable_orphan_and_stray_files_and_deletes_nothing(tmp_path):
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for name in (f"{SID}.db", f"{SID}.db-wal", f"{OTHER}.db", f"{THIRD}.db-wal", "lost.db",
                 "backup copy.db", "x.txt", "live.db-journal.bak"):
        (sessions / name).write_bytes(b"bytes of " + name.encode())
    (sessions / "adir.db").mkdir()
    (sessions / "link.db").symlink_to(sessions / "lost.db")
    with Registry(tmp_path) as registry:
        registry.put(state(SID).transition("active").transition("terminating"))
        registry.put(state(OTHER).transition("active"))
        before = {p.name: p.read_bytes() for p in sessions.iterdir() if p.is_file()}
        found = classify_session_files(tmp_path, registry)
    assert found == SessionFiles(
        erase=(SID,), orphans=("lost",), lone_logs=(THIRD,),
        stray=tuple(sorted(sessions / n for n in ("adir.db", "backup copy.db",
                                                   "link.db", "live.db-journal.bak", "x.txt"))))
    assert {p.name: p.read_bytes() for p in sessions.iterdir() if p.is_file()} == before


def test_a_sleepers_database_is_passed_over_but_its_other_names_are_looked_at(tmp_path):
    """A start names its 100,000 hibernated ids (``asleep``): their ``<id>.db`` is not looked
    at; a sidecar still counts for its id, and a file named just ``<id>`` is still stray."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for name in (f"{SID}.db", f"{SID}.db-wal", SID, f"{OTHER}.db"):
        (sessions / name).write_bytes(b"bytes of " + name.encode())
    with Registry(tmp_path) as registry:
        found = classify_session_files(tmp_path, registry, statuses={}, asleep={SID})
    assert found == SessionFiles(erase=(), orphans=(OTHER,), stray=(sessions / SID,))


def test_classify_with_no_sessions_dir_finds_nothing(tmp_path):
    with Registry(tmp_path) as registry:
        assert classify_session_files(tmp_path, registry) == SessionFiles((), (), ())


def test_a_failed_session_file_is_neither_orphan_nor_erasable(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
    with Registry(tmp_path) as registry:
        registry.mark_failed(state(SID).update(error="x"))
        assert classify_session_files(tmp_path, registry) == SessionFiles((), (), ())


def test_destroy_unlinks_the_sidecars_before_the_database_then_syncs(tmp_path, monkeypatch):
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for suffix in ("", "-wal", "-shm", "-journal"):
        (sessions / f"{SID}.db{suffix}").write_bytes(b"x")
    events = []
    real_unlink, real_fsync = Path.unlink, os.fsync
    monkeypatch.setattr(Path, "unlink", lambda p, **kw: (events.append(p.name),
                                                         real_unlink(p, **kw))[1])
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (events.append("fsync"),
                                                              real_fsync(fd))[1])
    destroy_session_files(tmp_path, SID)
    assert events == [f"{SID}.db-wal", f"{SID}.db-shm", f"{SID}.db-journal", f"{SID}.db", "fsync"]
    assert list(sessions.iterdir()) == []


# --- damaged rows --------------------------------------------------------------------------------

def test_a_damaged_row_is_moved_out_with_a_reason_and_its_session_file_stays(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
    Registry(tmp_path).close()
    wrong_type = {**state(SID).serialize(), "conversation_count": "many"}
    write_row(tmp_path, SID, wrong_type)
    with Registry(tmp_path) as registry:
        assert [sid for sid, _ in registry.load_all()[1]] == [SID]
        assert classify_session_files(tmp_path, registry).orphans == (SID,)
    moved = tmp_path / "damaged" / f"{SID}.registry-row"
    assert moved.read_bytes() == wire.encode(wrong_type)
    assert "conversation_count" in (tmp_path / "damaged" / f"{SID}.registry-row.reason").read_text()
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1)]


# --- modes ---------------------------------------------------------------------------------------

@pytest.fixture
def loose_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_every_file_and_directory_the_store_makes_is_private(tmp_path, loose_umask):
    state_dir = tmp_path / "state"
    with (Registry(state_dir, durability="full") as registry, SessionStore(state_dir, SID) as db,
          SessionStore(state_dir, OTHER, lazy=True) as lazy):
        registry.put(state(SID))
        registry.delete(SID)
        registry.put(state(OTHER))
        db.append_message(message(1), keep=10)
        lazy.append_message(message(2), keep=10)
        modes = {p.relative_to(state_dir): stat.S_IMODE(p.stat().st_mode)
                 for p in state_dir.rglob("*")}
    (state_dir / "stray.db").write_bytes(b"junk")
    quarantine(state_dir, state_dir / "stray.db", "a test")
    write_row(state_dir, "bad", b"\xc1")
    with Registry(state_dir) as registry:
        registry.load_all()
    modes |= {p.relative_to(state_dir): stat.S_IMODE(p.stat().st_mode)
              for p in [state_dir / "damaged", *(state_dir / "damaged").rglob("*")]}
    modes.pop(Path("stray.db"), None)  # written by the test, not the store
    assert {p: m for p, m in modes.items()
            if m != (0o700 if (state_dir / p).is_dir() else 0o600)} == {}
    assert {"damaged", "sessions", f"sessions/{OTHER}.db-wal", "registry.db-wal", "registry.db-shm",
            "damaged/bad.registry-row.reason"} <= {str(p) for p in modes}


def test_a_failed_create_leaves_no_file(tmp_path, monkeypatch):
    real_switch = store_module._switch_to_wal

    def full(path, conn):
        real_switch(path, conn)
        raise StorageError("database or disk is full (injected)")

    monkeypatch.setattr(store_module, "_switch_to_wal", full)
    with pytest.raises(StorageError):
        SessionStore(tmp_path, SID)
    assert list((tmp_path / "sessions").iterdir()) == []
