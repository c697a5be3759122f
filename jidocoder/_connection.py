"""The connection under ``Client``: one socket, shared by every thread of one client.

``Client`` (client.py) is the API; it inherits from ``Connection``, which owns everything that
touches the socket: connecting and hello, request ids, the send lock, the reader role, the reply
slots, the event buffer, the drain thread, timeouts, and what happens when the connection ends
or is closed. One object rather than two, so that every thread of a client shares one lock and
a ``timeout`` changed on the client applies to its next call.

One Unix stream socket carries both the replies to this client's requests and the events it
subscribed to, interleaved in whatever order the daemon sends them (docs/protocol.md); whoever
reads it routes what it finds: a reply to the caller waiting for its id, an event to a buffer.

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
client that never subscribes runs no thread at all.

Requests and failures: a request is packed first (``LimitExceededError`` or
``InvalidArgumentError`` before anything is sent; the Client stays usable), then written whole
under the send lock, with a deadline. Every wait ends at the client's ``timeout`` →
``RequestTimeoutError``; a late reply for a request that timed out finds no slot and is dropped.
When the connection ends (EOF, socket error, a bad frame) the first reason is recorded and every
waiter is woken: from then on every call raises ``DaemonUnavailableError``, and so does
``next_event`` once the buffered events are drained.

Hazards designed against: the client's lock may be held while taking the send lock (to close
the socket), never the reverse, so a sender that fails records the loss only after releasing
the send lock. The socket is closed by the last thread to stop polling it (``close``, the role
holder, the drain): an fd closed under a poll could be reused by an unrelated file.

This module, like client.py, never imports ``jidocoder.daemon``: a client process must stay
small and free of the daemon's threads and state.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import wire
from .config import MiB
from .errors import (DaemonUnavailableError, InvalidArgumentError, LimitExceededError,
                     ProtocolError, RequestTimeoutError, from_wire)
from .models import Event

__all__ = ["Connection", "DEFAULT_MAX_REQUEST_BYTES", "DRAIN_THREAD_NAME", "to_model"]

DEFAULT_MAX_REQUEST_BYTES = 16 * MiB  # used until (and unless) hello names the daemon's limit
DRAIN_THREAD_NAME = "jidocoder-client-drain"

# Replies come from our own daemon (a 0600 socket), and one may carry a whole cached file or a
# long conversation, so the bound is generous (the largest max_request_bytes the daemon takes):
# it only keeps a garbage header from making the decoder buffer up to 4 GiB.
_MAX_REPLY_BYTES = 1024 * MiB
# One recv takes at most this much, into a buffer allocated once per client: Python allocates
# the whole requested size on every plain recv, and more than 64 KiB measured slower.
_RECV_BYTES = 64 * 1024

# How long the drain leaves the socket alone after finding the role held: the role holder reads
# (and routes events) meanwhile, so this only bounds how often the drain looks, never how soon
# a frame is read. 5 ms of a flood is far less than the kernel and daemon buffers hold.
_DRAIN_BACKOFF = 0.005

# Each send is non-blocking for that call only (MSG_DONTWAIT), so the socket stays blocking for
# the role holder's recv; MSG_NOSIGNAL turns a dead peer into EPIPE, never SIGPIPE, even in a
# program that restored SIGPIPE's default action.
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)

ModelT = TypeVar("ModelT", bound=BaseModel)


class _EndOfStream(Exception):
    """The daemon closed the connection between two frames."""


class _Slot:
    """Where the role holder leaves the reply to one request."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None


