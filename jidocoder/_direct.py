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
is closed at a later call (looked for every ``SWEEP_SECONDS``): a session holds one fd per
client using it, not per client ever.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from . import wire
from ._dial import send_until, shutdown
from ._lifecycle import timed_out
from ._sync import RECV_SLICE, SyncConnection
from .errors import ProtocolError, SessionCrashedError, from_wire

__all__ = ["CHANNEL_IDLE_SECONDS", "DIRECT_OPS", "DirectCalls"]

# Calls a session serves itself (the daemon's SESSION_OPS): these take a channel.
DIRECT_OPS = frozenset({
    "send_message", "get_conversation_history", "clear_conversation", "add_file",
    "remove_file", "get_active_files", "update_file_index", "get_file_index", "build_context",
    "cache_file", "get_file", "invalidate_file", "clear_session_cache"})

CHANNEL_IDLE_SECONDS = 60.0  # a channel unused this long is closed (one fd less on each side)
# How often a call looks for such channels: each look goes over all of them, so not every call
# (a Client calling 1,000 sessions would spend more on that than on its call).
SWEEP_SECONDS = CHANNEL_IDLE_SECONDS / 10

_LOST = object()  # the channel ended before the reply came


class Channel:
    """One end of a channel to one process of one session."""

    __slots__ = ("sock", "pid", "decoder", "frames", "lock", "last_used", "closed", "poller",
                 "buffer")

    def __init__(self, fd: int, pid: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.pid = pid
        self.decoder = wire.FrameDecoder(wire.MAX_FRAME)  # our own session's replies
        self.frames: list[Any] = []  # read past the one wanted: the next reads take them
        self.lock = threading.Lock()  # one call at a time
        self.last_used = time.monotonic()
        self.closed = False
        self.poller = select.poll()  # not select(): a client may hold more than 1,024 fds
        self.poller.register(self.sock, select.POLLIN)
        # A reply is waited for in ``recv`` itself, woken every RECV_SLICE to look at the
        # deadline (as SyncConnection reads the daemon): one syscall where poll first made two.
        wire.set_receive_timeout(self.sock, RECV_SLICE)
        self.buffer = bytearray(wire.RECV_CHUNK)  # read into, not allocated by every recv

    def round_trip(self, request_id: int, frame: bytes, op: str, timeout: float,
                   deadline: float) -> Any:
        """Send ``frame`` and read until its reply (a dict), or ``_LOST``; a timeout raises.
        The caller holds ``lock``."""
        self.last_used = time.monotonic()
        try:
            sent = send_until(self.sock, frame, deadline)
        except OSError:
            return _LOST
        if sent < len(frame):  # the session is not reading: this channel is out of step
            self.close()  # half a frame then EOF: the session drops it, never applied
            raise timed_out(op, timeout, "the session is not reading; not applied")
        while True:
            reply = self._next_frame(op, timeout, deadline)
            if reply is _LOST or reply.get("id") == request_id:
                return reply
            if reply.get("id") is None and isinstance(reply.get("error"), dict):
                self.close()  # the session refused a frame and closed the channel
                raise from_wire(reply["error"])
            # else: the late reply of a call whose caller gave up; dropped

    def _next_frame(self, op: str, timeout: float, deadline: float) -> Any:
        pending = self.frames
        while not pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or remaining < RECV_SLICE and not self.poller.poll(remaining * 1000):
                raise timed_out(op, timeout, "no reply; the request may still be applied")
            try:
                count = self.sock.recv_into(self.buffer)
            except (BlockingIOError, InterruptedError):  # a slice of the wait went by
                continue
            except OSError:
                count = 0
            if not count:
                return _LOST
            try:
                with memoryview(self.buffer) as view:
                    pending.extend(self.decoder.feed(view[:count]))
            except ProtocolError:
                return _LOST
        frame = pending.pop(0)
        if not isinstance(frame, dict):
            raise ProtocolError(f"the session sent a {type(frame).__name__}, not a reply")
        return frame

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
        self.swept_at = time.monotonic()

    def call(self, op: str, args: dict[str, Any]) -> Any:
        conn = self.conn
        session_id = args.get("session_id")
        if not isinstance(session_id, str) or not conn.core.channels:
            return conn.call(op, args)  # the daemon says what is wrong, or has no channels
        deadline = time.monotonic() + conn.timeout
        with conn._lock:
            request_id, frame, args = conn.core.direct_request(op, args, deadline)
        while True:
            channel = self.channel_for(session_id)
            if channel is None:
                return conn.call(op, args)  # no channel can be made: relayed, same call id
            reply = self._on(channel, request_id, frame, op, deadline)
            if reply is not _LOST:
                return self._outcome(session_id, channel, reply, deadline)
            self._drop(session_id, channel)
            begun = conn.call("channel_lost", {"pid": channel.pid, "ids": [request_id]})["begun"]
            if begun:
                raise SessionCrashedError(
                    f"session {session_id}'s process died serving this call; it may or may not "
                    "have been applied")

    def _on(self, channel: Channel, request_id: int, frame: bytes, op: str,
            deadline: float) -> Any:
        if not channel.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise timed_out(op, self.conn.timeout, "the session is busy with this client's "
                            "other calls; nothing was sent")
        try:
            if channel.closed:
                return _LOST
            return channel.round_trip(request_id, frame, op, self.conn.timeout, deadline)
        finally:
            channel.lock.release()

    def _outcome(self, session_id: str, channel: Channel, reply: dict[str, Any],
                 deadline: float) -> Any:
        mark = self.conn.core.mark_to_await(session_id, reply)
        if mark:
            self.conn.await_mark(session_id, channel.pid, mark, deadline)
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply.get("result")

    def channel_for(self, session_id: str) -> Channel | None:
        """The session's channel, opened now if it has none; None: the daemon says relay."""
        with self.lock:
            now = time.monotonic()
            if now - self.swept_at >= SWEEP_SECONDS:
                self.swept_at = now
                self._close_unused(now)
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
            if now - channel.last_used > CHANNEL_IDLE_SECONDS and channel.lock.acquire(False):
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

