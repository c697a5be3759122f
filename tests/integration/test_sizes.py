"""Sizes (docs/api.md §9): replies of any size, paging, events that always fit an empty backlog, a
client that falls behind told why, a bounded Client event buffer, bounded decoding."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from jidocoder import Client, DaemonUnavailableError, InvalidArgumentError, LimitExceededError, wire
from jidocoder.client import DRAIN_THREAD_NAME
from tests.support import LONG, SHORT, fd_count, take_events, wait_until

MiB = 1024 * 1024


def topic_of(session_id: str) -> str:
    return f"client.session.{session_id}"


def vm_kib(pid: int, field: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status (VmHWM: the peak resident memory), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_100_mib_history_is_answered_in_full_byte_for_byte(daemon):
    # 20 messages of 5 MiB, each different (and not only ASCII): 100 MiB held by the session.
    contents = [chr(0x41 + i) * (5 * MiB - 8) + f"é{i:06d}" for i in range(20)]
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session(config={"max_history": 20})
        for content in contents:
            client.send_message(session_id, "user", content)
        history = client.get_conversation_history(session_id)
        assert sum(len(m.content.encode()) for m in history) == 100 * MiB
        assert [m.content for m in history] == contents
        built = client.build_context(session_id, ["conversation"])
        assert [m.content for m in built["conversation"]] == contents
        assert built["metadata"]["conversation_count"] == 20
        # the daemon keeps serving small calls after the large replies
        assert client.get_session_info(session_id).conversation_count == 20


def test_history_and_sessions_are_paged_with_exact_slices_oldest_first(client):
    session_id = client.create_session()
    for i in range(7):
        client.send_message(session_id, "user", f"m{i}")
    page = lambda **kw: [m.content for m in client.get_conversation_history(session_id, **kw)]  # noqa: E731
    assert page() == [f"m{i}" for i in range(7)]
    assert page(offset=2, limit=3) == ["m2", "m3", "m4"]
    assert page(offset=5) == ["m5", "m6"]
    assert page(limit=0) == [] and page(offset=9) == []

    ids = [session_id] + [client.create_session() for _ in range(4)]
    assert [s.session_id for s in client.list_sessions()] == ids
    assert [s.session_id for s in client.list_sessions(offset=1, limit=2)] == ids[1:3]
    assert [s.session_id for s in client.list_sessions(offset=3)] == ids[3:]
    assert client.list_sessions(offset=5) == []


@pytest.mark.parametrize("call", ["history", "sessions"])
@pytest.mark.parametrize("offset, limit, field", [(-1, None, "offset"), (0, -1, "limit"),
                                                  ("1", None, "offset"), (0, 2.5, "limit")])
def test_a_negative_or_non_int_offset_or_limit_is_an_invalid_argument(client, call, offset, limit,
                                                                      field):
    session_id = client.create_session()
    with pytest.raises(InvalidArgumentError) as info:
        if call == "history":
            client.get_conversation_history(session_id, offset=offset, limit=limit)
        else:
            client.list_sessions(offset=offset, limit=limit)
    assert (info.value.code, info.value.field) == ("invalid_argument", field)
    assert client.list_sessions()[0].session_id == session_id  # still served


def test_a_9_mib_event_reaches_three_subscribers_with_empty_backlogs(daemon):
    content = "z" * (9 * MiB)  # more than client_buffer_bytes (8 MiB by default)
    with daemon.client(timeout=LONG) as producer:
        session_id = producer.create_session(config={"persistence_enabled": False})
        subscribers = [daemon.client(timeout=LONG) for _ in range(3)]
        try:
            for subscriber in subscribers:
                subscriber.subscribe_to_session(session_id)
            producer.send_message(session_id, "user", content)
            for subscriber in subscribers:
                [event] = take_events(subscriber, 1, LONG)
                assert event.type == "conversation_added"
                assert event.payload["content"] == content
                assert subscriber.get_session_info(session_id).conversation_count == 1  # connected
        finally:
            for subscriber in subscribers:
                subscriber.close()
    assert "behind" not in daemon.log_text()


def test_a_subscriber_that_stops_reading_is_dropped_and_its_client_says_it_fell_behind(
        daemon_factory):
    daemon = daemon_factory(client_buffer_bytes=65536)
    with daemon.client() as producer, daemon.client() as stalled:
        session_id = producer.create_session(config={"persistence_enabled": False})
        stalled.subscribe_to_session(session_id)
        # Holding the client's lock keeps every thread of it (its drain too) from reading.
        with stalled._conn._lock:
            sent = 0
            while "fell" not in daemon.log_text():
                producer.send_message(session_id, "user", "x" * 4096)
                sent += 1
                assert sent < 10_000, "the daemon never dropped the stalled subscriber"
        received = []
        with pytest.raises(DaemonUnavailableError) as info:
            while True:  # what it had not read is still delivered, then the reason
                event = stalled.next_event(SHORT)
                assert event is not None, "neither the closing frame nor EOF came"
                received.append(event)
        assert "fell" in info.value.message and "behind" in info.value.message
        assert "client_buffer_bytes=65536" in info.value.message
        assert info.value.details["closing"] == "fell_behind"
        assert "daemon start" not in info.value.message  # the daemon is fine: no such advice
        assert 0 < len(received) < sent
        assert [e.seq for e in received] == list(range(received[0].seq,
                                                       received[0].seq + len(received)))
        # the producer and the daemon go on
        producer.send_message(session_id, "user", "after")
        assert producer.get_conversation_history(session_id)[-1].content == "after"


def test_past_event_buffer_the_client_drops_the_oldest_and_tells_an_events_gap(daemon):
    with daemon.client() as producer, Client(daemon.socket, event_buffer=5) as subscriber:
        session_id = producer.create_session(config={"persistence_enabled": False})
        subscriber.subscribe_to_session(session_id)  # session topic: seq 1 was initializing → active
        for i in range(12):
            producer.send_message(session_id, "user", f"m{i}")
        subscriber.get_session_info(session_id)  # its reply follows the 12 events on the socket
        gap = subscriber.next_event(0)
        assert (gap.type, gap.topic, gap.session_id) == ("events_gap", topic_of(session_id),
                                                         session_id)
        assert gap.payload == {"topic": topic_of(session_id), "first_missing": 2, "next_seq": 9}
        assert gap.seq == 8
        rest = [subscriber.next_event(0) for _ in range(5)]
        assert [(e.seq, e.payload["content"]) for e in rest] == [
            (9 + i, f"m{7 + i}") for i in range(5)]
        assert subscriber.next_event(0) is None


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_a_16_mib_request_of_empty_maps_is_refused_within_8_times_its_size(client, daemon, shape):
    session_id = client.create_session(config={"persistence_enabled": False})
    client.update_file_index(session_id, "/kept", {"k": "v"})
    # 16 MiB encoded, 1.1 GiB as Python dicts: one list (refused by its length), or lists of
    # 1,000 (each charged as it closes, refused when the total passes the budget).
    count = 16 * MiB - 16 * 1024
    bomb = {"m": [{}] * count if shape == "flat" else [[{}] * 1000] * (count // 1003)}
    peak_before = vm_kib(daemon.pid, "VmHWM")
    rss_before = vm_kib(daemon.pid, "VmRSS")
    with pytest.raises(LimitExceededError) as info:
        client.update_file_index(session_id, "/bomb", bomb)
    peak_growth = vm_kib(daemon.pid, "VmHWM") - max(peak_before, rss_before)
    assert peak_growth < 8 * 16 * 1024, f"the daemon's peak grew by {peak_growth} KiB"
    assert info.value.code == "limit_exceeded" and "a message of" in info.value.message
    # the same client and the daemon go on; nothing of the refused request was applied
    index = client.get_file_index(session_id)
    assert list(index) == ["/kept"] and index["/kept"]["k"] == "v"


def ancestors_bomb(size: int, depth: int = 32) -> list:
    """About ``size`` bytes encoded: leaves, then a list of leaves as the last item, ``depth``
    deep. A decoder holds every level's leaves until the innermost list closes (a 16 MB frame
    of it peaked at 596 MiB in a daemon that decoded requests)."""
    per_level = size // (depth * 3)  # "ab": 3 bytes encoded, 51 as a str
    node: list = ["ab"] * per_level
    for _ in range(depth - 1):
        node = ["ab"] * per_level + [node]
    return node


BOMBS = {
    "ancestors": lambda size: ancestors_bomb(size),
    "flat-maps": lambda size: [{}] * size,
    "nested-maps": lambda size: [[{}] * 1000] * (size // 1003),
}
CALLS = {
    "update_file_index": lambda c, sid, bomb: c.update_file_index(sid, "/bomb", {"m": bomb}),
    "send_message": lambda c, sid, bomb: c.send_message(sid, "user", bomb),
    "create_session": lambda c, sid, bomb: c.create_session(metadata={"m": bomb}),
}


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("shape", list(BOMBS))
def test_no_16_mib_request_makes_the_daemon_hold_8_times_its_size(daemon, shape, op):
    """API.md §9: session calls' args are forwarded undecoded, daemon calls' args over
    DAEMON_ARGS_BYTES refused before decoding; the daemon serves on and keeps what it held."""
    contents = ["é" * 1000 + "first", "second \x00 ☃"]
    with daemon.client(timeout=LONG) as client:
        session_id = client.create_session(metadata={"kept": "m" * 100})
        for content in contents:
            client.send_message(session_id, "user", content)
        client.update_file_index(session_id, "/kept", {"k": "v", "n": [1, 2.5, None]})
        bomb = BOMBS[shape](16 * MiB - 64 * 1024)
        size_kib = len(wire.encode({"args": {"session_id": session_id, "m": bomb}})) // 1024
        peak_before = vm_kib(daemon.pid, "VmHWM")
        rss_before = vm_kib(daemon.pid, "VmRSS")
        with pytest.raises((LimitExceededError, InvalidArgumentError)) as info:
            CALLS[op](client, session_id, bomb)
        growth = vm_kib(daemon.pid, "VmHWM") - max(peak_before, rss_before)
        print(f"\n{shape} {op}: frame {size_kib} KiB, the daemon's peak grew {growth} KiB "
              f"({growth / size_kib:.2f}x): {info.value.code}")
        assert growth < 8 * size_kib, f"the daemon's peak grew by {growth} KiB"
        assert info.value.code in ("limit_exceeded", "invalid_argument") and info.value.message
        if op == "create_session":
            assert (info.value.code, info.value.field) == ("limit_exceeded", "args")
        # the same client goes on, and nothing held was changed
        history = client.get_conversation_history(session_id)
        assert [m.content.encode() for m in history] == [c.encode() for c in contents]
        index = client.get_file_index(session_id)
        assert list(index) == ["/kept"]
        assert {k: index["/kept"][k] for k in ("k", "n")} == {"k": "v", "n": [1, 2.5, None]}
        [info] = client.list_sessions()
        assert (info.session_id, info.metadata) == (session_id, {"kept": "m" * 100})


def test_metadata_and_llm_config_are_limited_to_1_mib_encoded_each(client):
    for field in ("metadata", "llm_config"):
        with pytest.raises(LimitExceededError) as info:
            client.create_session(**{field: {"big": "x" * (MiB + 1)}})
        assert info.value.field == field
    session_id = client.create_session(metadata={"fits": "x" * (MiB - 100)})
    assert client.get_session_info(session_id).metadata == {"fits": "x" * (MiB - 100)}


def test_a_subscribed_client_dropped_without_close_ends_its_drain_and_frees_its_fd(daemon):
    def drains() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == DRAIN_THREAD_NAME]

    before_fds, before_drains = fd_count(os.getpid()), drains()
    client = daemon.client()
    client.subscribe_to_all_sessions()
    [drain] = [t for t in drains() if t not in before_drains]
    del client
    gc.collect()
    drain.join(SHORT)
    assert not drain.is_alive()
    wait_until(lambda: fd_count(os.getpid()) == before_fds, SHORT,
               "the dropped client's fd to close")
