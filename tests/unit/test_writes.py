"""A session served away from the store (the Ray backend's actor, here in the test process, no
Ray): its calls' writes come back with the replies and are stored elsewhere, all or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from jidocoder.daemon.ray_actor import BUDGET, SessionActor
from jidocoder.daemon.store import SessionStore
from jidocoder.daemon.writes import WriteRecorder, apply_writes
from jidocoder.models import ActiveFile, Message, utc_now
from tests.unit.test_session_process import SESSION_ID, spec_in


@pytest.fixture
def store(tmp_path: Path):
    store = SessionStore(tmp_path, SESSION_ID)
    yield store
    store.close()


def call(actor: SessionActor, op: str, **args) -> tuple[dict, list, int]:
    return actor.handle({"id": 1, "op": op, "args": args})


def test_an_actor_s_call_returns_the_writes_the_forked_session_would_have_made(tmp_path, store):
    actor = SessionActor(spec_in(tmp_path), store.load())
    reply, writes, counts = call(actor, "send_message", role="user", content="héllo")
    assert reply["result"] is None and reply["events"][0][0] == "conversation_added"
    assert [name for name, _ in writes] == ["append_message"] and counts == (1, 0)
    apply_writes(store, writes)
    reply, writes, _ = call(actor, "add_file", path="/a.py")
    apply_writes(store, writes)
    reply, writes, _ = call(actor, "update_file_index", path="/a.py", metadata={"k": [1, b"\x00"]})
    apply_writes(store, writes)
    messages, files, index = store.load()
    held = actor.process.context
    assert messages == held.history() and files == held.active_files() and index == held.file_index()
    assert messages[0].content == "héllo" and index["/a.py"]["k"] == [1, b"\x00"]


def test_a_read_makes_no_write_and_a_restarted_actor_starts_from_what_was_stored(tmp_path, store):
    first = SessionActor(spec_in(tmp_path), store.load())
    for text in ("one", "two"):
        apply_writes(store, call(first, "send_message", role="user", content=text)[1])
    assert call(first, "get_conversation_history")[1] == []
    second = SessionActor(spec_in(tmp_path), store.load())
    reply, writes, counts = call(second, "get_conversation_history")
    assert [m["content"] for m in reply["result"]] == ["one", "two"] and writes == [] and counts == (2, 0)


def test_a_call_past_its_budget_is_refused_unapplied(tmp_path, store):
    actor = SessionActor(spec_in(tmp_path), store.load())
    reply, writes, counts = actor.handle({"id": 7, "op": "send_message", BUDGET: -0.001,
                                         "args": {"role": "user", "content": "late"}})
    assert reply["error"]["code"] == "timeout" and writes == [] and counts == (0, 0)
    reply, writes, _ = actor.handle({"id": 8, "op": "send_message", BUDGET: 5.0,
                                     "args": {"role": "user", "content": "in time"}})
    assert "result" in reply and len(writes) == 1


def test_restore_gives_the_actor_back_the_stored_state(tmp_path, store):
    actor = SessionActor(spec_in(tmp_path), store.load())
    apply_writes(store, call(actor, "send_message", role="user", content="kept")[1])
    call(actor, "send_message", role="user", content="never stored")
    assert actor.restore(store.load()) == 1
    assert [m["content"] for m in call(actor, "get_conversation_history")[0]["result"]] == ["kept"]


def test_writes_are_stored_all_or_none(store):
    now = utc_now()
    apply_writes(store, [("add_file", (ActiveFile(path="/kept", added_at=now),))])
    bad = [("append_message", (Message(role="user", content="x", timestamp=now), 5)),
           ("append_message", (Message(role="user", content="y", timestamp=now), 0))]  # keep < 1
    with pytest.raises(Exception, match="keep"):
        apply_writes(store, bad)
    assert store.load() == ([], [ActiveFile(path="/kept", added_at=now)], {})


def test_a_write_naming_anything_but_a_store_write_is_refused_and_nothing_is_stored(store):
    with pytest.raises(ValueError, match="close"):
        apply_writes(store, [("clear_messages", ()), ("close", ())])
    assert store.load() == ([], [], {})


def test_a_recorder_is_loaded_once():
    recorder = WriteRecorder(([], [], {}))
    assert recorder.load() == ([], [], {})
    with pytest.raises(RuntimeError):
        recorder.load()


def test_a_call_id_is_stored_with_its_call_s_writes_and_a_resent_call_is_answered_from_the_store(tmp_path, store):
    """At most once across nodes (callids.py): the actor records the call id as one more write,
    stored in the call's transaction; a successor actor, given the stored ids, answers the
    resent call with the first result and applies nothing."""
    actor = SessionActor(spec_in(tmp_path), store.load(), store.load_calls())
    def request(request_id: int) -> dict:
        return {"id": request_id, "op": "send_message", "args": {"role": "user", "content": "once",
                                                                  "call_id": "c-1"}}
    reply, writes, _ = actor.handle(request(1))
    assert [name for name, _ in writes] == ["append_message", "record_call"]
    apply_writes(store, writes)
    successor = SessionActor(spec_in(tmp_path), store.load(), store.load_calls())
    again, writes, counts = successor.handle(request(2))
    assert again == {"id": 2, "result": reply["result"], "events": []} and writes == [] and counts == (1, 0)
    assert [m.content for m in store.load()[0]] == ["once"]
