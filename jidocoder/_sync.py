"""``SyncConnection``: the I/O shell of ``Client`` — threads and one blocking socket.

What the bytes mean (ids, framing, routing, the event buffer, what to resend) is the protocol
core's (_protocol.py); this module only moves bytes and decides which thread reads.

Why leader/follower and not a reader thread: a thread that reads every reply and hands it to
its caller costs two wakeups (futex and GIL) per call; measured against the daemon, it doubled
a one-hop call (143 µs against 72 µs on a raw socket). Here the thread that needs a frame reads
it itself, so a client used by one thread never hands anything over:

    caller ──(send lock: one whole frame at a time)──► socket ──► daemon
    caller ◄── poll + recv in its own thread, holding the reader role ◄── socket
    other callers ◄── their Call answered by the role holder, which wakes their Condition
    next_event()  ◄── the core's event buffer, filled by whichever thread holds the role

The role is a flag under the lock. A thread that needs a frame takes it if it is free, else
waits on its own Condition until what it needs arrives, the role frees up, the connection
ends or its deadline passes. The holder reads with the lock released; a frame cut in two by a
deadline stays in the core's decoder for the next holder. The drain (_drain.py) reads for a
subscribed client whose threads are all busy elsewhere.

Reconnect (docs/api.md §10): EOF or a reset while reading (or EPIPE while sending) makes the
connection *broken*, not lost. Whoever leads next connects again (backing off, until
``timeout`` after the break), puts the new socket in place of the old with ``dup2`` (the fd
number never changes hands, so no poller can find it reused by an unrelated file), and sends
what the core says a new connection starts with: hello, the subscriptions from their last seq,
the calls still waiting. A call still unanswered at its deadline while broken raises
``DaemonUnavailableError`` saying whether it may have been applied. A closing frame (the client
fell behind), a broken frame, ``shutdown()`` or ``close()`` end the connection for good.

Hazards: the lock may be held while taking the send lock, never the reverse. The socket is
closed by the last thread to stop polling it. A Client dropped without ``close()`` leaves
nothing: its finalizer shuts the socket down and closes it unless the drain is there to.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _dial, wire
from ._dial import send_until, shutdown
from ._drain import DRAIN_THREAD_NAME, start_drain
from ._lifecycle import Lifecycle, timed_out, unanswered
from ._protocol import RECONNECT_BACKOFF, Call, ClientProtocol, Received
from .errors import DaemonUnavailableError, JidocoderError, RequestTimeoutError
from .models import Event

__all__ = ["DRAIN_THREAD_NAME", "SyncConnection"]

# The longest one blocking recv waits (SO_RCVTIMEO): with less time left it polls first.
RECV_SLICE = 0.05
_FD_SPACE = socket.CMSG_SPACE(4 * 4)  # room for a few fds: one per open_channel reply


class SyncConnection:
    """A thread-safe connection to the daemon; connected and hello answered on construction."""

    def __init__(self, socket_path: str, timeout: float, event_buffer: int) -> None:
        self.core = ClientProtocol(event_buffer)
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.Lock()  # guards everything below; _send_lock the socket's writes
        self._send_lock = threading.Lock()
        self._waiters: dict[threading.Condition, Callable[[], bool]] = {}
        self._local = threading.local()
        self._reading = False  # the reader role is held
        self._reader: int | None = None  # the role holder's thread ident
        self._role_free = threading.Condition(self._lock)  # role given up or drain ended
        self._role_awaited = 0
        self.drain: threading.Thread | None = None
        self.drain_started: list[bool] = [False]  # shared with the finalizer, which has no self
        self.draining = False  # the drain thread may still poll the socket
        self.stop = threading.Event()  # set by close: ends back-offs at once
        self.life = Lifecycle()
        self.sock = _dial.connect(socket_path, timeout)
        wire.set_receive_timeout(self.sock, RECV_SLICE)
        self._finalizer = weakref.finalize(self, _collected, self.sock, self.stop,
                                           self.drain_started)
        self._buffer = memoryview(bytearray(wire.RECV_CHUNK))
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        try:
            self.call("hello", {})
        except BaseException:
            self.close()
            raise

    # -- calls -------------------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and return its result, or raise the error the daemon answered."""
        return self.call_with_fd(op, args)[0]

    def call_with_fd(self, op: str, args: dict[str, Any]) -> tuple[Any, int | None]:
        """``call``, and the fd its reply came with (the caller's to close), if any."""
        deadline = time.monotonic() + self.timeout
        call = self.core.start_call(op, args, deadline)
        call.waiter = None
        try:
            with self._lock:
                self._check_open()
            self._send(call)
            with self._lock:
                if not self._await(call.has_reply, deadline, call):
                    raise self._gave_up(call)
        finally:
            if call.reply is None:
                with self._lock:
                    self.core.forget(call)
        try:
            return call.outcome(), call.fd
        except BaseException:
            if call.fd is not None:
                os.close(call.fd)
            raise

    def await_mark(self, session_id: str, pid: int, mark: int, deadline: float) -> None:
        """Read the daemon's events until the session's events of ``mark`` came (a direct
        reply waits for them: _direct.py), the connection breaks (they come on the new one,
        or as a gap) or ``deadline`` passes."""
        def ready() -> bool:
            return self.core.mark_seen(session_id, pid, mark) or self.life.broken or self.life.ended
        with self._lock:
            self._await(ready, deadline)

    def _send(self, call: Call) -> None:
        if not self._send_lock.acquire(timeout=_remaining(call.deadline)):
            raise self._timeout(call.op, "waiting to send; nothing was sent")
        try:
            if call.sent:  # a reconnect resent it meanwhile
                return
            call.sent = True
            sent = send_until(self.sock, call.frame, call.deadline)
        except OSError:
            # The peer is gone. Nothing of the frame reached a daemon that could apply it; the
            # reader reads what the old daemon sent before it went, then EOF, and the reconnect
            # resends the call.
            call.sent = False
            return
        finally:
            self._send_lock.release()
        if sent == 0:
            call.sent = False
            raise self._timeout(call.op, "the daemon is not reading; nothing was sent")
        if sent < len(call.frame):  # half a frame is on the wire: nothing after it is framed
            self._lose("a request was cut off mid-frame by the timeout")
            raise self._timeout(call.op, "the daemon is not reading; the connection is dropped")

    def _gave_up(self, call: Call) -> JidocoderError:
        return unanswered(call, self.socket_path, self.timeout, self.life.broken)

    def _timeout(self, op: str, why: str) -> RequestTimeoutError:
        return timed_out(op, self.timeout, why)

    def _check_open(self) -> None:
        if self.life.ended:
            raise self.life.error(self.socket_path)

    # -- events ------------------------------------------------------------------------------

    def take_event(self, deadline: float | None) -> Event | None:
        with self._lock:
            if not self._await(self.core.has_event, deadline):
                return None
            return self.core.take_event()

    def expect_end(self) -> None:
        """The daemon was asked to stop: its going away is the end, not a reason to reconnect."""
        with self._lock:
            self.life.final = True

    def await_end(self, deadline: float) -> bool:
        """After shutdown: read (buffering events in flight) until the daemon closes."""
        with self._lock:
            return self._await(self._ended, deadline)

    def _ended(self) -> bool:
        return self.life.ended

    # -- the reader role (every method below runs with _lock held) ---------------------------

    def _await(self, ready: Callable[[], bool], deadline: float | None,
               call: Call | None = None) -> bool:
        """Wait until ``ready()``, reading whenever the role is free; False once the deadline
        (None: never) passes first. What is ready wins over a lost connection."""
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
                    if call is not None:
                        call.waiter = cond
                cond.wait(remaining)
            return True
        finally:
            if cond is not None:
                del self._waiters[cond]
            if not self._reading:
                self._promote()

    def _thread_condition(self) -> threading.Condition:
        """This thread's Condition, made once (a new one if in use, e.g. by a signal handler's
        call inside a wait)."""
        cond = getattr(self._local, "cond", None)
        if cond is None or cond in self._waiters:
            cond = threading.Condition(self._lock)
            self._local.cond = cond
        return cond

    def _lead(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Hold the reader role until ``ready()``, the connection ends, or the deadline passes
        (False). The lock is released while the socket is read or a daemon is dialled."""
        self._reading, self._reader = True, threading.get_ident()
        try:
            polled = False
            while not ready() and not self.life.ended:
                remaining = None if deadline is None else _remaining(deadline)
                if remaining == 0 and polled:
                    return False
                polled = True
                if self.life.broken:
                    if not self._reconnect(deadline):
                        return False
                    continue
                received = self._read(remaining)
                if received is None:
                    if remaining is not None and remaining < RECV_SLICE:
                        return False
                    continue
                self._deliver(received)
            return True
        finally:
            self._reading, self._reader = False, None
            self.close_socket_if_unused()
            if self._role_awaited:
                self._role_free.notify_all()
            self._promote()

    def _read(self, timeout: float | None) -> Received | None:
        """What one read brings (None: nothing within the time, or a slice of it)."""
        self._lock.release()
        try:
            if timeout is not None and timeout < RECV_SLICE and \
                    not self._poller.poll(timeout * 1000):
                return None
            # recvmsg, not recv: an open_channel reply brings its channel's fd (SCM_RIGHTS)
            count, ancillary, _flags, _ = self.sock.recvmsg_into([self._buffer], _FD_SPACE)
        except BlockingIOError:
            return None
        except OSError as e:
            return Received([], end=f"reading failed: {e.strerror or e}", cause=e, reconnect=True)
        finally:
            self._lock.acquire()
        if ancillary:
            self.core.fds.extend(wire.received_fds(ancillary))
        if count == 0:
            return self.core.end_of_stream()
        return self.core.receive(self._buffer[:count])

    def _deliver(self, received: Received) -> None:
        """Wake the callers answered and the waiters for events; act on an end."""
        for call in received.answered:
            if call.waiter is not None:
                call.waiter.notify()
        if received.events:
            for cond, waiter_ready in self._waiters.items():
                if waiter_ready():
                    cond.notify()
        if received.end is None:
            return
        if not self.life.stream_ended(received):
            self._end_locked()

    def _promote(self) -> None:
        """Wake one waiter that still needs a frame, to take the free role."""
        if self.life.ended:
            return  # _end_locked woke everyone
        for cond, waiter_ready in self._waiters.items():
            if not waiter_ready():
                cond.notify()
                return

    def _wake_all(self) -> None:
        for cond in self._waiters:
            cond.notify()

    # -- reconnect ---------------------------------------------------------------------------

    def _reconnect(self, deadline: float | None) -> bool:
        """Dial until a daemon answers, the reconnect window closes (the connection is then
        lost) or ``deadline`` passes (False: the next reader goes on)."""
        until = self.life.dial_until(self.timeout)
        delay = RECONNECT_BACKOFF[0]
        while not self.life.closed:
            self._lock.release()
            try:
                sock = _dial.connect(self.socket_path, self.timeout)
            except DaemonUnavailableError:
                sock = None
            finally:
                self._lock.acquire()
            if sock is not None:
                return self._adopt(sock)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False  # this caller says whether its call may have been applied
            if now >= until:
                self.life.lose(f"no daemon came back on {self.socket_path} within "
                               f"{self.timeout:g} s")
                self._end_locked()
                return True  # ended: every waiter raises
            self._lock.release()
            try:
                self.stop.wait(min(delay, until - now, _remaining(deadline or until)))
            finally:
                self._lock.acquire()
            delay = min(delay * 2, RECONNECT_BACKOFF[1])
        return False

    def _adopt(self, sock: socket.socket) -> bool:
        """The new connection takes the old one's fd number; then what it starts with goes."""
        try:
            wire.set_receive_timeout(sock, RECV_SLICE)
            with self._send_lock:
                if self.life.closed:
                    return False
                os.dup2(sock.fileno(), self.sock.fileno(), inheritable=False)
                frames = self.core.reconnected()
                self.life.broken_since = None
                for frame in frames:
                    send_until(self.sock, frame, time.monotonic() + self.timeout)
        except OSError:  # the new daemon went too: the next read sees its EOF and dials again
            pass
        finally:
            sock.close()
        return True

    # -- the end -----------------------------------------------------------------------------

    def _end_locked(self) -> None:
        """The connection ended for good (``life`` says why): wake everyone."""
        if not self.life.closed:
            shutdown(self.sock)
        self._wake_all()

    def _lose(self, reason: str) -> None:
        with self._lock:
            self.life.lose(reason)
            self._end_locked()

    def close(self) -> None:
        """Idempotent; leaves no fd, thread or buffered event behind (docs/api.md §9)."""
        with self._lock:
            if self.life.closed:
                return
            self.life.closed = True
            self.core.clear_events()
            shutdown(self.sock)  # wakes every poll on it (role holder, drain) and any sender
            self.stop.set()
            self._wake_all()
            # The fd must not close under a thread polling it; the last of them closes it. A
            # signal handler inside the role holder's poll leaves the closing to that thread.
            if self._reader != threading.get_ident():
                self._role_awaited += 1
                try:
                    while self._reading or self.draining:
                        self._role_free.wait()
                finally:
                    self._role_awaited -= 1
            self.close_socket_if_unused()
            drain = self.drain
        self._finalizer.detach()
        if drain is not None:
            drain.join()

    def close_socket_if_unused(self) -> None:
        if self.life.closed and not self._reading and not self.draining:
            with self._send_lock:  # no sender may be inside the socket while it is closed
                self.sock.close()

    # -- the drain's side (_drain.py) --------------------------------------------------------

    def start_drain(self) -> None:
        with self._lock:
            if self.drain is not None or self.life.ended:
                return
            self.draining = True
            self.drain_started[0] = True
        try:
            self.drain = start_drain(self)
        except BaseException:  # no thread: close() must not wait for one
            with self._lock:
                self.draining = False
                self.drain_started[0] = False
            raise

    def drain_once(self) -> bool:
        """One read for the drain if the role is free; False once the connection has ended."""
        with self._lock:
            if self.life.ended:
                return False
            if not self._reading:
                self._lead(_never, time.monotonic())
        return True

    def reading(self) -> bool:
        return self._reading

    def broken(self) -> bool:
        return self.life.broken

    def drain_ended(self) -> None:
        with self._lock:
            self.draining = False
            self.close_socket_if_unused()
            self._role_free.notify_all()


def _collected(sock: socket.socket, stop: threading.Event, drain_started: list[bool]) -> None:
    """A Client collected without ``close()``: a drain, if any, closes the fd itself once woken
    by the shutdown (it may be polling it); otherwise the fd is closed here."""
    stop.set()
    shutdown(sock)
    if not drain_started[0]:
        sock.close()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _never() -> bool:
    return False
