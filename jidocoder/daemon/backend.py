"""The seam between the daemon and wherever its sessions run.

A backend starts a session, carries calls to it, tells of its death with a reason, and stops
it. It never blocks the daemon's loop: what it has to tell (a session ready, a call answered, a
session dead) is made readable on one fd (``fileno``), and the loop takes it with ``collect``.
What to do about a death (restart it, give up, answer the calls) stays the supervisor's, under
one policy (``restarts``), whichever backend runs the session.

Two implementations: the local one, a forked process per session reached over a socketpair
(``spares``, ``link``, ``template``), and the Ray one, an actor per session anywhere in a Ray
cluster (``ray_backend``; docs/ray.md).

    start_session(spec) ──► Ready(pid) ──► send(call) ──► Answered(reply)
            │                                 │
            └────────────► Died(reason, unanswered calls) ◄── stop_session / crash / node lost
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .session import SessionSpec


@dataclass(frozen=True)
class Ready:
    """The session serves: ``pid`` of its process (on ``node``, "" for this machine)."""

    session_id: str
    pid: int
    node: str
    message_count: int


@dataclass(frozen=True)
class Answered:
    """A call's reply (``{id, result, events}`` or ``{id, error}``), given only once what the
    call stored is stored."""

    session_id: str
    reply: dict[str, Any]
    message_count: int


@dataclass(frozen=True)
class Died:
    """The session's process or actor is gone. ``unanswered`` are the calls sent to it that got
    no reply, in the order sent; nothing any of them wrote was stored. ``stopped`` is true when
    ``stop_session`` asked for it (not a crash)."""

    session_id: str
    reason: str
    stopped: bool = False
    unanswered: list[dict[str, Any]] = field(default_factory=list)


Happening = Ready | Answered | Died


class SessionBackend(Protocol):
    name: str

    def start_session(self, spec: SessionSpec) -> None:
        """Start serving ``spec``'s session from what is stored for it: ``Ready`` or ``Died``
        follows."""

    def send(self, session_id: str, request: dict[str, Any]) -> None:
        """A call ``{id, op, args, deadline}``: ``Answered`` (in the order sent) or ``Died``
        follows."""

    def stop_session(self, session_id: str) -> None:
        """End the session's process or actor: ``Died(stopped=True)`` follows."""

    def fileno(self) -> int:
        """Readable when ``collect`` has something."""

    def collect(self) -> list[Happening]:
        """What happened since the last collect, each session's in order; never blocks."""

    def close(self) -> None:
        """Stop every session it runs and let go of what it holds."""
