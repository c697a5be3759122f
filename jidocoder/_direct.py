"""``Client``'s direct calls: a session's calls go straight to its process, on a channel.

The first call to a session asks the daemon for a channel (``open_channel``): a socketpair
whose other end the session's process holds; the reply brings this end (SCM_RIGHTS). From then
on that session's calls cross one hop, and the daemon touches none of them (docs/protocol.md,
"Direct channels"). The daemon keeps the rest: sessions' lifecycle, events, ``create``, ``list``,
``info``, ``terminate``.

A channel is used by one call at a time (its lock held for the round trip): a session serves
its calls one by one anyway, so nothing is lost, and the calling thread reads its own reply
with no other thread involved. A late reply (its caller gave up at its deadline) is read and
dropped by the next caller.

What a lost channel (EOF, reset) means is the daemon's to say, as for a relayed call: it is
asked which of the calls in flight the dead process had begun (``channel_lost``, from its
table's ``started`` field): those raise ``SessionCrashedError``; the others are sent again, as
they were (same id, call id, deadline), on a channel to the successor, which ``open_channel``
waits for. A daemon that never ran that process (it was restarted, and its sessions with it)
answers that it cannot tell: the call is resent, and its call id keeps it at most once.

Events before replies: a reply that carries a ``mark`` waits, if this Client is subscribed to the
session, until the daemon's events of that mark have come (``SyncConnection.await_mark``), so a
subscriber sees a call's events before the call returns, as on the relayed path.

Where no channel can be made (the daemon says ``relay``: out of fds, a backend without them),
the call goes relayed; the next call asks again. A channel unused for ``CHANNEL_IDLE_SECONDS``
is closed at the next call: a session holds one fd per client using it, not per client ever.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from . import wire
from ._channel import (CHANNEL_IDLE_SECONDS, DIRECT_OPS, LOST, UNSENT, ChannelReplies, DirectCall,
                       unused)
from ._dial import send_until, shutdown
from ._lifecycle import timed_out
from ._sync import SyncConnection
from .errors import JidocoderError

__all__ = ["CHANNEL_IDLE_SECONDS", "DIRECT_OPS", "DirectCalls"]


class Channel:
    """One end of a channel to one process of one session."""

    __slots__ = ("sock", "pid", "replies", "lock", "last_used", "closed", "poller")

    def __init__(self, fd: int, pid: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.pid = pid
        self.replies = ChannelReplies()
        self.lock = threading.Lock()  # one call at a time
        self.last_used = time.monotonic()
        self.closed = False
        self.poller = select.poll()  # not select(): a client may hold more than 1,024 fds
        self.poller.register(self.sock, select.POLLIN)

    def round_trip(self, call: DirectCall, timeout: float) -> Any:
        """Send the call's frame and read until its reply (a dict), or ``LOST``; a timeout
        raises. The caller holds ``lock``."""
        self.last_used = time.monotonic()
        try:
            sent = send_until(self.sock, call.frame, call.deadline)
        except OSError:
            return LOST
        if sent < len(call.frame):  # the session is not reading: this channel is out of step
            self.close()  # half a frame then EOF: the session drops it, never applied
            raise timed_out(call.op, timeout, "the session is not reading; not applied")
        try:
            while (reply := self.replies.take(call.request_id)) is None:
                if not self._read(call, timeout):
                    return LOST
        except JidocoderError:
            self.close()  # refused, or not replies: out of step
            raise
        return reply

    def _read(self, call: DirectCall, timeout: float) -> bool:
        """One read into ``replies``; False: the channel ended."""
        remaining = call.remaining()
        if remaining <= 0 or not self.poller.poll(remaining * 1000):
            raise timed_out(call.op, timeout, "no reply; the request may still be applied")
        try:
            data = self.sock.recv(wire.RECV_CHUNK)
        except OSError:
            data = b""
        return bool(data) and self.replies.feed(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            shutdown(self.sock)
            self.sock.close()


class DirectCalls:
    """The channels of one ``Client``, by session."""

    def __init__(self, conn: SyncConnection) -> None:
        self.conn = conn
        self.channels: dict[str, Channel] = {}
        self.lock = threading.Lock()

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
            reply = self._on(channel, call)
            if reply is not LOST and reply is not UNSENT:
                return self._outcome(call, channel, reply)
            self._drop(call.session_id, channel)
            if reply is LOST:
                call.after_lost(conn.call("channel_lost", call.lost_query(channel.pid)))

    def _on(self, channel: Channel, call: DirectCall) -> Any:
        if not channel.lock.acquire(timeout=call.remaining()):
            raise timed_out(call.op, self.conn.timeout, "the session is busy with this "
                            "client's other calls; nothing was sent")
        try:
            if channel.closed:
                return UNSENT
            return channel.round_trip(call, self.conn.timeout)
        finally:
            channel.lock.release()

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
        with channel.lock:
            channel.close()

    def _close_unused(self, now: float) -> None:
        for session_id, channel in list(self.channels.items()):
            if unused(channel.last_used, now) and channel.lock.acquire(False):
                try:
                    del self.channels[session_id]
                    channel.close()
                finally:
                    channel.lock.release()

    def close(self) -> None:
        with self.lock:
            channels, self.channels = list(self.channels.values()), {}
        for channel in channels:
            shutdown(channel.sock)  # wakes a caller reading it
            with channel.lock:
                channel.close()
