"""What the daemon keeps of a hibernated session (docs/api.md §13): the registry's hibernation
mark, the start's cheap read of a marked row (``ondisk.peek``), and a record that holds the
state's bytes, not its model."""

from __future__ import annotations

from jidocoder import wire
from jidocoder.daemon import ondisk
from jidocoder.daemon.records import SessionRecord, session_info
from jidocoder.daemon.store import HIBERNATED_KEY, Registry
from jidocoder.errors import DamagedStoreError
from jidocoder.models import SessionState
from jidocoder.states import SessionStatus

import pytest


def active(session_id: str = "session_a", **config) -> SessionState:
    state = SessionState.new(session_id, config=config or None, metadata={"p": 1})
    return state.transition(SessionStatus.ACTIVE)


def test_a_hibernated_put_is_marked_and_the_mark_is_never_kept_as_a_newer_versions_key(tmp_path):
    with Registry(tmp_path) as registry:
        state = active()
        registry.put(state, hibernated=True)
        [(session_id, blob)] = registry.load_rows()
        assert session_id == state.session_id and wire.decode(blob)[HIBERNATED_KEY] is True
        assert registry.parse(session_id, blob) == state
        registry.put(state)  # revived: the mark goes
        [(_, blob)] = registry.load_rows()
        assert HIBERNATED_KEY not in wire.decode(blob)


def test_a_marked_row_is_peeked_without_validation_and_anything_else_is_left_to_parse(tmp_path):
    state = active(timeout_minutes=2.5).model_copy(update={"conversation_count": 7})
    with Registry(tmp_path) as registry:
        registry.put(state, hibernated=True)
        [(session_id, blob)] = registry.load_rows()
    sleeper = ondisk.peek(session_id, blob)
    assert (sleeper.status, sleeper.created_at, sleeper.message_count, sleeper.timeout_minutes) == (
        SessionStatus.ACTIVE, state.created_at, 7, 2.5)
    marked = {**state.serialize(), HIBERNATED_KEY: True}
    assert ondisk.peek(session_id, wire.encode(state.serialize())) is None  # not marked: was live
    assert ondisk.peek("session_other", blob) is None  # the row of another id
    assert ondisk.peek(session_id, wire.encode({**marked, "status": "terminating"})) is None
    assert ondisk.peek(session_id, wire.encode({**marked, "created_at": "yesterday"})) is None
    assert ondisk.peek(session_id, wire.encode({**marked, "config": []})) is None
    assert ondisk.peek(session_id, b"\xc1 not msgpack") is None


def test_a_damaged_row_found_when_parsed_is_moved_out(tmp_path):
    with Registry(tmp_path) as registry:
        registry.put(active(), hibernated=True)
        bad = wire.encode({**active().serialize(), HIBERNATED_KEY: True, "metadata": 5})
        with pytest.raises(DamagedStoreError):
            registry.parse("session_a", bad)
        assert registry.load_rows() == []
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
