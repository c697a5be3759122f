"""``Client``'s direct calls: a session's calls go straight to its process, on a channel.

The first call to a session asks the daemon for a channel (``open_channel``): a socketpair
whose other end the session's process holds; the reply brings this end (SCM_RIGHTS). From then
on that session's calls cross one hop, and the daemon touches none of them (docs/protocol.md,
"Direct channels"). The daemon keeps the rest: sessions' lifecycle, events, ``create``, ``list``,
``info``, ``terminate``.

A channel carries several calls at once, as the daemon connection does: the Client's threads
each write a whole frame, and whoever waits for a reply while nobody reads reads for all of
them (``Channel``). The session serves a channel's requests in order, those that arrive
together as one group (one commit), so threads sharing a Client pipeline their calls as on the
relayed path. A late reply (its caller gave up at its deadline) is read and dropped.

What a lost channel (EOF, reset) means is the daemon's to say, as for a relayed call: it is
asked which of the calls in flight (in the order they were sent) the dead process had begun
(``channel_lost``, from its table's ``started`` field): those raise ``SessionCrashedError``;
the others are sent again, as they were (same id, call id, deadline), on a channel to the
successor, which ``open_channel`` waits for. A daemon that never ran that process (it was
restarted, and its sessions with it) answers that it cannot tell: the call is resent, and its
call id keeps it at most once.

Events before replies: a reply that carries a ``mark`` waits, if this Client is subscribed to the
session, until the daemon's events of that mark have come (``SyncConnection.await_mark``), so a
subscriber sees a call's events before the call returns, as on the relayed path.

Where no channel can be made (the daemon says ``relay``: out of fds, a backend without them),
the call goes relayed; the next call asks again. A channel unused for ``CHANNEL_IDLE_SECONDS``
is closed at a later call (``Sweep``): a session holds one fd per client using it, not per
client ever.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from . import wire
from ._channel import (CHANNEL_IDLE_SECONDS, CLOSED, DIRECT_OPS, LOST, ChannelCalls, DirectCall,
                       Sweep)
from ._dial import send_until, shutdown
from ._lifecycle import timed_out
from ._sync import RECV_SLICE, SyncConnection

__all__ = ["CHANNEL_IDLE_SECONDS", "DIRECT_OPS", "DirectCalls"]


class Channel:
    """One end of a channel to one process of one session, shared by the Client's threads.

    Several calls may be in flight on it (a session serves a channel's requests in order, and
    those that arrive together in one group commit): each thread writes its frame whole under
    ``send_lock``, then waits for its reply. Whoever waits and finds nobody reading reads (the
    leader/follower of _sync.py, on a smaller scale): it routes each reply to its caller by id
    and wakes them. The socket is closed by the last thread to stop using it."""

    __slots__ = ("sock", "pid", "calls", "send_lock", "lock", "arrived", "reading", "last_used",
                 "closed", "poller", "users", "buffer")

    def __init__(self, fd: int, pid: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.pid = pid
        self.calls = ChannelCalls()  # in flight, their replies, the end (_channel.py)
        self.send_lock = threading.Lock()  # one whole frame at a time
        self.lock = threading.Lock()  # guards everything below
        self.arrived = threading.Condition(self.lock)  # a reply routed, or the reader left
        self.reading = False
        self.last_used = time.monotonic()
        self.closed = False
        self.poller = select.poll()  # not select(): a client may hold more than 1,024 fds
        self.poller.register(self.sock, select.POLLIN)
        self.users = 0  # threads inside round_trip: the last one out closes a closed channel
        # The reader waits in ``recv`` itself, woken every RECV_SLICE to look at its deadline
        # (as SyncConnection reads the daemon): one syscall where poll first made two.
        wire.set_receive_timeout(self.sock, RECV_SLICE)
        self.buffer = bytearray(wire.RECV_CHUNK)  # the reader's: not allocated by every recv

    def round_trip(self, call: DirectCall, timeout: float) -> Any:
        """Send the call's frame and wait for its reply (a dict), ``LOST`` or ``CLOSED``; a
        timeout raises."""
        with self.lock:
            if self.closed:
                return CLOSED
            self.users += 1
            self.last_used = time.monotonic()
        try:
            self._send(call.request_id, call.frame, call.op, timeout, call.deadline)
            return self._await(call.request_id, call.op, timeout, call.deadline)
        finally:
            with self.lock:
                self.calls.forget(call.request_id)  # given up: its late reply is dropped
                self.users -= 1
                if self.closed and not self.users and not self.reading:
                    self.sock.close()

    def _send(self, request_id: int, frame: bytes, op: str, timeout: float,
              deadline: float) -> None:
        if not self.send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise timed_out(op, timeout, "the channel is busy sending; nothing was sent")
        try:
            with self.lock:  # in flight in the order sent: the daemon's answer on a loss needs it
                self.calls.sent(request_id)
            sent = send_until(self.sock, frame, deadline)
        except OSError:
            return  # the session is gone: the reader sees the end, and the daemon says
        finally:
            self.send_lock.release()
        if sent < len(frame):  # the session is not reading: this channel is out of step
            self.close()  # half a frame then EOF: the session drops it, never applied
            raise timed_out(op, timeout, "the session is not reading; not applied")

    def _await(self, request_id: int, op: str, timeout: float, deadline: float) -> Any:
        with self.lock:
            while True:
                reply = self.calls.take(request_id)
                if reply is not None:
                    return reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out(op, timeout, "no reply; the request may still be applied")
                if self.reading:
                    self.arrived.wait(remaining)
                    continue
                self.reading = True
                self.lock.release()
                try:
                    data = self._read(remaining)
                finally:
                    self.lock.acquire()
                    self.reading = False
                self._route(data)
                self.arrived.notify_all()

    def _read(self, remaining: float) -> memoryview | None:
        """What came within ``remaining`` seconds (empty if nothing); None: the channel ended."""
        if remaining < RECV_SLICE and not self.poller.poll(remaining * 1000):
            return memoryview(b"")
        try:
            count = self.sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):  # a slice went by: the caller looks again
            return memoryview(b"")
        except OSError:
            count = 0
        return memoryview(self.buffer)[:count] if count else None

    def _route(self, data: memoryview | None) -> None:
        """Hand each reply to its caller (held under ``lock``); a reply whose caller gave up
        is dropped; the end of the channel is noted with the calls then unanswered."""
        if data is None:
            self.calls.end()
        elif not self.calls.feed(data):  # refused (each caller hears why) or unusable
            self.closed = True
            shutdown(self.sock)

    def close(self) -> None:
        """No call starts on it any more; the socket goes now, or with its last user."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            shutdown(self.sock)  # wakes a thread reading it
            if not self.users and not self.reading:
                self.sock.close()


