"""What the daemon knows of one session (``SessionRecord``), and how it reads to a client
(``session_info``). The supervisor is the only writer of a record."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from .. import wire
from ..context import page
from ..models import SessionState
from ..states import SERVING, SessionStatus
from .backend import SessionHandle
from .link import Pending
from .store import from_micros
from .loop import Timer

# A call held until the session's process serves: who waits, and what to do then.
Waiting = tuple[Pending, Callable[[], None]]


@dataclass(slots=True, eq=False)
class SessionRecord:
    """A known session. Live, it holds its state (``held``); hibernated (docs/api.md §13), only
    the state's bytes (``row``, ~400 bytes where the model takes ~2 KB), decoded when asked
    for and never kept decoded: 100,000 known sessions must fit the daemon cheaply. Slots,
    and no deque until a first crash, for the same reason."""

    session_id: str
    held: SessionState | None
    slot: int
    created_at: datetime  # the order of list_sessions
    row: bytes | None = None
    asleep_status: SessionStatus | None = None  # the status of a hibernated one, at hand
    hibernated: bool = False  # no process, by hibernation: the next call revives it
    hibernating: bool = False  # its process was told to leave (EOF) and has not been reaped
    announce_revival: bool = False  # session_revived once the reviving process serves
    link: SessionHandle | None = None
    restarts: int = 0  # restarts after crashes, as SessionInfo.restarts counts them
    crashes: deque[float] | None = None  # times of the recent ones (restarts policy), from a first crash
    announce_restart: bool = False  # a crash restart: session_restarted once it serves
    start_attempts: int = 0  # uncounted tries since the process last served (restarts policy)
    restart_timer: Timer | None = None
    waiting: list[Waiting] = field(default_factory=list)
    create_waiter: Pending | None = None  # a create or recover, answered once it serves
    create_call_id: str | None = None  # the create's call id, stored with its first row
    recovered_from: SessionState | None = None  # a failed session's state, kept until it serves
    terminate_waiters: list[Pending] = field(default_factory=list)
    last_activity: float = field(default_factory=time.monotonic)
    spawned_at: float = 0.0
    seen_calls: int = 0  # its process's ``calls`` counter at the last check (channels.py)
    status_write_failed: bool = False  # an unasked status change the registry refused: said once
    dumped: tuple[SessionState, dict[str, Any]] | None = None  # the state and its model_dump()

    @classmethod
    def of(cls, state: SessionState, slot: int) -> SessionRecord:
        return cls(state.session_id, state, slot, state.created_at)

    @classmethod
    def asleep(cls, session_id: str, row: bytes, status: SessionStatus, created_at: datetime,
               slot: int) -> SessionRecord:
        """A hibernated session as a start finds it: its stored row, not yet validated."""
        return cls(session_id, None, slot, created_at, row=row, asleep_status=status, hibernated=True)

    @property
    def state(self) -> SessionState:
        held = self.held
        if held is not None:
            return held
        assert self.row is not None, f"session {self.session_id} holds neither state nor row"
        return _read_row(self.session_id, self.row)

    @state.setter
    def state(self, state: SessionState) -> None:
        if self.hibernated:
            self.row, self.asleep_status, self.held = wire.encode(state.serialize()), state.status, None
        else:
            self.held, self.row, self.asleep_status = state, None, None

    @property
    def status(self) -> SessionStatus:
        held = self.held
        if held is not None:
            return held.status
        assert self.asleep_status is not None, f"session {self.session_id} has no status"
        return self.asleep_status

    def fall_asleep(self) -> None:
        """Hibernated now: the state kept as bytes only."""
        state, self.hibernated, self.dumped = self.state, True, None
        self.state = state

    def wake(self) -> None:
        """Being revived: the state decoded and held (DamagedStoreError if it cannot be)."""
        state, self.hibernated = self.state, False
        self.state = state

    @property
    def persistent(self) -> bool:
        return self.hibernated or self.state.config.persistence_enabled

    @property
    def serving(self) -> bool:
        link = self.link
        return (link is not None and link.ready and not link.eof and link.exit_status is None
                and not self.hibernating)

    @property
    def running(self) -> bool:
        """Its process exists (serving or not) and has not been reaped."""
        return self.link is not None and self.link.exit_status is None

    @property
    def running_link(self) -> SessionHandle:
        """The link that ``running`` or ``serving`` has just said exists (a checker cannot
        follow a property, so this says it once instead of at each caller)."""
        assert self.link is not None, f"session {self.session_id} has no process"
        return self.link

    def dump(self) -> dict[str, Any]:
        """The state's fields, dumped once per state (a list of 1,000 sessions cost 32 ms when
        every call validated and dumped each); a hibernated one's each time, kept by nobody."""
        held = self.held
        if self.hibernated or held is None:
            return self.state.model_dump()
        if self.dumped is None or self.dumped[0] is not held:
            self.dumped = (held, held.model_dump())
        return self.dumped[1]


