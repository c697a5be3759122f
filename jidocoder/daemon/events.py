"""The event relay: topics, per-topic sequence numbers, and one delivery per client.

Every event is made in the daemon's one loop (status changes there, session events arriving
with their session's replies), so the order of ``publish`` calls is the order of events, and
per-session order holds across both kinds without any further bookkeeping. Each event is
encoded once, however many subscribers it goes to (a 9 MiB message to 100 subscribers is one
9 MiB frame, queued 100 times).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Protocol
from collections.abc import Iterable

from .. import wire
from ..models import utc_now

GLOBAL_TOPIC = "client.global_events"


def session_topic(session_id: str) -> str:
    return f"client.session.{session_id}"


# Which topics each event type goes to; written here only.
GLOBAL, SESSION = "global", "session"
TOPICS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "session_created": (GLOBAL,),
    "session_status": (GLOBAL, SESSION),
    "session_terminated": (GLOBAL, SESSION),
    "session_crashed": (GLOBAL, SESSION),
    "session_restarted": (GLOBAL, SESSION),
    "conversation_added": (SESSION,),
    "conversation_cleared": (SESSION,),
    "file_added": (SESSION,),
    "file_removed": (SESSION,),
    "file_index_updated": (SESSION,),
}


class Subscriber(Protocol):
    def send_event(self, event: dict[str, Any], frame: bytes) -> None: ...


class EventBus:
    def __init__(self) -> None:
        self._seq: dict[str, int] = defaultdict(int)
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self._subscribers[topic].add(subscriber)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        members = self._subscribers.get(topic)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._subscribers[topic]

    def drop(self, subscriber: Subscriber) -> None:
        """Forget a subscriber everywhere (its connection closed)."""
        for topic in [t for t, members in self._subscribers.items() if subscriber in members]:
            self.unsubscribe(topic, subscriber)

    def forget_topic(self, topic: str) -> None:
        """A terminated session's topic: its subscribers and its counter go."""
        self._subscribers.pop(topic, None)
        self._seq.pop(topic, None)

    def publish(self, kind: str, session_id: str | None, payload: dict[str, Any]) -> None:
        topics = self._topics(kind, session_id)
        subscribers = self._subscribers
        if not any(topic in subscribers for topic in topics):  # no one listens: count it only
            for topic in topics:
                self._seq[topic] += 1
            return
        timestamp = utc_now()
        events = [self._make(kind, topic, session_id, payload, timestamp) for topic in topics]
        delivered: set[Subscriber] = set()
        for event in reversed(events):  # the session topic first: a client on both gets that one
            frame = None
            for subscriber in list(self._subscribers.get(event["topic"], ())):
                if subscriber not in delivered:
                    delivered.add(subscriber)
                    if frame is None:
                        frame = wire.pack_frame({"event": event}, wire.MAX_FRAME)
                    subscriber.send_event(event, frame)

    def publish_all(self, session_id: str, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for kind, payload in events:
            self.publish(kind, session_id, payload)

    def _topics(self, kind: str, session_id: str | None) -> list[str]:
        names = TOPICS_BY_TYPE.get(kind, (SESSION,))
        topics = [GLOBAL_TOPIC] if GLOBAL in names else []
        if SESSION in names and session_id is not None:
            topics.append(session_topic(session_id))
        return topics

    def _make(self, kind: str, topic: str, session_id: str | None, payload: dict[str, Any],
              timestamp: datetime) -> dict[str, Any]:
        self._seq[topic] += 1
        return {"type": kind, "topic": topic, "session_id": session_id, "payload": payload,
                "seq": self._seq[topic], "timestamp": timestamp}
