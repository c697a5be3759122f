"""What a daemon start finds in its state dir, and the one way a session's data is erased.

A start deletes only what a terminate asked for (docs/api.md §7): the files of a session whose
registry row says ``terminating`` (the terminate began, the daemon died before it finished).
Everything else is kept: live rows are restored, failed ones listed, files no row names (a lost
or damaged registry) are recorded as failed sessions a person can recover, and files that are
no session's are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

from ..errors import DamagedStoreError, StorageError
from ..models import SessionState
from ..states import SERVING, SessionStatus
from . import store
from .records import SLEEPING_STATUSES, SleeperRow

log = logging.getLogger("jidocoder.daemon")


@dataclass
class Found:
    live: list[SessionState] = field(default_factory=list)  # were live: restarted
    asleep: dict[str, SleeperRow] = field(default_factory=dict)  # hibernated: known, no process
    failed: dict[str, SessionState] = field(default_factory=dict)  # for recover_session
    unerased: set[str] = field(default_factory=set)  # erases whose row could not be deleted yet


def take_stock(state_dir: Path, registry: store.Registry) -> Found:
    found = Found()
    found.asleep, odd = sleepers(registry)
    statuses: dict[str, str | None] = {}  # of the sessions a row of sessions or failed holds
    rows = registry.load_rows() + [(i, blob) for i in odd if (blob := registry.row(i)) is not None]
    for session_id, blob in rows:
        try:
            state = registry.parse(session_id, blob)
        except DamagedStoreError as exc:
            log.error("session %s not restored: %s", session_id, exc.message)
            continue
        statuses[session_id] = state.status.value
        if state.status in SERVING:
            found.live.append(state)
        elif state.status is SessionStatus.INITIALIZING:  # never acknowledged (older versions)
            _forget_row(registry, state.session_id)
    found.failed = {state.session_id: state for state in registry.load_failed()}
    statuses.update((session_id, None) for session_id in found.failed)
    files = store.classify_session_files(state_dir, registry, statuses, found.asleep.keys())
    for session_id in files.erase:
        log.info("session %s was terminating when the daemon stopped: erased", session_id)
        if erase(state_dir, registry, session_id) is not None:
            found.unerased.add(session_id)
    for session_id in files.orphans:
        if (adopted := _adopt(registry, session_id)) is not None:
            found.failed[session_id] = adopted
    for path in files.stray:
        log.warning("%s is no session's file: left alone", path)
    for session_id in files.lone_logs:
        log.warning("session %s has a log file but no database and no record: left alone", session_id)
    return found


def sleepers(registry: store.Registry) -> tuple[dict[str, SleeperRow], list[str]]:
    """The hibernated sessions by id, oldest first, their registry columns as read (no state
    decoded, no column converted, no object made for each: 100,000 in ~12 ms beyond reading
    them); and the ids whose columns hold no status a sleeper has (only by hand): read in full."""
    rows = registry.load_asleep()
    if set(map(itemgetter(2), rows)) <= SLEEPING_STATUSES.keys():
        return dict(zip(map(itemgetter(1), rows), rows, strict=True)), []
    odd = [row[1] for row in rows if row[2] not in SLEEPING_STATUSES]
    return {row[1]: row for row in rows if row[2] in SLEEPING_STATUSES}, odd


def erase(state_dir: Path, registry: store.Registry, session_id: str) -> StorageError | None:
    """A session's files, then its row (which says "terminated by request" until then); the
    error if the row cannot be deleted now (the caller tries again)."""
    store.destroy_session_files(state_dir, session_id)
    try:
        registry.delete(session_id)
    except StorageError as exc:
        log.error("session %s ended and its files are removed, but its registry record cannot "
                  "be deleted yet (%s): retrying", session_id, exc)
        return StorageError(f"session {session_id} ended and its files are removed, but its "
                            f"registry record could not be deleted yet ({exc.message}); the "
                            "daemon retries until it can")
    return None


def _adopt(registry: store.Registry, session_id: str) -> SessionState | None:
    """Files with no row: recorded as a failed session, ended, with a default config."""
    new = SessionState.new(session_id).serialize()
    state = SessionState.deserialize({**new, "status": SessionStatus.TERMINATED.value,
                                      "error": store.ORPHAN_ERROR})
    try:
        adopted = registry.adopt_orphan(state)
    except StorageError as exc:
        log.error("session %s has files but no registry record, and cannot be recorded as "
                  "failed (%s): left alone", session_id, exc)
        return None
    if not adopted:
        return None
    log.error("session %s has files but no registry record: kept as a failed session", session_id)
    return state


def _forget_row(registry: store.Registry, session_id: str) -> None:
    try:
        registry.delete(session_id)
    except StorageError as exc:
        log.error("registry row of %s kept: %s", session_id, exc)