# A hibernated session as a start finds it: its row of the registry's ``asleep`` table as sqlite
# gives it, (created_at µs, session_id, status, message_count, timeout_minutes). It is kept as
# that plain tuple, nothing made per session (a start with 100,000 of them), until anything
# asks for it: ``KnownSessions`` then makes it a ``SessionRecord`` (its state read then).
SleeperRow = tuple[int, str, str, int, float]


class Sleeper(NamedTuple):
    """A ``SleeperRow`` by its names, made when it wakes."""

    created_micros: int
    session_id: str
    status_value: str  # one of SLEEPING_STATUSES (ondisk.sleepers sets the others aside)
    message_count: int
    timeout_minutes: float

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_micros)

    @property
    def status(self) -> SessionStatus:
        return SLEEPING_STATUSES[self.status_value]


SLEEPING_STATUSES = {status.value: status for status in SERVING}  # an enum call costs ~1 µs


def creation_order(entry: SessionRecord | SleeperRow | SessionState) -> tuple[datetime, str]:
    """The order of ``list_sessions``: by creation, then id."""
    if isinstance(entry, tuple):
        return from_micros(entry[0]), entry[1]
    return entry.created_at, entry.session_id


def status_value(entry: SessionRecord | SleeperRow) -> str:
    return entry[2] if isinstance(entry, tuple) else entry.status.value


def _parse_plain(session_id: str, row: bytes) -> SessionState:
    return SessionState.deserialize(wire.decode(row))


# How a hibernated record's ``row`` becomes a state again: the registry's ``parse`` once the
# supervisor has one (``read_rows_with``), which keeps a newer version's keys aside and moves a
# damaged row out with DamagedStoreError.
_read_row: Callable[[str, bytes], SessionState] = _parse_plain


def read_rows_with(parse: Callable[[str, bytes], SessionState]) -> None:
    global _read_row
    _read_row = parse


class KnownSessions(dict[str, "SessionRecord | SleeperRow"]):
    """Every known session by id, kept in creation order: ``list_sessions`` pages through it
    (``page``) without sorting or decoding the sessions before ``offset``. A ``SleeperRow`` in it
    is turned into its record by ``wake_entry`` (the supervisor's) when it is first asked for:
    ``get`` and ``page`` only ever give records."""

    def __init__(self, wake_entry: Callable[[Sleeper], SessionRecord]) -> None:
        super().__init__()
        self.wake_entry = wake_entry

    def get(self, session_id: str, default: None = None) -> SessionRecord | None:  # type: ignore[override]
        value = dict.get(self, session_id)
        return value if value is None or isinstance(value, SessionRecord) else self._record(value)

    def _record(self, row: SleeperRow) -> SessionRecord:
        record = self.wake_entry(Sleeper._make(row))
        self[record.session_id] = record  # same key: same place in the order
        return record

    def records(self) -> list[SessionRecord]:
        """The entries that are records already (a sleeper has nothing to stop or settle)."""
        return [value for value in self.values() if isinstance(value, SessionRecord)]

    def add(self, record: SessionRecord) -> None:
        """Added last; one created before the newest (a recovered session, a clock stepped
        back) puts them all in order again, which is rare."""
        newest = next(reversed(self.values()), None)
        self[record.session_id] = record
        if newest is not None and creation_order(record) < creation_order(newest):
            ordered = sorted(self.items(), key=lambda item: creation_order(item[1]))
            self.clear()
            self.update(ordered)

    def page(self, offset: Any, limit: Any) -> list[SessionRecord]:
        return [v if isinstance(v, SessionRecord) else self._record(v) for v in page(self.values(), offset, limit)]


def session_info(record: SessionRecord, message_count: int) -> dict[str, Any]:
    """A ``SessionInfo`` as sent: the state's fields and its process's facts."""
    return {**record.dump(), "conversation_count": message_count,
            "pid": record.running_link.pid if record.serving else None, "restarts": record.restarts,
            "hibernated": record.hibernated}


def failed_info(state: SessionState) -> dict[str, Any]:
    """A given-up session as ``list_failed_sessions`` shows it: no process, its last error."""
    return {**state.model_dump(), "pid": None, "restarts": 0}


def is_live(status: SessionStatus) -> bool:
    return status is not SessionStatus.TERMINATED
