"""Idleness (docs/api.md §2): a session with no call for config.timeout_minutes goes active → idle,
its next call makes it active again, both with session_status events; idle sessions are kept."""

from __future__ import annotations

from jidocoder import Client, SessionStatus
from tests.support import SHORT, info_of, process_alive, wait_until

SHORT_TIMEOUT = {"timeout_minutes": 0.01}  # 0.6 s


def next_event_of(client: Client, event_type: str, timeout: float = SHORT):
    """The next event (skipping none): it must be of ``event_type``."""
    event = client.next_event(timeout)
    assert event is not None, f"no {event_type} event within {timeout}s"
    assert event.type == event_type, event
    return event


def test_a_session_without_calls_goes_idle_with_an_event_and_the_next_call_makes_it_active(daemon):
    with daemon.client() as client, daemon.client() as watcher:
        busy = client.create_session()
        sid = client.create_session(config=SHORT_TIMEOUT)
        watcher.subscribe_to_all_sessions()
        watcher.subscribe_to_session(sid)

        went_idle = next_event_of(watcher, "session_status")
        assert went_idle.session_id == sid
        assert went_idle.topic == f"client.session.{sid}"
        assert {k: went_idle.payload[k] for k in ("session_id", "status", "previous_status")} == {
            "session_id": sid, "status": "idle", "previous_status": "active"}
        listed = {i.session_id: i for i in client.list_sessions()}
        assert listed[sid].status is SessionStatus.IDLE
        assert listed[sid].updated_at == went_idle.payload["updated_at"]
        assert listed[busy].status is SessionStatus.ACTIVE  # default timeout: 30 minutes

        client.send_message(sid, "user", "wake up")
        woke = next_event_of(watcher, "session_status")
        assert woke.seq == went_idle.seq + 1
        assert {k: woke.payload[k] for k in ("session_id", "status", "previous_status")} == {
            "session_id": sid, "status": "active", "previous_status": "idle"}
        added = next_event_of(watcher, "conversation_added")  # the call itself comes after
        assert added.payload["content"] == "wake up" and added.seq == woke.seq + 1
        info = client.get_session_info(sid)
        assert info.updated_at >= woke.payload["updated_at"] > went_idle.payload["updated_at"]


def test_an_idle_session_is_kept_serving_and_never_terminated_for_it(daemon):
    with daemon.client() as client:
        client.subscribe_to_all_sessions()
        sid = client.create_session(config=SHORT_TIMEOUT)
        client.send_message(sid, "user", "remember me")
        pid = client.get_session_pid(sid)
        assert next_event_of(client, "session_created").session_id == sid
        assert next_event_of(client, "session_status").payload["status"] == "active"
        went_idle = next_event_of(client, "session_status")
        assert went_idle.payload["status"] == "idle"

        # more than three idle timeouts and several watchdog rounds: nothing more happens to it
        assert client.next_event(timeout=2.0) is None
        info = info_of(client, sid)
        assert info.status is SessionStatus.IDLE and info.pid == pid and info.error is None
        assert info.updated_at == went_idle.payload["updated_at"]
        assert process_alive(pid)

        assert [m.content for m in client.get_conversation_history(sid)] == ["remember me"]
        woke = next_event_of(client, "session_status")
        assert (woke.payload["previous_status"], woke.payload["status"]) == ("idle", "active")
        assert client.get_session_pid(sid) == pid
        wait_until(lambda: info_of(client, sid).status is SessionStatus.IDLE, SHORT,
                   "the session to go idle again")
