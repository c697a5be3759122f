"""``Api.dispatch`` with a real Supervisor (real Loop, EventBus, SessionTable, Registry in
tmp_path; no spare started) and a fake client connection that keeps its replies."""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest

from jidocoder import __version__, wire
from jidocoder.config import Settings
from jidocoder.daemon.api import Api
from jidocoder.daemon.events import EventBus
from jidocoder.daemon.loop import Loop
from jidocoder.daemon.store import Registry
from jidocoder.daemon.supervisor import Supervisor
from jidocoder.models import SessionState
from jidocoder.states import SessionStatus


class FakeClient:
    """A test double of the client side: what the daemon sends it, in order."""

    def __init__(self) -> None:
        self.closed = False
        self.links: weakref.WeakSet[Any] = weakref.WeakSet()
        self.calls = 0
        self.replies: list[tuple[Any, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    def begin_call(self) -> None:
        self.calls += 1

    def reply(self, request_id: Any, message: dict[str, Any]) -> None:
        self.replies.append((request_id, message))

    def send_event(self, event: dict[str, Any], frame: bytes | None = None) -> None:
        self.events.append(event)


class Daemon:
    def __init__(self, tmp_path: Path) -> None:
        settings = Settings.load({"state_dir": str(tmp_path), "socket": str(tmp_path / "d.sock"),
                                  "spare_processes": 0}, env={})
        self.registry = Registry(tmp_path)
        self.bus = EventBus()
        self.supervisor = Supervisor(settings, Loop(), self.bus, self.registry)
        self.shutdowns = 0
        self.api = Api(self.supervisor, self.bus, max_request_bytes=1234, debug_ops=False,
                       status=lambda: {"sessions": 0, "status": "ok"}, shutdown=self.shutdown)
        self.client = FakeClient()

    def shutdown(self) -> None:
        self.shutdowns += 1

    def call(self, op: str, args: dict[str, Any] | None = None, **frame: Any) -> dict[str, Any]:
        before = len(self.client.replies)
        request = wire.split_request(wire.encode({"id": 7, "op": op, "args": args or {}, **frame}))
        self.api.dispatch(self.client, request)
        assert len(self.client.replies) == before + 1, "no reply"
        request_id, message = self.client.replies[-1]
        assert request_id == 7
        return message

    def error_code(self, op: str, args: dict[str, Any] | None = None) -> str:
        return self.call(op, args)["error"]["code"]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path)
    yield daemon
    daemon.registry.close()
    daemon.supervisor.table.close()
    daemon.supervisor.loop.close()


def test_an_unknown_op_is_unknown_op(daemon: Daemon) -> None:
    assert daemon.error_code("no_such_op") == "unknown_op"


def test_a_malformed_request_is_invalid_request(daemon: Daemon) -> None:
    refused = wire.split_request(wire.encode(["not", "a", "request"]))
    assert refused.reply()["error"]["code"] == "invalid_request"


def test_arguments_a_handler_does_not_take_are_invalid_argument(daemon: Daemon) -> None:
    error = daemon.call("list_sessions", {"bogus": 1})["error"]
    assert error["code"] == "invalid_argument"


def test_hello(daemon: Daemon) -> None:
    assert daemon.call("hello") == {"result": {"pid": os.getpid(), "version": __version__,
                                               "max_request_bytes": 1234, "channels": True}}


def test_daemon_status_is_the_callable_given(daemon: Daemon) -> None:
    assert daemon.call("daemon_status") == {"result": {"sessions": 0, "status": "ok"}}


def test_list_sessions_empty(daemon: Daemon) -> None:
    assert daemon.call("list_sessions") == {"result": []}
    assert daemon.call("list_failed_sessions") == {"result": []}


@pytest.mark.parametrize("op", ["get_session_info", "terminate_session", "get_session_pid",
                                "subscribe_to_session", "recover_session", "send_message"])
def test_an_unknown_session_is_not_found(daemon: Daemon, op: str) -> None:
    assert daemon.error_code(op, {"session_id": "session_nope"}) == "not_found"


def test_a_session_id_that_is_not_a_string_is_refused(daemon: Daemon) -> None:
    assert daemon.error_code("get_session_info", {"session_id": 5}) == "invalid_session_id"


def test_subscribe_to_all_sessions_then_a_published_event_reaches_the_client(daemon: Daemon) -> None:
    assert daemon.call("subscribe_to_all_sessions") == {"result": {"last_seq": 0}}  # the client resumes from it
    daemon.bus.publish("session_status", "s1", {"session_id": "s1", "status": "idle"})
    assert [(e["type"], e["payload"]["status"]) for e in daemon.client.events] == [("session_status", "idle")]
    assert daemon.call("unsubscribe_from_all_sessions") == {"result": None}
    daemon.bus.publish("session_status", "s1", {"session_id": "s1", "status": "active"})
    assert len(daemon.client.events) == 1


def test_shutdown_calls_the_callable(daemon: Daemon) -> None:
    assert daemon.call("shutdown") == {"result": None}
    assert daemon.shutdowns == 1


def test_every_dispatch_begins_a_call(daemon: Daemon) -> None:
    daemon.call("hello")
    daemon.call("no_such_op")
    assert daemon.client.calls == 2


def test_a_frames_deadline_reaches_the_pending(daemon: Daemon) -> None:
    # a session admitted but with no process: the routed call waits, holding its Pending
    record = daemon.supervisor.admit(SessionState.new("s1"))
    daemon.supervisor.change_status(record, SessionStatus.ACTIVE)
    deadline = time.monotonic() + 30
    daemon.api.dispatch(daemon.client, wire.split_request(wire.encode(
        {"id": 9, "op": "send_message", "deadline": deadline,
         "args": {"session_id": "s1", "content": "hi"}})))
    assert daemon.client.replies == []
    [(pending, _)] = record.waiting
    assert (pending.request_id, pending.op, pending.deadline) == (9, "send_message", deadline)


def test_a_debug_op_is_unknown_unless_enabled(daemon: Daemon) -> None:
    from jidocoder.daemon.ops import DEBUG_HANDLERS
    for op in DEBUG_HANDLERS:
        assert daemon.error_code(op, {"session_id": "s1"}) == "unknown_op"
