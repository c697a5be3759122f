"""One ``SessionProcess`` object in the test process (no fork): a real spec, a real store in
tmp_path, a real socketpair and a real ``SessionTable``."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from collections.abc import Iterator

import pytest

from jidocoder.daemon.ops import DEBUG_HANDLERS
from jidocoder.daemon.session import SessionProcess, SessionSpec
from jidocoder.daemon.store import SessionStore
from jidocoder.daemon.table import SessionTable
from jidocoder.models import SessionConfig

SESSION_ID = "session_unit"


def spec_in(state_dir: Path, debug_ops: bool = False) -> SessionSpec:
    return SessionSpec(session_id=SESSION_ID, config=SessionConfig(), slot=0, state_dir=state_dir,
                       durability="normal", cache_max_bytes=1 << 20, hang_timeout=5.0,
                       max_frame=1 << 20, daemon_pid=0, log_level=logging.INFO, debug_ops=debug_ops)


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    made: list[tuple[SessionProcess, socket.socket, socket.socket, SessionTable]] = []

    def make(debug_ops: bool = False) -> SessionProcess:
        ours, theirs = socket.socketpair()
        table = SessionTable(1)
        assert table.allocate() == 0
        process = SessionProcess(spec_in(tmp_path, debug_ops), theirs, table)
        made.append((process, ours, theirs, table))
        return process

    yield make
    for process, ours, theirs, table in made:
        if process.store is not None:
            process.store.close()
        ours.close()
        theirs.close()
        table.close()


def stored_contents(state_dir: Path) -> list[str]:
    with SessionStore(state_dir, SESSION_ID, "normal", lazy=True) as store:
        messages, _, _ = store.load()
    return [m.content for m in messages]


def send(content: str, request_id: int = 1, **frame) -> dict:
    return {"id": request_id, "op": "send_message",
            "args": {"session_id": SESSION_ID, "role": "user", "content": content}, **frame}


def test_send_message_returns_its_events_and_persists(make, tmp_path: Path) -> None:
    process = make()
    reply = process.handle(send("hello"))
    assert reply["id"] == 1 and reply["result"] is None and "error" not in reply
    assert [kind for kind, _ in reply["events"]] == ["conversation_added"]
    assert process.context.message_count == 1
    assert process.table.read(0).message_count == 1
    process.store.close()
    assert stored_contents(tmp_path) == ["hello"]


def test_a_frame_past_its_deadline_is_a_timeout_and_changes_nothing(make, tmp_path: Path) -> None:
    process = make()
    reply = process.handle(send("late", deadline=time.monotonic() - 1))
    assert reply["error"]["code"] == "timeout"
    assert process.context.message_count == 0
    process.store.close()
    assert stored_contents(tmp_path) == []


def test_an_unknown_op_is_unknown_op(make) -> None:
    process = make()
    reply = process.handle({"id": 2, "op": "no_such_op", "args": {}})
    assert reply == {"id": 2, "error": reply["error"]}
    assert reply["error"]["code"] == "unknown_op"


def test_bad_arguments_are_invalid_argument(make) -> None:
    reply = make().handle({"id": 3, "op": "send_message", "args": {"text": "x"}})
    assert reply["error"]["code"] == "invalid_argument"


@pytest.mark.parametrize("op", sorted(DEBUG_HANDLERS))
def test_debug_ops_are_refused_unless_enabled(make, op: str) -> None:
    assert make().handle({"id": 4, "op": op, "args": {}})["error"]["code"] == "unknown_op"
    assert op in make(debug_ops=True).handlers
