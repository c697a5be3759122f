"""What the daemon keeps of a hibernated session (docs/api.md §13): the registry's ``asleep``
columns a start reads instead of the states (``ondisk.sleepers``), and a record that holds the
state's bytes, not its model."""

from __future__ import annotations

from jidocoder import wire
from jidocoder.daemon import ondisk
from jidocoder.daemon.records import SessionRecord, creation_order, session_info
from jidocoder.daemon.store import Registry
from jidocoder.errors import DamagedStoreError
from jidocoder.models import SessionState
from jidocoder.states import SessionStatus

import pytest


def active(session_id: str = "session_a", **config) -> SessionState:
    state = SessionState.new(session_id, config=config or None, metadata={"p": 1})
    return state.transition(SessionStatus.ACTIVE)


def test_a_hibernated_put_is_listed_asleep_in_columns_and_a_live_put_or_delete_takes_it_out(tmp_path):
    state = active(timeout_minutes=2.5).model_copy(update={"conversation_count": 7})
    with Registry(tmp_path) as registry:
        registry.put(state, hibernated=True)
        assert registry.load_rows() == []  # a start reads no state of a sleeper
        [(micros, session_id, status, count, timeout)] = registry.load_asleep()
        assert (session_id, status, count, timeout) == (state.session_id, "active", 7, 2.5)
        found, odd = ondisk.sleepers(registry)
        assert creation_order(found[state.session_id]) == (state.created_at, state.session_id) and odd == []
        assert registry.parse(session_id, registry.row(session_id)) == state
        registry.put(state)  # revived: no longer asleep
        assert registry.load_asleep() == [] and [i for i, _ in registry.load_rows()] == [session_id]
        registry.put(state, hibernated=True)
        registry.delete(session_id)
        assert registry.load_asleep() == [] and registry.load_rows() == []


def test_sleepers_come_oldest_first_and_an_odd_status_is_read_in_full(tmp_path):
    older, newer = active("session_b"), active("session_a")  # ids in the other order
    with Registry(tmp_path) as registry:
        registry.put(newer, hibernated=True)
        registry.put(older, hibernated=True)
        found, odd = ondisk.sleepers(registry)
        assert list(found) == ["session_b", "session_a"] and odd == []
        with registry._write() as conn:
            conn.execute("UPDATE asleep SET status = 'terminating' WHERE session_id = 'session_a'")
        found, odd = ondisk.sleepers(registry)
        assert list(found) == ["session_b"] and odd == ["session_a"]


def test_a_damaged_row_found_when_parsed_is_moved_out(tmp_path):
    with Registry(tmp_path) as registry:
        registry.put(active(), hibernated=True)
        bad = wire.encode({**active().serialize(), "metadata": 5})
        with pytest.raises(DamagedStoreError):
            registry.parse("session_a", bad)
        assert registry.row("session_a") is None
    assert [p.name for p in (tmp_path / "damaged").iterdir() if p.suffix != ".reason"] == [
        "session_a.registry-row"]


def test_a_sleeping_record_holds_bytes_and_gives_back_the_same_state():
    state = active()
    record = SessionRecord.of(state, slot=0)
    record.fall_asleep()
    assert record.held is None and isinstance(record.row, bytes) and record.hibernated
    assert record.status is SessionStatus.ACTIVE and record.state == state
    info = session_info(record, 3)
    assert (info["hibernated"], info["pid"], info["conversation_count"]) == (True, None, 3)
    assert record.dumped is None  # a sleeper's dump is kept by nobody
    record.state = state.transition(SessionStatus.IDLE)  # still asleep: kept as bytes
    assert record.held is None and record.status is SessionStatus.IDLE
    record.wake()
    assert record.held == record.state and record.held.status is SessionStatus.IDLE
    assert not record.hibernated and record.row is None


def test_a_record_has_no_per_instance_dict_and_no_deque_before_a_crash():
    record = SessionRecord.of(active(), slot=0)
    assert not hasattr(record, "__dict__") and record.crashes is None
