"""Calls and events across a daemon that dies (docs/api.md §10): the real daemon, killed with
SIGKILL and started again on the same socket and state dir, and Clients that are never made
again by hand."""

from __future__ import annotations

import os
import signal
import threading

from jidocoder import Client, Event
from tests.support import LONG, SHORT, contents, process_alive, take_events, wait_until


def restart(daemon) -> None:
    """SIGKILL the daemon (unless dead already), reap it and its sessions, start it again."""
    daemon.kill()
    daemon.start()


def in_background(call):
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def call_across_a_daemon_kill(daemon, client, session_id: str, call) -> dict:
    """``call`` sent while its session's next commit kills the daemon, which comes back: the
    call's outcome once the client has resent it (``{"result": ...}`` or ``{"error": ...}``)."""
    client._call("debug_kill_daemon_after_commit", {"session_id": session_id})
    thread, outcome = in_background(call)
    wait_until(lambda: daemon.proc.poll() is not None, SHORT, "the session to kill the daemon")
    restart(daemon)
    thread.join(LONG)
    return outcome


def assert_no_silent_hole(events: list[Event], topic: str) -> None:
    """Each event of ``topic`` follows the one before it by one seq, or an events_gap says
    exactly what is missing; no seq comes twice."""
    seqs = [e for e in events if e.topic == topic]
    for before, after in zip(seqs, seqs[1:], strict=False):
        if after.type == "events_gap":
            assert after.payload["topic"] == topic
            assert after.payload["first_missing"] == before.seq + 1, (before, after)
            assert after.seq == after.payload["next_seq"] - 1
        else:
            assert after.seq == before.seq + 1, (before, after)


def test_a_writer_whose_daemon_dies_between_commit_and_reply_stores_each_message_once(daemon):
    with Client(daemon.socket, timeout=LONG) as writer:
        session_id = writer.create_session()
        writer.send_message(session_id, "user", "before")
        writer._call("debug_kill_daemon_after_commit", {"session_id": session_id})
        thread, outcome = in_background(
            lambda: writer.send_message(session_id, "user", "committed, reply lost"))
        wait_until(lambda: daemon.proc.poll() is not None, SHORT, "the session to kill the daemon")
        assert daemon.proc.returncode == -signal.SIGKILL
        restart(daemon)
        thread.join(LONG)
        assert outcome == {"result": None}  # the resend was answered with the first result
        writer.send_message(session_id, "user", "after")
        assert contents(writer, session_id) == ["before", "committed, reply lost", "after"]


def test_a_create_whose_reply_was_lost_is_not_made_twice(daemon):
    with Client(daemon.socket, timeout=LONG) as client:
        sid = client.create_session()
        # The daemon dies as the session stores this message; a create sent meanwhile waits.
        outcome = call_across_a_daemon_kill(daemon, client, sid, lambda: client.send_message(sid, "user", "m"))
        assert outcome == {"result": None}
        created = client.create_session(metadata={"n": 1})
        assert sorted(i.session_id for i in client.list_sessions()) == sorted([sid, created])
        assert contents(client, sid) == ["m"]


def test_a_consumer_with_since_sees_every_event_or_one_explicit_gap_across_a_sigkill(daemon):
    with Client(daemon.socket, timeout=LONG) as producer, \
            Client(daemon.socket, timeout=LONG) as consumer:
        session_id = producer.create_session()
        topic = f"client.session.{session_id}"
        consumer.subscribe_to_session(session_id, since=0)
        for n in range(5):
            producer.send_message(session_id, "user", f"a{n}")
        before = take_events(consumer, 6)  # session_status (→ active), then the 5 messages
        assert [e.seq for e in before] == [1, 2, 3, 4, 5, 6]
        restart(daemon)
        for n in range(3):  # the producer reconnects by itself too
            producer.send_message(session_id, "user", f"b{n}")
        after = take_events(consumer, 4)  # the gap (history is in memory only), then 3 messages
        events = before + after
        assert_no_silent_hole(events, topic)
        gap = after[0]
        assert gap.type == "events_gap"
        assert gap.payload["first_missing"] == 7
        assert [e.payload["content"] for e in after[1:]] == ["b0", "b1", "b2"]
        assert after[1].seq == gap.payload["next_seq"] > 6  # seq never starts again at 1
        assert contents(producer, session_id) == [f"a{n}" for n in range(5)] + \
            [f"b{n}" for n in range(3)]


