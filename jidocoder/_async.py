"""``AsyncConnection``: the I/O shell of ``AsyncClient`` — one socket on the event loop, no thread.

What the bytes mean is the protocol core's (_protocol.py), as for ``Client``. The socket is an
``AioSocket`` (_aiosock.py: read with ``recvmsg`` from a reader callback, so an
``open_channel`` reply brings its channel's fd, which asyncio's streams would drop). What
arrives is routed as it comes: a reply completes its call's Future, events wake ``next_event``
and ``await_mark``. Many tasks may call at once: a request is written whole in one synchronous
``write`` (no await between its first and last byte), so no other task's frame can come
between, and a call cancelled at any await has either not been written at all or been written
whole: it is applied once or not at all (docs/api.md §11). Its late reply then finds no call
and is dropped.

Reconnect (docs/api.md §10) as in _sync.py: at EOF or a reset a task dials again until
``timeout`` after the break, then writes what the core says a new connection starts with
(hello, subscriptions from their last seq, the calls still waiting), and ends.

The loop holds the socket's callbacks, and they hold this connection only weakly, so an
AsyncClient dropped without ``close()`` is collected; its finalizer closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import weakref
from typing import Any

from . import _dial
from ._aiosock import AioSocket, close_quietly
from ._lifecycle import Lifecycle, unanswered
from ._protocol import RECONNECT_BACKOFF, Call, ClientProtocol, Received
from .errors import DaemonUnavailableError, JidocoderError
from .models import Event

__all__ = ["AsyncConnection"]

_FD_SPACE = socket.CMSG_SPACE(4 * 4)  # room for a few fds: one per open_channel reply


class AsyncConnection:
    def __init__(self, socket_path: str, timeout: float, event_buffer: int) -> None:
        self.core = ClientProtocol(event_buffer)
        self.socket_path = socket_path
        self.timeout = timeout
        self._io: AioSocket | None = None
        self._held: list[AioSocket] = []  # the socket in use, for the finalizer
        self._task: asyncio.Task[None] | None = None  # dialling again, while broken
        self._events = asyncio.Event()  # set when an event (or an end) arrives
        self.life = Lifecycle()

    async def open(self) -> None:
        self._adopt(await self._dial())
        weakref.finalize(self, _collected, self._held, self.core)
        try:
            await self.call("hello", {})
        except BaseException:
            await self.close()
            raise

    async def _dial(self) -> socket.socket:
        _dial.check_directory(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(self.timeout):
                await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
            _dial.check_peer(sock, self.socket_path)
        except (TimeoutError, OSError) as e:
            sock.close()
            raise _dial.no_daemon(self.socket_path, e if isinstance(e, OSError)
                                  else OSError("timed out")) from e
        except BaseException:
            sock.close()
            raise
        return sock

    def _adopt(self, sock: socket.socket) -> None:
        if self._io is not None:
            self._io.close()
        self._io = AioSocket(sock, self, _FD_SPACE)
        self._held[:] = [self._io]

    # -- calls -------------------------------------------------------------------------------

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        result, fd = await self.call_with_fd(op, args)
        if fd is not None:  # only open_channel's reply brings one, and its caller asks for it
            os.close(fd)
        return result

    async def call_with_fd(self, op: str, args: dict[str, Any]) -> tuple[Any, int | None]:
        """``call``, and the fd its reply came with (the caller's to close), if any. However
        it ends before returning (an error, a cancel), the fd is closed here."""
        self.check_open()
        deadline = time.monotonic() + self.timeout
        call = self.core.start_call(op, args, deadline)
        call.waiter = asyncio.get_running_loop().create_future()
        try:
            if not self.life.broken and self._io is not None:
                call.sent = True
                self._io.write(call.frame)  # whole, at once: see the docstring
            try:
                await asyncio.wait_for(asyncio.shield(call.waiter), _remaining(deadline))
            except TimeoutError:
                raise self._gave_up(call) from None
            return call.outcome(), call.fd
        except BaseException:
            if call.fd is not None:
                os.close(call.fd)
            raise
        finally:
            if call.reply is None:
                self.core.forget(call)

    async def await_mark(self, session_id: str, pid: int, mark: int, deadline: float) -> None:
        """Until the session's events of ``mark`` came (a direct reply waits for them:
        _adirect.py), the connection breaks (they come on the new one, or as a gap) or
        ``deadline`` passes."""
        while not (self.core.mark_seen(session_id, pid, mark) or self.life.broken
                   or self.life.ended):
            if not await self._wait_events(deadline):
                return

    def _gave_up(self, call: Call) -> JidocoderError:
        return unanswered(call, self.socket_path, self.timeout, self.life.broken)

    def check_open(self) -> None:
        if self.life.ended:
            raise self.life.error(self.socket_path)

    def expect_end(self) -> None:
        self.life.final = True

    async def await_end(self, deadline: float) -> bool:
        while not self.life.ended:
            if not await self._wait_events(deadline):
                return False
        return True

    # -- events ------------------------------------------------------------------------------

    async def take_event(self, deadline: float | None) -> Event | None:
        while not self.core.has_event():
            self.check_open()
            if not await self._wait_events(deadline):
                return None
        return self.core.take_event()

    async def _wait_events(self, deadline: float | None) -> bool:
        self._events.clear()
        try:
            await asyncio.wait_for(self._events.wait(),
                                   None if deadline is None else _remaining(deadline))
        except TimeoutError:
            return False
        return True

    # -- what the socket brings (AioSocket's owner) ------------------------------------------

    def received(self, data: memoryview, fds: list[int]) -> None:
        self.core.fds.extend(fds)  # before the bytes: the reply they came with takes one
        self._deliver(self.core.receive(data))

    def ended(self, error: OSError | None) -> None:
        if error is None:
            self._deliver(self.core.end_of_stream())
        else:
            self._deliver(Received([], end=f"reading failed: {error.strerror or error}",
                                   cause=error, reconnect=True))

    def _deliver(self, received: Received) -> None:
        """Complete the answered calls, wake event waiters; act on an end."""
        for call in received.answered:
            if call.waiter is not None and not call.waiter.done():
                call.waiter.set_result(None)
        if received.events:
            self._events.set()
        if received.end is None:
            return
        if self._io is not None:
            self._io.close()
        if self.life.stream_ended(received):
            self._events.set()  # a direct reply's wait for its marks ends: they come again
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._reconnect())
        else:
            self._end()

    async def _reconnect(self) -> None:
        """Dial until a daemon answers or the window closes (then the connection is lost)."""
        try:
            until = self.life.dial_until(self.timeout)
            delay = RECONNECT_BACKOFF[0]
            while not self.life.closed:
                try:
                    sock = await self._dial()
                except DaemonUnavailableError:
                    if time.monotonic() >= until:
                        break
                    await asyncio.sleep(min(delay, max(0.0, until - time.monotonic())))
                    delay = min(delay * 2, RECONNECT_BACKOFF[1])
                    continue
                self._adopt(sock)
                self.life.broken_since = None
                assert self._io is not None
                self._io.write(b"".join(self.core.reconnected()))
                return
            self.life.lose(f"no daemon came back on {self.socket_path} within "
                           f"{self.timeout:g} s")
            self._end()
        finally:
            self._task = None

    def _end(self) -> None:
        """The connection ended for good (``life`` says why): every waiter is told."""
        self._events.set()
        for call in list(self.core.pending.values()):
            if call.waiter is not None and not call.waiter.done():
                call.waiter.set_exception(self.life.error(self.socket_path))

    async def close(self) -> None:
        if self.life.closed:
            return
        self.life.closed = True
        self.core.clear_events()
        self._end()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._io is not None:
            self._io.close()
        self.core.close_fds()


def _collected(held: list[AioSocket], core: ClientProtocol) -> None:
    for io in held:
        close_quietly(io)
    core.close_fds()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
