"""``AsyncClient``'s direct calls: a session's calls go straight to its process, on a channel.

The same design as ``Client``'s (_direct.py; docs/protocol.md, "Direct channels"), and the same
pure parts (_channel.py: the call, its frame, the calls in flight on a channel and their
replies, what a lost channel means); here only the waiting is asyncio's. A channel is an
``AioSocket`` (_aiosock.py), like the daemon connection: a reader callback feeds its
``ChannelCalls``, which routes each reply to its call, and wakes that call's Future.

Many calls in flight per channel, as ``Client``'s threads have: each task writes its frame whole
and waits for its own reply; the session serves a channel's requests in order, those that come
together as one group (one commit). Cancellation, at any await: before the frame is written,
nothing was sent; the frame is written whole in one synchronous call, so after it the frame
goes whole (applied once), its late reply is dropped, and the channel stays in step. A call
that reaches its deadline with part of its frame unsent closes the channel: the session drops
the half frame at the EOF, unapplied.

A lost channel (EOF, a reset) before the reply: the daemon is asked ``channel_lost`` about the
calls then in flight; begun → ``SessionCrashedError``, else the same frame goes on a new channel
(to the successor). A call none of whose bytes went (the channel closed on this side, or
ended, before the kernel took any) is ``CLOSED``: it goes on a new channel with no question.
A ``relay`` answer to ``open_channel`` sends the call relayed. Tasks that need a session's
channel at once wait for one ``open_channel``, not one each. A channel unused for
``CHANNEL_IDLE_SECONDS`` is closed at a later call (``Sweep``); ``close()`` closes them all.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from typing import Any

from ._aiosock import AioSocket, close_quietly
from ._async import AsyncConnection
from ._channel import CLOSED, LOST, ChannelCalls, DirectCall, Sweep
from ._lifecycle import timed_out
from .errors import RequestTimeoutError

__all__ = ["AsyncDirectCalls"]


class AsyncChannel:
    """One end of a channel to one process of one session (``AioSocket``'s owner)."""

    __slots__ = ("io", "pid", "calls", "waiters", "last_used", "closed", "__weakref__")

    def __init__(self, fd: int, pid: int) -> None:
        self.pid = pid
        self.calls = ChannelCalls()
        self.waiters: dict[int, asyncio.Future[None]] = {}  # by id: woken answered, or at the end
        self.last_used = time.monotonic()
        self.closed = False
        self.io = AioSocket(socket.socket(fileno=fd), self)

    async def round_trip(self, call: DirectCall, timeout: float) -> Any:
        """Write the call's frame, then wait for its reply (a dict), ``LOST`` or ``CLOSED``;
        its deadline raises."""
        if self.closed:
            return CLOSED
        self.last_used = time.monotonic()
        self.calls.sent(call.request_id)
        end = self.io.write(call.frame)  # whole, at once: see the module docstring
        waiter = self.waiters[call.request_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(call.remaining()):
                await waiter
            reply = self.calls.take(call.request_id)
        except TimeoutError:
            raise self._gave_up(call, timeout, end) from None
        finally:
            del self.waiters[call.request_id]
            self.calls.forget(call.request_id)
        if reply is LOST and self.io.flushed <= end - len(call.frame):
            return CLOSED  # not a byte of it went: never applied, the next channel takes it
        return reply

    def _gave_up(self, call: DirectCall, timeout: float, end: int) -> RequestTimeoutError:
        if self.io.flushed < end:  # not all of it reached the session: close, never applied
            self.close()
            return timed_out(call.op, timeout, "the session is not reading; not applied")
        return timed_out(call.op, timeout, "no reply; the request may still be applied")

    def received(self, data: memoryview, fds: list[int]) -> None:
        if not self.calls.feed(data):  # refused (each call in flight hears why) or unusable
            self.close()
        self._wake()

    def ended(self, error: OSError | None) -> None:
        self.close()

    def _wake(self) -> None:
        """Wake the calls answered, or all of them once the channel ended."""
        calls = self.calls
        for request_id, waiter in self.waiters.items():
            if (request_id in calls.replies or calls.lost_ids is not None) and not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """No call starts on it any more; the calls in flight on it are lost."""
        self.closed = True
        self.calls.end()
        self.io.close()
        self._wake()


class AsyncDirectCalls:
    """The channels of one ``AsyncClient``, by session."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.channels: dict[str, AsyncChannel] = {}
        self.sweep = Sweep()
        self.opening: dict[str, asyncio.Future[None]] = {}  # session → its open_channel done
        # Dropped without close(): the loop holds the channels' sockets, not this object.
        weakref.finalize(self, _close_all, self.channels)

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        conn = self.conn
        call = DirectCall.start(conn.core, op, args, conn.timeout)
        if call is None:
            return await conn.call(op, args)  # the daemon says what is wrong, or has no channels
        while True:
            channel = await self.channel_for(call.session_id)
            if channel is None:
                return await conn.call(op, call.args)  # no channel: relayed, same call id
            reply = await channel.round_trip(call, conn.timeout)
            if reply is CLOSED:  # never sent on it: the next channel takes it
                self._drop(call.session_id, channel)
                continue
            if reply is LOST:
                self._drop(call.session_id, channel)
                query = call.lost_query(channel.pid, channel.calls.lost_ids)
                call.after_lost(await conn.call("channel_lost", query))
                continue
            mark = call.mark(conn.core, reply)
            if mark:
                await conn.await_mark(call.session_id, channel.pid, mark, call.deadline)
            return call.outcome(reply)

    async def channel_for(self, session_id: str) -> AsyncChannel | None:
        """The session's channel, opened now if it has none; None: the daemon says relay."""
        self._close_unused(time.monotonic())
        while (opening := self.opening.get(session_id)) is not None:
            await asyncio.shield(opening)  # another task asks for it: one channel, not many
        channel = self.channels.get(session_id)
        if channel is not None:
            return channel
        done = self.opening[session_id] = asyncio.get_running_loop().create_future()
        try:
            result, fd = await self.conn.call_with_fd("open_channel", {"session_id": session_id})
        finally:
            del self.opening[session_id]
            done.set_result(None)
        if fd is None:
            return None
        channel = self.channels[session_id] = AsyncChannel(fd, result["pid"])
        return channel

    def _drop(self, session_id: str, channel: AsyncChannel) -> None:
        if self.channels.get(session_id) is channel:
            del self.channels[session_id]
        channel.close()  # its waiting calls, if any, find it lost and ask the daemon

    def _close_unused(self, now: float) -> None:
        for channel in self.sweep.take(self.channels, now, lambda channel: channel.waiters):
            channel.close()

    def close(self) -> None:
        _close_all(self.channels)


def _close_all(channels: dict[str, AsyncChannel]) -> None:
    for channel in list(channels.values()):
        try:
            channel.close()
        except RuntimeError:  # collected after its loop closed: no call to wake, the fd goes
            close_quietly(channel.io)
    channels.clear()
