"""Session lifecycle: the status enum and the transition table, written here and nowhere else.

    initializing ──► active ◄──► idle
         │             │          │
         │             ▼          ▼
         │          terminating ◄─┘
         │             │
         └──────────► terminated

No self-transitions. Everything that changes a status (the models, the daemon) asks
``can_transition``; the daemon's shared-memory table stores ``SessionStatus.code``.

The groups the rest of the code asks about are named here too, next to the table they follow:
``SERVING`` (active, idle: takes calls; restored when the daemon restarts), ``LIVE`` (all but
terminated: listed, counted, findable while it is created or ends) and ``ENDING``
(terminating, terminated).
"""

from __future__ import annotations

import enum


class SessionStatus(str, enum.Enum):
    INITIALIZING = "initializing"
    ACTIVE = "active"
    IDLE = "idle"
    TERMINATING = "terminating"
    TERMINATED = "terminated"

    def __str__(self) -> str:
        return self.value

    @property
    def code(self) -> int:
        """A small integer for the shared-memory table (0 is reserved for a free slot)."""
        return _CODES[self]


TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.INITIALIZING: frozenset({SessionStatus.ACTIVE, SessionStatus.TERMINATED}),
    SessionStatus.ACTIVE: frozenset({SessionStatus.IDLE, SessionStatus.TERMINATING}),
    SessionStatus.IDLE: frozenset({SessionStatus.ACTIVE, SessionStatus.TERMINATING}),
    SessionStatus.TERMINATING: frozenset({SessionStatus.TERMINATED}),
    SessionStatus.TERMINATED: frozenset(),
}

SERVING: frozenset[SessionStatus] = frozenset({SessionStatus.ACTIVE, SessionStatus.IDLE})
ENDING: frozenset[SessionStatus] = frozenset({SessionStatus.TERMINATING, SessionStatus.TERMINATED})
LIVE: frozenset[SessionStatus] = frozenset(SessionStatus) - {SessionStatus.TERMINATED}

_STATUSES = tuple(SessionStatus)
_CODES = {status: index + 1 for index, status in enumerate(_STATUSES)}


def parse_status(value: object) -> SessionStatus | None:
    """The status named by ``value`` (an enum member or its string), or None if it names none."""
    if isinstance(value, SessionStatus):
        return value
    if isinstance(value, str):
        try:
            return SessionStatus(value)
        except ValueError:
            return None
    return None


def can_transition(frm: object, to: object) -> bool:
    """True only for an edge of the table; unknown statuses are never allowed."""
    src, dst = parse_status(frm), parse_status(to)
    return src is not None and dst is not None and dst in TRANSITIONS[src]
