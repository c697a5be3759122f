"""The daemon's one loop: the only place it waits.

An epoll object (no FD_SETSIZE limit, unlike ``select()``) over the listening socket, client
connections, session sockets and the signal wakeup socket, plus a heap of timers. Callbacks
never block; anything slow is split into steps that come back here.

Used directly rather than through ``selectors``: the loop turns once or twice per request, and
the selector's Python (a key object per ready fd, lookups by file object) was a measurable part
of a request's cost in the daemon. Writes are batched per turn: a socket asked to ``flush_soon``
is written once, after every event of the turn was handled, so several frames for one peer
leave in one send and the peer is woken once for them (a peer woken mid-turn may also take the
CPU from the daemon before it has dispatched the rest of what it read).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import time
from typing import Any, Protocol
from collections.abc import Callable

log = logging.getLogger("jidocoder.daemon")

_READ, _WRITE = select.EPOLLIN, select.EPOLLOUT
# What an fd's callbacks hear of besides their own event (as ``selectors`` does): an error or a
# hangup wakes both its reader and its writer, whichever of them is wanted.
_NOT_WRITE, _NOT_READ = ~select.EPOLLOUT, ~select.EPOLLIN


class Flushable(Protocol):
    def flush(self) -> None: ...


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Watch:
    """One watched fd: its file object, its callbacks, and the events it waits for (0: parked,
    i.e. kept but not registered, since epoll reports errors even for an empty mask)."""

    __slots__ = ("fileobj", "fd", "on_read", "on_write", "events")

    def __init__(self, fileobj: Any, fd: int, on_read: Callable[[], None],
                 on_write: Callable[[], None] | None) -> None:
        self.fileobj = fileobj
        self.fd = fd
        self.on_read = on_read
        self.on_write = on_write
        self.events = _READ


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, _Watch] = {}
        self._by_obj: dict[Any, _Watch] = {}  # the fd may be closed by the time it is unwatched
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._flushes: list[Flushable] = []
        self.running = False

    # -- descriptors ------------------------------------------------------------------------
    def watch(self, fileobj: Any, on_read: Callable[[], None],
              on_write: Callable[[], None] | None = None) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd in self._by_fd or fileobj in self._by_obj:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already watched")
        watch = _Watch(fileobj, fd, on_read, on_write)
        self._epoll.register(fd, _READ)
        self._by_fd[fd] = watch
        self._by_obj[fileobj] = watch

    def want_write(self, fileobj: Any, wanted: bool) -> None:
        self.set_interest(fileobj, read=True, write=wanted)

    def set_interest(self, fileobj: Any, *, read: bool, write: bool) -> None:
        """Which events to wait for; neither means the fd is parked (kept, not waited on)."""
        watch = self._by_obj.get(fileobj)
        if watch is None:
            return
        events = (_READ if read else 0) | (_WRITE if write else 0)
        if events == watch.events:
            return
        if not events:
            self._epoll.unregister(watch.fd)
        elif not watch.events:
            self._epoll.register(watch.fd, events)
        else:
            self._epoll.modify(watch.fd, events)
        watch.events = events

    def unwatch(self, fileobj: Any) -> None:
        watch = self._by_obj.pop(fileobj, None)
        if watch is None:
            return
        del self._by_fd[watch.fd]
        if watch.events:
            try:
                self._epoll.unregister(watch.fd)
            except (OSError, ValueError):  # already closed: the kernel dropped it
                pass

    def flush_soon(self, target: Flushable) -> None:
        """Call ``target.flush()`` at the end of this turn, after every event of it."""
        self._flushes.append(target)

    # -- time -------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def every(self, interval: float, callback: Callable[[], None]) -> None:
        def tick() -> None:
            self.call_later(interval, tick)
            callback()
        self.call_later(interval, tick)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> None:
        self.running = True
        poll, by_fd, call = self._epoll.poll, self._by_fd, self._call
        try:
            while self.running:
                for fd, mask in poll(self._timeout()):
                    watch = by_fd.get(fd)  # None: unwatched by an earlier callback of this turn
                    if watch is None:
                        continue
                    events = watch.events
                    if mask & _NOT_READ and events & _WRITE and watch.on_write is not None:
                        call(watch.on_write)
                    if mask & _NOT_WRITE and events & _READ and by_fd.get(fd) is watch:
                        call(watch.on_read)
                self._run_due_timers()
                if self._flushes:
                    self._run_flushes()
        finally:
            self._run_flushes()  # what the last turn queued (a shutdown's reply) still leaves

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        """A bug in one callback is logged and costs that event, never the daemon."""
        try:
            callback()
        except Exception:
            log.exception("unexpected error in the daemon loop (the daemon carries on)")

    def stop(self) -> None:
        self.running = False

    def _timeout(self) -> float:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return -1
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback)

    def _run_flushes(self) -> None:
        while self._flushes:
            flushes, self._flushes = self._flushes, []
            for target in flushes:
                self._call(target.flush)

    def close(self) -> None:
        self._epoll.close()
