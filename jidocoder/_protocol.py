"""The client's protocol, without I/O: what ``Client`` and ``AsyncClient`` share.

Like h11 for HTTP, this module never touches a socket, a thread or an event loop. Each client
is a thin shell that moves bytes and waits in its own way (threads and a blocking socket in
_sync.py, asyncio streams in _async.py) and asks this core what the bytes mean:

    start_call(op, args, deadline) → Call (id, packed frame)     the shell writes call.frame
    receive(bytes) → Received(answered calls, events?, end?)     the shell wakes those callers
    take_event() → Event | None                                  next_event() / events()
    reconnected() → [frames]                                     after a new connection: hello,
                                                                 resubscriptions, then resends

What it holds, for both shells alike:
- **Request ids and framing state.** Ids count up per client; frames are packed and decoded with
  ``wire`` (its framing and limits: nothing is re-implemented here). A request over the
  daemon's ``max_request_bytes`` is refused before anything is sent.
- **Calls in flight**, by id. A reply finds its Call; one whose caller gave up (``forget``)
  finds nothing and is dropped.
- **The event buffer** holds at most ``event_buffer`` events not taken yet: past that the oldest
  is dropped and remembered per topic as a gap, and the next event taken is an ``events_gap``
  (docs/api.md §10: ``{"topic", "first_missing", "next_seq"}``).
- **Subscriptions and the last seq received per topic**, so that after a reconnect each one is
  asked again with ``since`` = that seq: the daemon replays what it holds after it, or says
  what it no longer holds with its own ``events_gap`` (docs/api.md §10).
- **At-most-once resend.** Each call whose effect is stored carries a ``call_id`` (random, made
  once per call, kept across resends) that its session or the registry records in the same
  transaction as the change, so the same call resent after a lost reply is answered with the
  first result instead of being applied again (docs/protocol.md, "Call ids").

This module, like every client module, never imports ``jidocoder.daemon``.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import wire
from .config import MiB
from .errors import InvalidArgumentError, LimitExceededError, ProtocolError, from_wire
from .models import Event, utc_now

__all__ = ["Call", "ClientProtocol", "DEFAULT_MAX_REQUEST_BYTES", "ModelT", "Received", "to_model"]

DEFAULT_MAX_REQUEST_BYTES = 16 * MiB  # used until (and unless) hello names the daemon's limit

# Calls whose effect is stored: each carries a call id its session (or, for create_session,
# the registry) records with the change. Calls on the in-memory file cache need none: a daemon
# restart empties the cache, so a resend applies them once on the new process.
IDEMPOTENT_BY_CALL_ID = frozenset({
    "create_session", "send_message", "clear_conversation", "add_file", "remove_file",
    "update_file_index"})
# Calls whose second application finds nothing to act on: resent after a lost reply, a
# not_found answer means the first one was applied (docs/api.md §10).
DONE_IF_GONE = frozenset({"terminate_session", "recover_session"})

# A broken connection is dialled again after these waits, doubling from the first to the last:
# a refused connect costs microseconds, and a daemon restart takes ~0.2 s, so a wait much longer
# than 50 ms would be most of the reconnect time (scripts/bench, "reconnect").
RECONNECT_BACKOFF = (0.005, 0.05)

# docs/api.md §4: a session's topic is this prefix and its id (the global topic has no session).
GLOBAL_TOPIC = "client.global_events"
SESSION_TOPIC_PREFIX = "client.session."

ModelT = TypeVar("ModelT", bound=BaseModel)


class Call:
    """One request in flight: its frame (kept for a resend), its reply once it comes, and
    whatever its shell waits on (a Condition, a Future)."""

    __slots__ = ("id", "op", "frame", "deadline", "reply", "waiter", "topic", "sent", "resent",
                 "fd")

    def __init__(self, request_id: int, op: str, frame: bytes, deadline: float,
                 topic: str | None) -> None:
        self.id = request_id
        self.op = op
        self.frame = frame
        self.deadline = deadline
        self.reply: dict[str, Any] | None = None
        self.waiter: Any = None
        self.topic = topic  # the topic a (un)subscription is about
        self.sent = False  # some of it reached a socket: it may have been applied
        self.resent = False
        self.fd: int | None = None  # what came attached to its reply (open_channel's channel)

    def has_reply(self) -> bool:
        return self.reply is not None

    def outcome(self) -> Any:
        """The result, or the error the daemon answered, raised."""
        reply = self.reply
        assert reply is not None
        if "error" not in reply:
            return reply.get("result")
        if not isinstance(reply["error"], dict):
            raise ProtocolError(f"the daemon answered {self.op} with a malformed error")
        error = from_wire(reply["error"])
        if self.resent and self.op in DONE_IF_GONE and error.code == "not_found":
            return None  # the first sending was applied; its reply was lost with the daemon
        raise error


@dataclass
class Received:
    """What some bytes brought: the calls now answered, whether events came, and, if the
    stream ended here, why (the daemon's closing code, if it said one) and whether a daemon
    may answer again (it went away: EOF, a reset), or not (it said why it closed, or its bytes
    were not our protocol)."""

    answered: list[Call]
    events: bool = False
    end: str | None = None
    closing: str | None = None
    cause: BaseException | None = None
    reconnect: bool = False


class ClientProtocol:
    """The state of one client's conversation with the daemon, across reconnections."""

    def __init__(self, event_buffer: int = 10_000) -> None:
        if type(event_buffer) is not int or event_buffer < 1:
            raise InvalidArgumentError(f"event_buffer must be an int >= 1, not {event_buffer!r}",
                                       code="invalid_argument", field="event_buffer")
        self.event_buffer = event_buffer
        self.max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
        self.daemon_pid: int | None = None
        self.daemon_version: str | None = None
        self.channels = False  # the daemon hands out direct channels (hello says so)
        self._ids = itertools.count(1)  # atomic under the GIL: no lock needed to take one
        # Replies and events have no size limit (docs/api.md §9) but what a header can say; they
        # come from our own daemon, behind a 0600 socket, so they are decoded without a budget.
        self._decoder = wire.FrameDecoder(wire.MAX_FRAME)
        self.pending: dict[int, Call] = {}
        self.events: deque[Event] = deque()
        self.gaps: dict[str, list[int]] = {}  # topic → [first_missing, next_seq] dropped
        self.topics: dict[str, int] = {}  # subscribed topic → last seq received on it
        self.fds: deque[int] = deque()  # received (SCM_RIGHTS), for the channel replies to come
        self.marks: dict[str, tuple[int, int]] = {}  # session → last [pid, mark] of its events

    # -- calls -------------------------------------------------------------------------------

    def start_call(self, op: str, args: dict[str, Any], deadline: float) -> Call:
        """A new call, packed (``LimitExceededError`` before anything is sent) and in flight."""
        if op in IDEMPOTENT_BY_CALL_ID and "call_id" not in args:  # kept if a channel made it
            args = {**args, "call_id": new_call_id()}
        request_id = next(self._ids)
        frame = self._pack(op, {"id": request_id, "op": op, "args": args, "deadline": deadline})
        call = Call(request_id, op, frame, deadline, _topic_of(op, args))
        self.pending[request_id] = call
        return call

    def direct_request(self, op: str, args: dict[str, Any],
                       deadline: float) -> tuple[int, bytes, dict[str, Any]]:
        """A call for a direct channel (_direct.py): its id, frame, and args (with the call id,
        to keep if it must go relayed after all). Its id is random and large, unlike the
        daemon's link ids: the session writes it as ``started`` in its slot, and the daemon
        tells a Client whose channel was lost whether its call was the one begun."""
        if op in IDEMPOTENT_BY_CALL_ID and "call_id" not in args:
            args = {**args, "call_id": new_call_id()}
        request_id = secrets.randbelow(2**63 - 2**40) + 2**40
        frame = self._pack(op, {"id": request_id, "op": op, "args": args, "deadline": deadline})
        return request_id, frame, args

    def mark_to_await(self, session_id: str, reply: dict[str, Any]) -> int:
        """The mark of the events this client receives that a direct reply must follow (0:
        none): its events (``mark``) go on the session's topic, an ``idle → active`` (``woke``)
        on both."""
        mark, woke = reply.get("mark"), reply.get("woke")
        mark = mark if type(mark) is int else 0
        woke = woke if type(woke) is int else 0
        if SESSION_TOPIC_PREFIX + session_id in self.topics:
            return max(mark, woke)
        return woke if GLOBAL_TOPIC in self.topics else 0

    def mark_seen(self, session_id: str, pid: int, mark: int) -> bool:
        seen = self.marks.get(session_id)
        return seen is not None and seen[0] == pid and seen[1] >= mark

    def forget(self, call: Call) -> None:
        """Its caller gave up: a late reply finds no call and is dropped."""
        self.pending.pop(call.id, None)

    def _pack(self, op: str, request: dict[str, Any]) -> bytes:
        try:
            return wire.pack_frame(request, self.max_request_bytes)
        except LimitExceededError as e:
            size = e.details.get("size")
            raise LimitExceededError(
                f"the {op} request ({size} bytes) is larger than the daemon's max_request_bytes "
                f"({self.max_request_bytes}); nothing was sent",
                details={"op": op, "size": size, "limit": self.max_request_bytes}) from e

    # -- bytes in ----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> Received:
        """Route what ``data`` completes: each reply to its call, each event to the buffer. A
        bad frame ends the stream, after the good ones before it are routed."""
        received = Received([])
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            received.end, received.cause = _describe(e), e
            return received
        for frame in frames:
            try:
                self._route(frame, received)
            except ProtocolError as e:
                received.end, received.cause = _describe(e), e
            if received.end is not None:
                break
        return received

    def end_of_stream(self) -> Received:
        """The daemon closed the connection: clean between frames, broken inside one."""
        try:
            self._decoder.close()
        except ProtocolError as e:  # killed while writing a frame: it may still come back
            return Received([], end=_describe(e), cause=e, reconnect=True)
        return Received([], end="the daemon closed the connection", reconnect=True)

    def _route(self, frame: Any, received: Received) -> None:
        if not isinstance(frame, dict):
            raise ProtocolError(f"the daemon sent a {type(frame).__name__}, not a message")
        if "event" in frame:
            event = to_model(Event, frame["event"])
            self._buffer_event(event)
            received.events = True
            mark = frame.get("mark")
            if event.session_id is not None and isinstance(mark, list) and len(mark) == 2:
                self.marks[event.session_id] = (mark[0], mark[1])
        elif "closing" in frame:  # the daemon says why it closes: the reason to give
            closing = frame["closing"]
            received.closing = str(closing.get("code")) if isinstance(closing, dict) else ""
            received.end = _closing_reason(closing)
        elif frame.get("id") is None and isinstance(frame.get("error"), dict):
            # A frame the daemon could not read (an oversized header): the stream is out of
            # step and the daemon closes it; this is the reason to give.
            received.end = f"the daemon refused a frame: {frame['error'].get('message')}"
        else:
            call = self.pending.pop(frame.get("id"), None)  # type: ignore[arg-type]
            fd = self._attached_fd(frame)
            if call is None and fd is not None:
                os.close(fd)  # a channel its caller gave up waiting for
            elif call is not None:
                call.fd = fd
                call.reply = frame
                self._note_reply(call)
                received.answered.append(call)

    def _attached_fd(self, frame: dict[str, Any]) -> int | None:
        """The fd a reply came with: only a channel's (``{"pid", "channel": true}``) has one."""
        result = frame.get("result")
        if type(result) is dict and result.get("channel") is True and self.fds:
            return self.fds.popleft()
        return None

    def close_fds(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())

    def _note_reply(self, call: Call) -> None:
        """What a reply changes in the core itself: the daemon's limits, the subscriptions."""
        reply, topic = call.reply or {}, call.topic or ""
        if "error" in reply:
            if call.op.startswith("subscribe") and call.waiter is None:
                self.topics.pop(topic, None)  # resubscribing failed: the topic is gone
            return
        result = reply.get("result")
        if call.op == "hello" and isinstance(result, dict):
            self.daemon_pid = result.get("pid")
            self.daemon_version = result.get("version")
            self.channels = result.get("channels") is True
            self.max_request_bytes = result.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES
        elif call.op.startswith("subscribe"):
            last = result.get("last_seq", 0) if isinstance(result, dict) else 0
            self.topics[topic] = max(self.topics.get(topic, 0), int(last))
        elif call.op.startswith("unsubscribe"):
            self.topics.pop(topic, None)

    # -- events ------------------------------------------------------------------------------

    def has_event(self) -> bool:
        return bool(self.events) or bool(self.gaps)

    def take_event(self) -> Event | None:
        """The oldest event not taken; what was dropped is told before what came after it."""
        if self.gaps:
            topic = next(iter(self.gaps))
            return gap_event(topic, *self.gaps.pop(topic))
        return self.events.popleft() if self.events else None

    def _buffer_event(self, event: Event) -> None:
        """Hold ``event``; past ``event_buffer`` the oldest goes, remembered as its topic's gap."""
        if event.topic in self.topics:
            self.topics[event.topic] = max(self.topics[event.topic], _last_seq_told(event))
        if len(self.events) >= self.event_buffer:
            dropped = self.events.popleft()
            gap = self.gaps.get(dropped.topic)
            if gap is None:
                self.gaps[dropped.topic] = [dropped.seq, dropped.seq + 1]
            else:  # drops are oldest first, so a topic's dropped seqs are contiguous
                gap[1] = dropped.seq + 1
        self.events.append(event)

    def clear_events(self) -> None:
        self.events.clear()
        self.gaps.clear()

    # -- a new connection --------------------------------------------------------------------

    def reconnected(self) -> list[bytes]:
        """The frames a new connection starts with: hello, each subscription again from the
        last seq received (sessions first, so that the global topic's replay can leave out
        the events those bring), then every call still waiting, as it was (same id, call id
        and deadline). Whatever a frame of the old connection left half-read is dropped."""
        self._decoder = wire.FrameDecoder(wire.MAX_FRAME)
        self.close_fds()
        waiting = list(self.pending.values())
        frames = [self.start_call("hello", {}, _NO_DEADLINE).frame]
        for topic in sorted(self.topics, key=lambda t: t == GLOBAL_TOPIC):
            frames.append(self.start_call(*_resubscription(topic, self.topics[topic]),
                                          _NO_DEADLINE).frame)
        for call in waiting:
            call.resent = call.sent = True
            frames.append(call.frame)
        return frames

    def hello(self, deadline: float) -> Call:
        return self.start_call("hello", {}, deadline)


_NO_DEADLINE = float("inf")  # the core's own calls on a new connection: answered or lost with it


def new_call_id() -> str:
    """128 random bits in hex, as uuid4().hex looks: a third of its cost, on every stored call."""
    return os.urandom(16).hex()


def _topic_of(op: str, args: dict[str, Any]) -> str | None:
    if op.endswith("_all_sessions"):
        return GLOBAL_TOPIC
    if op.endswith("scribe_to_session") or op == "unsubscribe_from_session":
        return SESSION_TOPIC_PREFIX + str(args.get("session_id"))
    return None


def _resubscription(topic: str, since: int) -> tuple[str, dict[str, Any]]:
    if topic == GLOBAL_TOPIC:
        return "subscribe_to_all_sessions", {"since": since}
    return "subscribe_to_session", {"session_id": topic[len(SESSION_TOPIC_PREFIX):], "since": since}


def _last_seq_told(event: Event) -> int:
    """The last seq of its topic that ``event`` accounts for: a gap event, everything before
    its ``next_seq``."""
    next_seq = event.payload.get("next_seq")
    if event.type == "events_gap" and isinstance(next_seq, int):
        return next_seq - 1
    return event.seq


def gap_event(topic: str, first_missing: int, next_seq: int) -> Event:
    """What was lost of ``topic`` (docs/api.md §10); its seq is the last one missing, so the
    next event of the topic follows it."""
    session_id = topic[len(SESSION_TOPIC_PREFIX):] if topic.startswith(SESSION_TOPIC_PREFIX) else None
    return Event(type="events_gap", topic=topic, session_id=session_id,
                 payload={"topic": topic, "first_missing": first_missing, "next_seq": next_seq},
                 seq=next_seq - 1, timestamp=utc_now())


def _closing_reason(closing: Any) -> str:
    if isinstance(closing, dict) and isinstance(closing.get("message"), str):
        return f"the daemon closed this connection: {closing['message']}"
    return "the daemon closed the connection"


def _describe(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {failure}"


def to_model(model: type[ModelT], data: Any) -> ModelT:
    """``data`` as ``model``: what the daemon sends is checked where events are routed and
    where results are returned."""
    try:
        return model.model_validate(data)
    except (ValidationError, InvalidArgumentError) as e:  # the models may translate their errors
        raise ProtocolError(f"the daemon sent an invalid {model.__name__}: {e}") from e
