"""Direct channels (docs/protocol.md): a Client's session calls go straight to the session's
process. Most acceptance behaviour runs on this path through the other suites (a Client uses
it by default: crashes, hangs, hibernation, reconnect); here, what is the channel's own."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import pytest

from jidocoder import (Client, RequestTimeoutError, SessionCrashedError, SessionNotFoundError,
                       wire)
from tests.integration.test_events import RAW_MAX, raw_subscriber
from tests.integration.test_reconnect import call_across_a_daemon_kill, in_background
from tests.support import (EXPIRES, LONG, SHORT, check_settled, contents, cpu_seconds, fd_count,
                           process_alive, rss_kib, take_events, wait_until)


def channel_pid(client: Client, session_id: str) -> int:
    return client._direct.channels[session_id].pid


def test_calls_go_on_a_channel_the_daemon_does_not_keep(daemon):
    with daemon.client() as client:
        session_id = client.create_session()
        daemon_fds = fd_count(daemon.pid)
        client.send_message(session_id, "user", "one")
        pid = client.get_session_pid(session_id)
        assert channel_pid(client, session_id) == pid
        assert fd_count(daemon.pid) == daemon_fds  # handed out, both ends closed
        session_fds = fd_count(pid)
        with daemon.client() as other:
            other.get_active_files(session_id)
            assert fd_count(pid) == session_fds + 1  # one per client using it
        wait_until(lambda: fd_count(pid) == session_fds, SHORT, "the closed channel to go")
        assert contents(client, session_id) == ["one"]


def test_a_subscriber_sees_its_calls_events_before_the_reply(daemon):
    with daemon.client() as client:
        session_id = client.create_session()
        client.subscribe_to_session(session_id)
        for i in range(50):
            client.send_message(session_id, "user", f"m{i}")
            event = client.next_event(timeout=0)  # already here: the reply waited for it
            assert event is not None and event.payload["content"] == f"m{i}"


def test_a_call_its_process_dies_serving_raises_crashed_and_the_next_is_served(daemon_factory):
    daemon = daemon_factory(debug_ops=True)
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session()
        client.send_message(session_id, "user", "before")
        pid = client.get_session_pid(session_id)
        spent = cpu_seconds(pid)
        thread, outcome = in_background(
            lambda: client._call("debug_hang", {"session_id": session_id, "seconds": 60}))
        # debug_hang busy-loops: its process burning CPU says the call has begun
        wait_until(lambda: cpu_seconds(pid) > spent + 0.2, SHORT, "the call to begin")
        os.kill(pid, signal.SIGKILL)
        thread.join(LONG)
        assert isinstance(outcome.get("error"), SessionCrashedError)
        client.send_message(session_id, "user", "after")  # on a channel to the successor
        assert client.get_session_pid(session_id) != pid
        assert contents(client, session_id) == ["before", "after"]


def test_a_call_the_dead_process_never_read_is_served_by_its_successor(daemon):
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session()
        client.send_message(session_id, "user", "before")
        pid = client.get_session_pid(session_id)
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more
        thread, outcome = in_background(lambda: client.send_message(session_id, "user", "queued"))
        wait_until(lambda: client._direct.channels[session_id].calls.in_flight, SHORT, "the call")
        os.kill(pid, signal.SIGKILL)
        thread.join(LONG)
        assert outcome == {"result": None}
        assert contents(client, session_id) == ["before", "queued"]


def test_a_call_cut_off_mid_frame_is_never_applied_and_the_next_takes_a_new_channel(daemon):
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session()
        client.send_message(session_id, "user", "before")
        pid = client.get_session_pid(session_id)
        os.kill(pid, signal.SIGSTOP)  # more than the socket's buffers hold stays unsent
        try:
            client.timeout = EXPIRES * 5
            with pytest.raises(RequestTimeoutError, match="not applied"):
                client.send_message(session_id, "user", "z" * (4 << 20))
        finally:
            os.kill(pid, signal.SIGCONT)
        client.timeout = SHORT  # the closed channel is replaced; the live process not awaited
        client.send_message(session_id, "user", "after")
        assert contents(client, session_id) == ["before", "after"]
        assert client.get_session_pid(session_id) == pid


def test_a_terminated_sessions_channel_ends_with_not_found(daemon):
    with daemon.client() as client, daemon.client() as other:
        session_id = client.create_session()
        client.send_message(session_id, "user", "x")
        other.terminate_session(session_id)
        with pytest.raises(SessionNotFoundError):
            client.send_message(session_id, "user", "y")


def test_a_daemon_killed_while_a_direct_write_is_in_flight_stores_it_once(daemon_factory):
    daemon = daemon_factory(debug_ops=True)
    with Client(daemon.socket, timeout=LONG) as writer:
        session_id = writer.create_session()
        writer.subscribe_to_session(session_id)
        writer.send_message(session_id, "user", "before")
        outcome = call_across_a_daemon_kill(daemon, writer, session_id,
                                            lambda: writer.send_message(session_id, "user", "once"))
        assert outcome == {"result": None}
        writer.send_message(session_id, "user", "after")
        assert contents(writer, session_id) == ["before", "once", "after"]
        types = [e.type for e in take_events(writer, 3, timeout=SHORT)]
        assert "conversation_added" in types or "events_gap" in types


def test_a_subscriber_slower_than_the_session_paces_it_and_misses_nothing(daemon_factory):
    # Direct calls never wait on the daemon: without pacing (daemon/pacing.py) this subscriber,
    # reading all along but slower than the session answers, would fall 64 KiB behind and be
    # dropped. With it, the session waits for the subscriber instead.
    daemon = daemon_factory(client_buffer_bytes=65536)
    count, content = 400, "y" * 4096
    with daemon.client() as producer:
        session_id = producer.create_session()
        raw = raw_subscriber(daemon.socket, session_id)
        with raw:
            got: list = []
            reader = threading.Thread(target=read_slowly, args=(raw, count, got))
            reader.start()
            for i in range(count):
                producer.send_message(session_id, "user", f"{i:04d}{content}")
            reader.join(LONG)
        frames = [frame for frame in got if "event" in frame]
        assert [f["event"]["payload"]["content"][:4] for f in frames] == [f"{i:04d}" for i in range(count)]
        assert not [frame for frame in got if "closing" in frame]
        assert contents(producer, session_id) == [f"{i:04d}{content}" for i in range(count - 100, count)]
    assert "behind" not in daemon.log_text()


def read_slowly(raw, count: int, got: list) -> None:
    """Take frames 2 KiB at a time, with a pause after each read: slower than a session makes
    4 KiB events (the pause shapes the load; nothing waits on it)."""
    decoder = wire.FrameDecoder(RAW_MAX)
    events = 0
    while events < count:
        data = raw.recv(2048)
        if not data:
            return
        for frame in decoder.feed(data):
            got.append(frame)
            events += "event" in frame
        time.sleep(0.0002)


def test_a_client_that_never_reads_its_replies_is_throttled_and_blocks_no_other(daemon):
    # 400 requests for a 1 MiB history each, sent on one channel and never read: served a batch
    # at a time (serving.CHANNEL_BATCH), so the session holds one batch of replies, not 400 MiB,
    # and still serves the other clients' channels.
    big = "z" * 65536
    with daemon.client() as greedy, daemon.client() as other:
        session_id = greedy.create_session()
        for i in range(16):
            greedy.send_message(session_id, "user", f"{i:02d}{big}")
        pid = greedy.get_session_pid(session_id)
        rss_before = rss_kib(pid)
        channel = greedy._direct.channels[session_id]
        deadline = time.monotonic() + LONG
        frames = [greedy._conn.core.direct_request(
            "get_conversation_history", {"session_id": session_id, "offset": 0, "limit": None},
            deadline)[1] for _ in range(400)]
        channel.sock.sendall(b"".join(frames))  # ~40 KB: the kernel takes it all
        other.send_message(session_id, "user", "served meanwhile")
        assert other.get_active_files(session_id) == []
        assert rss_kib(pid) - rss_before < 64 * 1024, "the session buffered more than a batch"
        assert process_alive(pid)
    with daemon.client() as reader:
        stored = contents(reader, session_id)
    assert stored == [f"{i:02d}{big}" for i in range(16)] + ["served meanwhile"]


def test_a_daemon_out_of_fds_answers_relay_and_the_call_goes_relayed(daemon):
    # The one fallback (docs/protocol.md): no channel can be made, so this call goes through
    # the daemon, and the next call, with fds to spare again, gets its channel.
    with daemon.client() as client:
        session_id = client.create_session()
        client.get_session_pid(session_id)  # its process serves: only the socketpair is left
        soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (fd_count(daemon.pid), hard))
        try:
            client.send_message(session_id, "user", "relayed")
            assert session_id not in client._direct.channels
        finally:
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
        client.send_message(session_id, "user", "direct")
        assert channel_pid(client, session_id) == client.get_session_pid(session_id)
        assert contents(client, session_id) == ["relayed", "direct"]


def test_threads_sharing_a_client_pipeline_on_its_channel_and_a_kill_settles_each_call(daemon):
    # 8 threads, one Client, one channel: their calls are in flight together (served in order,
    # in groups). The session is SIGKILLed mid-stream: each call either returned (stored once),
    # raised SessionCrashedError (begun: stored or not), or was served by the successor.
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session(config={"max_history": 1000})
        pid = client.get_session_pid(session_id)
        outcomes: dict[str, str] = {}

        def write(thread: int) -> None:
            for i in range(50):
                content = f"t{thread}-{i}"
                try:
                    client.send_message(session_id, "user", content)
                    outcomes[content] = "stored"
                except SessionCrashedError:
                    outcomes[content] = "crashed"

        threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(outcomes) >= 100, LONG, "100 calls answered")
        os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(LONG)
        check_settled(outcomes, contents(client, session_id), writers=8, each=50)
        assert client.get_session_pid(session_id) != pid
