"""Events through the real daemon (docs/api.md §4): order, payloads, topics, seq, subscription
changes, the events() iterator, and a subscriber that never reads."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from jidocoder import wire
from tests.support import SHORT, rss_kib, take_events, wait_until

GLOBAL = "client.global_events"
QUIET = 0.1  # how long "no further event" is waited for; every event here comes in milliseconds


def topic_of(session_id: str) -> str:
    return f"client.session.{session_id}"


def assert_quiet(client) -> None:
    event = client.next_event(QUIET)
    assert event is None, f"unexpected event {event}"


def assert_utc(value: datetime) -> None:
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(0)


def assert_consecutive(events) -> None:
    seqs = [event.seq for event in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def status_change(session_id: str, status: str, previous: str) -> tuple:
    return ("session_status", session_id, status, previous)


def as_status(event) -> tuple:
    return (event.type, event.payload["session_id"], event.payload["status"],
            event.payload["previous_status"])


# -- lifecycle on the global topic ------------------------------------------------------------------

def test_create_sends_session_created_then_initializing_to_active_on_the_global_topic(client):
    client.subscribe_to_all_sessions()
    session_id = client.create_session(metadata={"owner": "me"})
    created, active = take_events(client, 2)
    info = client.get_session_info(session_id)
    assert (created.type, created.topic, created.session_id) == ("session_created", GLOBAL, session_id)
    assert created.payload == {"session_id": session_id, "metadata": {"owner": "me"}}
    assert (active.type, active.topic, active.session_id) == ("session_status", GLOBAL, session_id)
    assert active.payload == {"session_id": session_id, "status": "active",
                              "previous_status": "initializing", "updated_at": info.updated_at}
    assert_utc(active.payload["updated_at"])
    assert active.seq == created.seq + 1
    assert_utc(created.timestamp)
    assert created.timestamp <= active.timestamp
    assert_quiet(client)


def test_sessions_created_at_once_each_announce_created_before_active_with_gapless_seq(daemon):
    with daemon.client() as watcher, daemon.client() as maker:
        watcher.subscribe_to_all_sessions()
        barrier = threading.Barrier(5)

        def create(n):
            barrier.wait(SHORT)
            return maker.create_session(metadata={"n": n})

        with ThreadPoolExecutor(5) as pool:
            ids = list(pool.map(create, range(5)))
        events = take_events(watcher, 10)
        assert_quiet(watcher)
    assert all(event.topic == GLOBAL for event in events)
    assert_consecutive(events)
    for n, session_id in enumerate(ids):
        own = [event for event in events if event.session_id == session_id]
        assert [(e.type, e.payload.get("status")) for e in own] == [("session_created", None),
                                                                   ("session_status", "active")]
        assert own[0].payload == {"session_id": session_id, "metadata": {"n": n}}


def test_terminate_sends_terminating_terminated_then_session_terminated(client):
    client.subscribe_to_all_sessions()
    session_id = client.create_session()
    creation = take_events(client, 2)
    before = client.get_session_info(session_id).updated_at
    client.terminate_session(session_id)
    terminating, terminated, ended = take_events(client, 3)
    assert_quiet(client)

    assert as_status(terminating) == status_change(session_id, "terminating", "active")
    assert as_status(terminated) == status_change(session_id, "terminated", "terminating")
    for event in (terminating, terminated):
        assert set(event.payload) == {"session_id", "status", "previous_status", "updated_at"}
        assert_utc(event.payload["updated_at"])
    assert before < terminating.payload["updated_at"] < terminated.payload["updated_at"]
    assert ended.type == "session_terminated"
    assert set(ended.payload) == {"session_id", "reason"}
    assert ended.payload["session_id"] == session_id
    assert isinstance(ended.payload["reason"], str) and ended.payload["reason"]
    assert all((e.topic, e.session_id) == (GLOBAL, session_id) for e in (terminating, terminated, ended))
    assert_consecutive(creation + [terminating, terminated, ended])


# -- the session topic ----------------------------------------------------------------------------

def test_session_topic_carries_conversation_and_file_events_with_exact_payloads(daemon):
    with daemon.client() as client, daemon.client() as lifecycle:
        lifecycle.subscribe_to_all_sessions()
        session_id = client.create_session(config={"max_files": 2})
        take_events(lifecycle, 2)
        client.subscribe_to_session(session_id)

        client.send_message(session_id, "assistant", "hello")
        [message] = client.get_conversation_history(session_id)
        client.clear_conversation(session_id)
        client.add_file(session_id, "/p/a.py")
        client.add_file(session_id, "/p/a.py")  # already active: keeps its place, no event
        client.update_file_index(session_id, "/p/a.py", {"lang": "python"})
        client.remove_file(session_id, "/p/a.py")
        client.remove_file(session_id, "/p/a.py")  # absent: no event
        for path in ("/p/b.py", "/p/c.py", "/p/d.py"):  # d pushes b out (max_files 2)
            client.add_file(session_id, path)
        events = take_events(client, 9)
        assert_quiet(client)
        assert_quiet(lifecycle)  # none of these is a lifecycle event

    def file_event(kind, path):
        return (kind, {"session_id": session_id, "file_path": path})

    assert [(e.type, e.payload) for e in events] == [
        ("conversation_added", {"session_id": session_id, "role": "assistant", "content": "hello",
                                "timestamp": message.timestamp}),
        ("conversation_cleared", {"session_id": session_id}),
        file_event("file_added", "/p/a.py"),
        file_event("file_index_updated", "/p/a.py"),
        file_event("file_removed", "/p/a.py"),
        file_event("file_added", "/p/b.py"),
        file_event("file_added", "/p/c.py"),
        file_event("file_added", "/p/d.py"),
        file_event("file_removed", "/p/b.py"),
    ]
    assert_utc(events[0].payload["timestamp"])
    assert all((e.topic, e.session_id) == (topic_of(session_id), session_id) for e in events)
    assert_consecutive(events)


def test_a_client_on_both_topics_gets_each_event_once_with_the_session_topic_and_its_seq(daemon):
    with daemon.client() as both, daemon.client() as session_only, daemon.client() as global_only:
        for c in (both, global_only):
            c.subscribe_to_all_sessions()
        session_id = both.create_session()
        take_events(both, 2)
        take_events(global_only, 2)
        both.subscribe_to_session(session_id)
        session_only.subscribe_to_session(session_id)

        both.send_message(session_id, "user", "hi")
        both.terminate_session(session_id)
        seen_by_both = take_events(both, 4)
        seen_by_session_only = take_events(session_only, 4)
        seen_by_global_only = take_events(global_only, 3)
        for c in (both, session_only, global_only):
            assert_quiet(c)

    expected_types = ["conversation_added", "session_status", "session_status", "session_terminated"]
    assert [e.type for e in seen_by_both] == expected_types
    assert all(e.topic == topic_of(session_id) for e in seen_by_both)
    assert [(e.type, e.topic, e.seq, e.payload) for e in seen_by_both] == \
        [(e.type, e.topic, e.seq, e.payload) for e in seen_by_session_only]
    assert_consecutive(seen_by_both)
    assert [e.type for e in seen_by_global_only] == expected_types[1:]
    assert all(e.topic == GLOBAL for e in seen_by_global_only)
    assert [e.payload for e in seen_by_global_only] == [e.payload for e in seen_by_both[1:]]
    assert seen_by_global_only[0].seq == 3  # after session_created and → active, gapless


def test_events_of_one_session_do_not_reach_a_subscriber_of_another(daemon):
    with daemon.client() as client, daemon.client() as watcher:
        a = client.create_session()
        b = client.create_session()
        watcher.subscribe_to_session(b)
        client.send_message(a, "user", "to a")
        client.add_file(a, "/p/a.py")
        client.update_file_index(a, "/p/a.py", {"k": 1})
        client.clear_conversation(a)
        client.terminate_session(a)
        client.send_message(b, "user", "to b")  # the marker: everything about a came before it
        [event] = take_events(watcher, 1)
        assert_quiet(watcher)
    assert (event.type, event.session_id, event.topic) == ("conversation_added", b, topic_of(b))
    assert event.payload["content"] == "to b"


def test_unsubscribe_from_session_stops_delivery_before_it_returns(daemon):
    with daemon.client() as client, daemon.client() as maker:
        session_id = client.create_session()
        client.subscribe_to_all_sessions()
        client.subscribe_to_session(session_id)
        client.send_message(session_id, "user", "seen")
        assert [e.type for e in take_events(client, 1)] == ["conversation_added"]
        assert client.unsubscribe_from_session(session_id) is None
        client.send_message(session_id, "user", "not seen")
        other = maker.create_session()  # a global event: comes after anything "not seen" made
        first = take_events(client, 1)[0]
    assert (first.type, first.session_id) == ("session_created", other)


def test_unsubscribe_from_all_sessions_stops_delivery_before_it_returns(daemon):
    with daemon.client() as client, daemon.client() as maker:
        session_id = client.create_session()
        client.subscribe_to_all_sessions()
        client.subscribe_to_session(session_id)
        assert client.unsubscribe_from_all_sessions() is None
        maker.create_session()  # global only: must not arrive
        client.send_message(session_id, "user", "marker")
        first = take_events(client, 1)[0]
        assert_quiet(client)
    assert (first.type, first.session_id) == ("conversation_added", session_id)


# -- order within a session ------------------------------------------------------------------------

def test_session_and_daemon_made_events_arrive_in_the_order_they_happened(client):
    session_id = client.create_session()
    client.subscribe_to_session(session_id)
    client.send_message(session_id, "user", "one")
    client.add_file(session_id, "/p/a.py")
    client.clear_conversation(session_id)
    client.terminate_session(session_id)
    events = take_events(client, 6)
    assert_quiet(client)
    assert [(e.type, e.payload.get("status")) for e in events] == [
        ("conversation_added", None), ("file_added", None), ("conversation_cleared", None),
        ("session_status", "terminating"), ("session_status", "terminated"),
        ("session_terminated", None)]
    assert_consecutive(events)


def test_a_call_to_an_idle_session_announces_active_before_the_change_it_makes(client):
    session_id = client.create_session(config={"timeout_minutes": 0.01})  # idle after 0.6 s
    client.subscribe_to_session(session_id)
    [idle] = take_events(client, 1)
    assert as_status(idle) == status_change(session_id, "idle", "active")
    client.send_message(session_id, "user", "wake up")
    active, added = take_events(client, 2)
    assert as_status(active) == status_change(session_id, "active", "idle")
    assert added.type == "conversation_added"
    assert idle.payload["updated_at"] < active.payload["updated_at"]
    assert_consecutive([idle, active, added])


# -- reading events -------------------------------------------------------------------------------

def test_events_iterator_yields_what_came_and_ends_after_the_timeout(client):
    session_id = client.create_session()
    client.subscribe_to_session(session_id)
    for n in range(3):
        client.send_message(session_id, "user", f"message {n}")
    started = time.monotonic()
    got = list(client.events(timeout=0.3))
    elapsed = time.monotonic() - started
    assert [e.payload["content"] for e in got] == ["message 0", "message 1", "message 2"]
    assert 0.3 <= elapsed < 0.3 + SHORT
    started = time.monotonic()
    assert list(client.events(timeout=0.2)) == []
    assert 0.2 <= time.monotonic() - started < 0.2 + SHORT


# -- a subscriber that never reads ----------------------------------------------------------------

FLOOD = 2500  # events of ~4 KB: ~10 MB the daemon would hold if it buffered without bound
RAW_MAX = 1024 * 1024


def raw_subscriber(path: str, session_id: str) -> socket.socket:
    """A connection speaking the protocol by hand: hello and two subscriptions, then silence."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(SHORT)
    raw.connect(path)
    requests = [("hello", {}), ("subscribe_to_all_sessions", {}),
                ("subscribe_to_session", {"session_id": session_id})]
    for request_id, (op, args) in enumerate(requests, 1):
        wire.write_frame(raw, {"id": request_id, "op": op, "args": args}, RAW_MAX)
        reply = wire.read_frame(raw, RAW_MAX)
        assert reply["id"] == request_id and "error" not in reply, reply
    return raw


