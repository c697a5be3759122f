"""The daemon's one loop: the only place it waits.

A ``selectors`` selector (epoll: no FD_SETSIZE limit, unlike ``select()``) over the listening
socket, client connections, session sockets and the signal wakeup socket, plus a heap of timers.
Callbacks never block; anything slow is split into steps that come back here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import time
from typing import Any, Callable

log = logging.getLogger("jidocoder.daemon")


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._parked: dict[Any, selectors.SelectorKey] = {}
        self.running = False

    # -- descriptors ------------------------------------------------------------------------
    def watch(self, fileobj: Any, on_read: Callable[[], None],
              on_write: Callable[[], None] | None = None) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, (on_read, on_write))

    def want_write(self, fileobj: Any, wanted: bool) -> None:
        self.set_interest(fileobj, read=True, write=wanted)

    def set_interest(self, fileobj: Any, *, read: bool, write: bool) -> None:
        """Which events to wait for; neither means the fd is parked (kept, not waited on)."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        try:
            key = self.selector.get_key(fileobj)
        except KeyError:
            key = self._parked.get(fileobj)
            if key is None or not events:
                return
            del self._parked[fileobj]
            self.selector.register(fileobj, events, key.data)
            return
        if not events:
            self._parked[fileobj] = key
            self.selector.unregister(fileobj)
        elif key.events != events:
            self.selector.modify(fileobj, events, key.data)

    def unwatch(self, fileobj: Any) -> None:
        self._parked.pop(fileobj, None)
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

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
        while self.running:
            for key, mask in self.selector.select(self._timeout()):
                on_read, on_write = key.data
                if mask & selectors.EVENT_WRITE and on_write is not None:
                    self._call(on_write)
                if mask & selectors.EVENT_READ:
                    self._call(on_read)
            self._run_due_timers()

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        """A bug in one callback is logged and costs that event, never the daemon."""
        try:
            callback()
        except Exception:
            log.exception("unexpected error in the daemon loop (the daemon carries on)")

    def stop(self) -> None:
        self.running = False

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._call(timer.callback)

    def close(self) -> None:
        self.selector.close()
