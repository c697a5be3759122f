"""The session process: one session's ContextManager loop, in a spare process made ahead of need.

A spare is made by the template (``template``) or, where that cannot be, forked by the daemon
(``spares``); either way it has been through the fork hygiene of ``process``. It warms up while
nobody waits (``run_spare``), then blocks until the daemon sends it a spec; from then on it is
that session's process, and it leaves only through ``os._exit`` with a code from ``exits``.

The loop waits on its socket with a timeout and beats a heartbeat into its table slot at every
turn. A request is handled to the end (state changed, store committed) before its reply goes
out; requests that arrive together (one read) share one commit and one write of their replies.

What a failure of the store means (docs/api.md §7): a write the state dir cannot take (disk full,
read-only, I/O error) is the caller's ``StorageError``, and nothing of the call stays: the
transaction is rolled back and the context is read back from the store, which holds exactly
what was acknowledged. The process keeps serving. A store it cannot open or read at start ends
the process with a code that tells the daemon whether to retry (``EXIT_STORE_UNAVAILABLE``),
move the file aside (``EXIT_STORE_DAMAGED``) or keep it for a newer jidocoder
(``EXIT_STORE_VERSION``); none of them is a crash.

A request carries the moment its client gives up on it (``deadline``, CLOCK_MONOTONIC, which is
system-wide): one read after that moment is refused unapplied, so a call its client no longer
waits for (queued behind a hung request, resent to a restarted process) never lands late.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from .. import wire
from ..context import Events, SessionContext
from ..errors import InvalidArgumentError, JidocoderError, RequestTimeoutError, StorageError
from ..filecache import FileCache
from ..models import SessionConfig
from . import exits
from .exits import StopServing
from .callids import NOT_FOUND, CallLog
from .calls import call_handler, internal_error, parse_request
from .logs import LOG_NAME
from .ops import DEBUG_HANDLERS, HANDLERS, PERSISTERS
from .process import dump_stack_on_sigusr1, set_parent_death_signal, set_process_name
from .serving import SessionLoop
from .table import SessionTable

log = logging.getLogger("jidocoder.session")

READ_CHUNK = wire.RECV_CHUNK
MAX_SPEC_BYTES = wire.CONTROL_FRAME_BYTES  # a spec is a few hundred bytes; also a log frame's cap
SPARE_NAME = "jido-spare"


@dataclass(frozen=True)
class SessionSpec:
    """Everything a session process needs to start, fixed at fork time."""

    session_id: str
    config: SessionConfig
    slot: int
    state_dir: Path
    durability: str
    cache_max_bytes: int
    hang_timeout: float
    max_frame: int
    daemon_pid: int
    log_level: int
    debug_ops: bool
    events_window: int = 2 * 1024 * 1024  # direct calls' events unacknowledged (pacing.py)

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__, config=self.config.model_dump(), state_dir=str(self.state_dir))

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SessionSpec:
        return cls(**dict(data, config=SessionConfig(**data["config"]), state_dir=Path(data["state_dir"])))


def run_spare(sock: socket.socket, table: SessionTable, warm: SessionSpec, log_fd: int,
              warm_first: bool) -> NoReturn:
    """A spare's life: warmed up (if it is to wait), it waits for its spec, then serves that
    session until it ends; it leaves only through ``os._exit``."""
    global _own_socket
    code, spec = exits.EXIT_BOOT_ERROR, None
    try:
        set_parent_death_signal(warm.daemon_pid)
        set_process_name(SPARE_NAME)
        _own_socket = sock  # where its log records go from now on
        if warm_first:
            warm_up(warm)
        spec = wait_for_spec(sock)
        if spec is None:
            code = exits.EXIT_OK  # the daemon no longer needs a spare
        else:
            begin_session(spec, log_fd)
            code = SessionProcess(spec, sock, table).serve()
    except StopServing as exc:
        code = exc.exit_code
        if exc.last_word:
            _last_word(sock, exc.last_word, spec)
    except BaseException as exc:  # noqa: BLE001 - the last word of a process that must exit
        try:
            log.exception("session process failed: %s", exc)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _last_word(sock: socket.socket, frame: dict[str, Any], spec: SessionSpec | None) -> None:
    try:
        send_blocking(sock, frame, spec.max_frame if spec else MAX_SPEC_BYTES)
    except BaseException:  # noqa: BLE001 - the daemon may be gone; the exit code says enough
        pass


_own_socket: socket.socket | None = None  # a spare's socket to the daemon; None in the template


def send_log_frame(frame: dict[str, Any]) -> None:
    if _own_socket is not None:  # the template has nobody to tell
        send_blocking(_own_socket, frame, MAX_SPEC_BYTES)


def warm_up(warm: SessionSpec) -> None:
    """Pay the copy-on-write page faults of a session start now, while nobody waits for it:
    build a throwaway session from ``warm`` and serve it one request, writing nothing. Without
    this, turning a spare into a session took 1.6 ms, almost all of it first touches."""
    table = SessionTable(1)
    try:
        process = SessionProcess(SessionSpec.from_wire(warm.to_wire()), None, table, store=None)
        process.encode_reply({"ready": {"message_count": 0}})
        process.encode_reply(process.handle({"id": 0, "op": "send_message",
                                             "args": {"role": "user", "content": "x"}}))
    finally:
        table.close()


def wait_for_spec(sock: socket.socket) -> SessionSpec | None:
    decoder = wire.FrameDecoder(MAX_SPEC_BYTES)
    while True:
        data = sock.recv(READ_CHUNK)
        if not data:
            return None
        frames = decoder.feed(data)
        if frames:  # the daemon sends the spec alone, before any request
            spec_frame = cast(dict[str, Any], frames[0])  # {"spec": ...}, from our own daemon
            return SessionSpec.from_wire(spec_frame["spec"])


def begin_session(spec: SessionSpec, log_fd: int) -> None:
    set_process_name(f"jido-{spec.session_id[8:16] or spec.session_id[:8]}")
    logging.getLogger().setLevel(spec.log_level)
    try:
        rotated = os.stat(spec.state_dir / LOG_NAME).st_ino != os.fstat(log_fd).st_ino
    except OSError:
        rotated = True
    if rotated:  # since the spare opened it: dump stacks into the file people will read
        os.close(log_fd)
        dump_stack_on_sigusr1(spec.state_dir)


def send_blocking(sock: socket.socket, frame: dict[str, Any], max_frame: int) -> None:
    sock.sendall(wire.pack_frame(frame, max_frame))


_UNSET: Any = object()


class SessionProcess:
    """The ContextManager loop around one ``SessionContext``, its cache and its store."""

    def __init__(self, spec: SessionSpec, sock: socket.socket | None, table: SessionTable,
                 store: Any = _UNSET) -> None:
        self.spec = spec
        self._sock = sock
        self.table = table
        self.cache = FileCache(spec.cache_max_bytes)
        self.store = open_store(spec) if store is _UNSET else store
        self.context = load_context(spec, self.store)
        self.beat_interval = min(1.0, spec.hang_timeout / 4)
        self.grouping = False  # inside serve_together: a failed write fails the whole group
        self.handlers = {**HANDLERS, **(DEBUG_HANDLERS if spec.debug_ops else {})}
        self.calls = CallLog(self.store)
        self.kill_daemon_after_commit = False  # ops.debug_kill_daemon_after_commit
        self.begun = 0  # requests begun by this process: ``jidocoder top``'s calls/s

    @property
    def sock(self) -> socket.socket:
        """The daemon's end; only warm_up's throwaway process has none, and it never sends."""
        assert self._sock is not None, "a session process without a socket cannot send"
        return self._sock

    def serve(self) -> int:
        table, slot = self.table, self.spec.slot
        table.beat(slot)
        self.publish_counters()
        self.send({"ready": {"message_count": self.context.message_count}})
        # The socket's own receive timeout (SO_RCVTIMEO) keeps the heartbeat beating while a
        # wake waits for the daemon; the loop itself waits in poll (serving.py).
        wire.set_receive_timeout(self.sock, self.beat_interval)
        return SessionLoop(self).run()

    def close_store(self) -> None:
        """Leave cleanly: every write was committed before its reply, so this only folds the
        WAL into the file (SQLite does so on the last close). A failure loses nothing: the
        next open reads the WAL."""
        if self.store is not None:
            try:
                self.store.close()
            except Exception as exc:  # noqa: BLE001 - leaving anyway
                log.warning("closing the store on the way out failed: %s", exc)

    def without_cancelled(self, frames: list[Any]) -> list[Any]:
        """The requests to serve: the daemon's ``{"cancel": [ids]}`` frames (their clients
        closed) taken out, and each request they name answered, never begun."""
        cancelled = {i for frame in frames if type(frame) is dict and "cancel" in frame
                     for i in _ids(frame["cancel"])}
        if not cancelled:
            return [frame for frame in frames if not (type(frame) is dict and "cancel" in frame)]
        served = []
        for frame in frames:
            if type(frame) is dict and "cancel" in frame:
                continue
            request_id = frame.get("id") if type(frame) is dict else None
            if request_id in cancelled:
                self.send({"id": request_id, "error": RequestTimeoutError(
                    "its client closed before its session began it: not applied").to_wire()})
            else:
                served.append(frame)
        return served

    def serve_together(self, frames: list[Any], send: bool = True) -> list[dict[str, Any]]:
        """Requests that arrived together: handled in order, their writes committed once and
        their replies sent in one write, all after the last is handled. A request that stops
        the process lets those before it finish first (committed and answered; a channel's
        are lost with it: its client asks the daemon which were begun). If the shared
        commit fails, nothing of the group stays, and each is served again alone, so that one
        the store can take is not refused for another's sake."""
        store, stop = self.store, None
        replies = []
        if store is not None:
            store.begin_group()
            self.grouping = True
        try:
            for frame in frames:
                self.table.beat(self.spec.slot)
                self.mark_started(frame)
                replies.append(self.handle(frame))
        except StopServing as exc:
            stop = exc
        self.grouping = False
        if store is not None and not self.end_group(stop):
            replies = [self.handle(frame) for frame in frames[:len(replies)]]
        if send:  # relayed calls: the replies on the link; a channel's: the caller sends them
            self.sock.sendall(b"".join(self.encode_reply(reply) for reply in replies))
        if stop is not None:
            raise stop
        return replies

    def end_group(self, stop: StopServing | None) -> bool:
        """Commit the group; False (context read back as stored) if it could not be."""
        try:
            self.store.end_group()
            self.calls.committed()
            return True
        except Exception as exc:
            self.calls.rolled_back()
            if stop is not None:
                raise stop from exc
            self.roll_back(exc)
            return False

    def mark_started(self, frame: Any) -> None:
        """The request's id in the table before any of its effects: after a crash, the daemon
        knows it was begun."""
        if isinstance(frame, dict) and isinstance(frame.get("id"), int):
            self.begun += 1
            self.table.write_started(self.spec.slot, frame["id"], self.begun)

    def mark_done(self) -> None:
        """Every call begun was answered: ``started`` back to 0, so the daemon sees the process
        between calls (it may hibernate it) and, after a crash, that none was begun."""
        self.table.write_started(self.spec.slot, 0, self.begun)

    def handle(self, frame: Any) -> dict[str, Any]:
        if type(frame) is wire.Refused:  # over its decoding budget (wire.decode_bounded)
            return frame.reply()
        request_id = frame.get("id") if isinstance(frame, dict) else None
        try:
            op, args = parse_request(frame)
            check_deadline(frame, op)
            handler = self.handlers.get(op)
            if handler is None:
                raise InvalidArgumentError(f"unknown operation {op!r}", code="unknown_op", field="op")
            args.pop("session_id", None)
            call_id = args.pop("call_id", None)
            earlier = self.calls.earlier_result(call_id)
            if earlier is not NOT_FOUND:  # resent after a lost reply: answered, not applied
                return {"id": request_id, "result": earlier, "events": []}
            result, events = call_handler(handler, op, self, **args)
            self.persist(events, call_id, result)
            if events and self.kill_daemon_after_commit and not self.grouping:  # a test hook
                os.kill(self.spec.daemon_pid, signal.SIGKILL)
        except JidocoderError as exc:
            return {"id": request_id, "error": exc.to_wire()}
        except StopServing:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: answer, log, keep serving
            return {"id": request_id, "error": internal_error(log, frame.get("op"), exc)}
        self.publish_counters()
        return {"id": request_id, "result": result, "events": events}

    def persist(self, events: Events, call_id: Any = None, result: Any = None) -> None:
        """Write what the events say changed, and the call's id with its result in the same
        transaction (callids.py), before the reply goes out. A write that fails leaves nothing
        behind: not in the store (rolled back) nor in memory (read back)."""
        if not events:
            return
        try:
            with self.calls.recording(call_id, result, grouping=self.grouping):
                if self.store is not None:
                    for kind, payload in events:
                        PERSISTERS[kind](self, payload)
        except Exception as exc:
            if self.store is None:
                raise
            if self.grouping:
                raise StorageError(f"the store could not take the write: {exc}") from exc
            raise self.roll_back(exc) from exc

    def roll_back(self, cause: BaseException) -> StorageError:
        """After a failed write: the context as stored, or the process ends if the store can no
        longer even be read (its successor starts from the store)."""
        if _is_damage(cause):
            raise StopServing(exits.EXIT_STORE_DAMAGED, {"damaged": str(cause)}) from cause
        log.error("a write to the store failed, nothing of it kept: %s", cause)
        try:
            self.context = load_context(self.spec, self.store)
        except StopServing:
            raise
        except Exception as exc:
            raise StopServing(exits.EXIT_STORE_UNAVAILABLE) from exc
        self.publish_counters()
        return as_storage_error(cause)

    def publish_counters(self) -> None:
        self.table.write_counts(self.spec.slot, self.context.message_count, self.context.file_count)

    def send(self, frame: dict[str, Any]) -> None:
        self.sock.sendall(self.encode_reply(frame))

    def encode_reply(self, frame: dict[str, Any]) -> bytes:
        """A result goes encoded on its own (``"packed"``), for the daemon to forward without
        decoding it; a reply has no size limit but the frame header's."""
        try:
            if "result" not in frame:
                return wire.pack_frame(frame, wire.MAX_FRAME)
            envelope = frame.copy()
            return wire.pack_reply(envelope, envelope.pop("result"))
        except JidocoderError as exc:  # over 4 GiB, or not encodable: say so instead
            return wire.pack_frame({"id": frame.get("id"), "error": exc.to_wire()}, wire.MAX_FRAME)