class DirectCalls:
    """The channels of one ``Client``, by session."""

    def __init__(self, conn: SyncConnection) -> None:
        self.conn = conn
        self.channels: dict[str, Channel] = {}
        self.lock = threading.Lock()
        self.sweep = Sweep()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        conn = self.conn
        with conn._lock:
            call = DirectCall.start(conn.core, op, args, conn.timeout)
        if call is None:
            return conn.call(op, args)  # the daemon says what is wrong, or has no channels
        while True:
            channel = self.channel_for(call.session_id)
            if channel is None:
                return conn.call(op, call.args)  # no channel can be made: relayed, same call id
            reply = channel.round_trip(call, conn.timeout)
            if reply is CLOSED:  # never sent on it: the next channel takes it
                self._drop(call.session_id, channel)
                continue
            if reply is not LOST:
                return self._outcome(call, channel, reply)
            self._drop(call.session_id, channel)
            query = call.lost_query(channel.pid, channel.calls.lost_ids)
            call.after_lost(conn.call("channel_lost", query))

    def _outcome(self, call: DirectCall, channel: Channel, reply: dict[str, Any]) -> Any:
        mark = call.mark(self.conn.core, reply)
        if mark:
            self.conn.await_mark(call.session_id, channel.pid, mark, call.deadline)
        return call.outcome(reply)

    def channel_for(self, session_id: str) -> Channel | None:
        """The session's channel, opened now if it has none; None: the daemon says relay."""
        with self.lock:
            self._close_unused(time.monotonic())
            channel = self.channels.get(session_id)
            if channel is not None:
                return channel
        result, fd = self.conn.call_with_fd("open_channel", {"session_id": session_id})
        if fd is None:
            return None
        channel = Channel(fd, result["pid"])
        with self.lock:
            if session_id in self.channels:  # another thread opened one meanwhile
                channel.close()
                return self.channels[session_id]
            self.channels[session_id] = channel
        return channel

    def _drop(self, session_id: str, channel: Channel) -> None:
        with self.lock:
            if self.channels.get(session_id) is channel:
                del self.channels[session_id]
        channel.close()

    def _close_unused(self, now: float) -> None:
        for channel in self.sweep.take(self.channels, now, lambda channel: channel.users):
            channel.close()

    def close(self) -> None:
        with self.lock:
            channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            channel.close()  # a caller reading it wakes up to its end

