"""``AsyncConnection``: the I/O shell of ``AsyncClient`` — asyncio streams, no thread.

What the bytes mean is the protocol core's (_protocol.py), as for ``Client``. One reader task
per connection routes what arrives: a reply completes its call's Future, events wake
``next_event``. Many tasks may call at once: a request is written whole into the transport in
one synchronous ``write`` (no await between its first and last byte), so no other task's frame
can come between, and a call cancelled at any await has either not been written at all or
been written whole: it is applied once or not at all (docs/api.md §11). Its late reply then
finds no call and is dropped.

Reconnect (docs/api.md §10) as in _sync.py: at EOF the reader task dials again until
``timeout`` after the break, then writes what the core says a new connection starts with
(hello, subscriptions from their last seq, the calls still waiting).

The reader task holds its connection only weakly while it waits, so an AsyncClient dropped
without ``aclose()`` is collected; its finalizer closes the transport, and the task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Any

from . import _dial, wire
from ._lifecycle import Lifecycle, unanswered
from ._protocol import RECONNECT_BACKOFF, Call, ClientProtocol, Received
from .errors import DaemonUnavailableError, JidocoderError
from .models import Event

__all__ = ["AsyncConnection"]



class AsyncConnection:
    def __init__(self, socket_path: str, timeout: float, event_buffer: int) -> None:
        self.core = ClientProtocol(event_buffer)
        self.socket_path = socket_path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._events = asyncio.Event()  # set when an event (or the end) arrives
        self.life = Lifecycle()

    async def open(self) -> None:
        self._reader, self._writer = await self._dial()
        self._task = asyncio.get_running_loop().create_task(
            _read_loop(weakref.ref(self), self._reader))
        weakref.finalize(self, _collected, self._writer, self._task)
        try:
            await self.call("hello", {})
        except BaseException:
            await self.close()
            raise

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        _dial.check_directory(self.socket_path)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket_path, limit=wire.RECV_CHUNK), self.timeout)
        except (TimeoutError, OSError) as e:
            raise _dial.no_daemon(self.socket_path, e if isinstance(e, OSError)
                                  else OSError("timed out")) from e
        try:
            _dial.check_peer(writer.get_extra_info("socket"), self.socket_path)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    # -- calls -------------------------------------------------------------------------------

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        self._check_open()
        deadline = time.monotonic() + self.timeout
        call = self.core.start_call(op, args, deadline)
        call.waiter = asyncio.get_running_loop().create_future()
        try:
            if not self.life.broken and self._writer is not None:
                call.sent = True
                self._writer.write(call.frame)  # whole, at once: see the docstring
            try:
                await asyncio.wait_for(asyncio.shield(call.waiter), _remaining(deadline))
            except TimeoutError:
                raise self._gave_up(call) from None
        finally:
            if call.reply is None:
                self.core.forget(call)
        return call.outcome()

    def _gave_up(self, call: Call) -> JidocoderError:
        return unanswered(call, self.socket_path, self.timeout, self.life.broken)

    def _check_open(self) -> None:
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
            self._check_open()
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

    # -- what the reader task brings ---------------------------------------------------------

    def deliver(self, received: Received) -> bool:
        """Complete the answered calls, wake event waiters; False once the stream ended."""
        for call in received.answered:
            if call.waiter is not None and not call.waiter.done():
                call.waiter.set_result(None)
        if received.events:
            self._events.set()
        if received.end is None:
            return True
        if not self.life.stream_ended(received):
            self._end()
        return False

    async def reconnect(self) -> asyncio.StreamReader | None:
        """Dial until a daemon answers (its reader returned) or the window closes (None)."""
        until = self.life.dial_until(self.timeout)
        delay = RECONNECT_BACKOFF[0]
        while not self.life.closed:
            try:
                reader, writer = await self._dial()
            except DaemonUnavailableError:
                if time.monotonic() >= until:
                    break
                await asyncio.sleep(min(delay, max(0.0, until - time.monotonic())))
                delay = min(delay * 2, RECONNECT_BACKOFF[1])
                continue
            if self._writer is not None:
                self._writer.close()
            self._reader, self._writer = reader, writer
            self.life.broken_since = None
            writer.write(b"".join(self.core.reconnected()))
            return reader
        self.life.lose(f"no daemon came back on {self.socket_path} within {self.timeout:g} s")
        self._end()
        return None

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
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


async def _read_loop(ref: weakref.ref[AsyncConnection], reader: asyncio.StreamReader) -> None:
    """Route what arrives until the connection ends for good; holds its connection only
    between reads."""
    while True:
        try:
            data = await reader.read(wire.RECV_CHUNK)
        except OSError:  # a reset: the daemon went away, as at EOF
            data = b""
        conn = ref()
        if conn is None:
            return
        if data:
            going_on = conn.deliver(conn.core.receive(data))
            if going_on:
                del conn  # not held while waiting
                continue
        else:
            conn.deliver(conn.core.end_of_stream())
        if not conn.life.broken:
            return
        new_reader = await conn.reconnect()
        if new_reader is None:
            return
        reader = new_reader
        del conn


def _collected(writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(Exception):
        writer.close()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
