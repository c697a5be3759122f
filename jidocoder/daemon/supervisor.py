"""The supervisor: every session's record, its process, and the one place its status changes.

Lifecycle in verbs: ``create_session`` → ``spawn_session`` → (ready) → ``route`` calls →
``terminate_session`` → ``finish_session``; on an exit ``handle_exit`` asks ``restarts`` what it
means → ``restart_session``, ``retry_start`` or ``give_up``. ``change_status`` is the only
function that moves a session along the transition table: it checks the edge, persists,
writes the table slot and publishes ``session_status``.

Persist first, then change memory, then reply: a registry write that fails (``StorageError``)
is the caller's error and changes nothing. Nothing is deleted but by ``terminate_session``: a
session given up after crashes keeps its data as a *failed* session, which ``recover_session``
brings back. The supervisor owns its periodic checks (``check_sessions``, ``check_memory``):
``watchdog`` only answers questions about a process.

No fork is on the path of a call: a session starts in a spare process made ahead of need
(``spares``). A session waiting for a spare (a burst of creates, a restore) is served in order
as spares arrive.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, TypeGuard
from collections.abc import Callable

from .. import wire
from ..config import Settings
from ..errors import (DamagedStoreError, InvalidArgumentError, JidocoderError, LimitExceededError,
                      RequestTimeoutError, SessionCrashedError, SessionNotFoundError, StorageError)
from ..models import SessionConfig, SessionState
from ..states import LIVE, SERVING, SessionStatus
from . import exits, ondisk, restarts, store, watchdog
from .events import EventBus, session_topic
from .channels import Channels
from .pacing import Pacing, events_window
from .hibernation import Hibernation
from .link import Pending
from .logs import write_session_record
from .loop import Loop
from .records import KnownSessions, SessionRecord, failed_info, read_rows_with, session_info
from .restore import Restore
from .restarts import RestartPolicy, Verdict
from .backend import SessionHandle
from .backends import open_backend
from .session import SessionSpec
from .table import SessionTable
from .usage import UsageSampler

log = logging.getLogger("jidocoder.daemon")

class Supervisor:
    def __init__(self, settings: Settings, loop: Loop, bus: EventBus,
                 registry: store.Registry) -> None:
        self.settings = settings
        self.loop = loop
        self.bus = bus
        self.registry = registry
        self.policy = RestartPolicy(settings.max_restarts, settings.max_seconds)
        self.state_dir = Path(settings.state_dir)
        self.table = SessionTable(settings.max_sessions)
        self.usage = UsageSampler(self.table)
        self.restore = Restore(self)
        self.records = KnownSessions(self.restore.record_of)  # in list_sessions' order: oldest first
        read_rows_with(registry.parse)  # a sleeper's row, read as the registry reads it
        self.hibernation = Hibernation(self)
        self.channels = Channels(self)
        self.pacing = Pacing(loop, bus)  # slow subscribers slow the sessions they watch
        self.failed: dict[str, SessionState] = {}  # given up, data kept for recover_session
        self.by_pid: dict[int, tuple[SessionRecord, SessionHandle]] = {}  # by the handle's key
        self.on_all_stopped: Callable[[], None] | None = None
        self.shutting_down = False
        self._awaiting_spare: deque[SessionRecord] = deque()
        self.unerased: set[str] = set()  # ended sessions whose registry row is still to delete
        self.daemon_pid = os.getpid()
        warm = self._spec("warm-up", SessionConfig(), slot=0)  # a throwaway with our settings
        self.backend = open_backend(settings, loop, self.table, warm, on_available=self._hand_out_spares,
                                    on_failure=self._spawn_failed)

    def start_spares(self) -> None:
        """After the daemon's imports and ``gc.freeze()``, before any session."""
        self.backend.start()

    # -- creating, restoring, recovering -------------------------------------------------------
    def create_session(self, metadata: Any, llm_config: Any, config: Any, pending: Pending, *,
                       call_id: Any = None) -> None:
        for name, value in (("metadata", metadata), ("llm_config", llm_config)):
            if value is not None and not isinstance(value, dict):
                raise InvalidArgumentError(f"{name} must be a dict or None", code="invalid_argument",
                                           field=name)
        if config is not None and not isinstance(config, dict):
            raise InvalidArgumentError("config must be a dict or None", code="invalid_config", field="config")
        session_id = f"session_{uuid.uuid4()}"
        state = SessionState.new(session_id, config=config, llm_config=llm_config, metadata=metadata)
        self.hibernation.make_room()
        record = self.admit(state)
        self.hibernation.awake(record)
        # Stored only once it is active: an unacknowledged session leaves nothing to restore.
        record.create_waiter, record.create_call_id = pending, call_id
        self.spawn_session(record)

    def recover_session(self, session_id: Any, pending: Pending) -> None:
        """Bring a failed session back as on create, with all its stored data (docs/api.md §7)."""
        failed = self.failed.get(session_id) if isinstance(session_id, str) else None
        if failed is None:
            raise SessionNotFoundError(f"no failed session {session_id!r}", field="session_id")
        state = SessionState.deserialize({**failed.serialize(), "status": "initializing", "error": None})
        self.hibernation.make_room()
        record = self.admit(state)
        self.hibernation.awake(record)
        del self.failed[session_id]
        record.recovered_from = failed  # its failed row stays until it serves: nothing is lost
        record.create_waiter = pending
        self.spawn_session(record)

    def failed_sessions(self) -> list[dict[str, Any]]:
        return [failed_info(state) for state in sorted(self.failed.values(), key=lambda s: s.created_at)]

    def restore_sessions(self, on_progress: Callable[[int, int], None] = lambda done, total: None) -> int:
        """Know again every stored session (``restore``); how many."""
        return self.restore.run(on_progress)

    def admit(self, state: SessionState) -> SessionRecord:
        # Counted in sessions known, not in slots: a sleeper holds none until it is asked for
        # (records.Sleeper), and the table's max_sessions slots are enough for every one.
        slot = self.table.allocate(state.session_id) if len(self.records) < self.settings.max_sessions else None
        if slot is None:
            raise LimitExceededError(f"the daemon holds its maximum of {self.settings.max_sessions} "
                                     "sessions (setting max_sessions)", details={"limit": self.settings.max_sessions})
        record = SessionRecord.of(state, slot)
        self.records.add(record)
        self.write_slot(record)
        return record

    # -- processes ----------------------------------------------------------------------------
    def spawn_session(self, record: SessionRecord) -> None:
        """Start the session in its backend now, or as soon as it has room (in order)."""
        self._awaiting_spare.append(record)
        self._hand_out_spares()

    def _hand_out_spares(self) -> None:
        while self._awaiting_spare:
            record = self._awaiting_spare[0]
            if self.records.get(record.session_id) is not record or self.shutting_down:
                self._awaiting_spare.popleft()  # terminated or stopping while it waited
                continue
            incarnation = (record.link.incarnation + 1) if record.link else 1
            link = self.backend.open(self._spec(record.session_id, record.state.config, record.slot),
                                     incarnation, min(wire.MAX_FRAME, self.settings.memory_limit_mb * 1024 * 1024))
            if link is None:
                break
            self._awaiting_spare.popleft()
            self._start_in(record, link)
        self.backend.top_up(wanted=len(self._awaiting_spare))

    def _start_in(self, record: SessionRecord, link: SessionHandle) -> None:
        record.link = link
        record.spawned_at = time.monotonic()
        self.by_pid[link.key] = (record, link)
        self.loop.watch(link, lambda: self._on_readable(record, link), link.flush)
        self.write_slot(record)

    def _spec(self, session_id: str, config: SessionConfig, slot: int) -> SessionSpec:
        return SessionSpec(session_id=session_id, config=config, slot=slot, state_dir=self.state_dir,
                           durability=self.settings.durability, cache_max_bytes=self.settings.cache_max_bytes,
                           hang_timeout=self.settings.hang_timeout, max_frame=self.max_frame,
                           daemon_pid=self.daemon_pid, log_level=logging.getLogger().level,
                           debug_ops=self.settings.debug_ops,
                           events_window=events_window(self.settings.client_buffer_bytes))

    def _spawn_failed(self, reason: str) -> None:
        """No process could be made for the first session waiting for one: a create fails with
        LimitExceededError; anything else is tried again later, uncounted (docs/api.md §7)."""
        while self._awaiting_spare:
            record = self._awaiting_spare.popleft()
            if self.records.get(record.session_id) is not record:
                continue
            if record.status is SessionStatus.INITIALIZING:
                self._fail_creation(record, LimitExceededError(
                    f"cannot start a session process: {reason}", details={"reason": reason}))
            else:
                self.retry_start(record, f"cannot start a process: {reason}")
            return

    @property
    def max_frame(self) -> int:
        return wire.request_limit(self.settings.max_request_bytes)

    def _on_readable(self, record: SessionRecord, link: SessionHandle) -> None:
        for frame in link.read_frames():
            self._on_frame(record, link, frame)
        if link.eof:
            self.loop.unwatch(link)
            if link.broken is not None and link.exit_status is None:
                log.error("session %s (pid %d) broke framing on its socket (%s): killing it",
                          record.session_id, link.pid, link.broken)
                self.kill_process(link, "protocol error", signal.SIGKILL)
            if link.death is not None:  # a backend that knows the death already (Ray's)
                self._on_exit(link.key, link.death)
            else:  # a dying process closes its fds just before it becomes a zombie: its exit
                self._reap_now(link.pid)  # is usually there already, before SIGCHLD

    def _on_frame(self, record: SessionRecord, link: SessionHandle, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if "log" in frame:
            write_session_record(frame["log"], record.session_id, link.pid)
        elif "damaged" in frame or "store_failed" in frame:
            link.last_word = str(frame.get("damaged") or frame.get("store_failed"))
        elif "ready" in frame:
            self._on_ready(record, link)
        elif "mark" in frame or "wake" in frame or "served" in frame:  # direct calls' (channels.py)
            self.channels.on_frame(record, link, frame)
        elif "id" in frame:
            call = link.in_flight.pop(frame["id"], None)
            self.bus.publish_all(record.session_id, frame.get("events") or ())
            if call is None:
                pass
            elif "error" in frame:
                call.pending.reply({"error": frame["error"]})
            elif "packed" in frame:  # the result, encoded by the session: forwarded undecoded
                call.pending.reply_packed(frame["packed"])
            else:
                call.pending.reply({"result": frame.get("result")})

    def _on_ready(self, record: SessionRecord, link: SessionHandle) -> None:
        link.ready = True
        record.start_attempts = 0
        self.write_slot(record)
        if record.status is SessionStatus.INITIALIZING:
            if not self._activate(record):
                return
        elif record.announce_restart:
            record.announce_restart = False
            self.bus.publish("session_restarted", record.session_id,
                             {"session_id": record.session_id, "pid": link.pid, "restarts": record.restarts})
        if record.announce_revival:
            record.announce_revival = False
            self.bus.publish("session_revived", record.session_id,
                             {"session_id": record.session_id, "pid": link.pid})
        waiting, record.waiting = record.waiting, []
        for _, resume in waiting:
            resume()
        self.hibernation.revive_in_line()  # this one may make room now

    def _activate(self, record: SessionRecord) -> bool:
        """A created or recovered session serves: stored (its failed row dropped), then said."""
        try:
            self.change_status(record, SessionStatus.ACTIVE, announce_created=True)
        except StorageError as exc:
            self._fail_creation(record, exc)
            return False
        waiter, record.create_waiter = record.create_waiter, None
        if waiter is not None:
            waiter.reply({"result": record.session_id})
        return True

    # -- calls --------------------------------------------------------------------------------
    def find(self, session_id: Any, *, any_live: bool = False) -> SessionRecord:
        """The record of a session that serves calls (``any_live``: also one being created or
        terminated, for the questions ``list_sessions`` would answer about it too)."""
        if not isinstance(session_id, str):
            raise InvalidArgumentError("session_id must be a string", code="invalid_session_id",
                                       field="session_id")
        record = self.records.get(session_id)
        if record is None or record.status not in (LIVE if any_live else SERVING):
            raise SessionNotFoundError(f"no session {session_id!r} (unknown or terminated)",
                                       field="session_id")
        return record

    def route(self, record: SessionRecord, op: str, args: bytes, pending: Pending) -> None:
        """Send a call to the session's process, or hold it until a (re)started one serves."""
        self.touch(record)
        if not record.serving:
            record.waiting.append((pending, lambda: self.route(record, op, args, pending)))
            if record.hibernated:
                self.hibernation.revive(record)
        elif pending.abandoned():  # its client closed or lost its connection while it waited
            pending.reply({"error": RequestTimeoutError(f"{op} not sent: its client is gone").to_wire()})
        elif pending.expired(time.monotonic()):  # it waited for a restart longer than its client
            pending.reply({"error": RequestTimeoutError(
                f"{op} waited for its session's process past its client's deadline: not sent",
                details={"op": op}).to_wire()})
        elif record.running_link.request(op, args, pending):
            self.loop.flush_soon(record.running_link)

    def answer_pid(self, record: SessionRecord, pending: Pending) -> None:
        """``get_session_pid``: the pid of the process serving now, once one does."""
        self.touch(record)
        if record.serving:
            pending.reply({"result": record.running_link.pid})
        else:
            record.waiting.append((pending, lambda: self.answer_pid(record, pending)))
            if record.hibernated:
                self.hibernation.revive(record)

    def touch(self, record: SessionRecord) -> None:
        record.last_activity = time.monotonic()
        self.table.write_activity(record.slot, record.last_activity)
        self.hibernation.touch(record)
        if record.status is SessionStatus.IDLE:
            self.change_unasked(record, SessionStatus.ACTIVE)

    def info(self, record: SessionRecord) -> dict[str, Any]:
        """Its SessionInfo; a sleeper's row found damaged now is moved out (DamagedStoreError)."""
        try:
            return session_info(record, self.table.read(record.slot).message_count)
        except DamagedStoreError:
            self.hibernation.forget_damaged(record)
            raise

    def list_infos(self, offset: Any, limit: Any) -> list[dict[str, Any]]:
        """``list_sessions``: a page of ``records`` (kept oldest first), skipping nothing
        before ``offset`` but pointers; a row found damaged is left out."""
        infos = []
        for record in self.records.page(offset, limit):
            try:
                infos.append(self.info(record))
            except DamagedStoreError:
                pass
        return infos

    # -- status -------------------------------------------------------------------------------
    def change_status(self, record: SessionRecord, to: SessionStatus, *, persist: bool = True,
                      announce_created: bool = False, **changes: Any) -> None:
        """The one place a status changes: the edge checked, the new state stored (StorageError
        and nothing changed if it cannot be), then memory, the table slot and the events."""
        previous = record.status
        state = record.state.update(**changes) if changes else record.state
        state = state.transition(to)
        if persist and record.persistent:
            self._store_state(record, state, record.hibernated)
        record.state = state
        self.table.write_status(record.slot, to.code)
        if announce_created:
            self.bus.publish("session_created", record.session_id,
                             {"session_id": record.session_id, "metadata": state.metadata})
        self.bus.publish("session_status", record.session_id, {
            "session_id": record.session_id, "status": to.value, "previous_status": previous.value,
            "updated_at": state.updated_at})

    def _store_state(self, record: SessionRecord, state: SessionState, hibernated: bool) -> None:
        """Live statuses and ``terminating`` (terminated by request: a start that finds it
        finishes the erase) are stored; ``terminated`` is the erase itself (``_erase``)."""
        if record.recovered_from is not None and state.status is SessionStatus.ACTIVE:
            self.registry.recover_failed(state)  # the failed row becomes the live one, at once
            record.recovered_from = None
        elif state.status is not SessionStatus.TERMINATED:
            self.registry.put(state, call_id=record.create_call_id,
                              hibernated=hibernated and state.status in SERVING)
            record.create_call_id = None

    def change_unasked(self, record: SessionRecord, to: SessionStatus) -> None:
        """A change nobody asked for (idleness): if the registry refuses it, the session stays
        as it was and the next check tries again; said once in the log."""
        try:
            self.change_status(record, to)
            record.status_write_failed = False
        except StorageError as exc:
            if not record.status_write_failed:
                log.error("session %s stays %s: %s", record.session_id, record.status.value, exc)
            record.status_write_failed = True

    def write_slot(self, record: SessionRecord) -> None:
        link = record.link
        self.table.write_owner(record.slot, status_code=record.status.code,
                               incarnation=link.incarnation if link else 0,
                               pid=link.pid if link else 0, restarts=record.restarts,
                               last_activity=record.last_activity)

    # -- terminating --------------------------------------------------------------------------
    def terminate_session(self, record: SessionRecord, pending: Pending) -> None:
        """Stored as ``terminating`` first (StorageError: nothing changes), then SIGTERM: the
        process's exit, the slow part, overlaps with the rest; the reaper finishes."""
        self.change_status(record, SessionStatus.TERMINATING)
        record.terminate_waiters.append(pending)
        self.drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated"))
        if record.restart_timer is not None:
            record.restart_timer.cancel()
        if record.running:
            self.stop_process(record.running_link)
        else:
            self.finish_session(record, "terminated by request", erase=True)

    def stop_process(self, link: SessionHandle) -> None:
        """SIGTERM now, SIGKILL after the grace period; the reaper finishes the rest."""
        link.stopping = True
        self.signal_process(link, signal.SIGTERM)
        self.loop.call_later(self.settings.terminate_grace, lambda: self.signal_process(link, signal.SIGKILL))

    def finish_session(self, record: SessionRecord, reason: str, *, erase: bool) -> None:
        """The process is gone: release its resources (its data too if ``erase``), then say so."""
        self.drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated"))
        erased = self._erase(record.session_id) if erase and record.persistent else None
        self.change_status(record, SessionStatus.TERMINATED, persist=False)
        self.bus.publish("session_terminated", record.session_id,
                         {"session_id": record.session_id, "reason": reason})
        self.table.release(record.slot)
        del self.records[record.session_id]
        self.hibernation.forget(record)
        self.bus.forget_topic(session_topic(record.session_id))
        answer = {"result": None} if erased is None else {"error": erased.to_wire()}
        for waiter in record.terminate_waiters:
            waiter.reply(answer)
        record.terminate_waiters.clear()

    def _erase(self, session_id: str) -> StorageError | None:
        """``ondisk.erase``; a row the registry cannot delete now is tried again by
        ``check_sessions``."""
        error = ondisk.erase(self.state_dir, self.registry, session_id)
        if error is None:
            self.unerased.discard(session_id)
        else:
            self.unerased.add(session_id)
        return error

    def drop_waiting(self, record: SessionRecord, error: JidocoderError) -> None:
        waiting, record.waiting = record.waiting, []
        for pending, _ in waiting:
            pending.reply({"error": error.to_wire()})

    # -- exits, crashes, restarts ------------------------------------------------------------
    def reap_children(self) -> None:
        while self._reap_now(-1):
            pass

    def _reap_now(self, pid: int) -> bool:
        """Reap ``pid`` (-1: any child) if it has exited; False if there was nothing to reap."""
        try:
            pid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return False
        self._on_exit(pid, status)
        return True

    def _on_exit(self, key: int, status: int) -> None:
        """A session's process or actor (found by its handle's ``key``), or another child of
        the backend's, has ended with ``status``."""
        entry = self.by_pid.pop(key, None)
        try:
            if entry is None:
                self.backend.exited(key)
            else:
                self.handle_exit(*entry, status)
        except Exception:  # one exit handled badly must not leave the other children unreaped
            log.exception("handling the exit of process %d failed", key)
        if self.shutting_down:
            self._check_all_stopped()

    def handle_exit(self, record: SessionRecord, link: SessionHandle, status: int) -> None:
        link.exit_status = status
        self._drain(record, link)
        self.loop.unwatch(link)
        self.pacing.forget(link)
        link.close()
        if self.records.get(record.session_id) is not record:
            return  # a process its session let go of (a create that failed): nothing more
        judged = restarts.judge_exit(status, link.kill_reason, link.last_word)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in exits.NAMES:
            log.warning("session %s (pid %d) exited: %s", record.session_id, link.pid,
                        exits.NAMES[os.WEXITSTATUS(status)])
        self._settle_in_flight(record, link, judged.reason)
        if self.shutting_down:
            self.hibernation.mark_stopped(record)  # the next start forks nothing for it
            return  # reap_children checks whether all are stopped
        if record.status is SessionStatus.TERMINATING:
            self.finish_session(record, "terminated by request", erase=True)
        elif record.hibernating:
            self.hibernation.on_exit(record)
        elif judged.verdict is Verdict.RETRY:
            self.retry_start(record, judged.reason)
        elif record.status is SessionStatus.INITIALIZING:
            self._fail_creation(record, SessionCrashedError(
                f"the session's process failed to start: {judged.reason}"))
        elif judged.verdict is Verdict.CRASH:
            self.handle_crash(record, judged.reason)
        else:
            if judged.verdict is Verdict.DAMAGED:
                self._quarantine(record, judged.reason)
            self.give_up(record, judged.reason)

    def _settle_in_flight(self, record: SessionRecord, link: SessionHandle, reason: str) -> None:
        """Calls the dead process had begun fail; those it never read wait for its successor."""
        crash = SessionCrashedError(f"session {record.session_id}'s process died serving this call "
                                    f"({reason}); it may or may not have been applied")
        started = self.table.read(record.slot).started
        self.channels.on_exit(link, started)
        begun, unread = link.take_in_flight(started)
        for call in begun:
            call.pending.reply({"error": crash.to_wire()})
        record.waiting[:0] = [(call.pending, functools.partial(self.route, record, call.op, call.args,
                                                               call.pending)) for call in unread]

    def _drain(self, record: SessionRecord, link: SessionHandle) -> None:
        """The process is dead: everything it wrote is already in the socket; take it all."""
        while not link.eof:
            frames = link.read_frames()
            if not frames and not link.eof:
                return
            for frame in frames:
                self._on_frame(record, link, frame)

    def handle_crash(self, record: SessionRecord, reason: str) -> None:
        if record.crashes is None:
            record.crashes = deque()
        delay = self.policy.on_crash(record.crashes, time.monotonic())
        will_restart = delay is not None
        self.bus.publish("session_crashed", record.session_id, {
            "session_id": record.session_id, "reason": reason, "restarts": record.restarts,
            "will_restart": will_restart})
        log.warning("session %s crashed: %s (restarts so far %d, %s)", record.session_id, reason,
                    record.restarts, "restarting" if will_restart else "giving up")
        if delay is None:
            log.error("session %s restarted too often (%d in %ss): given up, its data kept",
                      record.session_id, self.settings.max_restarts, self.settings.max_seconds)
            self.give_up(record, reason)
            return
        record.restart_timer = self.loop.call_later(delay, lambda: self.restart_session(record))

    def restart_session(self, record: SessionRecord) -> None:
        record.restart_timer = None
        if self.records.get(record.session_id) is not record or self.shutting_down:
            return
        record.restarts += 1
        record.announce_restart = True
        self.spawn_session(record)

    def retry_start(self, record: SessionRecord, reason: str) -> None:
        """Start the session's process again later, not counted as a crash: the cause (a full
        disk, a process limit, a store still locked by its predecessor) is not the session's."""
        record.start_attempts += 1
        delay = restarts.retry_delay(record.start_attempts)
        log.warning("session %s could not be started (%s): trying again in %.2f s",
                    record.session_id, reason, delay)
        record.restart_timer = self.loop.call_later(delay, lambda: self._retry_now(record))

    def _retry_now(self, record: SessionRecord) -> None:
        record.restart_timer = None
        if self.records.get(record.session_id) is record and not self.shutting_down:
            self.spawn_session(record)

    def give_up(self, record: SessionRecord, reason: str) -> None:
        """End the session as on terminate, but keep its data as a failed session (docs/api.md §7);
        if even that cannot be recorded, its live row stays and the next start restores it."""
        self.change_status(record, SessionStatus.TERMINATING, persist=False, error=reason)
        self.drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated: {reason}"))
        self.finish_session(record, reason, erase=False)
        if record.persistent:
            try:
                self.registry.mark_failed(record.state)
                self.failed[record.session_id] = record.state
            except StorageError as exc:
                log.error("session %s could not be recorded as failed (%s): its record stays, and "
                          "the next daemon start restores it", record.session_id, exc)

    def _quarantine(self, record: SessionRecord, why: str) -> None:
        path = store.session_db_path(self.state_dir, record.session_id)
        if path.exists():
            moved = store.quarantine(self.state_dir, path, why)
            log.error("session %s: %s; its store moved to %s", record.session_id, why, moved)

    def _fail_creation(self, record: SessionRecord, error: JidocoderError) -> None:
        """A create (or recover) that will not serve: said to its caller, and nothing is left
        but a recovered session's failed record, which it had before."""
        log.warning("session %s failed to start: %s", record.session_id, error.message)
        waiter, record.create_waiter = record.create_waiter, None
        if waiter is not None:
            waiter.reply({"error": error.to_wire()})
        if record.running:
            self.stop_process(record.running_link)  # its exit finds no record: nothing more to do
        if record.recovered_from is not None:
            self.failed[record.session_id] = record.recovered_from
        if record.restart_timer is not None:
            record.restart_timer.cancel()
        self.table.release(record.slot)
        del self.records[record.session_id]
        self.hibernation.forget(record)

    # -- the checks ---------------------------------------------------------------------------
    def check_sessions(self) -> None:
        """Every tick: hangs (a read of the shared table), idleness, and registry rows still to
        delete."""
        now = time.monotonic()
        for record in list(self.hibernation.live.values()):
            link = record.link
            if _watched(link):
                beat = self.table.read(record.slot).heartbeat
                if watchdog.is_hung(beat, record.spawned_at, now, self.settings.hang_timeout):
                    log.error("session %s (pid %d) hung for %.1fs: dumping its stack, then killing it",
                              record.session_id, link.pid, now - max(beat, record.spawned_at))
                    self.kill_hung(link)
                self.channels.note_activity(record, now)
            if (record.status is SessionStatus.ACTIVE and not (link and link.in_flight)
                    and watchdog.is_idle(record.last_activity, now, record.state.config.timeout_minutes)):
                self.change_unasked(record, SessionStatus.IDLE)  # a call being served is activity
                self.channels.tell_idle(record)
        self.hibernation.expired(now)
        self.hibernation.revive_in_line()
        self.hibernation.idle_sleepers(now)
        for session_id in list(self.unerased):
            try:
                self.registry.delete(session_id)
                self.unerased.discard(session_id)
            except StorageError:
                pass

    def check_memory(self) -> None:
        """CPU and RSS of each process into its slot (one /proc read, ``usage``); a kill past the limit."""
        limit = self.settings.memory_limit_mb
        for record in list(self.hibernation.live.values()):
            link = record.link
            if (_watched(link) and link.on_this_machine  # elsewhere, the backend's limits apply
                    and (rss := self.usage.sample(record.slot, link.pid)) and rss > limit * 1024 * 1024):
                log.error("session %s (pid %d) uses %d MiB, over memory_limit_mb=%d: killing it",
                          record.session_id, link.pid, rss // (1024 * 1024), limit)
                self.kill_process(link, "memory limit", signal.SIGKILL)
        self.usage.forget_gone(set(self.by_pid))

    def kill_hung(self, link: SessionHandle) -> None:
        """SIGUSR1 (its stack to daemon.log), then SIGTERM, then SIGKILL: the hang ladder."""
        self.kill_process(link, "hung", signal.SIGUSR1)
        self.loop.call_later(restarts.STACK_DUMP_GRACE, lambda: self.signal_process(link, signal.SIGTERM))
        self.loop.call_later(restarts.STACK_DUMP_GRACE + restarts.KILL_GRACE,
                             lambda: self.signal_process(link, signal.SIGKILL))

    def kill_process(self, link: SessionHandle, reason: str, signum: int) -> None:
        link.kill_reason = reason
        self.signal_process(link, signum)

    def signal_process(self, link: SessionHandle, signum: int) -> None:
        link.signal(signum)

    # -- stopping the daemon ------------------------------------------------------------------
    def stop_all(self, on_all_stopped: Callable[[], None]) -> None:
        """Stop every session process, keep every persisted status; call back when all are reaped."""
        self.shutting_down = True
        self.on_all_stopped = on_all_stopped
        self.backend.close()
        stopping = SessionCrashedError("the daemon is stopping")
        for record in self._awaiting_spare:
            waiter, record.create_waiter = record.create_waiter, None
            if waiter is not None:
                waiter.reply({"error": stopping.to_wire()})
        self._awaiting_spare.clear()
        for record in self.records.records():
            if record.restart_timer is not None:
                record.restart_timer.cancel()
            self.drop_waiting(record, stopping)
            if record.running:
                self.stop_process(record.running_link)
        self._check_all_stopped()

    def _check_all_stopped(self) -> None:
        if self.on_all_stopped is not None and not self.by_pid and not self.backend.live_pids:
            callback, self.on_all_stopped = self.on_all_stopped, None
            callback()


def _watched(link: SessionHandle | None) -> TypeGuard[SessionHandle]:
    """A live process that nobody is already stopping or killing."""
    return (link is not None and link.exit_status is None and not link.stopping
            and link.kill_reason is None)
