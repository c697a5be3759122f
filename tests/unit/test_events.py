"""The event relay: topics per type, per-topic seq, one delivery per client."""

from __future__ import annotations

from jidocoder import wire
from jidocoder.daemon.events import GLOBAL_TOPIC, EventBus, session_topic


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
