"""Back-pressure: a subscriber that reads slower than a session makes events slows that session.

A relayed call's reply waits in the daemon's loop behind its events, so a session could never
run far ahead of the loop's fan-out. A direct call (channels.py) does not wait on the daemon at
all: a session answering its callers at once could make events faster than a subscriber that
reads them, until that subscriber is ``client_buffer_bytes`` behind and is disconnected, though
it was reading all along.

So a session's direct calls' events travel under a window (TCP's idea, in bytes): the session
may have at most ``events_window`` bytes of event frames that the daemon has not acknowledged;
with the window full it reads none of its channels (serving.py). It asks for an
acknowledgement (``"ack": true`` in its events frame) once half the window is used, so a daemon
that keeps up never makes it wait. The daemon acknowledges (``{"acked": mark}``) at once, unless
a subscriber of the session's topic holds more than half of ``client_buffer_bytes`` unsent
(*congested*): then the acknowledgement waits until no congested subscriber is left. A
subscriber is then at most half its buffer + the window + one batch of calls' events behind,
within its bound with the window at a quarter of it. Only the session topic paces: it is where
a session's own events go; the global topic carries the daemon's status events.

A subscriber that stays congested for ``STALL_SECONDS`` has stopped reading: it paces nobody
from then on, and falls behind and is disconnected as docs/api.md §9 says. That bounds what one
such client costs the sessions it watches to one wait of ``STALL_SECONDS``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .backend import SessionHandle
from .events import EventBus, session_topic
from .loop import Loop, Timer

STALL_SECONDS = 0.5


def events_window(client_buffer_bytes: int) -> int:
    """The bytes of events a session may have unacknowledged (see the module docstring)."""
    return client_buffer_bytes // 4


class Congestible(Protocol):
    """What pacing reads of a client connection (``clients.ClientConnection``)."""

    congested_since: float | None  # monotonic; None: under the half mark
    closed: bool


class Pacing:
    def __init__(self, loop: Loop, bus: EventBus) -> None:
        self.loop = loop
        self.bus = bus
        self.congested: set[Any] = set()  # connections over the half mark (a few at most)
        # acknowledgements held back: link → (its session's id, the mark to acknowledge)
        self.owed: dict[SessionHandle, tuple[str, Any]] = {}
        self._timer: Timer | None = None  # the next recheck, while any is owed

    # -- told by client connections --------------------------------------------------------
    def congestion_began(self, conn: Congestible) -> None:
        self.congested.add(conn)

    def congestion_ended(self, conn: Congestible) -> None:
        """Under the half mark again, or closed: the sessions it held back may go on."""
        self.congested.discard(conn)
        if self.owed:
            self.recheck()

    # -- told by the supervisor --------------------------------------------------------------
    def ack(self, session_id: str, link: SessionHandle, mark: Any) -> None:
        """The events of ``mark`` were published and the session asked for an acknowledgement:
        now, or once no subscriber of the session is congested."""
        if self.congested and self._slowed_by(session_id, time.monotonic()):
            self.owed[link] = (session_id, mark)
            self._recheck_later()
        else:
            self._send(link, mark)

    def forget(self, link: SessionHandle) -> None:
        """The process ended: nothing is owed to it."""
        self.owed.pop(link, None)

    def recheck(self) -> None:
        """Send every acknowledgement no congested subscriber (still pacing) holds back."""
        now = time.monotonic()
        for link, (session_id, mark) in list(self.owed.items()):
            if not self._slowed_by(session_id, now):
                del self.owed[link]
                self._send(link, mark)
        if self.owed:  # a subscriber may stop pacing by the clock alone
            self._recheck_later()

    def _send(self, link: SessionHandle, mark: Any) -> None:
        if link.send({"acked": mark}):
            self.loop.flush_soon(link)

    def _recheck_later(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(STALL_SECONDS, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.recheck()

    def _slowed_by(self, session_id: str, now: float) -> bool:
        subscribers = self.bus.subscribers(session_topic(session_id))
        return any(not conn.closed and conn.congested_since is not None
                   and now - conn.congested_since < STALL_SECONDS and conn in subscribers
                   for conn in self.congested)
