"""What a daemon start makes of the sessions it finds stored (docs/api.md §6, §7, §13).

``ondisk.take_stock`` says what is there; here each becomes a record, oldest first. A row marked
hibernated becomes a sleeper: known, listed, no process until a call (a start with 100,000 of
them forks nothing, validates none and makes no record: see ``records.Sleeper``). A row not marked was live when
the daemon stopped unasked (killed, crashed): its process is restarted, as after a crash of
its own, a batch per loop turn so the daemon serves from its first moment; past
``max_live_sessions`` the rest sleep. Sessions past ``max_sessions`` are not known by this
daemon, and their data stays for one with more room.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import DamagedStoreError
from ..models import SessionState
from ..states import SessionStatus
from . import ondisk
from .records import SessionRecord, Sleeper

log = logging.getLogger("jidocoder.daemon")

RESTORE_BATCH = 32  # restored sessions started per loop turn: clients are served in between


class Restore:
    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor  # the Supervisor (not imported: it imports this module)
        self.to_spawn: deque[SessionRecord] = deque()
        self.began = time.monotonic()  # a sleeper's last activity, as idleness counts it

    def run(self, on_progress: Callable[[int, int], None] = lambda done, total: None) -> int:
        """Know every stored session; how many are known. ``on_progress(done, total)`` as it goes
        (the start's progress line)."""
        sup = self.sup
        self.began = time.monotonic()
        found = ondisk.take_stock(sup.state_dir, sup.registry)
        sup.failed.update(found.failed)
        sup.unerased |= found.unerased
        due: list[tuple[str, float]] = []  # sleepers that are active, and their timeouts
        total = len(found.live) + len(found.asleep)
        for done, item in enumerate(_oldest_first(found.live, found.asleep), 1):
            if done % 1024 == 0 or done == total:  # a line on a terminal, not a call per session
                on_progress(done, total)
            if sup.table.capacity == len(sup.records):
                log.error("session %s not restored: max_sessions=%d are known",
                          item.session_id, sup.settings.max_sessions)
            elif isinstance(item, Sleeper):  # a record only once asked for (KnownSessions)
                sup.records[item.session_id] = item
                if item.status is SessionStatus.ACTIVE:
                    due.append((item.session_id, item.timeout_minutes))
            else:
                self.restart(item)
        sup.hibernation.due_idle_all(due, self.began)
        sup.loop.call_later(0, self.spawn_next)
        return len(sup.records)

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


def _oldest_first(live: list[SessionState], asleep: list[Sleeper]) -> list[SessionState | Sleeper]:
    """By creation (then id). Sleepers, usually all of them, come so from the registry; a sort
    (with a key function, ~0.5 µs a call) only when live rows are to be merged in."""
    if not live:
        return list(asleep)  # the registry gives them oldest first
    known: list[SessionState | Sleeper] = [*live, *asleep]
    return sorted(known, key=lambda s: (s.created_at, s.session_id))