def test_since_replays_the_held_events_then_the_live_ones_without_gap_or_duplicate(daemon):
    with daemon.client() as producer, daemon.client() as late:
        session_id = producer.create_session()
        for n in range(10):
            producer.send_message(session_id, "user", f"m{n}")
        late.subscribe_to_session(session_id, since=4)
        producer.send_message(session_id, "user", "live")
        events = take_events(late, 8)
        assert [e.seq for e in events] == list(range(5, 13))
        assert [e.payload.get("content") for e in events] == [f"m{n}" for n in range(3, 10)] + ["live"]
        assert late.next_event(0) is None


def test_since_older_than_the_history_gets_one_gap_first(daemon_factory):
    daemon = daemon_factory(event_history=3)
    with daemon.client() as producer, daemon.client() as late:
        session_id = producer.create_session()
        for n in range(6):
            producer.send_message(session_id, "user", f"m{n}")  # seqs 2..7; 5, 6, 7 held
        late.subscribe_to_session(session_id, since=0)
        events = take_events(late, 4)
        assert events[0].type == "events_gap"
        assert events[0].payload == {"topic": f"client.session.{session_id}",
                                     "first_missing": 1, "next_seq": 5}
        assert [e.seq for e in events[1:]] == [5, 6, 7]


def test_seq_of_the_global_topic_continues_after_a_graceful_restart(daemon):
    with daemon.client() as client:
        client.subscribe_to_all_sessions()
        client.create_session()
        last = take_events(client, 2)[-1].seq
    daemon.stop()
    daemon.start()
    with daemon.client() as client:
        client.subscribe_to_all_sessions()
        client.create_session()
        assert take_events(client, 2)[0].seq > last


def test_a_call_not_answered_before_timeout_says_whether_it_may_have_been_applied(daemon):
    client = Client(daemon.socket, timeout=1.0)
    try:
        session_id = client.create_session()
        daemon.kill()  # and no daemon comes back
        try:
            client.send_message(session_id, "user", "x")
        except Exception as e:  # noqa: BLE001
            error = e
        assert type(error).__name__ == "DaemonUnavailableError", error
        assert error.details.get("may_have_been_applied") is False, error
        assert "not applied" in error.message
    finally:
        client.close()
    daemon.start()  # for the fixture's teardown


def test_the_drain_of_a_subscribed_client_survives_a_restart_and_ends_with_close(daemon):
    before = set(threading.enumerate())
    client = Client(daemon.socket, timeout=LONG)
    session_id = client.create_session()
    client.subscribe_to_session(session_id)
    restart(daemon)
    client.send_message(session_id, "user", "after")
    kinds = [e.type for e in take_events(client, 2)]
    assert kinds == ["events_gap", "conversation_added"] or kinds[-1] == "conversation_added"
    client.close()
    assert set(threading.enumerate()) == before
    assert not any(process_alive(p) for p in daemon.seen_pids if p != daemon.pid)
    os.sched_yield()


def test_a_client_whose_consumer_stops_reading_holds_event_buffer_events_and_tells_the_gap(daemon):
    with daemon.client() as producer, Client(daemon.socket, event_buffer=5) as slow:
        session_id = producer.create_session()
        slow.subscribe_to_session(session_id)
        for n in range(20):
            producer.send_message(session_id, "user", f"m{n}")
        # Its drain reads them all; it holds only the last 5 (seqs 17..21).
        wait_until(lambda: len(slow._conn.core.events) == 5 and
                   slow._conn.core.events[-1].seq == 21, SHORT, "the drain to read every event")
        events = take_events(slow, 6)
        assert events[0].type == "events_gap"
        assert events[0].payload == {"topic": f"client.session.{session_id}",
                                     "first_missing": 2, "next_seq": 17}
        assert [e.seq for e in events[1:]] == [17, 18, 19, 20, 21]
        assert [e.payload["content"] for e in events[1:]] == [f"m{n}" for n in range(15, 20)]
