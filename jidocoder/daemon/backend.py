"""The seam between the daemon and wherever its sessions run (API.md §14).

A backend starts a session, carries calls to it, tells of its death, and stops it; what a death
leads to (restart, give up, answer the calls) stays the supervisor's, under one policy
(``restarts``), whichever backend runs the session. The supervisor holds one ``SessionHandle``
per running session (``record.link``) and never asks which backend made it.

Two implementations, chosen by the setting ``backend`` (``backends.open_backend``):

- ``local`` (``local_backend``): a forked process per session, from spares made ahead of need,
  reached over a socketpair (``link.SessionLink``); its death is its exit, reaped here.
- ``ray`` (``ray_link``): a Ray actor per session anywhere in a Ray cluster (``ray_backend``,
  docs/ray.md); its handle makes the same frames a forked session sends, and knows its death
  with a reason (``death``), since there is nothing of ours to reap.

    open(spec) ──► handle ──frames──► {"ready"}, {"id", result | error, events} ... EOF
       │              │                                                           │
       │              └── request / cancel / signal / hang_up                     ▼
       └── None: no room yet (on_available follows)          death (or reaped) → handle_exit
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .link import Call, Pending, Replier
from .session import SessionSpec

class SessionHandle(Protocol):
    """One running incarnation of a session, as the supervisor drives it (watched in the loop
    by its ``fileno``; ``read_frames`` gives what the session said; EOF when it has ended)."""

    pid: int  # its process (on its node); 0 until it is ready, for a backend that learns it late
    incarnation: int
    ready: bool
    eof: bool
    exit_status: int | None
    kill_reason: str | None  # set when the daemon ends it (hung, memory limit), or why it died
    stopping: bool
    last_word: str | None
    broken: str | None
    in_flight: dict[int, Call]
    on_this_machine: bool  # its pid is ours to measure (/proc) and signal
    death: int | None  # the exit status, when the backend knows it (no process of ours to reap)

    @property
    def key(self) -> int: ...  # what ``by_pid`` finds it by: unique among the daemon's handles

    @property
    def unsent(self) -> bool: ...

    def fileno(self) -> int: ...
    def request(self, op: str, args: bytes, pending: Pending) -> bool: ...
    def cancel(self, client: Replier) -> bool: ...
    def send(self, frame: dict[str, Any]) -> bool: ...
    def flush(self) -> None: ...
    def read_frames(self) -> list[Any]: ...
    def take_in_flight(self, started: int) -> tuple[list[Call], list[Call]]: ...
    def signal(self, signum: int) -> None: ...
    def hang_up(self) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    # Can a session of this backend be handed a client's socket of its own (issue 16, direct
    # channels)? Only a process on this machine can; the others stay on the relayed path.
    hands_out_channels: bool

    def start(self) -> None:
        """After the daemon's imports and ``gc.freeze()``, before any session."""

    def open(self, spec: SessionSpec, incarnation: int, max_reply: int) -> SessionHandle | None:
        """Start serving ``spec``'s session from what is stored for it; None when there is no
        room now (``on_available`` is called when there is)."""

    def top_up(self, wanted: int) -> None:
        """``wanted`` sessions wait for room."""

    def exited(self, pid: int) -> None:
        """A child of the daemon reaped that was no session's."""

    @property
    def live_pids(self) -> set[int]:
        """What of the backend's own (not sessions) must end before the daemon stops."""

    def close(self) -> None:
        """The daemon stops: nothing more is started."""


# -- what a backend whose sessions run elsewhere reports (ray_backend), before its handles turn
#    it into a session's frames (ray_link) ------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    """The session serves: ``pid`` of its process (on ``node``, "" for this machine)."""

    session_id: str
    pid: int
    node: str
    message_count: int
    file_count: int = 0


@dataclass(frozen=True)
class Answered:
    """A call's reply (``{id, result, events}`` or ``{id, error}``), given only once what the
    call stored is stored."""

    session_id: str
    reply: dict[str, Any]
    message_count: int
    file_count: int = 0


@dataclass(frozen=True)
class Died:
    """The session's process or actor is gone. ``unanswered`` are the calls sent to it that got
    no reply, in the order sent; nothing any of them wrote was stored. ``stopped`` is true when
    ``stop_session`` asked for it (not a crash)."""

    session_id: str
    reason: str
    stopped: bool = False
    unanswered: list[Any] = field(default_factory=list)


Happening = Ready | Answered | Died


class RemoteSessions(Protocol):
    """Sessions served away from the daemon (``ray_backend.RayBackend``): started, called and
    stopped by session id; what happened is made readable on one fd and taken by ``collect``,
    so the daemon's loop never blocks on the remote side.

        start_session(spec) ──► Ready(pid) ──► send(call) ──► Answered(reply)
                │                                 │
                └────────────► Died(reason, unanswered calls) ◄── stop_session / crash / node lost
    """

    name: str

    def start_session(self, spec: SessionSpec) -> None: ...
    def send(self, session_id: str, request: Any, budget: float | None = None) -> None: ...
    def stop_session(self, session_id: str) -> None: ...
    def fileno(self) -> int: ...
    def collect(self) -> list[Happening]: ...
    def close(self) -> None: ...
