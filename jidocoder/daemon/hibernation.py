"""Hibernation (docs/api.md §13): which sessions keep a process, and how one leaves and comes back.

A session with no call for ``hibernate_after_minutes`` is hibernated; so is the least recently
used one when a create or a revival would pass ``max_live_sessions``. Hibernating is a clean
exit after everything is durable; reviving is the start from the store that a restart after a
crash takes (``Supervisor.spawn_session``). The steps, each stored before it is acted on:

  hibernate:  registry row marked hibernated (with its message count) → the daemon closes its
              end of the socket (EOF: the process closes its store and exits 0; SIGKILL after
              ``terminate_grace``) → reaped → ``session_hibernated``; calls that came meanwhile
              waited, and now revive it
  revive:     room made (LRU hibernated) → row marked live → a spare takes the session, loads
              its store → ready → ``session_revived`` → the waiting calls are sent

Whatever is killed in between loses nothing: every call's writes were committed before it was
answered, and only a session with nothing in flight or waiting is hibernated. A process that
dies while it hibernates (SIGKILL included) has hibernated: there was nothing left to do. A
daemon killed with a row marked live restarts that session at its next start (as a crash);
one marked hibernated stays so. Crash counts and ``restarts`` live in the record, which a
hibernation keeps: a crash loop cannot sleep its way around ``max_restarts``.

Who may hibernate: a persisted session that serves (``active`` or ``idle``), with no call in
flight or waiting, no restart pending and no create waiting. Never one with persistence
disabled (it would come back empty): such sessions count against ``max_live_sessions`` and
cannot make room. When none can go now, a create is ``LimitExceededError``; a revival
waits in line (its calls within their timeouts) until one can, or is ``LimitExceededError``
if none ever could (every live session has persistence disabled).

A hibernated ``active`` session still goes ``idle`` after its ``timeout_minutes`` (a heap of
deadlines, so that 100,000 sleepers cost nothing per tick).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
from collections import OrderedDict, deque
from typing import Any

from ..errors import DamagedStoreError, LimitExceededError, StorageError
from ..states import SERVING, SessionStatus
from .records import SessionRecord

log = logging.getLogger("jidocoder.daemon")

# A live session with one of these statuses may hibernate once it serves and is not busy.
WILL_SERVE = frozenset({SessionStatus.INITIALIZING, *SERVING})
IDLE_CHANGES_PER_TICK = 256  # sleepers gone idle per check: the loop keeps serving in between


class Hibernation:
    """The supervisor's part for hibernation; ``supervisor`` is the ``Supervisor`` that owns it
    (not imported here: it imports this module)."""

    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor
        settings = supervisor.settings
        self.after = settings.hibernate_after_minutes * 60  # 0: never for idleness
        self.max_live = settings.max_live_sessions
        self.live: OrderedDict[str, SessionRecord] = OrderedDict()  # with a process, LRU first
        # (when, order, since, ids): sleepers that are active, with no call since ``since``, go
        # idle ``when``; a start's share one entry per timeout (100,000: one entry, made at once)
        self._idle_due: list[tuple[float, int, float, deque[str]]] = []
        self._order = itertools.count()
        self.in_line: deque[SessionRecord] = deque()  # sleepers called while no room could be made

    # -- who is live ---------------------------------------------------------------------------
    def awake(self, record: SessionRecord) -> None:
        """``record`` has (or is getting) a process: most recently used."""
        self.live[record.session_id] = record
        self.live.move_to_end(record.session_id)

    def touch(self, record: SessionRecord) -> None:
        if record.session_id in self.live:
            self.live.move_to_end(record.session_id)

    def forget(self, record: SessionRecord) -> None:
        """It ended, or leaves: no longer counted live."""
        if self.live.get(record.session_id) is record:
            del self.live[record.session_id]

    def make_room(self) -> None:
        """Before one more process: hibernate the least recently used that may go, until one
        more fits; LimitExceededError if none may."""
        while len(self.live) >= self.max_live:
            candidate = next((r for r in self.live.values() if self.may_hibernate(r)), None)
            if candidate is None or not self.hibernate(candidate, "max_live_sessions"):
                raise LimitExceededError(
                    f"{len(self.live)} session processes are alive, the most allowed "
                    f"(max_live_sessions={self.max_live}), and none can be hibernated now",
                    details={"limit": self.max_live})

    def may_hibernate(self, record: SessionRecord) -> bool:
        return (record.serving and record.persistent and record.status in SERVING
                and not record.running_link.in_flight and not record.running_link.unsent
                and not self.sup.table.read(record.slot).started  # inside a (direct) call
                and not record.waiting and record.restart_timer is None
                and record.create_waiter is None)

    # -- hibernating ---------------------------------------------------------------------------
    def hibernate(self, record: SessionRecord, why: str) -> bool:
        """Mark it hibernated in the registry, then let its process go; False (and nothing
        changed) if the registry cannot take the mark now."""
        sup = self.sup
        state = record.state.model_copy(update={"conversation_count": sup.table.read(record.slot).message_count})
        try:
            sup.registry.put(state, hibernated=True)
        except StorageError as exc:
            log.error("session %s not hibernated: %s", record.session_id, exc)
            return False
        record.held = state  # updated_at unchanged: nothing the session holds changed
        record.hibernating = True
        self.forget(record)
        link = record.running_link
        log.info("session %s (pid %d) hibernates (%s)", record.session_id, link.pid, why)
        link.hang_up()  # it closes its store and ends
        grace = sup.settings.terminate_grace
        sup.loop.call_later(grace, lambda: sup.signal_process(link, signal.SIGKILL))
        return True

    def mark_stopped(self, record: SessionRecord) -> None:
        """The daemon stops and ``record``'s process is reaped: stored as hibernated, with its
        final message count, so the next start leaves it hibernated. If the registry cannot
        take it, the next start restarts the session instead: nothing is lost either way."""
        if not (record.persistent and record.status in SERVING):
            return
        state = record.state.model_copy(update={"conversation_count": self.sup.table.read(record.slot).message_count})
        try:
            self.sup.registry.put(state, hibernated=True)
        except StorageError as exc:
            log.error("session %s not stored as hibernated (%s): the next start restarts it",
                      record.session_id, exc)

    def on_exit(self, record: SessionRecord) -> None:
        """Its process is reaped, however it ended: hibernated. Calls that came meanwhile
        revive it at once."""
        record.hibernating = False
        record.link = None
        record.fall_asleep()
        if record.status is SessionStatus.ACTIVE:
            self.due_idle(record.session_id, record.last_activity, record.state.config.timeout_minutes)
        self.sup.bus.publish("session_hibernated", record.session_id, {"session_id": record.session_id})
        if record.waiting:
            self.revive(record)

    def expired(self, now: float) -> None:
        """Hibernate every live session with no call for ``hibernate_after_minutes``."""
        if not self.after:
            return
        for record in list(self.live.values()):  # least recently used first
            if now - record.last_activity <= self.after:
                break
            if self.may_hibernate(record):
                self.hibernate(record, "no call for hibernate_after_minutes")

    # -- reviving ------------------------------------------------------------------------------
    def revive(self, record: SessionRecord) -> None:
        """Start it from its store, as after a crash; the caller has queued its call in
        ``record.waiting``. Errors (room, registry, a damaged row) fail those calls."""
        sup = self.sup
        if not self._room_for(record):
            return
        try:
            record.wake()
            sup.registry.put(record.state)  # marked live first: a daemon killed now restarts it
        except (StorageError, DamagedStoreError) as exc:
            if not record.hibernated and record.link is None:
                record.fall_asleep()
            sup.drop_waiting(record, exc)
            if isinstance(exc, DamagedStoreError):
                self.forget_damaged(record)
            return
        log.info("session %s revives", record.session_id)
        record.announce_revival = True
        self.awake(record)
        sup.spawn_session(record)

    def forget_damaged(self, record: SessionRecord) -> None:
        """A sleeper whose row was found damaged when read (moved to damaged/): not known now."""
        sup = self.sup
        log.error("session %s dropped: its registry row is damaged (kept in damaged/)", record.session_id)
        if sup.records.get(record.session_id) is record:
            sup.table.release(record.slot)
            del sup.records[record.session_id]

    def _room_for(self, record: SessionRecord) -> bool:
        """Room for one more process now; else ``record`` waits in line (its calls with it,
        within their timeouts) if a live session may hibernate later (one starting or busy),
        or its calls fail with LimitExceededError if none ever may (none is persisted)."""
        try:
            self.make_room()
            return True
        except LimitExceededError as exc:
            if not any(r.persistent and r.status in WILL_SERVE for r in self.live.values()):
                self.sup.drop_waiting(record, exc)
            elif record not in self.in_line:
                log.info("session %s waits for a live session to hibernate", record.session_id)
                self.in_line.append(record)
            return False

    def revive_in_line(self) -> None:
        """Revive those waiting for room, in order, while room can be made (called every tick
        and whenever a session starts serving)."""
        line = self.in_line
        while line:
            record = line[0]
            if (self.sup.records.get(record.session_id) is not record or not record.hibernated
                    or not record.waiting):
                line.popleft()  # terminated, revived otherwise, or its calls gave up
                continue
            if len(self.live) >= self.max_live and not any(map(self.may_hibernate, self.live.values())):
                return
            line.popleft()
            self.revive(record)

    # -- sleepers that are active go idle --------------------------------------------------------
    def due_idle(self, session_id: str, since: float, timeout_minutes: float) -> None:
        """A sleeper that is active, with no call since ``since``: idle ``timeout_minutes``
        later, unless a call comes first."""
        self.due_idle_all({timeout_minutes: [session_id]}, since)

    def due_idle_all(self, by_timeout: dict[float, list[str]], since: float) -> None:
        """``due_idle`` for the ids of each timeout (minutes), one entry for each timeout."""
        for timeout, session_ids in by_timeout.items():
            heapq.heappush(self._idle_due, (since + timeout * 60, next(self._order), since, deque(session_ids)))

    def idle_sleepers(self, now: float) -> None:
        due = self._idle_due
        for _ in range(IDLE_CHANGES_PER_TICK):
            if not due or due[0][0] >= now:
                return
            _, _, since, session_ids = due[0]
            session_id = session_ids.popleft()
            if not session_ids:
                heapq.heappop(due)
            record = self.sup.records.get(session_id)
            if (record is not None and record.hibernated and record.last_activity == since
                    and record.status is SessionStatus.ACTIVE):
                self.sup.change_unasked(record, SessionStatus.IDLE)
                if record.status is SessionStatus.ACTIVE:  # the registry refused: next tick
                    heapq.heappush(due, (now + 1.0, next(self._order), since, deque((session_id,))))

