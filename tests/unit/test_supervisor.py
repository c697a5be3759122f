"""The supervisor without processes: ``change_status`` as the one writer of a session's status,
with a real Loop, EventBus, SessionTable and Registry in tmp_path. No spare is started."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest

from jidocoder.config import Settings
from jidocoder.daemon.events import GLOBAL_TOPIC, EventBus
from jidocoder.daemon.loop import Loop
from jidocoder.daemon.store import Registry
from jidocoder.daemon.supervisor import Supervisor
from jidocoder.errors import InvalidTransitionError, StorageError
from jidocoder.models import SessionState
from jidocoder.states import SessionStatus

DAEMON = Path(__file__).resolve().parents[2] / "jidocoder" / "daemon"


class Listener:
    """A subscriber that keeps what it is sent: a test double of a client connection."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send_event(self, event: dict[str, Any], frame: bytes | None = None) -> None:
        self.events.append(event)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    settings = Settings.load({"state_dir": str(tmp_path), "socket": str(tmp_path / "d.sock"),
                              "spare_processes": 0}, env={})
    registry = Registry(tmp_path)
    sup = Supervisor(settings, Loop(), EventBus(), registry)
    yield sup
    registry.close()
    sup.table.close()
    sup.loop.close()


@pytest.fixture
def listener(supervisor: Supervisor) -> Listener:
    listener = Listener()
    supervisor.bus.subscribe(GLOBAL_TOPIC, listener)
    return listener


def active_record(supervisor: Supervisor, session_id: str = "s1"):
    record = supervisor.admit(SessionState.new(session_id))
    supervisor.change_status(record, SessionStatus.ACTIVE)
    return record


def stored(supervisor: Supervisor) -> dict[str, SessionState]:
    states, damaged = supervisor.registry.load_all()
    assert damaged == []
    return {state.session_id: state for state in states}


def break_registry(registry: Registry) -> None:
    """Make every write of the registry fail as a read-only state dir does: SQLite's own
    ``query_only`` makes its next write fail with SQLITE_READONLY, which the store translates
    into StorageError. (A read-only directory is no fault to root; a closed registry raises
    RuntimeError, a bug, not StorageError.)"""
    registry._conn.execute("PRAGMA query_only = ON")


def test_change_status_emits_one_event_persists_and_writes_the_slot(supervisor, listener) -> None:
    record = active_record(supervisor)
    listener.events.clear()
    before = record.state
    supervisor.change_status(record, SessionStatus.IDLE)
    assert record.state.status is SessionStatus.IDLE
    assert record.state.updated_at > before.updated_at
    assert [e["type"] for e in listener.events] == ["session_status"]
    assert listener.events[0]["payload"] == {
        "session_id": "s1", "status": "idle", "previous_status": "active",
        "updated_at": record.state.updated_at}
    assert stored(supervisor)["s1"] == record.state
    assert supervisor.table.read(record.slot).status_code == SessionStatus.IDLE.code


def test_an_illegal_edge_raises_and_changes_nothing(supervisor, listener) -> None:
    record = active_record(supervisor)
    listener.events.clear()
    before, slot_before = record.state, supervisor.table.read(record.slot)
    with pytest.raises(InvalidTransitionError):
        supervisor.change_status(record, SessionStatus.INITIALIZING)
    assert record.state is before
    assert supervisor.table.read(record.slot) == slot_before
    assert stored(supervisor)["s1"] == before
    assert listener.events == []


def test_a_registry_that_cannot_write_is_a_storage_error_and_changes_nothing(supervisor, listener) -> None:
    record = active_record(supervisor)
    listener.events.clear()
    before, slot_before = record.state, supervisor.table.read(record.slot)
    break_registry(supervisor.registry)
    with pytest.raises(StorageError):
        supervisor.change_status(record, SessionStatus.IDLE)
    assert record.state is before
    assert supervisor.table.read(record.slot) == slot_before
    assert listener.events == []
    supervisor.registry._conn.execute("PRAGMA query_only = OFF")
    assert stored(supervisor)["s1"] == before


def test_an_unasked_change_the_registry_refuses_leaves_the_session_as_it_was(
        supervisor, listener, caplog: pytest.LogCaptureFixture) -> None:
    record = active_record(supervisor)
    listener.events.clear()
    before = record.state
    break_registry(supervisor.registry)
    with caplog.at_level(logging.ERROR, logger="jidocoder.daemon"):
        supervisor.change_unasked(record, SessionStatus.IDLE)
        supervisor.change_unasked(record, SessionStatus.IDLE)
    assert record.state is before
    assert listener.events == []
    assert len([r for r in caplog.records if "stays active" in r.getMessage()]) == 1  # said once
    supervisor.registry._conn.execute("PRAGMA query_only = OFF")
    supervisor.change_unasked(record, SessionStatus.IDLE)  # the next check tries again
    assert record.state.status is SessionStatus.IDLE
    assert stored(supervisor)["s1"].status is SessionStatus.IDLE


def test_a_session_without_persistence_changes_without_a_registry_row(supervisor, listener) -> None:
    record = supervisor.admit(SessionState.new("s2", config={"persistence_enabled": False}))
    supervisor.change_status(record, SessionStatus.ACTIVE)
    assert record.state.status is SessionStatus.ACTIVE
    assert "s2" not in stored(supervisor)
    assert [e["payload"]["status"] for e in listener.events] == ["active"]


def status_writes(tree: ast.AST) -> list[int]:
    """Lines that assign ``<x>.state = ...`` or call ``<x>.transition(...)``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [t.lineno for t in targets if isinstance(t, ast.Attribute) and t.attr == "state"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "transition"):
            lines.append(node.lineno)
    return lines


def test_only_the_supervisor_writes_a_session_records_status() -> None:
    # records.py and store.py build states; the session process (session.py, ops.py) keeps its
    # own state object, which is not a record of the daemon's
    allowed = {"supervisor.py", "records.py", "store.py"}
    found = {path.name: status_writes(ast.parse(path.read_text()))
             for path in sorted(DAEMON.glob("*.py")) if path.name not in allowed}
    assert {name: lines for name, lines in found.items() if lines} == {}


def record_state_writers(tree: ast.AST) -> set[str]:
    """Functions of the module that assign ``<x>.state = ...``."""
    writers = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and status_writes_of_assignments(func):
            writers.add(func.name)
    return writers


def status_writes_of_assignments(func: ast.FunctionDef) -> bool:
    return any(isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Attribute) and t.attr == "state" for t in node.targets)
        for node in ast.walk(func))


def test_in_the_supervisor_only_change_status_assigns_a_records_state() -> None:
    # A create that fails drops its record (never announced, slot released): no status change.
    tree = ast.parse((DAEMON / "supervisor.py").read_text())
    assert record_state_writers(tree) == {"change_status"}
