"""The reader role and the drain: how the threads of one client share the reading of its socket.

One Unix stream socket carries both the replies to this client's requests and the events it
subscribed to, interleaved in whatever order the daemon sends them (docs/protocol.md); whoever
reads it routes what it finds: a reply to the caller waiting for its id, an event to a buffer.
``Reader`` is a mixin of ``Connection`` (_connection.py), which owns the socket, the lock and
the state this module reads and writes: one object, one lock.

Why leader/follower and not a reader thread: a thread that reads every reply and hands it to
its caller costs two wakeups (futex and GIL) per call; measured against the daemon, it doubled
a one-hop call (143 µs against 72 µs on a raw socket). Here the thread that needs a frame reads
it itself, so a client used by one thread never hands anything over:

    caller ──(send lock: one whole frame at a time)──► socket ──► daemon
    caller ◄── poll + recv in its own thread, holding the reader role ◄── socket
    other callers ◄── a slot per request id, filled and woken by the role holder
    next_event()  ◄── a deque of Event, filled by whichever thread holds the role

How the role moves:
- It is a flag under the client's lock. A thread that needs a frame (a caller waiting for its
  reply, ``next_event`` for an event, ``shutdown`` for EOF) takes it if it is free; otherwise
  it waits on its own Condition (on the same lock) until what it needs arrives, the role frees
  up, the connection ends or its deadline passes.
- The holder reads with the lock released: ``poll`` with its remaining deadline, one ``recv``
  of what is there, fed to a ``wire.FrameDecoder``. It routes each complete frame (waking the
  threads whose reply or event came) and stops once what it waits for has come or its deadline
  has passed; on the way out it wakes one waiter that still needs a frame, to read for the rest.
- A frame cut in two by a deadline is not lost: its first part stays in the decoder for the
  next holder, so a timeout never puts the stream out of step, and a daemon stalled mid-frame
  holds no reader past its deadline.

The drain, only in a client that has subscribed: with no thread reading, its events would pile
up in the kernel and in the daemon, which drops a client that falls ``client_buffer_bytes``
behind. The first subscription starts one thread (``DRAIN_THREAD_NAME``) that waits for the
socket to turn readable without the role and takes the role only when it is free, for one read;
finding it held, it backs off rather than ask to be woken, so no call pays a handoff for it. A
client that never subscribes runs no thread at all. The drain holds the client only through a
weak reference, and never while it waits: a Client dropped without ``close()`` is collected,
its finalizer shuts the socket down, and the drain, woken by that, closes the fd and ends.

The event buffer holds at most ``event_buffer`` events not taken yet: past that the oldest is
dropped and remembered per topic as a gap, and the next event taken is an ``events_gap``
(docs/api.md §10: ``{"topic", "first_missing", "next_seq"}``), so a consumer never misses a silent
hole. A ``{"closing": {code, message}}`` frame from the daemon (it fell behind) becomes the
reason every later call gives.

Hazard designed against: the socket is closed by the last thread to stop polling it (``close``,
the role holder, the drain): an fd closed under a poll could be reused by an unrelated file.

This module, like client.py, never imports ``jidocoder.daemon``: a client process must stay
small and free of the daemon's threads and state.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import wire
from .errors import InvalidArgumentError, ProtocolError
from .models import Event, utc_now

__all__ = ["DRAIN_THREAD_NAME", "Reader", "to_model"]

DRAIN_THREAD_NAME = "jidocoder-client-drain"

# The longest one blocking recv waits (the socket's SO_RCVTIMEO): a read with less time left
# than this polls first, with the exact time left, so no wait passes a deadline.
RECV_SLICE = 0.05

# How long the drain leaves the socket alone after finding the role held: the role holder reads
# (and routes events) meanwhile, so this only bounds how often the drain looks, never how soon
# a frame is read. 5 ms of a flood is far less than the kernel and daemon buffers hold.
_DRAIN_BACKOFF = 0.005
# docs/api.md §4: a session's topic is this prefix and its id (the global topic has no session).
_SESSION_TOPIC_PREFIX = "client.session."

ModelT = TypeVar("ModelT", bound=BaseModel)


class _EndOfStream(Exception):
    """The daemon closed the connection between two frames."""


class _Slot:
    """Where the role holder leaves the reply to one request."""

    __slots__ = ("reply", "cond")

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None
        self.cond: threading.Condition | None = None  # set while its caller waits for it

    def has_reply(self) -> bool:
        return self.reply is not None


class Reader:
    """The reader role and the drain, mixed into ``Connection``, which sets every attribute
    below in its ``__init__`` and provides ``_check_open``, ``_lose_locked`` and
    ``_close_socket_if_unused``."""

    _lock: threading.Lock
    _sock: socket.socket
    _pending: dict[int, _Slot]
    _events: deque[Event]
    event_buffer: int  # the most events held before the oldest is dropped
    _gaps: dict[str, list[int]]  # topic → [first_missing, next_seq] of events dropped
    # Each waiting thread's Condition → whether what it waits for has come.
    _waiters: dict[threading.Condition, Callable[[], bool]]
    _local: threading.local  # each thread's Condition (_thread_condition)
    _reading: bool  # the reader role is held
    _reader: int | None  # the role holder's thread ident
    _role_free: threading.Condition  # role given up or drain ended
    _role_awaited: int  # threads waiting on _role_free
    _drain: threading.Thread | None  # started by the first subscription
    _drain_started: list[bool]  # [True] once it is: shared with the finalizer
    _draining: bool  # the drain thread may still poll the socket
    _drain_stop: threading.Event  # ends the drain's back-off at once
    _lost: tuple[str, BaseException | None] | None
    _closing: str | None  # the code of the daemon's closing frame
    _closed: bool
    _decoder: wire.FrameDecoder
    _buffer: memoryview
    _poller: select.poll
    _check_open: Callable[[], None]
    _lose_locked: Callable[[str, BaseException | None], None]
    _close_socket_if_unused: Callable[[], None]

    # -- waiting for what the socket brings --------------------------------------------------

    def _take_event(self, deadline: float | None) -> Event | None:
        """The oldest buffered event, reading for one until the deadline (None: never)."""
        with self._lock:
            if not self._await(self._has_event, deadline):
                return None
            if self._gaps:  # what was dropped is told before what came after it
                topic = next(iter(self._gaps))
                return _gap_event(topic, *self._gaps.pop(topic))
            return self._events.popleft()

    def _has_event(self) -> bool:
        return bool(self._events) or bool(self._gaps)

    def _buffer_event(self, event: Event) -> None:
        """Hold ``event``; past ``event_buffer`` the oldest goes, remembered as its topic's gap."""
        if len(self._events) >= self.event_buffer:
            dropped = self._events.popleft()
            gap = self._gaps.get(dropped.topic)
            if gap is None:
                self._gaps[dropped.topic] = [dropped.seq, dropped.seq + 1]
            else:  # drops are oldest first, so a topic's dropped seqs are contiguous
                gap[1] = dropped.seq + 1
        self._events.append(event)

    def _await_end(self, deadline: float) -> bool:
        """Read (buffering the events still in flight) until the connection ends; False if the
        deadline passes first."""
        with self._lock:
            return self._await(self._ended, deadline)

    def _ended(self) -> bool:
        return self._lost is not None or self._closed

    # -- the reader role (every method below runs with _lock held) ---------------------------

    def _await(self, ready: Callable[[], bool], deadline: float | None,
               slot: _Slot | None = None) -> bool:
        """Wait until ``ready()``, reading the socket whenever the role is free; False once the
        deadline (None: never) passes first. What is ready wins over a lost connection. A
        caller waiting for ``slot`` is woken by its reply directly (no scan of every waiter)."""
        cond: threading.Condition | None = None
        try:
            while not ready():
                self._check_open()
                if not self._reading:
                    if not self._lead(ready, deadline):
                        return ready()
                    continue
                remaining = None if deadline is None else _remaining(deadline)
                if remaining == 0:
                    return False
                if cond is None:
                    cond = self._thread_condition()
                    self._waiters[cond] = ready
                    if slot is not None:
                        slot.cond = cond
                cond.wait(remaining)
            return True
        finally:
            if cond is not None:
                del self._waiters[cond]
            if not self._reading:
                self._promote()  # leaving with the role free: someone else may need it

    def _thread_condition(self) -> threading.Condition:
        """This thread's Condition on the client's lock, made once rather than per wait (a new
        one if it is in use, e.g. by a signal handler's call inside a wait)."""
        cond = getattr(self._local, "cond", None)
        if cond is None or cond in self._waiters:
            cond = threading.Condition(self._lock)
            self._local.cond = cond
        return cond

    def _lead(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Hold the reader role until ``ready()``, the connection ends, or the deadline passes
        (False). The lock is released while the socket is read."""
        self._reading, self._reader = True, threading.get_ident()
        try:
            polled = False
            while not ready() and not self._closed and self._lost is None:
                remaining = None if deadline is None else _remaining(deadline)
                if remaining == 0 and polled:
                    return False
                polled = True
                self._lock.release()
                failure: Exception | None = None
                try:
                    frames = self._read_frames(remaining)
                except Exception as e:  # noqa: BLE001 -- whatever ends the stream ends it for all
                    frames, failure = [], e
                finally:
                    self._lock.acquire()
                self._route(frames or [])
                if failure is not None:
                    self._lose_locked(_describe(failure), _cause(failure))
                elif frames is None and remaining is not None and remaining < RECV_SLICE:
                    return False  # the deadline passed (a longer wait ends a slice early)
            return True
        finally:
            self._reading, self._reader = False, None
            self._close_socket_if_unused()
            if self._role_awaited:
                self._role_free.notify_all()
            self._promote()

    def _read_frames(self, timeout: float | None) -> list[Any] | None:
        """The frames completed by what the socket holds; None if nothing came in ``timeout``
        seconds (or in a slice of it). Part of a frame stays in the decoder for whoever reads
        next. With at least ``RECV_SLICE`` left, it waits in ``recv`` itself, whose timeout is
        that slice (SO_RCVTIMEO): a poll first would cost a syscall per reply."""
        if timeout is not None and timeout < RECV_SLICE:
            if not self._poller.poll(timeout * 1000):
                return None
        try:
            count = self._sock.recv_into(self._buffer, wire.RECV_CHUNK)
        except BlockingIOError:  # the slice passed with nothing: the caller looks at its deadline
            return None
        if count == 0:
            self._decoder.close()  # ProtocolError if the EOF cut a frame short
            raise _EndOfStream("the daemon closed the connection")
        return self._decoder.feed(self._buffer[:count])

    def _route(self, frames: list[Any]) -> None:
        """Each reply to its slot and each event to the deque, then wake whoever can go on. A
        bad frame ends the connection, after the good ones before it are delivered."""
        events = False
        try:
            for frame in frames:
                if not isinstance(frame, dict):
                    raise ProtocolError(f"the daemon sent a {type(frame).__name__}, "
                                        "not a message")
                if "event" in frame:
                    self._buffer_event(to_model(Event, frame["event"]))
                    events = True
                    continue
                if "closing" in frame:  # the daemon says why it closes: the reason to give
                    closing = frame["closing"]
                    if self._lost is None:
                        self._closing = str(closing.get("code")) if isinstance(closing, dict) else ""
                    self._lose_locked(_closing_reason(closing), None)
                    continue
                if frame.get("id") is None and isinstance(frame.get("error"), dict):
                    # A frame the daemon could not read (an oversized header): the stream is
                    # out of step and the daemon closes it; this is the reason to give.
                    self._lose_locked("the daemon refused a frame: "
                                      f"{frame['error'].get('message')}", None)
                    continue
                slot = self._pending.pop(frame.get("id"), None)  # type: ignore[arg-type]
                if slot is not None:
                    slot.reply = frame
                    if slot.cond is not None:  # its caller waits: wake it alone
                        slot.cond.notify()
        except ProtocolError as e:
            self._lose_locked(_describe(e), e)
        if events:  # the waiters for events, found by their predicates
            for cond, waiter_ready in self._waiters.items():
                if waiter_ready():
                    cond.notify()

    def _promote(self) -> None:
        """Wake one waiter that still needs a frame, to take the free role."""
        if self._closed or self._lost is not None:
            return  # _wake_all already woke everyone
        for cond, waiter_ready in self._waiters.items():
            if not waiter_ready():
                cond.notify()
                return

    def _wake_all(self) -> None:
        for cond in self._waiters:
            cond.notify()

    # -- the drain: a subscribed client reads its events even while no thread asks ----------

    def _start_drain(self) -> None:
        """After a subscription: without a reader, events would pile up in the daemon until it
        drops this client (client_buffer_bytes). Clients that never subscribe have no thread."""
        with self._lock:
            if self._drain is not None or self._closed or self._lost is not None:
                return
            self._draining = True
            self._drain_started[0] = True
            self._drain = drain = threading.Thread(
                target=_drain_loop, args=(weakref.ref(self), self._sock, self._drain_stop),
                name=DRAIN_THREAD_NAME, daemon=True)
        try:
            drain.start()
        except BaseException:  # no thread: close() must not wait for one
            with self._lock:
                self._draining = False
                self._drain = None
                self._drain_started[0] = False
            raise

    def _drain_once(self) -> bool:
        """One read for the drain if the role is free; False once the connection has ended."""
        with self._lock:
            if self._closed or self._lost is not None:
                return False
            if not self._reading:
                self._lead(_never, time.monotonic())  # one read, whatever it brings
        return True

    def _drain_ended(self) -> None:
        with self._lock:
            self._draining = False
            self._close_socket_if_unused()
            self._role_free.notify_all()


def _drain_loop(ref: weakref.ref[Reader], sock: socket.socket, stop: threading.Event) -> None:
    """The lowest-priority participant: it waits for the socket to turn readable without the
    role, and takes the role only when it is free, for one read. It never contends with a caller
    reading its own reply: seeing the role held (read without the lock, a hint) it backs off
    instead of asking to be woken, so no call pays a wakeup; and it polls again only once the
    role is free, or it would wake with the role holder on every frame that arrives, and compete
    with it for the GIL just when it has work.

    It holds its client (``ref``) only between waits: a Client dropped without ``close()`` is
    collected, its finalizer shuts the socket down (POLLHUP wakes the poll), and the drain closes
    the fd on its way out."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        while not stop.is_set():
            client = ref()
            if client is None:
                return
            reading = client._reading
            del client  # not held while waiting
            if not reading:
                poller.poll()  # shutdown (close, lost, collected) wakes it with POLLHUP
            client = ref()
            if client is None:
                return
            if client._reading:
                del client
                stop.wait(_DRAIN_BACKOFF)
                continue
            if not client._drain_once():
                return
            del client
    finally:
        client = ref()
        if client is not None:
            client._drain_ended()
        else:  # its Client was collected: nobody else will close the fd
            sock.close()


def _gap_event(topic: str, first_missing: int, next_seq: int) -> Event:
    """What the Client dropped of ``topic`` (docs/api.md §10); its seq is the last one missing, so
    the next event of the topic follows it."""
    session_id = topic[len(_SESSION_TOPIC_PREFIX):] if topic.startswith(_SESSION_TOPIC_PREFIX) else None
    return Event(type="events_gap", topic=topic, session_id=session_id,
                 payload={"topic": topic, "first_missing": first_missing, "next_seq": next_seq},
                 seq=next_seq - 1, timestamp=utc_now())


def _closing_reason(closing: Any) -> str:
    if isinstance(closing, dict) and isinstance(closing.get("message"), str):
        return f"the daemon closed this connection: {closing['message']}"
    return "the daemon closed the connection"


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _never() -> bool:
    return False


def _describe(failure: BaseException) -> str:
    if isinstance(failure, _EndOfStream):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


def _cause(failure: BaseException) -> BaseException | None:
    return None if isinstance(failure, _EndOfStream) else failure


def to_model(model: type[ModelT], data: Any) -> ModelT:
    """``data`` as ``model``: what the daemon sends is checked here, where the events are
    routed, and in client.py, where results are returned."""
    try:
        return model.model_validate(data)
    except (ValidationError, InvalidArgumentError) as e:  # the models may translate their errors
        raise ProtocolError(f"the daemon sent an invalid {model.__name__}: {e}") from e
