"""What a start finds in the state dir (docs/api.md §6, §7): a session store from a newer jidocoder is
kept, unchanged, as a failed session; files written there by hand stay, byte for byte; a registry
row with a field this version does not know is restored and keeps that field.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jidocoder import SessionNotFoundError, wire
from tests.support import DaemonProcess, contents


def checkpointed(path: Path) -> None:
    """Fold the WAL into the file, so the file alone holds the store."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` with its bytes (None for a directory)."""
    return {str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(directory.rglob("*"))}


def stored(daemon_factory, messages: list[str]) -> tuple[DaemonProcess, str]:
    daemon = daemon_factory()
    with daemon.client() as client:
        session = client.create_session()
        for text in messages:
            client.send_message(session, "user", text)
    daemon.stop()
    return daemon, session


# -- 5. a newer session store -------------------------------------------------------------------
def test_a_session_store_from_a_newer_jidocoder_is_kept_unchanged_as_failed(daemon_factory):
    daemon, session = stored(daemon_factory, ["n1", "n2"])
    db = daemon.state_dir / "sessions" / f"{session}.db"
    checkpointed(db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    checkpointed(db)
    before = tree(daemon.state_dir / "sessions")
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:  # the stop hibernated it: its store is opened on revival
        with pytest.raises(SessionNotFoundError):
            client.get_session_pid(session)
        assert [i.session_id for i in client.list_sessions()] == []
        [failed] = client.list_failed_sessions()
        assert failed.session_id == session
        assert "newer" in failed.error
    daemon.stop()
    assert tree(daemon.state_dir / "sessions") == before


# -- 10. stray files and unknown fields ---------------------------------------------------------
def test_stray_files_stay_and_an_unknown_registry_field_is_kept(daemon_factory):
    daemon, session = stored(daemon_factory, ["s1", "s2"])
    sessions = daemon.state_dir / "sessions"
    (sessions / "backup copy.db").write_bytes(b"not a database \x00\x01")
    (sessions / "notes.txt").write_text("kept by hand\n")
    (sessions / "a directory").mkdir()
    (sessions / "a directory" / "inside.bin").write_bytes(b"\xff" * 10)
    lone = "session_12345678-1234-4234-8234-123456789abc"
    (sessions / f"{lone}.db-wal").write_bytes(b"\x00" * 32)
    strays = {k: v for k, v in tree(sessions).items() if session not in k}
    registry = daemon.state_dir / "registry.db"
    checkpointed(registry)
    with sqlite3.connect(registry) as conn:
        [(blob,)] = conn.execute("SELECT state FROM sessions WHERE session_id = ?", (session,)).fetchall()
        row = wire.decode(blob)
        row["future_field"] = {"x": 1}
        conn.execute("UPDATE sessions SET state = ? WHERE session_id = ?", (wire.encode(row), session))
    conn.close()
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:
        assert contents(client, session) == ["s1", "s2"]
        client.send_message(session, "user", "s3")
        assert contents(client, session) == ["s1", "s2", "s3"]
    daemon.stop()
    assert {k: v for k, v in tree(sessions).items() if session not in k} == strays
    with sqlite3.connect(registry) as conn:
        [(blob,)] = conn.execute("SELECT state FROM sessions WHERE session_id = ?", (session,)).fetchall()
    conn.close()
    assert wire.decode(blob)["future_field"] == {"x": 1}
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:
        assert contents(client, session) == ["s1", "s2", "s3"]
