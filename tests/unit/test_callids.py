"""At most once (jidocoder/daemon/callids.py): a call id counts as applied exactly when the
transaction that holds its change has committed, and survives the process (a new CallLog over
the same store), bounded to the last KEEP."""

from __future__ import annotations

import sqlite3

import pytest

from jidocoder.daemon.callids import KEEP, NOT_FOUND, CallLog
from jidocoder.daemon.store import SessionStore
from jidocoder.models import Message, utc_now

SID = "session_0b6f3d9e-8c1a-4f2e-9a77-3c5d2e1f4a60"


def message(content: str | None) -> Message:
    return Message.model_construct(role="user", content=content, timestamp=utc_now())


def apply(db: SessionStore, calls: CallLog, call_id: str, content: str | None) -> None:
    """What the session does for a stored call: change and record in one transaction."""
    db.begin_group()
    try:
        db.append_message(message(content), keep=100)
        calls.record(call_id, None)
    except sqlite3.Error:
        pass
    try:
        db.end_group()
    except Exception:
        calls.rolled_back()
        raise
    calls.committed()


def test_a_committed_call_is_answered_again_even_by_the_next_process(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        calls = CallLog(db)
        assert calls.earlier_result("a" * 32) is NOT_FOUND
        apply(db, calls, "a" * 32, "one")
        assert calls.earlier_result("a" * 32) is None  # the recorded result, not NOT_FOUND
    with SessionStore(tmp_path, SID) as db:
        assert CallLog(db).earlier_result("a" * 32) is None
        assert [m.content for m in db.load()[0]] == ["one"]


def test_a_call_whose_transaction_rolled_back_is_not_remembered(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        calls = CallLog(db)
        with pytest.raises(RuntimeError):
            apply(db, calls, "b" * 32, None)  # content NOT NULL: the change fails
        assert calls.earlier_result("b" * 32) is NOT_FOUND
    with SessionStore(tmp_path, SID) as db:
        assert CallLog(db).earlier_result("b" * 32) is NOT_FOUND
        assert db.load()[0] == []


def test_only_the_last_keep_calls_are_kept(tmp_path):
    with SessionStore(tmp_path, SID) as db:
        calls = CallLog(db)
        for n in range(KEEP + 40):
            apply(db, calls, f"{n:032x}", f"m{n}")
        assert calls.earlier_result(f"{0:032x}") is NOT_FOUND
        assert calls.earlier_result(f"{KEEP + 39:032x}") is None
    with SessionStore(tmp_path, SID) as db:
        held = CallLog(db)
        assert held.earlier_result(f"{KEEP + 39:032x}") is None
        assert held.earlier_result(f"{0:032x}") is NOT_FOUND


def test_without_a_store_the_calls_are_held_in_memory():
    calls = CallLog(None)
    calls.record("c" * 32, {"x": 1})
    assert calls.earlier_result("c" * 32) is NOT_FOUND  # not before its commit
    calls.committed()
    assert calls.earlier_result("c" * 32) == {"x": 1}


def test_a_new_stores_calls_table_has_no_index_and_an_old_ones_unique_index_still_works(tmp_path):
    """Ids are looked up in memory, so a new store writes no index page per stored call; a store
    made with the earlier ``UNIQUE(call_id)`` keeps it and records and answers as before."""
    with SessionStore(tmp_path / "new", SID) as db:
        calls = CallLog(db)
        apply(db, calls, "a" * 32, "one")
        indexes = db._connection().execute(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'calls'").fetchall()
    assert indexes == []
    old = tmp_path / "old"
    with SessionStore(old, SID) as db:  # made now, then given the calls table of before
        conn = db._connection()
        conn.execute("DROP TABLE calls")
        conn.execute("CREATE TABLE calls (seq INTEGER PRIMARY KEY, call_id TEXT NOT NULL UNIQUE, "
                     "reply BLOB NOT NULL)")
        calls = CallLog(db)
        apply(db, calls, "b" * 32, "two")
    with SessionStore(old, SID) as db:
        calls = CallLog(db)
        assert calls.earlier_result("b" * 32) is None  # recorded: answered, not NOT_FOUND
        assert calls.earlier_result("c" * 32) is NOT_FOUND
        messages, _, _ = db.load()
    assert [m.content for m in messages] == ["two"]
