"""The event relay: topics per type, per-topic seq, one delivery per client."""

from __future__ import annotations

from jidocoder import wire
from jidocoder.daemon.events import GLOBAL_TOPIC, SEQ_BLOCK, EventBus, session_topic


class Inbox:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def send_event(self, event: dict, frame: bytes) -> None:
        assert wire.decode(frame[wire.HEADER_SIZE:]) == {"event": event}
        self.events.append(event)


def test_status_event_reaches_a_client_on_both_topics_once_with_the_session_topic():
    bus, both = EventBus(), Inbox()
    bus.subscribe(GLOBAL_TOPIC, both)
    bus.subscribe(session_topic("s1"), both)
    bus.publish("session_status", "s1", {"status": "active"})
    assert [(e["topic"], e["seq"]) for e in both.events] == [(session_topic("s1"), 1)]


def test_seq_increases_by_one_per_event_on_each_topic():
    bus, glob = EventBus(), Inbox()
    bus.subscribe(GLOBAL_TOPIC, glob)
    bus.publish("session_created", "s1", {})
    bus.publish("conversation_added", "s1", {})  # session topic only: no global seq used
    bus.publish("session_status", "s1", {})
    assert [e["seq"] for e in glob.events] == [1, 2]


def test_session_events_do_not_reach_subscribers_of_another_session():
    bus, other = EventBus(), Inbox()
    bus.subscribe(session_topic("s2"), other)
    bus.publish("conversation_added", "s1", {})
    assert other.events == []


def test_dropped_subscriber_receives_nothing_more():
    bus, inbox = EventBus(), Inbox()
    bus.subscribe(GLOBAL_TOPIC, inbox)
    bus.drop(inbox)
    bus.publish("session_created", "s1", {})
    assert inbox.events == []


def test_an_event_is_framed_once_for_all_its_subscribers():
    bus, inboxes = EventBus(), [Inbox() for _ in range(3)]
    frames = []
    for inbox in inboxes:
        bus.subscribe(session_topic("s1"), inbox)
        inbox.send_event = lambda event, frame, inbox=inbox: frames.append(frame)
    bus.publish("conversation_added", "s1", {"content": "x" * 100_000})
    assert len(frames) == 3 and frames[0] is frames[1] is frames[2]


class Marks:
    """Stored seq marks, as the registry keeps them."""

    def __init__(self, stored: dict[str, int] | None = None) -> None:
        self.stored = dict(stored or {})
        self.writes = 0

    def load_seq_marks(self) -> dict[str, int]:
        return dict(self.stored)

    def put_seq_mark(self, topic: str, mark: int) -> None:
        self.stored[topic] = mark
        self.writes += 1


def test_since_replays_the_held_events_after_it_then_the_live_ones():
    bus, late = EventBus(history=10), Inbox()
    for n in range(5):
        bus.publish("conversation_added", "s1", {"n": n})
    assert bus.subscribe(session_topic("s1"), late, since=2) == 5
    bus.publish("conversation_added", "s1", {"n": 5})
    assert [(e["seq"], e["payload"]["n"]) for e in late.events] == [(3, 2), (4, 3), (5, 4), (6, 5)]


def test_since_older_than_the_history_gets_one_gap_first():
    bus, late = EventBus(history=2), Inbox()
    for n in range(5):
        bus.publish("conversation_added", "s1", {"n": n})
    bus.subscribe(session_topic("s1"), late, since=1)
    gap, *held = late.events
    assert (gap["type"], gap["payload"], gap["seq"]) == (
        "events_gap", {"topic": session_topic("s1"), "first_missing": 2, "next_seq": 4}, 3)
    assert [e["seq"] for e in held] == [4, 5]


def test_a_replay_of_the_global_topic_leaves_out_sessions_the_client_gets_on_their_topic():
    bus, client = EventBus(), Inbox()
    bus.publish("session_created", "s1", {})
    bus.publish("session_created", "s2", {})
    bus.subscribe(session_topic("s1"), client)
    bus.subscribe(GLOBAL_TOPIC, client, since=0)
    assert [e["session_id"] for e in client.events] == ["s2"]


def test_seq_continues_above_the_stored_mark_written_once_per_block():
    marks = Marks()
    bus = EventBus(marks=marks)
    for _ in range(SEQ_BLOCK + 2):  # seq 1 writes mark 1 + BLOCK; seq 2 + BLOCK passes it
        bus.publish("session_created", "s1", {})
    assert marks.writes == 2 and marks.stored[GLOBAL_TOPIC] == 2 * SEQ_BLOCK + 2
    again, inbox = EventBus(marks=Marks(marks.stored)), Inbox()  # a daemon started again
    assert again.subscribe(GLOBAL_TOPIC, inbox, since=SEQ_BLOCK + 2) == 2 * SEQ_BLOCK + 2
    [gap] = inbox.events  # nothing held after a restart: one gap up to the next seq
    assert gap["payload"] == {"topic": GLOBAL_TOPIC, "first_missing": SEQ_BLOCK + 3,
                              "next_seq": 2 * SEQ_BLOCK + 3}
    again.publish("session_created", "s2", {})
    assert inbox.events[-1]["seq"] == 2 * SEQ_BLOCK + 3
