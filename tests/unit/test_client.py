"""Client against a scripted peer: a real Unix socket in tmp_path, served by one thread that
speaks the protocol with jidocoder.wire (no daemon, no processes)."""

from __future__ import annotations

import gc
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, UTC
from typing import Any

import pytest

import jidocoder
from jidocoder import wire
from jidocoder._protocol import IDEMPOTENT_BY_CALL_ID
from jidocoder.client import DRAIN_THREAD_NAME, Client
from jidocoder.errors import (DaemonUnavailableError, InvalidArgumentError, JidocoderError,
                              LimitExceededError, RequestTimeoutError, SessionCrashedError,
                              SessionNotFoundError)
from jidocoder.models import (ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo,
                              utc_now)
from tests.support import EXPIRES as SHORT  # this file's SHORT: a wait that is meant to run out
from tests.support import LONG, fd_count, wait_until

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
HELLO = {"pid": 4242, "version": "0.1.0", "max_request_bytes": 4096}


class Peer:
    """A scripted daemon: accepts one connection, answers ``hello``, then runs ``script(peer)``."""

    def __init__(self, path: str, script: Callable[[Peer], None], hello: dict) -> None:
        self.path = path
        self.script = script
        self.hello = hello
        self.received: list[dict] = []
        self.failure: BaseException | None = None
        self.release = threading.Event()  # scripts that must hold still wait on this
        self.conn: socket.socket | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(LONG)
        self.thread = threading.Thread(target=self._serve, name="test-peer")
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                self.conn = conn
                hello = self.recv()
                if hello is not None:
                    self.reply(hello, self.hello)
                    self.script(self)
        except BaseException as e:  # noqa: BLE001 - reported by the fixture's teardown
            self.failure = e
        finally:  # a daemon that is gone: connecting again is refused (the Client retries)
            self.listener.close()

    def recv(self) -> dict | None:
        request = wire.read_frame(self.conn, wire.DEFAULT_MAX_FRAME)
        if request is not None:
            self.received.append(request)
        return request

    def reply(self, request: dict, result: Any) -> None:
        wire.write_frame(self.conn, {"id": request["id"], "result": result},
                         wire.DEFAULT_MAX_FRAME)

    def error(self, request: dict, error: JidocoderError) -> None:
        wire.write_frame(self.conn, {"id": request["id"], "error": error.to_wire()},
                         wire.DEFAULT_MAX_FRAME)

    def push(self, event: dict) -> None:
        wire.write_frame(self.conn, {"event": event}, wire.DEFAULT_MAX_FRAME)

    def ops(self) -> list[str]:
        return [request["op"] for request in self.received]

    def stop(self) -> None:
        self.release.set()
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(LONG)
        self.listener.close()


def echo(peer: Peer) -> None:
    """Answer every request with its own args."""
    while (request := peer.recv()) is not None:
        peer.reply(request, request["args"])


def answer(result: Any) -> Callable[[Peer], None]:
    """Answer every request with ``result``."""
    def script(peer: Peer) -> None:
        while (request := peer.recv()) is not None:
            peer.reply(request, result)
    return script


def event(seq: int, type_: str = "file_added") -> dict:
    return {"type": type_, "topic": "client.session.s1", "session_id": "s1",
            "payload": {"session_id": "s1", "file_path": f"/f{seq}"}, "seq": seq,
            "timestamp": T0}


@pytest.fixture
def serve(tmp_path):
    """``serve(script, hello=...)`` starts a Peer; teardown stops it and re-raises its failure."""
    peers: list[Peer] = []
    clients: list[Client] = []

    def start(script: Callable[[Peer], None] = echo, *, hello: dict = HELLO,
              timeout: float = LONG) -> tuple[Peer, Client]:
        peer = Peer(str(tmp_path / f"peer{len(peers)}.sock"), script, hello)
        peers.append(peer)
        client = Client(peer.path, timeout=timeout)
        clients.append(client)
        return peer, client

    yield start
    for client in clients:
        client.close()
    for peer in peers:
        peer.stop()
        assert not peer.thread.is_alive()
        if peer.failure is not None:
            raise peer.failure


