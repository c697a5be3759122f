"""The connection under ``Client``: one socket, shared by every thread of one client.

``Client`` (client.py) is the API; it inherits from ``Connection``, which owns everything that
touches the socket: connecting and hello, request ids, the send lock, the reply slots, the event
buffer, timeouts, and what happens when the connection ends or is closed. How the threads share
the reading of the socket (the reader role, the drain thread) is ``Reader``, in _reader.py, a
mixin of ``Connection``. One object rather than two, so that every thread of a client shares one
lock and a ``timeout`` changed on the client applies to its next call.

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
holder, the drain): an fd closed under a poll could be reused by an unrelated file. A Client
dropped without ``close()`` leaves nothing behind: its finalizer (``_collected``) shuts the
socket down, and closes it unless the drain thread is there to, once woken.

This module, like client.py, never imports ``jidocoder.daemon``: a client process must stay
small and free of the daemon's threads and state.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from . import wire
from ._sockdir import check_socket_dir, is_default_socket_dir, peer_credentials
from ._reader import RECV_SLICE, Reader, _remaining, _Slot
from .config import MiB
from .errors import (DaemonUnavailableError, InvalidArgumentError, LimitExceededError,
                     ProtocolError, RequestTimeoutError, from_wire)
from .models import Event

__all__ = ["Connection", "DEFAULT_MAX_REQUEST_BYTES"]

DEFAULT_MAX_REQUEST_BYTES = 16 * MiB  # used until (and unless) hello names the daemon's limit

# Each send is non-blocking for that call only (MSG_DONTWAIT), so the socket stays blocking for
# the role holder's recv; MSG_NOSIGNAL turns a dead peer into EPIPE, never SIGPIPE, even in a
# program that restored SIGPIPE's default action.
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)


class Connection(Reader):
    """A thread-safe connection to the daemon: requests and their replies, buffered events, the
    reader role and the drain. The socket is connected and hello answered on construction."""

    def __init__(self, socket_path: str, timeout: float, event_buffer: int = 10_000) -> None:
        if type(event_buffer) is not int or event_buffer < 1:
            raise InvalidArgumentError(f"event_buffer must be an int >= 1, not {event_buffer!r}",
                                       code="invalid_argument", field="event_buffer")
        self.socket_path = socket_path
        self.event_buffer = event_buffer
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
        self._gaps: dict[str, list[int]] = {}  # topic → [first_missing, next_seq] dropped
        # Each waiting thread's Condition → whether what it waits for has come.
        self._waiters: dict[threading.Condition, Callable[[], bool]] = {}
        self._local = threading.local()
        self._reading = False  # the reader role is held
        self._reader: int | None = None  # the role holder's thread ident
        self._role_free = threading.Condition(self._lock)  # role given up or drain ended
        self._role_awaited = 0  # threads waiting on _role_free (only close): notified only then
        self._drain: threading.Thread | None = None  # started by the first subscription
        self._drain_started: list[bool] = [False]  # shared with the finalizer, which has no self
        self._draining = False  # the drain thread may still poll the socket
        self._drain_stop = threading.Event()  # ends the drain's back-off at once
        self._lost: tuple[str, BaseException | None] | None = None
        self._closing: str | None = None  # the code of the daemon's closing frame, if it sent one
        self._closed = False
        self._sock = self._connect()
        self._finalizer = weakref.finalize(self, _collected, self._sock, self._drain_stop,
                                           self._drain_started)
        # Replies and events have no size limit (docs/api.md §9) but what a header can say; they
        # come from our own daemon, behind a 0600 socket, so they are decoded without a budget.
        self._decoder = wire.FrameDecoder(wire.MAX_FRAME)
        self._buffer = memoryview(bytearray(wire.RECV_CHUNK))  # one recv buffer per client
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN)
        try:
            self._hello()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        """Connected, and only to a daemon we trust (docs/api.md §8): in a default socket directory
        that is ours alone, served by a process of our own user. Nothing is sent before."""
        if is_default_socket_dir(self.socket_path) and \
                (why := check_socket_dir(os.path.dirname(self.socket_path))):
            raise DaemonUnavailableError(why, details={"socket": self.socket_path})
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)  # a full listen backlog must not block forever
            sock.connect(self.socket_path)
            sock.settimeout(None)  # reads bring their own deadline (RECV_SLICE), so do sends
            wire.set_receive_timeout(sock, RECV_SLICE)
        except OSError as e:
            sock.close()
            reason = e.strerror or str(e) or type(e).__name__
            raise DaemonUnavailableError(
                f"no jidocoder daemon answers on {self.socket_path} ({reason}); "
                "start one with `jidocoder daemon start`",
                details={"socket": self.socket_path}) from e
        _, uid, _ = peer_credentials(sock)
        if uid != os.getuid():
            sock.close()
            raise DaemonUnavailableError(
                f"the socket {self.socket_path} is served by a process of uid {uid}, not by you "
                f"(uid {os.getuid()}): nothing was sent to it; use a socket of your own",
                details={"socket": self.socket_path, "peer_uid": uid})
        return sock

    def _hello(self) -> None:
        info = self._call("hello", {}) or {}
        self.daemon_pid = info.get("pid")
        self.daemon_version = info.get("version")
        self.max_request_bytes = info.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES

    def close(self) -> None:
        """Close the connection; idempotent, leaves no fd, thread or buffered event behind.
        Every waiting thread, and every later call, raises ``DaemonUnavailableError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._events.clear()  # no buffer of a Client outlives close() (docs/api.md §9)
            self._gaps.clear()
            _shutdown(self._sock)  # wakes every poll on it (role holder, drain) and any sender
            self._drain_stop.set()
            self._wake_all()
            # The fd must not close (and its number be reused) under a thread polling it; the
            # last of them to leave closes it. A signal handler that runs inside the role
            # holder's poll cannot wait for that thread: it leaves the closing to it.
            if self._reader != threading.get_ident():
                self._role_awaited += 1
                try:
                    while self._reading or self._draining:
                        self._role_free.wait()
                finally:
                    self._role_awaited -= 1
            self._close_socket_if_unused()
            drain = self._drain
        self._finalizer.detach()
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
        frame = self._pack(op, {"id": request_id, "op": op, "args": args, "deadline": deadline})
        slot = self._register(request_id)
        try:
            self._send(op, frame, deadline)
            with self._lock:
                if not self._await(slot.has_reply, deadline, slot):
                    raise self._timeout(op, "no reply; the request may still be applied")
        finally:
            if slot.reply is None:  # answered, the reader has taken the slot out already
                with self._lock:
                    self._pending.pop(request_id, None)  # a late reply now finds no slot: dropped
        reply = slot.reply
        assert reply is not None  # _await returned True: has_reply() held
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
        try:
            sent = self._sock.send(frame, _SEND_FLAGS)  # nearly always the whole of it
        except BlockingIOError:
            sent = 0
        if sent == len(frame):
            return sent
        view = memoryview(frame)
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
        if self._closing is not None:  # the daemon said why: no advice to start a daemon
            return DaemonUnavailableError(
                f"{reason}; this Client is unusable, make a new one",
                details={"socket": self.socket_path, "closing": self._closing})
        error = DaemonUnavailableError(
            f"connection to the daemon lost ({reason}); check it with `jidocoder daemon status`"
            " and start one with `jidocoder daemon start`",
            details={"socket": self.socket_path})
        if self._lost and self._lost[1] is not None:
            error.__cause__ = self._lost[1]
        return error

    # -- the end of the connection -----------------------------------------------------------

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


def _collected(sock: socket.socket, drain_stop: threading.Event, drain_started: list[bool]) -> None:
    """A Client collected without ``close()`` (this holds no reference to it). A drain thread,
    if one was started, is woken by the shutdown and closes the fd itself (it may be polling
    it); otherwise the fd is closed here."""
    drain_stop.set()
    _shutdown(sock)
    if not drain_started[0]:
        sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected, or closed


def _wait_writable(sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` can take more bytes; False if the deadline passed first."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(_remaining(deadline) * 1000))
