"""``AsyncClient``'s direct calls: a session's calls go straight to its process, on a channel.

The same design as ``Client``'s (_direct.py; docs/protocol.md, "Direct channels"), and the same
pure parts (_channel.py: the call, its frame, what its replies and a lost channel mean); here
only the waiting is asyncio's. A channel is an ``AioSocket`` (_aiosock.py), like the daemon
connection: read by a reader callback into its ``ChannelReplies``, which wakes the one call
waiting, so a late reply (its caller cancelled, or gave up at its deadline) is read as it comes
and dropped when the next call looks for its own.

One call at a time per channel (an ``asyncio.Lock``, taken under the call's deadline with
``asyncio.timeout``, which, unlike ``wait_for`` on 3.11, never loses a lock granted as the time
runs out): a session serves one channel's calls in order anyway. Cancellation, at any await:
before the frame is written, nothing was sent; the frame is written whole in one synchronous
call, so after it the frame goes whole (applied once), its late reply is dropped, and the
channel stays in step for the next call. A call that reaches its deadline with part of its
frame still unsent closes the channel: the session drops the half frame at the EOF, unapplied.

A lost channel (EOF, a reset) before the reply: the daemon is asked ``channel_lost``; begun →
``SessionCrashedError``, else the same frame goes on a new channel (to the successor). One that
ended before the frame was written (``UNSENT``) needs no question: the call goes on a new one. A
``relay`` answer to ``open_channel`` sends the call relayed. Tasks that need a session's channel
at once wait for one ``open_channel``, not one each. A channel unused for
``CHANNEL_IDLE_SECONDS`` is closed at the next call; ``close()`` closes them all.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from typing import Any

from ._aiosock import AioSocket, close_quietly
from ._async import AsyncConnection
from ._channel import LOST, UNSENT, ChannelReplies, DirectCall, unused
from ._lifecycle import timed_out
from .errors import JidocoderError

__all__ = ["AsyncDirectCalls"]


class AsyncChannel:
    """One end of a channel to one process of one session (``AioSocket``'s owner)."""

    __slots__ = ("io", "pid", "replies", "lock", "last_used", "lost", "arrived", "__weakref__")

    def __init__(self, fd: int, pid: int) -> None:
        self.pid = pid
        self.replies = ChannelReplies()
        self.lock = asyncio.Lock()  # one call at a time
        self.last_used = time.monotonic()
        self.lost = False
        self.arrived: asyncio.Future[None] | None = None  # the waiting call's wakeup
        self.io = AioSocket(socket.socket(fileno=fd), self)

    async def round_trip(self, call: DirectCall, timeout: float) -> Any:
        """Write the call's frame, then wait for its reply (a dict) or ``LOST``; its deadline
        raises. The caller holds ``lock``."""
        self.last_used = time.monotonic()
        if self.lost:
            return UNSENT
        self.io.write(call.frame)  # whole, at once: see the module docstring
        try:
            while (reply := self.replies.take(call.request_id)) is None:
                if self.lost:
                    return LOST
                await self._arrival(call, timeout)
        except JidocoderError:
            self.close()  # refused, or not replies: out of step
            raise
        return reply

    async def _arrival(self, call: DirectCall, timeout: float) -> None:
        self.arrived = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(call.remaining()):
                await self.arrived
        except TimeoutError:
            if self.io.unsent():  # not all of it reached the session: close, never applied
                self.close()
                raise timed_out(call.op, timeout, "the session is not reading; not applied") \
                    from None
            raise timed_out(call.op, timeout, "no reply; the request may still be applied") \
                from None
        finally:
            self.arrived = None

    def received(self, data: memoryview, fds: list[int]) -> None:
        if not self.replies.feed(data):
            self.close()
        self._wake()

    def ended(self, error: OSError | None) -> None:
        self.close()

    def _wake(self) -> None:
        if self.arrived is not None and not self.arrived.done():
            self.arrived.set_result(None)

    def close(self) -> None:
        self.lost = True
        self.io.close()
        self._wake()


class AsyncDirectCalls:
    """The channels of one ``AsyncClient``, by session."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.channels: dict[str, AsyncChannel] = {}
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
            reply = await self._on(channel, call)
            if reply is UNSENT:
                self._drop(call.session_id, channel)
                continue
            if reply is LOST:
                self._drop(call.session_id, channel)
                call.after_lost(await conn.call("channel_lost", call.lost_query(channel.pid)))
                continue
            mark = call.mark(conn.core, reply)
            if mark:
                await conn.await_mark(call.session_id, channel.pid, mark, call.deadline)
            return call.outcome(reply)

    async def _on(self, channel: AsyncChannel, call: DirectCall) -> Any:
        try:
            async with asyncio.timeout(call.remaining()):
                await channel.lock.acquire()
        except TimeoutError:
            raise timed_out(call.op, self.conn.timeout, "the session is busy with this "
                            "client's other calls; nothing was sent") from None
        try:
            return await channel.round_trip(call, self.conn.timeout)
        finally:
            channel.lock.release()

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
        for session_id, channel in list(self.channels.items()):
            if unused(channel.last_used, now) and not channel.lock.locked():
                del self.channels[session_id]
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