def big_event(seq: int) -> dict:
    return {**event(seq), "payload": {"session_id": "s1", "file_path": "/" + "x" * 4000}}


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, list, list]:
    """Run ``call`` in a thread; its result or exception lands in the lists returned."""
    results: list[Any] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as e:  # noqa: BLE001 - the thread's failure is asserted by the test
            failures.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results, failures


def reading(client: Client) -> bool:
    """Some thread holds the client's reader role (it is inside poll or routing)."""
    return client._conn._reading


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


# -- connecting -------------------------------------------------------------------------------

def test_client_without_socket_file_raises_daemon_unavailable_naming_socket(tmp_path):
    path = str(tmp_path / "missing.sock")
    with pytest.raises(DaemonUnavailableError) as info:
        Client(path)
    assert path in info.value.message
    assert "jidocoder daemon start" in info.value.message
    assert info.value.code == "daemon_unavailable"
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_client_on_stale_socket_file_raises_daemon_unavailable(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # the file stays after close, with nobody listening: a dead daemon's socket
    dead.close()
    with pytest.raises(DaemonUnavailableError) as info:
        Client(path)
    assert path in info.value.message
    assert "jidocoder daemon start" in info.value.message
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_client_resolves_default_socket_from_environment(tmp_path, monkeypatch):
    path = str(tmp_path / "env.sock")
    monkeypatch.setenv("JIDOCODER_SOCKET", path)
    with pytest.raises(DaemonUnavailableError) as info:
        Client()
    assert path in info.value.message


def test_hello_is_the_first_request_and_sets_pid_and_request_limit(serve):
    peer, client = serve()
    assert client.daemon_pid == 4242
    assert client.max_request_bytes == 4096
    hello = peer.received[0]
    assert hello == {"id": hello["id"], "op": "hello", "args": {}, "deadline": hello["deadline"]}


def test_every_request_carries_the_monotonic_deadline_its_client_gives_up_at(serve):
    peer, client = serve()
    before = time.monotonic()
    client.get_file_index("s1")  # echoed: a dict, as get_file_index returns
    after = time.monotonic()
    deadline = peer.received[-1]["deadline"]
    assert before + client.timeout <= deadline <= after + client.timeout


def test_hello_without_limit_keeps_the_16_mib_default(serve):
    _, client = serve(hello={"pid": 7, "version": "0.1.0"})
    assert client.max_request_bytes == 16 * 1024 * 1024


# -- requests and results ---------------------------------------------------------------------

REQUESTS = [
    (lambda c: c.create_session(metadata={"a": 1}, config=SessionConfig(max_files=3)),
     "create_session", {"metadata": {"a": 1}, "llm_config": None,
                        "config": {"max_history": 100, "max_files": 3, "timeout_minutes": 30,
                                   "persistence_enabled": True, "features": []}}),
    (lambda c: c.create_session(config={"max_history": 5}),
     "create_session", {"metadata": None, "llm_config": None, "config": {"max_history": 5}}),
    (lambda c: c.terminate_session("s1"), "terminate_session", {"session_id": "s1"}),
    (lambda c: c.send_message("s1", "user", "hi"),
     "send_message", {"session_id": "s1", "role": "user", "content": "hi"}),
    (lambda c: c.clear_conversation("s1"), "clear_conversation", {"session_id": "s1"}),
    (lambda c: c.add_file("s1", "/a"), "add_file", {"session_id": "s1", "path": "/a"}),
    (lambda c: c.remove_file("s1", "/a"), "remove_file", {"session_id": "s1", "path": "/a"}),
    (lambda c: c.update_file_index("s1", "/a", {"k": 1}),
     "update_file_index", {"session_id": "s1", "path": "/a", "metadata": {"k": 1}}),
    (lambda c: c.cache_file("s1", "/a", b"\x00bin"),
     "cache_file", {"session_id": "s1", "path": "/a", "content": b"\x00bin", "metadata": None}),
    (lambda c: c.invalidate_file("s1", "/a"),
     "invalidate_file", {"session_id": "s1", "path": "/a"}),
    (lambda c: c.clear_session_cache("s1"), "clear_session_cache", {"session_id": "s1"}),
    (lambda c: c.subscribe_to_session("s1"), "subscribe_to_session",
     {"session_id": "s1", "since": None}),
    (lambda c: c.subscribe_to_session("s1", since=7), "subscribe_to_session",
     {"session_id": "s1", "since": 7}),
    (lambda c: c.unsubscribe_from_session("s1"), "unsubscribe_from_session", {"session_id": "s1"}),
    (lambda c: c.subscribe_to_all_sessions(), "subscribe_to_all_sessions", {"since": None}),
    (lambda c: c.unsubscribe_from_all_sessions(), "unsubscribe_from_all_sessions", {}),
    (lambda c: c.build_context("s1"), "build_context",
     {"session_id": "s1", "include": ["conversation", "files", "file_index"],
      "max_messages": None, "max_files": None}),
    (lambda c: c.build_context("s1", "files", max_files=2), "build_context",
     {"session_id": "s1", "include": "files", "max_messages": None, "max_files": 2}),
    (lambda c: c.get_conversation_history("s1", offset=2, limit=3), "get_conversation_history",
     {"session_id": "s1", "offset": 2, "limit": 3}),
    (lambda c: c.list_sessions(offset=1), "list_sessions", {"offset": 1, "limit": None}),
    (lambda c: c.build_context("s1", 7), "build_context",
     {"session_id": "s1", "include": 7, "max_messages": None, "max_files": None}),
]


@pytest.mark.parametrize(("call", "op", "args"), REQUESTS)
def test_each_method_sends_its_op_with_api_argument_names(serve, call, op, args):
    peer, client = serve(answer({}))
    call(client)
    assert peer.received[-1]["op"] == op
    sent = dict(peer.received[-1]["args"])
    call_id = sent.pop("call_id", None)
    assert sent == args
    # A call whose effect is stored carries a call id, for an at-most-once resend (§10).
    assert (call_id is not None) == (op in IDEMPOTENT_BY_CALL_ID)
    assert call_id is None or re.fullmatch("[0-9a-f]{32}", call_id)


def test_request_ids_are_distinct(serve):
    peer, client = serve(answer(None))
    client.clear_conversation("s1")
    client.clear_conversation("s1")
    assert len({request["id"] for request in peer.received}) == 3


def session_info(session_id: str) -> dict:
    return {"session_id": session_id, "status": "active", "config": {}, "llm_config": {},
            "metadata": {}, "created_at": T0, "updated_at": T0, "active_tasks": [],
            "conversation_count": 2, "error": None, "pid": 99, "restarts": 1}


def test_session_results_become_session_info(serve):
    _, client = serve(answer([session_info("s1"), session_info("s2")]))
    sessions = client.list_sessions()
    assert [s.session_id for s in sessions] == ["s1", "s2"]
    assert all(isinstance(s, SessionInfo) for s in sessions)
    assert sessions[0].pid == 99
    assert sessions[0].restarts == 1


def test_get_session_info_returns_session_info(serve):
    _, client = serve(answer(session_info("s1")))
    assert client.get_session_info("s1") == SessionInfo.model_validate(session_info("s1"))


def test_history_and_active_files_become_models(serve):
    message = {"role": "user", "content": "hi", "timestamp": T0}
    active = {"path": "/a", "added_at": T0}
    _, client = serve(answer([message]))
    assert client.get_conversation_history("s1") == [Message(role="user", content="hi",
                                                             timestamp=T0)]
    _, client = serve(answer([active]))
    assert client.get_active_files("s1") == [ActiveFile(path="/a", added_at=T0)]


def test_build_context_converts_conversation_and_files(serve):
    context = {"session_id": "s1", "metadata": {"conversation_count": 1},
               "conversation": [{"role": "user", "content": "hi", "timestamp": T0}],
               "files": [{"path": "/a", "added_at": T0}], "file_index": {"/a": {"k": 1}}}
    _, client = serve(answer(context))
    assert client.build_context("s1") == {
        "session_id": "s1", "metadata": {"conversation_count": 1},
        "conversation": [Message(role="user", content="hi", timestamp=T0)],
        "files": [ActiveFile(path="/a", added_at=T0)], "file_index": {"/a": {"k": 1}}}


def test_get_file_returns_cached_file_or_none(serve):
    cached = {"path": "/a", "content": b"\x01", "size": 1, "mtime": None, "metadata": {}}
    _, client = serve(answer(cached))
    assert client.get_file("s1", "/a") == CachedFile(path="/a", content=b"\x01", size=1,
                                                     mtime=None)
    _, client = serve(answer(None))
    assert client.get_file("s1", "/a") is None


def test_plain_results_are_returned_as_sent(serve):
    _, client = serve(answer({"/a": {"k": 1}}))
    assert client.get_file_index("s1") == {"/a": {"k": 1}}
    assert client.daemon_status() == {"/a": {"k": 1}}


# -- concurrency ------------------------------------------------------------------------------

def out_of_order(count: int) -> Callable[[Peer], None]:
    """Collect ``count`` requests, then answer them last first, each with its session id."""
    def script(peer: Peer) -> None:
        batch = [peer.recv() for _ in range(count)]
        for request in reversed(batch):
            peer.reply(request, request["args"]["session_id"])
        echo(peer)
    return script


def test_twenty_threads_sharing_a_client_each_get_their_own_reply(serve):
    _, client = serve(out_of_order(20))
    results: dict[int, Any] = {}

    def call(n: int) -> None:
        results[n] = client.get_session_pid(f"s{n}")

    threads = [threading.Thread(target=call, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LONG)
    assert results == {n: f"s{n}" for n in range(20)}


def batch(count: int, *, reverse: bool) -> Callable[[Peer], None]:
    """Answer subscriptions at once; collect ``count`` other requests, then answer them in
    arrival order or last first, each with its session id."""
    def script(peer: Peer) -> None:
        requests: list[dict] = []
        while len(requests) < count:
            request = peer.recv()
            if request["op"].startswith("subscribe"):
                peer.reply(request, None)
            else:
                requests.append(request)
        for request in reversed(requests) if reverse else requests:
            peer.reply(request, request["args"]["session_id"])
        echo(peer)
    return script


@pytest.mark.parametrize("subscribed", [False, True], ids=["callers-only", "with-drain"])
@pytest.mark.parametrize("reverse", [False, True], ids=["first-first", "last-first"])
def test_the_reader_role_moves_until_every_caller_has_its_reply(serve, reverse, subscribed):
    _, client = serve(batch(20, reverse=reverse))
    if subscribed:
        client.subscribe_to_all_sessions()
    calls = [in_background(lambda n=n: client.get_session_pid(f"s{n}")) for n in range(20)]
    for thread, _, _ in calls:
        thread.join(LONG)
    assert [(results, failures) for _, results, failures in calls] == [
        ([f"s{n}"], []) for n in range(20)]


def test_a_follower_times_out_on_its_own_deadline_while_another_thread_reads(serve):
    def script(peer: Peer) -> None:
        first, _ = peer.recv(), peer.recv()
        peer.release.wait(LONG)
        peer.reply(first, "first")
        echo(peer)

    peer, client = serve(script)
    reader, results, _ = in_background(lambda: client.get_session_pid("s1"))
    wait_until(lambda: reading(client) and len(peer.received) == 2, LONG, "a reader in poll")
    client.timeout = SHORT
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        client.get_session_pid("s2")
    assert time.monotonic() - started < LONG
    peer.release.set()
    reader.join(LONG)
    assert (results, _) == (["first"], [])


def test_a_timeout_in_the_middle_of_a_reply_leaves_the_stream_in_step(serve):
    def script(peer: Peer) -> None:
        first = peer.recv()
        frame = wire.pack_frame({"id": first["id"], "result": "x" * 200_000},
                                wire.DEFAULT_MAX_FRAME)
        peer.conn.sendall(frame[:100_000])
        second = peer.recv()  # the client gave up on the first and asks again
        peer.conn.sendall(frame[100_000:])
        peer.reply(second, "on time")
        echo(peer)

    _, client = serve(script, timeout=SHORT)
    with pytest.raises(RequestTimeoutError):
        client.get_session_pid("s1")
    client.timeout = LONG
    assert client.get_session_pid("s2") == "on time"
    assert client.get_session_pid("s3") == {"session_id": "s3"}


# -- events -----------------------------------------------------------------------------------

def events_during_call(peer: Peer) -> None:
    request = peer.recv()
    for seq in (1, 2, 3):
        peer.push(event(seq))
    peer.reply(request, None)
    echo(peer)


def test_events_pushed_during_a_call_come_out_of_next_event_in_order(serve):
    _, client = serve(events_during_call)
    client.subscribe_to_session("s1")
    received = [client.next_event(LONG) for _ in range(3)]
    assert [e.seq for e in received] == [1, 2, 3]
    assert received[0] == Event(type="file_added", topic="client.session.s1", session_id="s1",
                                payload={"session_id": "s1", "file_path": "/f1"}, seq=1,
                                timestamp=T0)
    assert client.next_event(0) is None


def test_next_event_reads_events_that_arrive_while_no_call_is_in_flight(serve):
    def script(peer: Peer) -> None:
        peer.reply(peer.recv(), None)
        for seq in (1, 2, 3):
            peer.push(event(seq))
        echo(peer)

    _, client = serve(script)
    client.clear_conversation("s1")
    assert [client.next_event(LONG).seq for _ in range(3)] == [1, 2, 3]
    assert DRAIN_THREAD_NAME not in thread_names()


def test_a_thread_waiting_for_events_reads_the_reply_of_another_caller(serve):
    def script(peer: Peer) -> None:
        peer.reply(peer.recv(), "reply")
        peer.push(event(1))
        echo(peer)

    _, client = serve(script)
    waiter, received, _ = in_background(lambda: client.next_event(LONG))
    wait_until(lambda: reading(client), LONG, "the event waiter to read")
    started = time.monotonic()
    assert client.get_session_pid("s1") == "reply"
    assert time.monotonic() - started < LONG / 2  # not held until the waiter's timeout
    waiter.join(LONG)
    assert [e.seq for e in received] == [1]


def test_a_subscribed_client_reads_its_events_while_no_thread_asks_for_them(serve):
    pushed = threading.Event()

    def script(peer: Peer) -> None:
        peer.reply(peer.recv(), None)
        for seq in range(1, 1001):  # 4 MB: the peer's writes block unless the client reads
            peer.push(big_event(seq))
        pushed.set()
        echo(peer)

    _, client = serve(script)
    client.subscribe_to_all_sessions()
    assert pushed.wait(LONG)
    assert client.get_session_pid("s1") == {"session_id": "s1"}
    assert [client.next_event(LONG).seq for _ in range(1000)] == list(range(1, 1001))
    assert client.next_event(0) is None
    client.close()
    assert DRAIN_THREAD_NAME not in thread_names()


def test_past_event_buffer_the_oldest_are_dropped_and_told_as_one_events_gap_per_topic(tmp_path):
    def script(peer: Peer) -> None:
        peer.reply(peer.recv(), None)
        for seq in range(1, 8):  # s1: 1..7, interleaved with the global topic's 101..103
            peer.push(event(seq))
            if seq <= 3:
                peer.push({**event(100 + seq), "topic": "client.global_events"})
        echo(peer)

    peer = Peer(str(tmp_path / "p.sock"), script, HELLO)
    client = Client(peer.path, timeout=LONG, event_buffer=4)
    try:
        check_gaps(client)
    finally:
        client.close()
        peer.stop()
    assert peer.failure is None


def check_gaps(client: Client) -> None:
    client.subscribe_to_all_sessions()
    assert client.get_session_pid("s1") == {"session_id": "s1"}  # after all ten events
    before = utc_now()
    s1_gap, global_gap = client.next_event(0), client.next_event(0)
    assert (s1_gap.type, s1_gap.topic, s1_gap.session_id, s1_gap.seq, s1_gap.payload) == (
        "events_gap", "client.session.s1", "s1", 3,
        {"topic": "client.session.s1", "first_missing": 1, "next_seq": 4})
    assert (global_gap.topic, global_gap.session_id, global_gap.seq, global_gap.payload) == (
        "client.global_events", None, 103,
        {"topic": "client.global_events", "first_missing": 101, "next_seq": 104})
    assert before <= s1_gap.timestamp <= utc_now()
    assert [client.next_event(0).seq for _ in range(4)] == [4, 5, 6, 7]
    assert client.next_event(0) is None


def test_event_buffer_must_be_a_positive_int(serve):
    peer, _ = serve()
    for bad in (0, -1, 1.5, "10"):
        with pytest.raises(InvalidArgumentError) as info:
            Client(peer.path, event_buffer=bad)
        assert info.value.field == "event_buffer"


def test_a_closing_frame_becomes_the_reason_every_later_call_gives(serve):
    def script(peer: Peer) -> None:
        peer.recv()
        peer.push(event(1))
        wire.write_frame(peer.conn, {"closing": {"code": "fell_behind", "message": "fell 9 bytes "
                                                 "behind (client_buffer_bytes=8)"}}, 1024)
        peer.release.wait(LONG)

    _, client = serve(script)
    with pytest.raises(DaemonUnavailableError, match="fell 9 bytes behind"):
        client.subscribe_to_session("s1")
    assert client.next_event(0).seq == 1  # what came before is still delivered
    with pytest.raises(DaemonUnavailableError, match=r"fell 9 bytes behind \(client_buffer") as info:
        client.next_event(0)
    assert info.value.details["closing"] == "fell_behind"


def test_an_error_the_daemon_sends_for_no_request_becomes_the_reason_calls_give(serve):
    def script(peer: Peer) -> None:
        peer.recv()
        wire.write_frame(peer.conn, {"id": None, "error": LimitExceededError(
            "a frame of 99 bytes is larger than the limit of 98 bytes").to_wire()}, 1024)
        peer.release.wait(LONG)

    _, client = serve(script)
    with pytest.raises(DaemonUnavailableError, match="refused a frame: a frame of 99 bytes"):
        client.get_session_pid("s1")


def test_a_subscribed_client_dropped_without_close_ends_its_drain_and_closes_its_fd(tmp_path):
    before = fd_count()
    peer = Peer(str(tmp_path / "p.sock"), echo, HELLO)
    try:
        client = Client(peer.path, timeout=LONG)
        client.subscribe_to_all_sessions()
        drain = next(t for t in threading.enumerate() if t.name == DRAIN_THREAD_NAME)
        del client
        gc.collect()
        drain.join(LONG)
        assert not drain.is_alive()
        peer.thread.join(LONG)  # the peer saw EOF and closed its end
    finally:
        peer.stop()
    assert peer.failure is None
    assert fd_count() == before


def test_close_drops_the_buffered_events_and_next_event_then_raises(serve):
    _, client = serve(events_during_call)
    client.subscribe_to_session("s1")
    wait_until(lambda: len(client._conn.core.events) == 3, LONG, "the three events to be buffered")
    client.close()
    assert len(client._conn.core.events) == 0
    with pytest.raises(DaemonUnavailableError, match="closed"):
        client.next_event(0)


def test_next_event_returns_none_on_timeout(serve):
    _, client = serve()
    assert client.next_event(timeout=SHORT) is None


def test_events_iterator_stops_after_timeout_without_event(serve):
    _, client = serve(events_during_call)
    client.subscribe_to_all_sessions()
    assert [e.seq for e in client.events(timeout=SHORT)] == [1, 2, 3]


# -- timeouts and limits ----------------------------------------------------------------------

def silent_then_late(peer: Peer) -> None:
    """Leave the first request unanswered until the second comes; answer the first late."""
    first = peer.recv()
    second = peer.recv()
    peer.reply(first, "late")
    peer.reply(second, "on time")
    echo(peer)


def test_silent_peer_raises_request_timeout_and_late_reply_is_dropped(serve):
    _, client = serve(silent_then_late, timeout=SHORT)
    with pytest.raises(RequestTimeoutError) as info:
        client.get_session_pid("s1")
    assert info.value.code == "timeout"
    client.timeout = LONG
    assert client.get_session_pid("s2") == "on time"
    assert client.get_session_pid("s3") == {"session_id": "s3"}


def not_reading(peer: Peer) -> None:
    peer.release.wait(LONG)


def test_send_cut_off_by_the_timeout_raises_request_timeout_and_drops_the_connection(serve):
    _, client = serve(not_reading, hello={"pid": 1, "version": "0.1.0"}, timeout=SHORT)
    with pytest.raises(RequestTimeoutError):
        client.cache_file("s1", "/big", b"x" * (8 * 1024 * 1024))  # far beyond socket buffers
    with pytest.raises(DaemonUnavailableError) as info:  # half a frame is on the wire
        client.clear_conversation("s1")
    assert "cut off mid-frame" in info.value.message


def test_request_over_max_request_bytes_raises_before_sending_and_client_stays_usable(serve):
    peer, client = serve()
    with pytest.raises(LimitExceededError) as info:
        client.cache_file("s1", "/a", "x" * 5000)
    assert info.value.code == "limit_exceeded"
    assert "4096" in info.value.message
    assert client.get_session_pid("s1") == {"session_id": "s1"}
    assert peer.ops() == ["hello", "get_session_pid"]


def test_unencodable_argument_raises_invalid_argument_and_sends_nothing(serve):
    peer, client = serve()
    with pytest.raises(InvalidArgumentError):
        client.create_session(metadata={"bad": object()})
    assert client.get_session_pid("s1") == {"session_id": "s1"}
    assert peer.ops() == ["hello", "get_session_pid"]


# -- errors and connection loss ---------------------------------------------------------------

ERRORS = [
    SessionNotFoundError("no session s1", details={"session_id": "s1"}),
    InvalidArgumentError("role must be one of ...", code="invalid_role", field="role"),
    SessionCrashedError("session s1 crashed"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code)
def test_error_reply_is_raised_as_its_class_with_code_and_field(serve, error):
    def script(peer: Peer) -> None:
        peer.error(peer.recv(), error)
        echo(peer)

    _, client = serve(script)
    with pytest.raises(type(error)) as info:
        client.send_message("s1", "nobody", "hi")
    assert info.value == error
    assert (info.value.code, info.value.field) == (error.code, error.field)


def close_after_request(peer: Peer) -> None:
    peer.recv()  # the call is now in flight; hang up without answering


def test_connection_loss_fails_the_waiting_call_and_every_later_one(serve):
    _, client = serve(close_after_request, timeout=SHORT)  # no daemon comes back within it
    with pytest.raises(DaemonUnavailableError) as info:
        client.get_session_pid("s1")
    assert "connection to the daemon lost" in info.value.message
    with pytest.raises(DaemonUnavailableError):
        client.get_session_pid("s1")
    with pytest.raises(DaemonUnavailableError):
        client.next_event()


def test_connection_loss_fails_the_reader_and_every_follower(serve):
    def script(peer: Peer) -> None:
        for _ in range(3):
            peer.recv()  # three calls in flight; hang up without answering

    _, client = serve(script, timeout=SHORT)
    calls = [in_background(lambda: client.get_session_pid("s1")) for _ in range(3)]
    for thread, _, _ in calls:
        thread.join(LONG)
    assert [[type(e) for e in failures] for _, _, failures in calls] == [
        [DaemonUnavailableError]] * 3


def test_events_buffered_before_loss_are_delivered_then_next_event_raises(serve):
    def script(peer: Peer) -> None:
        request = peer.recv()
        peer.push(event(1))
        peer.reply(request, None)

    _, client = serve(script, timeout=SHORT)
    client.subscribe_to_session("s1")
    assert client.next_event(LONG).seq == 1
    with pytest.raises(DaemonUnavailableError):
        client.next_event()


def test_bad_frame_from_peer_is_treated_as_connection_loss(serve):
    def script(peer: Peer) -> None:
        peer.recv()
        wire.write_frame(peer.conn, ["not", "a", "message"], wire.DEFAULT_MAX_FRAME)
        peer.release.wait(LONG)

    _, client = serve(script)
    with pytest.raises(DaemonUnavailableError):
        client.get_session_pid("s1")
    with pytest.raises(DaemonUnavailableError):
        client.get_session_pid("s1")


def test_shutdown_returns_once_the_daemon_closes_the_connection(serve):
    def script(peer: Peer) -> None:
        peer.reply(peer.recv(), None)

    peer, client = serve(script)
    client.shutdown()
    assert peer.ops() == ["hello", "shutdown"]


# -- closing ----------------------------------------------------------------------------------

def test_a_client_starts_no_thread_and_close_leaves_no_fd(tmp_path):
    before = fd_count()
    peer = Peer(str(tmp_path / "p.sock"), echo, HELLO)
    try:
        threads = thread_names()
        client = Client(peer.path, timeout=LONG)
        client.get_session_pid("s1")
        assert client.next_event(0) is None
        assert thread_names() == threads  # every frame was read by the thread that needed it
        client.close()
        client.close()  # idempotent
        peer.thread.join(LONG)  # the peer saw EOF and closed its end
    finally:
        peer.stop()
    assert peer.failure is None
    assert fd_count() == before


def test_context_manager_closes_and_later_calls_raise_daemon_unavailable(serve):
    _, client = serve()
    with client as entered:
        assert entered is client
    with pytest.raises(DaemonUnavailableError):
        client.get_session_pid("s1")
    with pytest.raises(DaemonUnavailableError):
        client.next_event(0)


def test_close_wakes_a_call_waiting_for_its_reply(serve):
    in_flight = threading.Event()

    def script(peer: Peer) -> None:
        peer.recv()
        in_flight.set()
        peer.release.wait(LONG)

    _, client = serve(script)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            client.get_session_pid("s1")
        except BaseException as e:  # noqa: BLE001 - the thread's failure is asserted by the test
            failures.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    assert in_flight.wait(LONG)
    client.close()
    caller.join(LONG)
    assert [type(e) for e in failures] == [DaemonUnavailableError]


def test_close_wakes_a_thread_waiting_for_events(serve):
    _, client = serve()
    waiter, _, failures = in_background(lambda: client.next_event(None))
    wait_until(lambda: reading(client), LONG, "the event waiter to read")
    client.close()
    waiter.join(LONG)
    assert [type(e) for e in failures] == [DaemonUnavailableError]
    assert "closed" in failures[0].message
    assert client._conn.sock.fileno() == -1


def test_close_from_a_signal_handler_inside_next_event_closes_without_deadlock(serve):
    _, client = serve()
    previous = signal.signal(signal.SIGALRM, lambda *_: client.close())
    try:
        signal.setitimer(signal.ITIMER_REAL, SHORT)
        with pytest.raises(DaemonUnavailableError) as info:
            client.next_event(LONG)  # the main thread holds the role, inside poll
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "closed" in info.value.message
    assert client._conn.sock.fileno() == -1


def test_repr_names_socket_pid_and_state(serve):
    peer, client = serve()
    assert repr(client) == f"<Client socket={peer.path!r} daemon_pid=4242 open>"
    client.close()
    assert repr(client) == f"<Client socket={peer.path!r} daemon_pid=4242 closed>"


# -- the package surface ----------------------------------------------------------------------

def test_package_exports_exactly_the_public_api():
    assert sorted(jidocoder.__all__) == sorted([
        "Client", "AsyncClient", "SessionStatus", "SessionConfig", "SessionState", "SessionInfo", "Message",
        "ActiveFile", "CachedFile", "Event", "JidocoderError", "SessionNotFoundError",
        "InvalidTransitionError", "InvalidArgumentError", "LimitExceededError",
        "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError", "SessionCrashedError",
        "StorageError"])
    assert all(hasattr(jidocoder, name) for name in jidocoder.__all__)
    assert jidocoder.__version__ == "0.1.0"


def test_importing_the_client_never_imports_the_daemon():
    code = ("import sys, jidocoder, jidocoder.client; "
            "print(sorted(m for m in sys.modules if m.startswith('jidocoder.daemon')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=LONG)
    assert out.stdout.strip() == "[]"
