"""SessionState and SessionInfo: construction, the transition table, validation codes, and the
serialize/deserialize round trip (ported from the original design's cases, plus properties)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone, UTC
from decimal import Decimal
from fractions import Fraction
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jidocoder import models
from jidocoder.errors import InvalidArgumentError, InvalidTransitionError
from jidocoder.models import SessionConfig, SessionInfo, SessionState
from jidocoder.states import TRANSITIONS, SessionStatus

UTC = UTC
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
PLUS_0530 = timezone(timedelta(hours=5, minutes=30))
MINUS_0800 = timezone(timedelta(hours=-8))

STATUSES = list(SessionStatus)
EDGES = [(frm, to) for frm in STATUSES for to in sorted(TRANSITIONS[frm])]
NON_EDGES = [(frm, to) for frm in STATUSES for to in STATUSES if to not in TRANSITIONS[frm]]
KNOWN_CODES = {
    "invalid_session_id", "empty_field", "invalid_status", "invalid_timestamps",
    "invalid_counts", "missing_field", "missing_datetime", "invalid_datetime_format",
    "invalid_config", "unknown_field", "invalid_metadata", "invalid_llm_config",
    "invalid_error", "invalid_data",
}
# No example database: the tests must not write a .hypothesis directory into the tree.
PROPERTY = settings(database=None, max_examples=100, deadline=None)


def state(status: SessionStatus | str = SessionStatus.ACTIVE, **fields) -> SessionState:
    base = {"session_id": "s1", "status": status, "created_at": T0, "updated_at": T0}
    return SessionState(**{**base, **fields})


@contextmanager
def raises_code(code: str, field: str | None = None) -> Iterator[pytest.ExceptionInfo]:
    """Expect an InvalidArgumentError with exactly this code and field."""
    with pytest.raises(InvalidArgumentError) as info:
        yield info
    assert (info.value.code, info.value.field) == (code, field)


class _Hostile:
    """A value that fails when looked at: repr, str, comparison and truth all raise."""

    def _boom(self, *args):
        raise RuntimeError("hostile value")

    __repr__ = __str__ = __eq__ = __bool__ = __len__ = _boom
    __hash__ = object.__hash__


# --- struct init ---------------------------------------------------------------------------------

def test_new_state_is_initializing():
    assert SessionState.new("s1").status is SessionStatus.INITIALIZING


def test_new_state_has_equal_aware_utc_timestamps_of_now():
    before = models.utc_now()
    fresh = SessionState.new("s1")
    after = models.utc_now()
    assert fresh.created_at == fresh.updated_at
    assert fresh.created_at.tzinfo is UTC
    assert before <= fresh.created_at <= after


def test_new_state_has_defaults():
    fresh = SessionState.new("s1")
    assert (fresh.config, fresh.llm_config, fresh.metadata, fresh.active_tasks,
            fresh.conversation_count, fresh.error) == (SessionConfig(), {}, {}, [], 0, None)


def test_new_keeps_llm_config_and_metadata():
    fresh = SessionState.new("s1", llm_config={"model": "m"}, metadata={"project": "p"})
    assert (fresh.llm_config, fresh.metadata) == ({"model": "m"}, {"project": "p"})


def test_session_id_may_be_any_non_empty_string():
    assert SessionState.new("session-x").session_id == "session-x"
    assert SessionState.new(" ").session_id == " "


def test_direct_construction_defaults_all_but_the_required_fields():
    built = SessionState(session_id="s1", status="idle", created_at=T0, updated_at=T0)
    assert built == SessionState.new("s1").model_copy(
        update={"status": SessionStatus.IDLE, "created_at": T0, "updated_at": T0})


def test_direct_construction_moves_timestamps_to_utc():
    built = state(created_at=T0.astimezone(PLUS_0530), updated_at=T0.astimezone(MINUS_0800))
    assert (built.created_at, built.updated_at) == (T0, T0)
    assert built.created_at.tzinfo is UTC and built.updated_at.tzinfo is UTC


# --- valid transitions ---------------------------------------------------------------------------

@pytest.mark.parametrize(("frm", "to"), EDGES)
def test_transition_follows_every_edge_of_the_table(frm, to):
    assert state(frm).transition(to).status is to
    assert state(frm).transition(to.value).status is to


@pytest.mark.parametrize(("frm", "to"), EDGES)
def test_valid_transition_is_true_for_every_edge(frm, to):
    assert SessionState.valid_transition(frm, to) is True
    assert SessionState.valid_transition(frm.value, to.value) is True


def test_transition_returns_a_new_state_and_leaves_the_original():
    original = state(SessionStatus.INITIALIZING)
    moved = original.transition("active")
    assert (original.status, moved.status) == (SessionStatus.INITIALIZING, SessionStatus.ACTIVE)
    assert moved is not original


def test_transition_moves_updated_at_forward_and_keeps_everything_else():
    original = state(SessionStatus.ACTIVE, metadata={"a": 1}, conversation_count=3)
    moved = original.transition(SessionStatus.IDLE)
    assert moved.updated_at > original.updated_at
    assert moved.model_copy(update={"status": original.status,
                                    "updated_at": original.updated_at}) == original


def test_initializing_can_end_without_becoming_active():
    ended = state(SessionStatus.INITIALIZING).transition("terminated")
    assert ended.status is SessionStatus.TERMINATED


def test_idle_and_active_alternate():
    s = state(SessionStatus.ACTIVE)
    for _ in range(3):
        s = s.transition("idle").transition("active")
    assert s.status is SessionStatus.ACTIVE


def test_both_active_and_idle_can_start_terminating():
    assert state("active").transition("terminating").status is SessionStatus.TERMINATING
    assert state("idle").transition("terminating").status is SessionStatus.TERMINATING


# --- invalid transitions -------------------------------------------------------------------------

@pytest.mark.parametrize(("frm", "to"), NON_EDGES)
def test_transition_refuses_every_pair_outside_the_table(frm, to):
    with pytest.raises(InvalidTransitionError) as info:
        state(frm).transition(to)
    assert info.value.code == "invalid_transition"
    assert info.value.details == {"from": frm.value, "to": to.value}
    assert SessionState.valid_transition(frm, to) is False


@pytest.mark.parametrize("status", STATUSES)
def test_self_transitions_are_refused(status):
    with pytest.raises(InvalidTransitionError):
        state(status).transition(status)


@pytest.mark.parametrize("to", STATUSES)
def test_nothing_leaves_terminated(to):
    assert SessionState.valid_transition("terminated", to) is False
    with pytest.raises(InvalidTransitionError):
        state("terminated").transition(to)


@pytest.mark.parametrize("to", ["bogus", "", "ACTIVE", " active", None, 1, b"active"])
def test_transition_to_an_unknown_status_is_invalid_transition(to):
    with pytest.raises(InvalidTransitionError):
        state("initializing").transition(to)


@pytest.mark.parametrize(("frm", "to"), [("bogus", "active"), ("active", "bogus"),
                                         (None, "idle"), ("idle", 3), ("", "")])
def test_valid_transition_is_false_for_unknown_statuses(frm, to):
    assert SessionState.valid_transition(frm, to) is False


def test_initializing_cannot_skip_to_idle_or_terminating():
    for to in ("idle", "terminating"):
        with pytest.raises(InvalidTransitionError):
            state("initializing").transition(to)


def test_active_cannot_skip_terminating():
    with pytest.raises(InvalidTransitionError):
        state("active").transition("terminated")


def test_refused_transition_leaves_the_state_unchanged():
    original = state("idle")
    snapshot = original.serialize()
    with pytest.raises(InvalidTransitionError):
        original.transition("initializing")
    assert original.serialize() == snapshot


# --- validation (direct construction) ------------------------------------------------------------

@pytest.mark.parametrize("session_id", [5, None, b"s1", ["s1"], 1.5])
def test_non_string_session_id_is_invalid_session_id(session_id):
    with raises_code("invalid_session_id", "session_id"):
        state(session_id=session_id)


def test_empty_session_id_is_empty_field():
    with raises_code("empty_field", "session_id"):
        state(session_id="")
    with raises_code("empty_field", "session_id"):
        SessionState.new("")


@pytest.mark.parametrize("status", ["bogus", "", 3, None, "Active"])
def test_unknown_status_is_invalid_status(status):
    with raises_code("invalid_status", "status"):
        state(status)


@pytest.mark.parametrize("field", ["created_at", "updated_at"])
@pytest.mark.parametrize("value", ["2024-01-01T00:00:00+00:00", 1714979289, None,
                                   datetime(2024, 1, 1), date(2024, 1, 1)])
def test_timestamp_that_is_not_an_aware_datetime_is_invalid_timestamps(field, value):
    with raises_code("invalid_timestamps", field):
        state(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("conversation_count", -1), ("conversation_count", "3"), ("conversation_count", 1.0),
    ("conversation_count", True), ("active_tasks", "task"), ("active_tasks", ("t",)),
    ("active_tasks", [1]), ("active_tasks", None),
])
def test_negative_count_or_non_list_tasks_is_invalid_counts(field, value):
    with raises_code("invalid_counts", field):
        state(**{field: value})


def test_construction_errors_are_invalid_argument_not_pydantic_errors():
    with pytest.raises(InvalidArgumentError) as info:
        SessionState(session_id=1, status="x", created_at="y", updated_at="z")
    assert not isinstance(info.value, ValidationError)
    assert isinstance(info.value, ValueError)
    assert info.value.code == "invalid_session_id"  # the first failing field, in field order


# --- serialization / deserialization -------------------------------------------------------------

def test_serialize_has_exactly_the_state_fields():
    assert set(state().serialize()) == set(SessionState.model_fields)


def test_serialize_writes_status_as_a_plain_string():
    status = state("idle").serialize()["status"]
    assert status == "idle" and type(status) is str


def test_serialize_writes_iso_timestamps_with_utc_offset_and_microseconds():
    data = state(created_at=T0, updated_at=T0.replace(microsecond=0)).serialize()
    assert data["created_at"] == "2024-05-06T07:08:09.123456+00:00"
    assert data["updated_at"] == "2024-05-06T07:08:09.000000+00:00"


def test_serialize_writes_config_as_a_dict():
    data = state(config={"max_history": 7, "features": ["x"]}).serialize()
    assert data["config"] == {"max_history": 7, "max_files": 50, "timeout_minutes": 30,
                              "persistence_enabled": True, "features": ["x"]}


def test_serialized_state_survives_json():
    original = state(metadata={"a": [1, 2.5, None, {"b": True}]}, llm_config={"t": 0.2},
                     active_tasks=["t1"], conversation_count=4, error="boom")
    assert SessionState.deserialize(json.loads(json.dumps(original.serialize()))) == original


def test_serialize_does_not_share_mutable_values_with_the_state():
    original = state(metadata={"a": {"b": 1}})
    original.serialize()["metadata"]["a"]["b"] = 2
    assert original.metadata == {"a": {"b": 1}}


def test_round_trip_is_exact_after_changes():
    changed = SessionState.new("s1").transition("active").update(conversation_count=2)
    assert SessionState.deserialize(changed.serialize()) == changed


@pytest.mark.parametrize("text", ["2024-05-06T12:38:09.123456+05:30",
                                  "2024-05-05T23:08:09.123456-08:00",
                                  "2024-05-06T07:08:09.123456Z",
                                  "2024-05-06T07:08:09.123456+00:00"])
def test_deserialize_converts_any_utc_offset_to_utc(text):
    loaded = SessionState.deserialize({**state().serialize(), "created_at": text})
    assert loaded.created_at == T0 and loaded.created_at.tzinfo is UTC
    assert loaded.created_at.microsecond == 123456


def test_deserialize_accepts_aware_datetime_objects():
    data = {**state().serialize(), "created_at": T0.astimezone(PLUS_0530), "updated_at": T0}
    loaded = SessionState.deserialize(data)
    assert (loaded.created_at, loaded.created_at.tzinfo) == (T0, UTC)


def test_deserialize_defaults_the_optional_keys_as_new_does():
    minimal = {"session_id": "s1", "status": "initializing",
               "created_at": T0.isoformat(), "updated_at": T0.isoformat()}
    loaded = SessionState.deserialize(minimal)
    fresh = SessionState.new("s1")
    assert loaded == fresh.model_copy(update={"created_at": T0, "updated_at": T0})


@pytest.mark.parametrize(("missing", "code"), [
    (("session_id", "status", "created_at", "updated_at"), "missing_field"),
    (("status", "created_at", "updated_at"), "missing_field"),
    (("created_at", "updated_at"), "missing_datetime"),
    (("updated_at",), "missing_datetime"),
])
def test_deserialize_checks_required_keys_in_order(missing, code):
    data = {k: v for k, v in state().serialize().items() if k not in missing}
    with raises_code(code, missing[0]):
        SessionState.deserialize(data)


@pytest.mark.parametrize("text", ["2024-05-06T07:08:09", "2024-05-06", "yesterday", "",
                                  "2024-13-01T00:00:00+00:00", "2024-05-06T07:08:09+25:00"])
def test_deserialize_refuses_a_timestamp_without_offset_or_unparsable(text):
    with raises_code("invalid_datetime_format", "updated_at"):
        SessionState.deserialize({**state().serialize(), "updated_at": text})


@pytest.mark.parametrize("value", [datetime(2024, 1, 1), 1714979289, None, ["2024"]])
def test_deserialize_refuses_a_timestamp_that_is_neither_string_nor_aware_datetime(value):
    with raises_code("invalid_datetime_format", "created_at"):
        SessionState.deserialize({**state().serialize(), "created_at": value})


def test_deserialize_refuses_an_unknown_status():
    with raises_code("invalid_status", "status"):
        SessionState.deserialize({**state().serialize(), "status": "paused"})


@pytest.mark.parametrize("data", [None, "state", 5, [("session_id", "s1")], b"{}"])
def test_deserialize_refuses_a_non_dict(data):
    with raises_code("invalid_data", None):
        SessionState.deserialize(data)


def test_deserialize_refuses_unknown_keys():
    with raises_code("unknown_field", "colour"):
        SessionState.deserialize({**state().serialize(), "colour": "red"})
    with raises_code("unknown_field", "7"):
        SessionState.deserialize({**state().serialize(), 7: "seven"})


def test_deserialize_reports_bad_values_with_their_rule():
    good = state().serialize()
    with raises_code("empty_field", "session_id"):
        SessionState.deserialize({**good, "session_id": ""})
    with raises_code("invalid_counts", "conversation_count"):
        SessionState.deserialize({**good, "conversation_count": -2})
    with raises_code("invalid_config", "max_files"):
        SessionState.deserialize({**good, "config": {"max_files": 0}})


@pytest.mark.parametrize(("field", "code"), [("status", "invalid_status"),
                                           ("created_at", "invalid_datetime_format"),
                                           ("metadata", "invalid_metadata")])
def test_deserialize_names_the_rule_even_for_a_value_that_fails_when_printed(field, code):
    with raises_code(code, field):
        SessionState.deserialize({**state().serialize(), field: _Hostile()})


def test_deserialize_turns_an_overflowing_offset_into_invalid_datetime_format():
    with raises_code("invalid_datetime_format", "created_at"):
        SessionState.deserialize({**state().serialize(), "created_at": "0001-01-01T00:00:00+05:00"})


# --- lifecycle -----------------------------------------------------------------------------------

def test_full_lifecycle_from_new_to_terminated():
    s = SessionState.new("s1")
    stamps = [s.updated_at]
    for to in ("active", "idle", "active", "terminating", "terminated"):
        s = s.transition(to)
        stamps.append(s.updated_at)
    assert s.status is SessionStatus.TERMINATED
    assert stamps == sorted(set(stamps))
    assert s.created_at == stamps[0]


def test_work_during_a_session_is_kept_through_transitions():
    s = SessionState.new("s1").transition("active")
    s = s.update(active_tasks=["index"], conversation_count=5, metadata={"k": "v"})
    s = s.transition("idle").transition("active")
    assert (s.active_tasks, s.conversation_count, s.metadata) == (["index"], 5, {"k": "v"})


# --- config --------------------------------------------------------------------------------------

def test_config_given_as_a_dict_is_validated_into_a_session_config():
    s = SessionState.new("s1", config={"max_history": 5, "persistence_enabled": False})
    assert s.config == SessionConfig(max_history=5, persistence_enabled=False)
    assert SessionState.new("s1", config=s.config).config is s.config


@pytest.mark.parametrize(("config", "field"), [
    ({"max_history": 0}, "max_history"), ({"max_files": "many"}, "max_files"),
    ({"timeout_minutes": -1}, "timeout_minutes"), ({"bogus": 1}, "bogus"),
    ({"features": [1]}, "features"), ("big", "config"), ([], "config"),
])
def test_bad_config_is_invalid_config_naming_the_key(config, field):
    with raises_code("invalid_config", field):
        SessionState.new("s1", config=config)


# --- additional validation -----------------------------------------------------------------------

def test_update_applies_changes_and_returns_a_new_state():
    original = state()
    changed = original.update(metadata={"x": 1}, error="oops")
    assert (changed.metadata, changed.error) == ({"x": 1}, "oops")
    assert (original.metadata, original.error) == ({}, None)


@pytest.mark.parametrize(("changes", "code", "field"), [
    ({"session_id": 9}, "invalid_session_id", "session_id"),
    ({"session_id": ""}, "empty_field", "session_id"),
    ({"status": "sleeping"}, "invalid_status", "status"),
    ({"created_at": "2024-01-01T00:00:00+00:00"}, "invalid_timestamps", "created_at"),
    ({"updated_at": 0}, "invalid_timestamps", "updated_at"),
    ({"updated_at": datetime(2024, 1, 1)}, "invalid_timestamps", "updated_at"),
    ({"conversation_count": -1}, "invalid_counts", "conversation_count"),
    ({"active_tasks": {"t"}}, "invalid_counts", "active_tasks"),
    ({"active_tasks": ["ok", None]}, "invalid_counts", "active_tasks"),
    ({"colour": "red"}, "unknown_field", "colour"),
    ({"metadata": ["not", "a", "dict"]}, "invalid_metadata", "metadata"),
    ({"metadata": {1: "int key"}}, "invalid_metadata", "metadata"),
    ({"llm_config": "gpt"}, "invalid_llm_config", "llm_config"),
    ({"error": 500}, "invalid_error", "error"),
    ({"config": {"max_history": -5}}, "invalid_config", "max_history"),
])
def test_update_rejects_bad_values_with_the_rule_code(changes, code, field):
    with raises_code(code, field):
        state().update(**changes)


def test_update_replaces_a_given_valid_updated_at():
    original = state()
    stale = original.updated_at - timedelta(days=1)
    assert original.update(updated_at=stale).updated_at > original.updated_at


def test_update_may_set_created_at():
    moved = T0 - timedelta(hours=1)
    assert state().update(created_at=moved.astimezone(PLUS_0530)).created_at == moved


def test_update_of_status_follows_the_table():
    assert state("active").update(status="idle").status is SessionStatus.IDLE
    assert state("active").update(status="active").status is SessionStatus.ACTIVE
    with pytest.raises(InvalidTransitionError):
        state("active").update(status="initializing")


def test_updated_at_steps_one_microsecond_when_the_clock_does_not_move(monkeypatch):
    monkeypatch.setattr(models, "utc_now", lambda: T0)
    s = state(updated_at=T0)
    s = s.update()
    s = s.transition("idle")
    assert s.updated_at == T0 + timedelta(microseconds=2)


def test_updated_at_never_goes_back_when_the_clock_does(monkeypatch):
    monkeypatch.setattr(models, "utc_now", lambda: T0 - timedelta(hours=1))
    assert state(updated_at=T0).update().updated_at == T0 + timedelta(microseconds=1)


def test_updated_at_strictly_increases_over_a_thousand_rapid_updates():
    s = SessionState.new("s1")
    stamps = [s.updated_at]
    for n in range(1000):
        s = s.update(conversation_count=n)
        stamps.append(s.updated_at)
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_state_is_frozen():
    with pytest.raises(ValidationError):
        state().status = SessionStatus.IDLE  # type: ignore[misc]


def test_model_validate_raises_the_same_codes_as_construction():
    with raises_code("empty_field", "session_id"):
        SessionState.model_validate({"session_id": "", "status": "active",
                                     "created_at": T0, "updated_at": T0})


def test_model_validate_of_a_non_mapping_is_invalid_data():
    with raises_code("invalid_data", None):
        SessionState.model_validate(42)


def test_construction_without_a_timestamp_is_missing_datetime():
    with raises_code("missing_datetime", "updated_at"):
        SessionState(session_id="s1", status="active", created_at=T0)


def test_construction_turns_an_overflowing_offset_into_invalid_timestamps():
    far = datetime(1, 1, 1, tzinfo=PLUS_0530)
    with raises_code("invalid_timestamps", "created_at"):
        state(created_at=far)


def test_status_accepts_the_enum_or_its_string_and_stores_the_enum():
    assert state("idle").status is SessionStatus.IDLE
    assert state(SessionStatus.IDLE).status is SessionStatus.IDLE


def test_validation_error_crosses_the_wire_with_code_and_field():
    with pytest.raises(InvalidArgumentError) as info:
        state(conversation_count=-1)
    assert info.value.to_wire()["code"] == "invalid_counts"
    assert info.value.to_wire()["field"] == "conversation_count"


# --- SessionInfo ---------------------------------------------------------------------------------

def test_session_info_from_state_copies_the_state_and_adds_process_facts():
    s = state(metadata={"m": 1}, conversation_count=99)
    info = SessionInfo.from_state(s, pid=1234, restarts=2, conversation_count=7)
    assert (info.pid, info.restarts, info.conversation_count) == (1234, 2, 7)
    assert {k: getattr(info, k) for k in SessionState.model_fields if k != "conversation_count"} \
        == {k: getattr(s, k) for k in SessionState.model_fields if k != "conversation_count"}
    assert not isinstance(info, SessionState)


def test_session_info_validates_from_the_wire_shape():
    wire = {**state().model_dump(), "status": "active", "pid": None, "restarts": 0,
            "created_at": T0.astimezone(MINUS_0800)}
    info = SessionInfo.model_validate(wire)
    assert (info.status, info.pid, info.created_at) == (SessionStatus.ACTIVE, None, T0)


def test_session_info_from_state_rejects_negative_restarts():
    with raises_code("invalid_counts", "restarts"):
        SessionInfo.from_state(state(), pid=None, restarts=-1, conversation_count=0)


def test_session_info_is_frozen():
    info = SessionInfo.from_state(state(), pid=5, restarts=0, conversation_count=0)
    with pytest.raises(ValidationError):
        info.pid = 6  # type: ignore[misc]


# --- properties ----------------------------------------------------------------------------------

# An independent reading of the table: by member or by exact value, else no status at all.
_BY_NAME = {**{s: s for s in STATUSES}, **{s.value: s for s in STATUSES}}
status_like = st.one_of(st.sampled_from(STATUSES), st.sampled_from([s.value for s in STATUSES]),
                        st.text(max_size=12), st.none(), st.integers())


def _expected_edge(frm: object, to: object) -> bool:
    src = _BY_NAME.get(frm) if isinstance(frm, str) else None
    dst = _BY_NAME.get(to) if isinstance(to, str) else None
    return src is not None and dst is not None and dst in TRANSITIONS[src]


@PROPERTY
@given(frm=status_like, to=status_like)
def test_property_valid_transition_agrees_with_the_table(frm, to):
    assert SessionState.valid_transition(frm, to) is _expected_edge(frm, to)


@PROPERTY
@given(frm=st.sampled_from(STATUSES), to=status_like)
def test_property_transition_succeeds_exactly_when_valid(frm, to):
    start = state(frm)
    if _expected_edge(frm, to):
        assert start.transition(to).status is _BY_NAME[to]
    else:
        with pytest.raises(InvalidTransitionError):
            start.transition(to)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                            max_value=timedelta(hours=23, minutes=59)))
aware_datetimes = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                               timezones=offsets)
configs = st.builds(SessionConfig, max_history=st.integers(1, 10**6),
                    max_files=st.integers(1, 10**6),
                    timeout_minutes=st.floats(min_value=1e-3, max_value=1e6),
                    persistence_enabled=st.booleans(),
                    features=st.lists(st.text(max_size=6), max_size=3))
states = st.builds(
    SessionState, session_id=st.text(min_size=1, max_size=20), status=st.sampled_from(STATUSES),
    config=configs, llm_config=json_dicts, metadata=json_dicts, created_at=aware_datetimes,
    updated_at=aware_datetimes, active_tasks=st.lists(st.text(max_size=8), max_size=4),
    conversation_count=st.integers(0, 10**9), error=st.none() | st.text(max_size=10))


@PROPERTY
@given(original=states)
def test_property_serialize_then_deserialize_round_trips(original):
    data = original.serialize()
    assert SessionState.deserialize(data) == original
    assert SessionState.deserialize(json.loads(json.dumps(data))) == original


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


junk_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.binary(max_size=6),
    st.datetimes(), st.datetimes(timezones=offsets), st.dates(), st.timedeltas(),
    st.sampled_from([int, str, bytes, Decimal, Fraction, UUID, complex]).flatmap(st.from_type),
    st.builds(_Hostile),
    st.sampled_from(["", "active", "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00", "Z"]),
)
junk = st.recursive(
    junk_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner,
                                            max_size=3),
                            st.frozensets(junk_scalars.filter(_hashable), max_size=3)),
    max_leaves=8)


field_names = st.sampled_from(list(SessionState.model_fields))
# Plausible values sometimes, so that validation gets past the required keys to the rest.
plausible = {"session_id": st.text(min_size=1, max_size=8), "status": st.sampled_from(STATUSES),
             "created_at": aware_datetimes.map(datetime.isoformat),
             "updated_at": aware_datetimes}
junk_states = st.fixed_dictionaries(
    {name: junk | plausible[name] for name in SessionState.REQUIRED},
    optional={name: junk for name in SessionState.model_fields
              if name not in SessionState.REQUIRED})
# Valid required keys with one junk value, so validation gets past the first field.
one_bad_field = st.tuples(states.map(SessionState.serialize), field_names, junk).map(
    lambda t: {**t[0], t[1]: t[2]})


def _deserialize_or_refuse(data: object) -> None:
    try:
        loaded = SessionState.deserialize(data)
    except InvalidArgumentError as exc:
        assert exc.code in KNOWN_CODES
        return
    assert isinstance(loaded, SessionState)
    assert loaded.created_at.tzinfo is UTC and loaded.updated_at.tzinfo is UTC


@PROPERTY
@given(data=junk)
def test_property_deserialize_of_garbage_raises_only_invalid_argument(data):
    _deserialize_or_refuse(data)


@PROPERTY
@given(data=junk_states)
def test_property_deserialize_of_junk_values_raises_only_invalid_argument(data):
    _deserialize_or_refuse(data)


@PROPERTY
@given(data=one_bad_field)
def test_property_deserialize_with_one_junk_field_raises_only_invalid_argument(data):
    _deserialize_or_refuse(data)
