"""What the daemon knows of one session (``SessionRecord``), and how it reads to a client
(``session_info``). The supervisor is the only writer of a record."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from ..models import SessionState
from ..states import SessionStatus
from .link import Pending, SessionLink
from .loop import Timer

# A call held until the session's process serves: who waits, and what to do then.
Waiting = tuple[Pending, Callable[[], None]]


@dataclass
class SessionRecord:
    state: SessionState
    slot: int
    link: SessionLink | None = None
    restarts: int = 0  # restarts after crashes, as SessionInfo.restarts counts them
    crashes: deque[float] = field(default_factory=deque)  # times of the recent ones (restarts policy)
    announce_restart: bool = False  # a crash restart: session_restarted once it serves
    start_attempts: int = 0  # uncounted tries since the process last served (restarts policy)
    restart_timer: Timer | None = None
    waiting: list[Waiting] = field(default_factory=list)
    create_waiter: Pending | None = None  # a create or recover, answered once it serves
    recovered_from: SessionState | None = None  # a failed session's state, kept until it serves
    terminate_waiters: list[Pending] = field(default_factory=list)
    last_activity: float = field(default_factory=time.monotonic)
    spawned_at: float = 0.0
    status_write_failed: bool = False  # an unasked status change the registry refused: said once
    dumped: tuple[SessionState, dict[str, Any]] | None = None  # the state and its model_dump()

    @property
    def session_id(self) -> str:
        return self.state.session_id

    @property
    def persistent(self) -> bool:
        return self.state.config.persistence_enabled

    @property
    def serving(self) -> bool:
        link = self.link
        return link is not None and link.ready and not link.eof and link.exit_status is None

    @property
    def running(self) -> bool:
        """Its process exists (serving or not) and has not been reaped."""
        return self.link is not None and self.link.exit_status is None

    @property
    def running_link(self) -> SessionLink:
        """The link that ``running`` or ``serving`` has just said exists (a checker cannot
        follow a property, so this says it once instead of at each caller)."""
        assert self.link is not None, f"session {self.session_id} has no process"
        return self.link

    def dump(self) -> dict[str, Any]:
        """The state's fields, dumped once per state (a list of 1,000 sessions cost 32 ms when
        every call validated and dumped each)."""
        if self.dumped is None or self.dumped[0] is not self.state:
            self.dumped = (self.state, self.state.model_dump())
        return self.dumped[1]


def session_info(record: SessionRecord, message_count: int) -> dict[str, Any]:
    """A ``SessionInfo`` as sent: the state's fields and its process's facts."""
    return {**record.dump(), "conversation_count": message_count,
            "pid": record.running_link.pid if record.serving else None, "restarts": record.restarts}


def failed_info(state: SessionState) -> dict[str, Any]:
    """A given-up session as ``list_failed_sessions`` shows it: no process, its last error."""
    return {**state.model_dump(), "pid": None, "restarts": 0}


def is_live(status: SessionStatus) -> bool:
    return status is not SessionStatus.TERMINATED