def _ids(value: Any) -> list[int]:
    return [i for i in value if type(i) is int] if type(value) is list else []


def check_deadline(frame: dict[str, Any], op: str) -> None:
    """Refuse, unapplied, a call its client has already given up on."""
    deadline = frame.get("deadline")
    if isinstance(deadline, (int, float)) and time.monotonic() > deadline:
        raise RequestTimeoutError(f"{op} reached its session after its client had given up: "
                                  "not applied", details={"op": op})


def as_storage_error(cause: BaseException) -> StorageError:
    if isinstance(cause, StorageError):
        return cause
    return StorageError(f"the state dir cannot take the write ({type(cause).__name__}: {cause}); "
                        "nothing of this call was applied")


def _is_damage(exc: BaseException) -> bool:
    return isinstance(exc, JidocoderError) and exc.code == "store_damaged"


def open_store(spec: SessionSpec) -> Any:
    """The session's store; lazy, so that a new session creates no file before its first write."""
    if not spec.config.persistence_enabled:
        return None
    from .store import SessionStore
    try:
        return SessionStore(spec.state_dir, spec.session_id, spec.durability, lazy=True)
    except Exception as exc:
        raise boot_failure(exc) from exc


def load_context(spec: SessionSpec, store: Any) -> SessionContext:
    if store is None:
        return SessionContext(spec.session_id, spec.config)
    try:
        messages, files, index = store.load()
    except Exception as exc:
        raise boot_failure(exc) from exc
    return SessionContext.restore(spec.session_id, spec.config, messages, files, index)


def boot_failure(exc: BaseException) -> StopServing:
    """How a store that cannot be opened or read ends the process: the exit code tells the
    daemon what to do (see ``restarts``), the last word why."""
    code = exc.code if isinstance(exc, JidocoderError) else ""
    why = str(exc) or type(exc).__name__
    if code == "store_damaged":
        return StopServing(exits.EXIT_STORE_DAMAGED, {"damaged": why})
    if code == "store_version":
        return StopServing(exits.EXIT_STORE_VERSION, {"store_failed": why})
    if isinstance(exc, (JidocoderError, sqlite3.Error, OSError)):
        return StopServing(exits.EXIT_STORE_UNAVAILABLE, {"store_failed": why})
    raise exc
