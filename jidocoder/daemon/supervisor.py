"""The supervisor: every session's record, its process, and the one place its status changes.

Lifecycle in verbs: ``create_session`` → ``spawn_session`` → (ready) → ``route`` calls →
``terminate_session`` → ``finish_session``; on a crash ``handle_exit`` → ``restart_session`` or
``give_up``. ``change_status`` is the only function that moves a session along the transition
table: it checks the edge, writes the table slot, persists, and publishes ``session_status``.

No fork is on the path of a call: a session starts in a spare process made ahead of need by
the template process (``spares``), which clones it as the daemon's own child. Reaping, exit
statuses and the parent-death signal are therefore the daemon's, as if it had forked the spare
itself. A session waiting for a spare (a burst of creates, a restore) is served in order as
spares arrive; ``spare_processes`` are kept waiting.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

from .. import wire
from ..config import Settings
from ..errors import (InvalidArgumentError, JidocoderError, LimitExceededError,
                      SessionCrashedError, SessionNotFoundError)
from ..models import SessionConfig, SessionState
from ..states import SessionStatus
from . import exits, store
from .events import EventBus, session_topic
from .link import Pending, SessionLink
from .logs import write_session_record
from .loop import Loop, Timer
from .table import SessionTable
from .spares import Spare, SparePool, serve_template
from .worker import SessionSpec, prepare_template, run_spare

log = logging.getLogger("jidocoder.daemon")

MAX_BACKOFF = 2.0  # so that max_restarts + 1 crashes always fit in the window
RESTORE_BATCH = 32  # restored sessions forked per loop turn: clients are served in between


@dataclass
class SessionRecord:
    state: SessionState
    slot: int
    link: SessionLink | None = None
    restarts: int = 0
    restart_times: deque = field(default_factory=deque)
    restart_timer: Timer | None = None
    waiting: list[tuple[str, dict, Pending]] = field(default_factory=list)
    create_waiter: Pending | None = None
    terminate_waiters: list[Pending] = field(default_factory=list)
    last_activity: float = field(default_factory=time.monotonic)
    spawned_at: float = 0.0
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


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    def __init__(self, settings: Settings, loop: Loop, bus: EventBus,
                 registry: "store.Registry") -> None:
        self.settings = settings
        self.loop = loop
        self.bus = bus
        self.registry = registry
        self.state_dir = Path(settings.state_dir)
        self.table = SessionTable(settings.max_sessions)
        self.records: dict[str, SessionRecord] = {}
        self.by_pid: dict[int, tuple[SessionRecord, SessionLink]] = {}
        self.on_all_stopped: Callable[[], None] | None = None
        self.shutting_down = False
        self._to_spawn: deque[SessionRecord] = deque()
        self._awaiting_spare: deque[SessionRecord] = deque()
        self.daemon_pid = os.getpid()
        self.debug_ops = settings.debug_ops
        self.spares = SparePool(loop, settings.spare_processes, self._run_template,
                                on_spare=self._hand_out_spares, on_failure=self._spawn_failed)

    def start_spares(self) -> None:
        """Fork the template: after the daemon's imports and ``gc.freeze()``, before any session."""
        self.spares.start()

    def _run_template(self, ctrl: socket.socket) -> NoReturn:
        """In the template, just forked: never returns."""
        warm, table = self._spec("warm-up", SessionConfig(), slot=0), self.table
        try:
            log_fd = prepare_template(ctrl, warm)
            serve_template(ctrl, lambda sock, warm_first: run_spare(sock, table, warm, log_fd, warm_first))
        finally:
            os._exit(exits.EXIT_BOOT_ERROR)

    # -- creating and restoring ---------------------------------------------------------------
    def create_session(self, metadata: Any, llm_config: Any, config: Any, pending: Pending) -> None:
        for name, value in (("metadata", metadata), ("llm_config", llm_config)):
            if value is not None and not isinstance(value, dict):
                raise InvalidArgumentError(f"{name} must be a dict or None", code="invalid_argument",
                                           field=name)
        if config is not None and not isinstance(config, dict):
            raise InvalidArgumentError("config must be a dict or None", code="invalid_config", field="config")
        session_id = f"session_{uuid.uuid4()}"
        state = SessionState.new(session_id, config=config, llm_config=llm_config, metadata=metadata)
        record = self._admit(state)
        # Persisted only when it is active: an unacknowledged session leaves nothing to restore.
        record.create_waiter = pending
        self.spawn_session(record)

    def restore_sessions(self) -> int:
        """Bring back every persisted session (finishing off half-done ones); returns how many."""
        states, damaged = self.registry.load_all()
        for session_id, reason in damaged:
            log.error("session %s not restored: registry row damaged (%s); moved to damaged/",
                      session_id, reason)
        known = set()
        for state in states:
            known.add(state.session_id)
            if state.status in (SessionStatus.ACTIVE, SessionStatus.IDLE):
                self._restore(state)
            else:
                log.info("session %s was %s when the daemon stopped: removed", state.session_id,
                         state.status.value)
                self._erase(state.session_id)
        self._sweep_orphan_files(known)
        self.loop.call_later(0, self.spawn_restored)
        return len(self.records)

    def _restore(self, state: SessionState) -> None:
        try:
            record = self._admit(state)
        except LimitExceededError:  # its data stays, for a daemon with more room
            log.error("session %s not restored: the table is full (max_sessions=%d)",
                      state.session_id, self.settings.max_sessions)
            return
        self._to_spawn.append(record)
        log.info("restoring session %s (%s)", state.session_id, state.status.value)

    def spawn_restored(self) -> None:
        """Start restored sessions a batch per loop turn: the daemon serves from its first
        moment, and a call to a session not yet started waits for it like one during a restart."""
        for _ in range(min(RESTORE_BATCH, len(self._to_spawn))):
            record = self._to_spawn.popleft()
            if self.records.get(record.session_id) is record and record.link is None and not self.shutting_down:
                self.spawn_session(record)
        if self._to_spawn:
            self.loop.call_later(0, self.spawn_restored)

    def _admit(self, state: SessionState) -> SessionRecord:
        slot = self.table.allocate()
        if slot is None:
            raise LimitExceededError(f"the daemon holds its maximum of {self.settings.max_sessions} "
                                     "sessions (setting max_sessions)", details={"limit": self.settings.max_sessions})
        record = SessionRecord(state=state, slot=slot)
        self.records[state.session_id] = record
        self._write_slot(record)
        return record

    def _sweep_orphan_files(self, known: set[str]) -> None:
        """A session db with no registry row was never acknowledged (or half-erased): remove it."""
        for path in (self.state_dir / store.SESSIONS_DIR).glob("*.db"):
            if path.stem not in known:
                store.destroy_session_files(self.state_dir, path.stem)

    # -- processes ----------------------------------------------------------------------------
    def spawn_session(self, record: SessionRecord) -> None:
        """Give the session a spare process now, or as soon as one is made (in order)."""
        self._awaiting_spare.append(record)
        self._hand_out_spares()

    def _hand_out_spares(self) -> None:
        while self._awaiting_spare:
            record = self._awaiting_spare[0]
            if self.records.get(record.session_id) is not record or self.shutting_down:
                self._awaiting_spare.popleft()  # terminated or stopping while it waited
                continue
            spare = self.spares.take()
            if spare is None:
                break
            self._awaiting_spare.popleft()
            self._start_in(record, spare)
        self.spares.top_up(wanted=len(self._awaiting_spare))

    def _start_in(self, record: SessionRecord, spare: Spare) -> None:
        incarnation = (record.link.incarnation + 1) if record.link else 1
        spec = self._spec(record.session_id, record.state.config, record.slot)
        link = SessionLink(spare.pid, spare.sock, incarnation, self.max_frame, self._want_write)
        record.link = link
        record.spawned_at = time.monotonic()
        self.by_pid[spare.pid] = (record, link)
        self.loop.watch(link, lambda: self._on_readable(record, link), link.flush)
        if link.send({"spec": spec.to_wire()}):
            self.loop.flush_soon(link)
        self._write_slot(record)

    def _spec(self, session_id: str, config: SessionConfig, slot: int) -> SessionSpec:
        return SessionSpec(session_id=session_id, config=config, slot=slot, state_dir=self.state_dir,
                           durability=self.settings.durability, cache_max_bytes=self.settings.cache_max_bytes,
                           hang_timeout=self.settings.hang_timeout, max_frame=self.max_frame,
                           daemon_pid=self.daemon_pid, log_level=logging.getLogger().level,
                           debug_ops=self.debug_ops)

    def _spawn_failed(self, reason: str) -> None:
        """The template could not make a process: the first session waiting for one fails."""
        while self._awaiting_spare:
            record = self._awaiting_spare.popleft()
            if self.records.get(record.session_id) is not record:
                continue
            if record.state.status is SessionStatus.INITIALIZING:
                waiter, record.create_waiter = record.create_waiter, None
                self._fail_creation(record, f"cannot fork: {reason}")
                if waiter is not None:
                    waiter.reply({"error": LimitExceededError(f"cannot start a session process: {reason}").to_wire()})
            else:  # counted like a crash: retried with backoff, up to the limit
                self.handle_crash(record, f"cannot fork: {reason}")
            return

    @property
    def max_frame(self) -> int:
        return wire.request_limit(self.settings.max_request_bytes)

    def _want_write(self, link: SessionLink, wanted: bool) -> None:
        if not link.eof and link.exit_status is None:
            self.loop.want_write(link, wanted)

    def _on_readable(self, record: SessionRecord, link: SessionLink) -> None:
        for frame in link.read_frames():
            self._on_frame(record, link, frame)
        if link.eof:
            self.loop.unwatch(link)
            self._reap_now(link.pid)  # a dying process closes its fds just before it becomes a
                                      # zombie: its exit is usually there already, before SIGCHLD

    def _on_frame(self, record: SessionRecord, link: SessionLink, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if "log" in frame:
            write_session_record(frame["log"], record.session_id, link.pid)
        elif "damaged" in frame:
            link.damage = str(frame["damaged"])
        elif "ready" in frame:
            self._on_ready(record, link)
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

    def _on_ready(self, record: SessionRecord, link: SessionLink) -> None:
        link.ready = True
        self._write_slot(record)
        if record.state.status is SessionStatus.INITIALIZING:
            self.bus.publish("session_created", record.session_id,
                             {"session_id": record.session_id, "metadata": record.state.metadata})
            self.change_status(record, SessionStatus.ACTIVE)
            waiter, record.create_waiter = record.create_waiter, None
            if waiter is not None:
                waiter.reply({"result": record.session_id})
        elif link.incarnation > 1:
            self.bus.publish("session_restarted", record.session_id,
                             {"session_id": record.session_id, "pid": link.pid, "restarts": record.restarts})
        waiting, record.waiting = record.waiting, []
        for op, args, pending in waiting:
            self.route(record, op, args, pending)

    # -- calls --------------------------------------------------------------------------------
    def find(self, session_id: Any, *, any_live: bool = False) -> SessionRecord:
        """The record of a session that serves calls (``any_live``: also one being created or
        terminated, for the questions ``list_sessions`` would answer about it too)."""
        if not isinstance(session_id, str):
            raise InvalidArgumentError("session_id must be a string", code="invalid_session_id",
                                       field="session_id")
        record = self.records.get(session_id)
        hidden = (SessionStatus.TERMINATED,) if any_live else (
            SessionStatus.TERMINATING, SessionStatus.TERMINATED, SessionStatus.INITIALIZING)
        if record is None or record.state.status in hidden:
            raise SessionNotFoundError(f"no session {session_id!r} (unknown or terminated)",
                                       field="session_id")
        return record

    def route(self, record: SessionRecord, op: str, args: dict, pending: Pending) -> None:
        """Send a call to the session's process, or hold it until a (re)started one serves."""
        self.touch(record)
        if not record.serving:
            record.waiting.append((op, args, pending))
            return
        if op == "get_session_pid":
            pending.reply({"result": record.link.pid})
            return
        if record.link.request(op, args, pending):
            self.loop.flush_soon(record.link)

    def touch(self, record: SessionRecord) -> None:
        record.last_activity = time.monotonic()
        self.table.write_activity(record.slot, record.last_activity)
        if record.state.status is SessionStatus.IDLE:
            self.change_status(record, SessionStatus.ACTIVE)

    def info(self, record: SessionRecord) -> dict[str, Any]:
        """A ``SessionInfo`` as sent: the state's fields, dumped once per state (the state only
        changes in ``change_status``; a list of 1,000 sessions cost 32 ms when every call
        validated and dumped each), and its process's facts from the table."""
        if record.dumped is None or record.dumped[0] is not record.state:
            record.dumped = (record.state, record.state.model_dump())
        return {**record.dumped[1], "conversation_count": self.table.read(record.slot).message_count,
                "pid": record.link.pid if record.serving else None, "restarts": record.restarts}

    def live_records(self) -> list[SessionRecord]:
        """Sessions not terminated, oldest first."""
        listed = [r for r in self.records.values() if r.state.status is not SessionStatus.TERMINATED]
        return sorted(listed, key=lambda r: r.state.created_at)

    # -- status -------------------------------------------------------------------------------
    def change_status(self, record: SessionRecord, to: SessionStatus, **changes: Any) -> None:
        previous = record.state.status
        if changes:
            record.state = record.state.update(**changes)
        record.state = record.state.transition(to)
        self.table.write_status(record.slot, to.code)
        self._persist(record)
        self.bus.publish("session_status", record.session_id, {
            "session_id": record.session_id, "status": to.value, "previous_status": previous.value,
            "updated_at": record.state.updated_at})

    def _persist(self, record: SessionRecord) -> None:
        """Store the status; a session that begins terminating loses its registry row at once.

        Deleted (and scrubbed) at ``terminating``, not ``terminated``: once asked to end, a
        session never comes back after a daemon crash (its orphan files are swept at the next
        start), and the scrub runs while the process is still exiting instead of after it. A
        stored session reaches ``terminated`` only through ``terminating``: nothing is left then.
        """
        if not record.persistent:
            return
        status = record.state.status
        if status is SessionStatus.TERMINATING:
            self.registry.delete(record.session_id)
        elif status is not SessionStatus.TERMINATED:
            self.registry.put(record.state)

    def _write_slot(self, record: SessionRecord) -> None:
        link = record.link
        self.table.write_owner(record.slot, status_code=record.state.status.code,
                               incarnation=link.incarnation if link else 0,
                               pid=link.pid if link else 0, restarts=record.restarts,
                               last_activity=record.last_activity)

    # -- terminating --------------------------------------------------------------------------
    def terminate_session(self, record: SessionRecord, pending: Pending) -> None:
        """SIGTERM first: the process's exit (its memory torn down by the kernel, the slow part)
        then overlaps with the bookkeeping here, which needs nothing from the process. The
        reaper sees the exit only after this returns, so ``terminating`` always comes first."""
        running = record.link is not None and record.link.exit_status is None
        if running:
            self.stop_process(record.link)
        self.change_status(record, SessionStatus.TERMINATING)
        record.terminate_waiters.append(pending)
        self._drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated"))
        if record.restart_timer is not None:
            record.restart_timer.cancel()
        if not running:
            self.finish_session(record, "terminated by request")

    def stop_process(self, link: SessionLink) -> None:
        """SIGTERM now, SIGKILL after the grace period; the reaper finishes the rest."""
        link.stopping = True
        self.signal_process(link, signal.SIGTERM)
        self.loop.call_later(self.settings.terminate_grace, lambda: self.signal_process(link, signal.SIGKILL))

    def finish_session(self, record: SessionRecord, reason: str) -> None:
        """The process is gone: release its resources, then say so."""
        self._drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated"))
        if record.persistent:
            store.destroy_session_files(self.state_dir, record.session_id)
        self.change_status(record, SessionStatus.TERMINATED)
        self.bus.publish("session_terminated", record.session_id,
                         {"session_id": record.session_id, "reason": reason})
        self.table.release(record.slot)
        del self.records[record.session_id]
        self.bus.forget_topic(session_topic(record.session_id))
        for waiter in record.terminate_waiters:
            waiter.reply({"result": None})
        record.terminate_waiters.clear()

    def _erase(self, session_id: str) -> None:
        store.destroy_session_files(self.state_dir, session_id)
        self.registry.delete(session_id)

    def _drop_waiting(self, record: SessionRecord, error: JidocoderError) -> None:
        waiting, record.waiting = record.waiting, []
        for _, _, pending in waiting:
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
        entry = self.by_pid.pop(pid, None)
        try:
            if entry is None:
                self.spares.handle_exit(pid)
            else:
                self.handle_exit(*entry, status)
        except Exception:  # one exit handled badly must not leave the other children unreaped
            log.exception("handling the exit of process %d failed", pid)
        if self.shutting_down:
            self._check_all_stopped()
        return True

    def handle_exit(self, record: SessionRecord, link: SessionLink, status: int) -> None:
        link.exit_status = status
        self._drain(record, link)
        self.loop.unwatch(link)
        link.close()
        reason = link.kill_reason or describe_exit(status)
        crash = SessionCrashedError(f"session {record.session_id}'s process died serving this call "
                                    f"({reason}); it may or may not have been applied")
        begun, unread = link.take_in_flight(self.table.read(record.slot).started)
        for call in begun:
            call.pending.reply({"error": crash.to_wire()})
        record.waiting[:0] = [(call.op, call.args, call.pending) for call in unread]
        if self.shutting_down:
            pass  # reap_children checks whether all are stopped
        elif record.state.status is SessionStatus.TERMINATING:
            self.finish_session(record, "terminated by request")
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == exits.EXIT_STORE_DAMAGED:
            self.give_up_damaged(record, link.damage or "the session's database cannot be read")
        else:
            self.handle_crash(record, reason)

    def _drain(self, record: SessionRecord, link: SessionLink) -> None:
        """The process is dead: everything it wrote is already in the socket; take it all."""
        while not link.eof:
            frames = link.read_frames()
            if not frames and not link.eof:
                return
            for frame in frames:
                self._on_frame(record, link, frame)

    def handle_crash(self, record: SessionRecord, reason: str) -> None:
        if record.state.status is SessionStatus.INITIALIZING:
            self._fail_creation(record, reason)
            return
        now = time.monotonic()
        while record.restart_times and now - record.restart_times[0] > self.settings.max_seconds:
            record.restart_times.popleft()
        will_restart = len(record.restart_times) < self.settings.max_restarts
        self.bus.publish("session_crashed", record.session_id, {
            "session_id": record.session_id, "reason": reason, "restarts": record.restarts,
            "will_restart": will_restart})
        log.warning("session %s crashed: %s (restarts so far %d, %s)", record.session_id, reason,
                    record.restarts, "restarting" if will_restart else "giving up")
        if not will_restart:
            self.give_up(record, reason)
            return
        delay = 0.0 if not record.restart_times else min(MAX_BACKOFF, 0.05 * 2 ** len(record.restart_times))
        record.restart_times.append(now)
        record.restart_timer = self.loop.call_later(delay, lambda: self.restart_session(record))

    def restart_session(self, record: SessionRecord) -> None:
        record.restart_timer = None
        if self.records.get(record.session_id) is not record or self.shutting_down:
            return
        record.restarts += 1
        self.spawn_session(record)

    def give_up(self, record: SessionRecord, reason: str) -> None:
        log.error("session %s restarted too often (%d in %ss): terminated, last reason %s",
                  record.session_id, self.settings.max_restarts, self.settings.max_seconds, reason)
        self.change_status(record, SessionStatus.TERMINATING, error=reason)
        self._drop_waiting(record, SessionNotFoundError(f"session {record.session_id} was terminated: {reason}"))
        self.finish_session(record, reason)

    def give_up_damaged(self, record: SessionRecord, why: str) -> None:
        path = store.session_db_path(self.state_dir, record.session_id)
        moved = store.quarantine(self.state_dir, path, why)
        log.error("session %s not restored: its store is damaged (%s); moved to %s",
                  record.session_id, why, moved)
        self.registry.delete(record.session_id)
        self._drop_waiting(record, SessionNotFoundError(f"session {record.session_id}'s store is damaged"))
        self.table.release(record.slot)
        del self.records[record.session_id]

    def _fail_creation(self, record: SessionRecord, reason: str) -> None:
        log.warning("session %s failed to start: %s", record.session_id, reason)
        waiter, record.create_waiter = record.create_waiter, None
        if waiter is not None:
            waiter.reply({"error": SessionCrashedError(f"the session's process failed to start: {reason}").to_wire()})
        if record.persistent:
            store.destroy_session_files(self.state_dir, record.session_id)
        record.state = record.state.transition(SessionStatus.TERMINATED)
        self.table.release(record.slot)
        del self.records[record.session_id]

    def signal_process(self, link: SessionLink, signum: int) -> None:
        if link.exit_status is None:
            try:
                os.kill(link.pid, signum)
            except ProcessLookupError:
                pass

    # -- stopping the daemon ------------------------------------------------------------------
    def stop_all(self, on_all_stopped: Callable[[], None]) -> None:
        """Stop every session process, keep every persisted status; call back when all are reaped."""
        self.shutting_down = True
        self.on_all_stopped = on_all_stopped
        self.spares.close()
        stopping = SessionCrashedError("the daemon is stopping")
        for record in self._awaiting_spare:
            waiter, record.create_waiter = record.create_waiter, None
            if waiter is not None:
                waiter.reply({"error": stopping.to_wire()})
        self._awaiting_spare.clear()
        for record in self.records.values():
            if record.restart_timer is not None:
                record.restart_timer.cancel()
            self._drop_waiting(record, stopping)
            if record.link is not None and record.link.exit_status is None:
                self.stop_process(record.link)
        self._check_all_stopped()

    def _check_all_stopped(self) -> None:
        if self.on_all_stopped is not None and not self.by_pid and not self.spares.live_pids:
            callback, self.on_all_stopped = self.on_all_stopped, None
            callback()
