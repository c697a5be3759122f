"""The public surface as a user's type checker sees it: checked by mypy (./scripts/test runs
``mypy``, whose ``files`` include this folder), never run. Each call of a public method states
what it returns with ``assert_type``, so an annotation that drifts from docs/api.md fails the
check. tests/unit/test_typing.py holds that every public method of ``Client`` and of
``AsyncClient`` is called here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, assert_type

from jidocoder import (ActiveFile, AsyncClient, CachedFile, Client, DaemonUnavailableError, Event,
                       InvalidArgumentError, JidocoderError, Message, SessionConfig, SessionInfo,
                       SessionState, SessionStatus)


def client_calls(client: Client, sid: str) -> None:
    assert_type(client.create_session(), str)
    assert_type(client.create_session(metadata={"project": "x"}, llm_config={"model": "m"},
                                      config=SessionConfig(max_history=10)), str)
    assert_type(client.create_session(config={"max_files": 5}), str)
    assert_type(client.terminate_session(sid), None)
    assert_type(client.list_sessions(), list[SessionInfo])
    assert_type(client.list_sessions(offset=1, limit=2), list[SessionInfo])
    assert_type(client.get_session_info(sid), SessionInfo)
    assert_type(client.get_session_pid(sid), int)
    assert_type(client.list_failed_sessions(), list[SessionInfo])
    assert_type(client.recover_session(sid), None)

    assert_type(client.send_message(sid, "user", "hello"), None)
    assert_type(client.get_conversation_history(sid), list[Message])
    assert_type(client.get_conversation_history(sid, offset=0, limit=10), list[Message])
    assert_type(client.clear_conversation(sid), None)

    assert_type(client.add_file(sid, "/src/a.py"), None)
    assert_type(client.remove_file(sid, "/src/a.py"), None)
    assert_type(client.get_active_files(sid), list[ActiveFile])
    assert_type(client.update_file_index(sid, "/src/a.py", {"lines": 10}), None)
    assert_type(client.get_file_index(sid), dict[str, dict[str, Any]])

    assert_type(client.build_context(sid), dict[str, Any])
    assert_type(client.build_context(sid, ["conversation"], max_messages=5, max_files=2),
                dict[str, Any])

    assert_type(client.cache_file(sid, "/src/a.py", "text"), None)
    assert_type(client.cache_file(sid, "/src/b.bin", b"\x00", {"kind": "binary"}), None)
    assert_type(client.get_file(sid, "/src/a.py"), CachedFile | None)
    assert_type(client.invalidate_file(sid, "/src/a.py"), None)
    assert_type(client.clear_session_cache(sid), None)

    assert_type(client.subscribe_to_session(sid), None)
    assert_type(client.unsubscribe_from_session(sid), None)
    assert_type(client.subscribe_to_all_sessions(), None)
    assert_type(client.unsubscribe_from_all_sessions(), None)
    assert_type(client.next_event(), Event | None)
    assert_type(client.next_event(timeout=0.5), Event | None)
    assert_type(client.events(), Iterator[Event])
    assert_type(client.events(timeout=1.0), Iterator[Event])

    assert_type(client.daemon_status(), dict[str, Any])
    assert_type(client.daemon_metrics(), dict[str, Any])
    assert_type(client.shutdown(), None)
    assert_type(client.close(), None)


async def async_client_calls(client: AsyncClient, sid: str) -> None:
    assert_type(await client.create_session(), str)
    assert_type(await client.create_session(metadata={"project": "x"}, llm_config={"model": "m"},
                                      config=SessionConfig(max_history=10)), str)
    assert_type(await client.create_session(config={"max_files": 5}), str)
    assert_type(await client.terminate_session(sid), None)
    assert_type(await client.list_sessions(), list[SessionInfo])
    assert_type(await client.list_sessions(offset=1, limit=2), list[SessionInfo])
    assert_type(await client.get_session_info(sid), SessionInfo)
    assert_type(await client.get_session_pid(sid), int)
    assert_type(await client.list_failed_sessions(), list[SessionInfo])
    assert_type(await client.recover_session(sid), None)

    assert_type(await client.send_message(sid, "user", "hello"), None)
    assert_type(await client.get_conversation_history(sid), list[Message])
    assert_type(await client.get_conversation_history(sid, offset=0, limit=10), list[Message])
    assert_type(await client.clear_conversation(sid), None)

    assert_type(await client.add_file(sid, "/src/a.py"), None)
    assert_type(await client.remove_file(sid, "/src/a.py"), None)
    assert_type(await client.get_active_files(sid), list[ActiveFile])
    assert_type(await client.update_file_index(sid, "/src/a.py", {"lines": 10}), None)
    assert_type(await client.get_file_index(sid), dict[str, dict[str, Any]])

    assert_type(await client.build_context(sid), dict[str, Any])
    assert_type(await client.build_context(sid, ["conversation"], max_messages=5, max_files=2),
                dict[str, Any])

    assert_type(await client.cache_file(sid, "/src/a.py", "text"), None)
    assert_type(await client.cache_file(sid, "/src/b.bin", b"\x00", {"kind": "binary"}), None)
    assert_type(await client.get_file(sid, "/src/a.py"), CachedFile | None)
    assert_type(await client.invalidate_file(sid, "/src/a.py"), None)
    assert_type(await client.clear_session_cache(sid), None)

    assert_type(await client.subscribe_to_session(sid), None)
    assert_type(await client.unsubscribe_from_session(sid), None)
    assert_type(await client.subscribe_to_all_sessions(), None)
    assert_type(await client.unsubscribe_from_all_sessions(), None)
    assert_type(await client.next_event(), Event | None)
    assert_type(await client.next_event(timeout=0.5), Event | None)
    assert_type(client.events(), AsyncIterator[Event])
    assert_type(client.events(timeout=1.0), AsyncIterator[Event])

    assert_type(await client.daemon_status(), dict[str, Any])
    assert_type(await client.shutdown(), None)
    assert_type(await client.connect(), None)
    assert_type(await client.close(), None)
    assert_type(await client.aclose(), None)


async def async_client_lifecycle() -> None:
    async with AsyncClient("/tmp/jidocoder.sock", timeout=5.0, event_buffer=100) as client:
        assert_type(client, AsyncClient)
        assert_type(client.daemon_pid, int | None)
        assert_type(client.timeout, float)
        async for event in client.events(timeout=0.1):
            assert_type(event, Event)


def client_lifecycle() -> None:
    with Client("/tmp/jidocoder.sock", timeout=5.0, event_buffer=100) as client:
        assert_type(client, Client)
        assert_type(client.daemon_pid, int | None)
        assert_type(client.socket_path, str)
    assert_type(Client(), Client)


def models(info: SessionInfo, event: Event, message: Message, cached: CachedFile,
           active: ActiveFile) -> None:
    state = SessionState.new("s1", config={"max_history": 5}, metadata={"k": "v"})
    assert_type(state, SessionState)
    assert_type(state.transition(SessionStatus.ACTIVE), SessionState)
    assert_type(state.transition("idle"), SessionState)
    assert_type(state.update(conversation_count=1), SessionState)
    assert_type(SessionState.valid_transition("active", "idle"), bool)
    assert_type(state.serialize(), dict[str, Any])
    assert_type(SessionState.deserialize(state.serialize()), SessionState)
    assert_type(state.status, SessionStatus)
    assert_type(state.config, SessionConfig)
    assert_type(state.created_at, datetime)
    assert_type(state.error, str | None)

    assert_type(info.pid, int | None)
    assert_type(info.restarts, int)
    assert_type(info.conversation_count, int)
    assert_type(event.type, str)
    assert_type(event.session_id, str | None)
    assert_type(event.payload, dict[str, Any])
    assert_type(event.seq, int)
    assert_type(event.timestamp, datetime)
    assert_type(message.content, str)
    assert_type(cached.content, str | bytes)
    assert_type(cached.mtime, float | None)
    assert_type(active.added_at, datetime)
    assert_type(SessionConfig().max_history, int)


def errors(error: JidocoderError) -> None:
    assert_type(error.code, str)
    assert_type(error.message, str)
    assert_type(error.field, str | None)
    assert_type(error.details, dict[str, Any])
    assert_type(error.to_wire(), dict[str, Any])
    try:
        Client()
    except DaemonUnavailableError as exc:
        assert_type(exc, DaemonUnavailableError)
    except InvalidArgumentError as exc:
        assert_type(exc, InvalidArgumentError)
        assert isinstance(exc, ValueError)  # also a ValueError (docs/api.md §3)
