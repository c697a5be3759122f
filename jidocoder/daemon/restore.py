"""What a daemon start makes of the sessions it finds stored (docs/api.md §6, §7, §13).

``ondisk.take_stock`` says what is there; here each becomes a record, oldest first. A row marked
hibernated becomes a sleeper: known, listed, no process until a call (a start with 100,000 of
them forks nothing, validates none and makes no record: see ``records.SleeperRow``). A row not marked was live when
the daemon stopped unasked (killed, crashed): its process is restarted, as after a crash of
its own, a batch per loop turn so the daemon serves from its first moment; past
``max_live_sessions`` the rest sleep. Sessions past ``max_sessions`` are not known by this
daemon, and their data stays for one with more room.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any, cast

from ..errors import DamagedStoreError
from ..models import SessionState
from ..states import SessionStatus
from . import ondisk
from .records import SessionRecord, Sleeper, SleeperRow, creation_order

log = logging.getLogger("jidocoder.daemon")

RESTORE_BATCH = 32  # restored sessions started per loop turn: clients are served in between
PROGRESS_EVERY = 1024  # sessions known per progress line: a line on a terminal, not one per session
_ACTIVE = SessionStatus.ACTIVE.value


class Restore:
    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor  # the Supervisor (not imported: it imports this module)
        self.to_spawn: deque[SessionRecord] = deque()
        self.began = time.monotonic()  # a sleeper's last activity, as idleness counts it

    def run(self, on_progress: Callable[[int, int], None] = lambda done, total: None) -> int:
        """Know every stored session; how many are known. ``on_progress(done, total)`` as it goes
        (the start's progress line, every ``PROGRESS_EVERY``)."""
        sup = self.sup
        self.began = time.monotonic()
        found = ondisk.take_stock(sup.state_dir, sup.registry)
        sup.failed.update(found.failed)
        sup.unerased |= found.unerased
        known = _oldest_first(found.live, found.asleep)
        room = sup.table.capacity - len(sup.records)
        for item in known[room:]:
            log.error("session %s not restored: max_sessions=%d are known",
                      creation_order(item)[1], sup.settings.max_sessions)
        known = known[:room]
        due: defaultdict[float, list[str]] = defaultdict(list)  # active sleepers by timeout
        for begin in range(0, len(known), PROGRESS_EVERY):
            self.know(known[begin:begin + PROGRESS_EVERY], not found.live, due)
            on_progress(min(begin + PROGRESS_EVERY, len(known)), len(known))
        sup.hibernation.due_idle_all(due, self.began)
        sup.loop.call_later(0, self.spawn_next)
        return len(sup.records)

    def know(self, items: list[SessionState | SleeperRow], all_asleep: bool,
             due: defaultdict[float, list[str]]) -> None:
        """Each in order: a sleeper kept as found (a record only once asked for: KnownSessions),
        a live one restarted; the active sleepers' ids added to ``due`` by their timeout. All
        sleepers (a start after ``daemon stop``) go in one call a batch: 100,000 in ~12 ms."""
        records = self.sup.records
        if all_asleep:
            asleep = cast(list[SleeperRow], items)
            records.update(zip(map(itemgetter(1), asleep), asleep, strict=True))
        else:
            asleep = []
            for item in items:
                if isinstance(item, SessionState):
                    self.restart(item)
                else:
                    records[item[1]] = item
                    asleep.append(item)
        for _, session_id, status, _, timeout in asleep:
            if status == _ACTIVE:
                due[timeout].append(session_id)

    def record_of(self, sleeper: Sleeper) -> SessionRecord:
        """The record of a sleeper, made the first time it is asked for (``KnownSessions``)."""
        sup = self.sup
        row = sup.registry.row(sleeper.session_id)
        if row is None:  # its asleep columns outlived its row: only by hand
            raise DamagedStoreError(f"session {sleeper.session_id} has no registry row",
                                    details={"session_id": sleeper.session_id})
        record = SessionRecord.asleep(sleeper.session_id, row, sleeper.status,
                                      sleeper.created_at, sup.table.allocate(sleeper.session_id))
        record.last_activity = self.began
        sup.write_slot(record)
        sup.table.write_counts(record.slot, sleeper.message_count, 0)  # no process writes them
        return record

    def restart(self, state: SessionState) -> None:
        sup = self.sup
        record = sup.admit(state)
        if len(sup.hibernation.live) >= sup.settings.max_live_sessions:
            record.fall_asleep()  # max_live_sessions was lowered: the rest wait for a call
            return
        sup.hibernation.awake(record)
        self.to_spawn.append(record)
        log.info("restoring session %s (%s)", state.session_id, state.status.value)

    def spawn_next(self) -> None:
        """A batch of restarts per loop turn; a call to one not yet started waits for it as
        one during a restart does."""
        sup = self.sup
        for _ in range(min(RESTORE_BATCH, len(self.to_spawn))):
            record = self.to_spawn.popleft()
            if sup.records.get(record.session_id) is record and record.link is None and not sup.shutting_down:
                sup.spawn_session(record)
        if self.to_spawn:
            sup.loop.call_later(0, self.spawn_next)


def _oldest_first(live: list[SessionState], asleep: dict[str, SleeperRow]) -> list[SessionState | SleeperRow]:
    """By creation (then id). Sleepers, usually all of them, come so from the registry; a sort
    (with a key function, ~0.5 µs a call) only when live rows are to be merged in."""
    if not live:
        return list(asleep.values())  # the registry gives them oldest first
    return sorted([*live, *asleep.values()], key=creation_order)