def test_a_subscriber_that_never_reads_is_disconnected_and_costs_bounded_memory(daemon_factory):
    # The events held for resumption (event_history per topic, docs/api.md §10) are memory the
    # daemon means to hold; kept small here, so that what is measured is the subscriber's cost.
    daemon = daemon_factory(client_buffer_bytes=65536, event_history=8)
    content = "x" * 4096
    with daemon.client() as producer, daemon.client() as reader:
        session_id = producer.create_session(config={"persistence_enabled": False})
        reader.subscribe_to_session(session_id)
        raw = raw_subscriber(daemon.socket, session_id)
        with raw:
            producer.send_message(session_id, "user", content)  # warm-up of every buffer on the way
            rss_before = rss_kib(daemon.pid)
            for _ in range(FLOOD):
                producer.send_message(session_id, "user", content)
            rss_growth = rss_kib(daemon.pid) - rss_before
            wait_until(lambda: "client_buffer_bytes=65536" in daemon.log_text(), SHORT,
                       "the daemon to log why it dropped the subscriber")
            received = b""
            while chunk := raw.recv(65536):  # what the kernel held for it, then EOF: dropped
                received += chunk
        assert rss_growth < 4 * 1024, f"the daemon grew by {rss_growth} KiB"
        assert 0 < len(received) < FLOOD * len(content)

        events = take_events(reader, FLOOD + 1)  # a reading subscriber missed nothing
        assert {e.type for e in events} == {"conversation_added"}
        assert_consecutive(events)
        producer.send_message(session_id, "user", "after")
        assert producer.get_session_info(session_id).conversation_count == 100  # max_history
        assert take_events(reader, 1)[0].payload["content"] == "after"

    [line] = [line for line in daemon.log_text().splitlines() if "client_buffer_bytes=65536" in line]
    assert "disconnected" in line and f"client {os.getpid()}" in line
    assert daemon.proc.poll() is None
