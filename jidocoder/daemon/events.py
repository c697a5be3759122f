"""The event relay: topics, per-topic sequence numbers, and one delivery per client.

Every event is made in the daemon's one loop (status changes there, session events arriving
with their session's replies), so the order of ``publish`` calls is the order of events, and
per-session order holds across both kinds without any further bookkeeping. Each event is
encoded once, however many subscribers it goes to (a 9 MiB message to 100 subscribers is one
9 MiB frame, queued 100 times).

Resumable (docs/api.md §10): the last ``history`` events of each topic are held (made whether
anyone listens or not), and a subscription with ``since`` is first sent those after it, then
joins the live ones: both happen in one turn of the loop, so nothing can fall between them.
What is no longer held is told as one ``events_gap``. A topic's seq continues across daemon
restarts without a write per event: ``SeqMarks`` stores, per topic, a mark ``SEQ_BLOCK`` above
the seq in use, written when the seq reaches the last one; a daemon that starts again
continues from the stored mark, above every seq its predecessor could have sent.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from .. import wire
from ..models import utc_now
from .metrics import METRICS

log = logging.getLogger("jidocoder.daemon")

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
    "session_hibernated": (GLOBAL, SESSION),
    "session_revived": (GLOBAL, SESSION),
    "conversation_added": (SESSION,),
    "conversation_cleared": (SESSION,),
    "file_added": (SESSION,),
    "file_removed": (SESSION,),
    "file_index_updated": (SESSION,),
}


class Subscriber(Protocol):
    def send_event(self, event: dict[str, Any], frame: bytes) -> None: ...


SEQ_BLOCK = 1024  # seqs taken per stored mark: one registry write per this many events


class SeqMarks(Protocol):
    """Where each topic's mark is stored (the registry's ``seq_marks``)."""

    def load_seq_marks(self) -> dict[str, int]: ...
    def put_seq_mark(self, topic: str, mark: int) -> None: ...


class EventBus:
    def __init__(self, history: int = 1000, marks: SeqMarks | None = None) -> None:
        self._marks_store = marks
        self._marks: dict[str, int] = marks.load_seq_marks() if marks is not None else {}
        self._seq: dict[str, int] = defaultdict(int, self._marks)  # continue above every mark
        self._history = history
        self._held: dict[str, deque[dict[str, Any]]] = {}
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self.marking: list[int] | None = None  # publish_all's mark, while it publishes

    def subscribe(self, topic: str, subscriber: Subscriber, since: int | None = None) -> int:
        """Join ``topic``; with ``since``, the held events after it first (or the gap). Returns
        the topic's last seq, from which a reconnecting client resumes."""
        if since is not None:
            self._replay(topic, subscriber, since)
        self._subscribers[topic].add(subscriber)
        return self._seq.get(topic, 0)

    def _replay(self, topic: str, subscriber: Subscriber, since: int) -> None:
        last = self._seq.get(topic, 0)
        if since >= last:
            return
        held = self._held.get(topic, ())
        first_held = held[0]["seq"] if held else last + 1
        if since + 1 < first_held:
            self._send_one(subscriber, self._gap(topic, since + 1, first_held))
        skip = self._covered_elsewhere(topic, subscriber)
        for event in held:
            if event["seq"] > since and event["session_id"] not in skip:
                self._send_one(subscriber, event)

    def _covered_elsewhere(self, topic: str, subscriber: Subscriber) -> set[str | None]:
        """Sessions whose events a replay of the global topic leaves out: the subscriber gets
        them on the session topic (an event reaches a client once, docs/api.md §4)."""
        if topic != GLOBAL_TOPIC:
            return set()
        prefix = session_topic("")
        return {t[len(prefix):] for t, members in self._subscribers.items()
                if subscriber in members and t.startswith(prefix)}

    def _gap(self, topic: str, first_missing: int, next_seq: int) -> dict[str, Any]:
        session_id = topic[len(session_topic("")):] if topic != GLOBAL_TOPIC else None
        return {"type": "events_gap", "topic": topic, "session_id": session_id,
                "payload": {"topic": topic, "first_missing": first_missing, "next_seq": next_seq},
                "seq": next_seq - 1, "timestamp": utc_now()}

    @staticmethod
    def _send_one(subscriber: Subscriber, event: dict[str, Any]) -> None:
        subscriber.send_event(event, wire.pack_frame({"event": event}, wire.MAX_FRAME))

    def subscribers(self, topic: str) -> set[Subscriber] | tuple[()]:
        return self._subscribers.get(topic, ())

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
        """A terminated session's topic: its subscribers, counter and history go (its stored
        mark goes with its registry row)."""
        self._subscribers.pop(topic, None)
        self._seq.pop(topic, None)
        self._held.pop(topic, None)
        self._marks.pop(topic, None)

    def publish(self, kind: str, session_id: str | None, payload: dict[str, Any]) -> None:
        topics = self._topics(kind, session_id)
        timestamp = utc_now()
        events = [self._make(kind, topic, session_id, payload, timestamp) for topic in topics]
        delivered: set[Subscriber] = set()
        for event in reversed(events):  # the session topic first: a client on both gets that one
            frame = None
            for subscriber in list(self._subscribers.get(event["topic"], ())):
                if subscriber not in delivered:
                    delivered.add(subscriber)
                    if frame is None:
                        frame = wire.pack_frame(self._framed(event), wire.MAX_FRAME)
                    subscriber.send_event(event, frame)
        METRICS.observe_event(kind, payload, len(delivered))

    def publish_all(self, session_id: str, events: Iterable[tuple[str, dict[str, Any]]],
                    mark: list[int] | None = None) -> None:
        """``mark`` ([pid, n]): the session's direct reply that waits for these events
        (serving.py); it goes with each, for the Client that holds that reply until it sees it."""
        self.marking = mark
        try:
            for kind, payload in events:
                self.publish(kind, session_id, payload)
        finally:
            self.marking = None

    def _framed(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.marking is None:
            return {"event": event}
        return {"event": event, "mark": self.marking}

    def _topics(self, kind: str, session_id: str | None) -> list[str]:
        names = TOPICS_BY_TYPE.get(kind, (SESSION,))
        topics = [GLOBAL_TOPIC] if GLOBAL in names else []
        if SESSION in names and session_id is not None:
            topics.append(session_topic(session_id))
        return topics

    def _make(self, kind: str, topic: str, session_id: str | None, payload: dict[str, Any],
              timestamp: datetime) -> dict[str, Any]:
        seq = self._seq[topic] = self._seq[topic] + 1
        if seq > self._marks.get(topic, 0):
            self._store_mark(topic, seq + SEQ_BLOCK)
        event = {"type": kind, "topic": topic, "session_id": session_id, "payload": payload,
                 "seq": seq, "timestamp": timestamp}
        held = self._held.get(topic)
        if held is None:
            held = self._held[topic] = deque(maxlen=self._history)
        held.append(event)
        return event

    def _store_mark(self, topic: str, mark: int) -> None:
        """Written before the first seq above the old mark is sent. A registry that cannot take
        it costs the guarantee only if the daemon dies before the next try: events still flow."""
        self._marks[topic] = mark
        if self._marks_store is None:
            return
        try:
            self._marks_store.put_seq_mark(topic, mark)
        except Exception as exc:  # noqa: BLE001 -- the next event tries again
            self._marks[topic] = mark - SEQ_BLOCK
            log.warning("could not store the seq mark of %s: %s", topic, exc)