class Connection:
    """A thread-safe connection to the daemon: requests and their replies, buffered events, the
    reader role and the drain. The socket is connected and hello answered on construction."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
        self.daemon_pid: int | None = None
        self.daemon_version: str | None = None
        self._ids = itertools.count(1)
        # _lock guards everything below it; _send_lock only the writing side of the socket.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._events: deque[Event] = deque()
        # Each waiting thread's Condition → whether what it waits for has come.
        self._waiters: dict[threading.Condition, Callable[[], bool]] = {}
        self._reading = False  # the reader role is held
        self._reader: int | None = None  # the role holder's thread ident
        self._role_free = threading.Condition(self._lock)  # role given up or drain ended
        self._drain: threading.Thread | None = None  # started by the first subscription
        self._draining = False  # the drain thread may still poll the socket
        self._drain_stop = threading.Event()  # ends the drain's back-off at once
        self._lost: tuple[str, BaseException | None] | None = None
        self._closed = False
        self._sock = self._connect()
        self._decoder = wire.FrameDecoder(_MAX_REPLY_BYTES)
        self._buffer = memoryview(bytearray(_RECV_BYTES))
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)
        try:
            self._hello()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)  # a full listen backlog must not block forever
            sock.connect(self.socket_path)
            sock.settimeout(None)  # reads wait in poll, sends bring their own deadline
        except OSError as e:
            sock.close()
            reason = e.strerror or str(e) or type(e).__name__
            raise DaemonUnavailableError(
                f"no jidocoder daemon answers on {self.socket_path} ({reason}); "
                "start one with `jidocoder daemon start`",
                details={"socket": self.socket_path}) from e
        return sock

    def _hello(self) -> None:
        info = self._call("hello", {}) or {}
        self.daemon_pid = info.get("pid")
        self.daemon_version = info.get("version")
        self.max_request_bytes = info.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES

    def close(self) -> None:
        """Close the connection; idempotent, leaves no fd behind. Every waiting thread raises
        ``DaemonUnavailableError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _shutdown(self._sock)  # wakes every poll on it (role holder, drain) and any sender
            self._drain_stop.set()
            self._wake_all()
            # The fd must not close (and its number be reused) under a thread polling it; the
            # last of them to leave closes it. A signal handler that runs inside the role
            # holder's poll cannot wait for that thread: it leaves the closing to it.
            if self._reader != threading.get_ident():
                while self._reading or self._draining:
                    self._role_free.wait()
            self._close_socket_if_unused()
            drain = self._drain
        if drain is not None:
            drain.join()  # it has already left the socket; this only reaps the thread

    def _state(self) -> str:
        """``closed`` by this side, ``lost`` by the daemon or a failure, else ``open``."""
        if self._closed:
            return "closed"
        return "lost" if self._lost is not None else "open"

    # -- requests ----------------------------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and return its result, or raise the error the daemon answered."""
        deadline = time.monotonic() + self.timeout
        request_id = next(self._ids)  # itertools.count is atomic under the GIL
        frame = self._pack(op, {"id": request_id, "op": op, "args": args})
        slot = self._register(request_id)
        try:
            self._send(op, frame, deadline)
            with self._lock:
                if not self._await(lambda: slot.reply is not None, deadline):
                    raise self._timeout(op, "no reply; the request may still be applied")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)  # a late reply now finds no slot: dropped
        reply = slot.reply
        if "error" not in reply:
            return reply.get("result")
        if not isinstance(reply["error"], dict):
            raise ProtocolError(f"the daemon answered {op} with a malformed error")
        raise from_wire(reply["error"])

    def _pack(self, op: str, request: dict[str, Any]) -> bytes:
        try:
            return wire.pack_frame(request, self.max_request_bytes)
        except LimitExceededError as e:
            size = e.details.get("size")
            raise LimitExceededError(
                f"the {op} request ({size} bytes) is larger than the daemon's max_request_bytes "
                f"({self.max_request_bytes}); nothing was sent",
                details={"op": op, "size": size, "limit": self.max_request_bytes}) from e

    def _register(self, request_id: int) -> _Slot:
        slot = _Slot()
        with self._lock:
            self._check_open()
            self._pending[request_id] = slot
        return slot

    def _send(self, op: str, frame: bytes, deadline: float) -> None:
        if not self._send_lock.acquire(timeout=_remaining(deadline)):
            raise self._timeout(op, "waiting to send; nothing was sent")
        try:
            sent = self._send_until(frame, deadline)
        except OSError as e:
            failure: OSError | None = e
        else:
            failure = None
        finally:
            self._send_lock.release()
        if failure is not None:  # recorded only now: see the lock order in the docstring
            self._lose("sending failed: " + (failure.strerror or str(failure)), failure)
            raise self._unavailable() from failure
        if sent == 0:
            raise self._timeout(op, "the daemon is not reading; nothing was sent")
        if sent < len(frame):
            # Half a frame is on the wire: nothing after it could be framed correctly.
            self._lose("a request was cut off mid-frame by the timeout", None)
            raise self._timeout(op, "the daemon is not reading; the connection is dropped")

    def _send_until(self, frame: bytes, deadline: float) -> int:
        """Write ``frame`` until done or the deadline passes; the number of bytes written."""
        view = memoryview(frame)
        sent = 0
        while sent < len(frame):
            try:
                sent += self._sock.send(view[sent:], _SEND_FLAGS)
            except BlockingIOError:
                if not _wait_writable(self._sock, deadline):
                    break
        return sent

    def _timeout(self, op: str, why: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the daemon did not answer {op} within {self.timeout:g} s ({why})",
            details={"op": op, "timeout": self.timeout})

    def _check_open(self) -> None:
        if self._closed or self._lost is not None:
            raise self._unavailable()

    def _unavailable(self) -> DaemonUnavailableError:
        """A fresh error for each caller: one exception raised in many threads would share a
        traceback."""
        if self._closed:
            return DaemonUnavailableError("this Client is closed; make a new one")
        reason = self._lost[0] if self._lost else "unknown reason"
        error = DaemonUnavailableError(
            f"connection to the daemon lost ({reason}); check it with `jidocoder daemon status`"
            " and start one with `jidocoder daemon start`",
            details={"socket": self.socket_path})
        if self._lost and self._lost[1] is not None:
            error.__cause__ = self._lost[1]
        return error

    # -- waiting for what the socket brings --------------------------------------------------

    def _take_event(self, deadline: float | None) -> Event | None:
        """The oldest buffered event, reading for one until the deadline (None: never)."""
        with self._lock:
            if not self._await(self._has_event, deadline):
                return None
            return self._events.popleft()

    def _has_event(self) -> bool:
        return bool(self._events)

    def _await_end(self, deadline: float) -> bool:
        """Read (buffering the events still in flight) until the connection ends; False if the
        deadline passes first."""
        with self._lock:
            return self._await(self._ended, deadline)

    def _ended(self) -> bool:
        return self._lost is not None or self._closed

    # -- the reader role (every method below runs with _lock held) ---------------------------

    def _await(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``ready()``, reading the socket whenever the role is free; False once the
        deadline (None: never) passes first. What is ready wins over a lost connection."""
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
                    cond = threading.Condition(self._lock)
                    self._waiters[cond] = ready
                cond.wait(remaining)
            return True
        finally:
            if cond is not None:
                del self._waiters[cond]
            if not self._reading:
                self._promote()  # leaving with the role free: someone else may need it

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
                try:
                    frames = self._read_frames(remaining)
                except Exception as e:  # noqa: BLE001 -- whatever ends the stream ends it for all
                    frames, failure = [], e
                else:
                    failure = None
                finally:
                    self._lock.acquire()
                self._route(frames or [])
                if failure is not None:
                    self._lose_locked(_describe(failure), _cause(failure))
                elif frames is None and remaining is not None:
                    return False
            return True
        finally:
            self._reading, self._reader = False, None
            self._close_socket_if_unused()
            self._role_free.notify_all()
            self._promote()

    def _read_frames(self, timeout: float | None) -> list[Any] | None:
        """The frames completed by what the socket holds; None if nothing came in ``timeout``
        seconds. Part of a frame stays in the decoder for whoever reads next."""
        if not self._poller.poll(None if timeout is None else timeout * 1000):
            return None
        count = self._sock.recv_into(self._buffer, _RECV_BYTES)
        if count == 0:
            self._decoder.close()  # ProtocolError if the EOF cut a frame short
            raise _EndOfStream("the daemon closed the connection")
        return self._decoder.feed(self._buffer[:count])

    def _route(self, frames: list[Any]) -> None:
        """Each reply to its slot and each event to the deque, then wake whoever can go on. A
        bad frame ends the connection, after the good ones before it are delivered."""
        try:
            for frame in frames:
                if not isinstance(frame, dict):
                    raise ProtocolError(f"the daemon sent a {type(frame).__name__}, "
                                        "not a message")
                if "event" in frame:
                    self._events.append(to_model(Event, frame["event"]))
                    continue
                slot = self._pending.pop(frame.get("id"), None)  # type: ignore[arg-type]
                if slot is not None:
                    slot.reply = frame
        except ProtocolError as e:
            self._lose_locked(_describe(e), e)
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

    def _lose_locked(self, reason: str, cause: BaseException | None) -> None:
        """Record why the connection ended (the first reason wins), end it, wake everyone."""
        if self._lost is None:
            self._lost = (reason, cause)
        if not self._closed:
            _shutdown(self._sock)  # a role holder in poll sees EOF
        self._wake_all()

    def _lose(self, reason: str, cause: BaseException | None) -> None:
        with self._lock:
            self._lose_locked(reason, cause)

    def _close_socket_if_unused(self) -> None:
        if self._closed and not self._reading and not self._draining:
            with self._send_lock:  # no sender may be inside the socket while it is closed
                self._sock.close()

    # -- the drain: a subscribed client reads its events even while no thread asks ----------

    def _start_drain(self) -> None:
        """After a subscription: without a reader, events would pile up in the daemon until it
        drops this client (client_buffer_bytes). Clients that never subscribe have no thread."""
        with self._lock:
            if self._drain is not None or self._closed or self._lost is not None:
                return
            self._draining = True
            self._drain = drain = threading.Thread(target=self._drain_loop,
                                                   name=DRAIN_THREAD_NAME, daemon=True)
        try:
            drain.start()
        except BaseException:  # no thread: close() must not wait for one
            with self._lock:
                self._draining = False
            raise

    def _drain_loop(self) -> None:
        """The lowest-priority participant: it waits for the socket to turn readable without the
        role, and takes the role only when it is free, for one non-blocking read. It never
        contends with a caller reading its own reply: seeing the role held (read without the
        lock, a hint) it backs off instead of asking to be woken, so no call pays a wakeup."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        try:
            while not self._drain_stop.is_set():
                poller.poll()  # shutdown (close, lost) wakes it with POLLHUP
                if self._reading:
                    self._drain_stop.wait(_DRAIN_BACKOFF)
                    continue
                with self._lock:
                    if self._closed or self._lost is not None:
                        return
                    if not self._reading:
                        self._lead(_never, time.monotonic())  # one read, whatever it brings
        finally:
            with self._lock:
                self._draining = False
                self._close_socket_if_unused()
                self._role_free.notify_all()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _never() -> bool:
    return False


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected, or closed


def _describe(failure: BaseException) -> str:
    if isinstance(failure, _EndOfStream):
        return str(failure)
    return f"{type(failure).__name__}: {failure}"


def _cause(failure: BaseException) -> BaseException | None:
    return None if isinstance(failure, _EndOfStream) else failure


def _wait_writable(sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` can take more bytes; False if the deadline passed first."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(_remaining(deadline) * 1000))


def to_model(model: type[ModelT], data: Any) -> ModelT:
    """``data`` as ``model``: what the daemon sends is checked here, where the events are
    routed, and in client.py, where results are returned."""
    try:
        return model.model_validate(data)
    except (ValidationError, InvalidArgumentError) as e:  # the models may translate their errors
        raise ProtocolError(f"the daemon sent an invalid {model.__name__}: {e}") from e
