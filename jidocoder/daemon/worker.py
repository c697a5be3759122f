"""The session process: one session's ContextManager loop, in a spare process made ahead of need.

The template process (``spares``) is forked from the daemon once and prepared once
(``prepare_template``); it clones spares as the daemon's children. A spare prepares and warms
itself up while nobody waits (``run_spare``), then blocks until the daemon sends it a spec; from
then on it is that session's process.

Fork hygiene, each point seen to break a naive version (the template does the ones marked
"template", once, and every spare inherits them):
- every inherited descriptor is closed but the session's own socket: another session's socket
  or a client's connection held open here would hide that peer's EOF from the daemon;
- template: default signal handlers come back and ``set_wakeup_fd(-1)``: an inherited wakeup
  fd made a session's SIGTERM look like the daemon's own; SIGINT is ignored, since a terminal's
  ^C is for the daemon, which then stops its sessions itself;
- ``PR_SET_PDEATHSIG`` (then ``getppid()`` checked, the parent may already be gone) and EOF on
  the socket both end the process when the daemon dies, so a restarted daemon never finds two
  processes for one session (a spare's parent is the daemon, not the template: ``CLONE_PARENT``);
- the daemon's sqlite connection is never touched here; the session opens its own store;
- template: ``gc.freeze()``, so no collector ever writes to the pages shared with the daemon;
- the process leaves only through ``os._exit`` with a code from ``exits``.

The loop waits on its socket with a timeout and beats a heartbeat into its table slot at every
turn; a request is handled to the end (state changed, store committed) before its reply goes out.
Requests that arrive together (one read) share one commit and one write of their replies.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import logging
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from .. import wire
from ..context import SessionContext
from ..errors import InvalidArgumentError, JidocoderError
from ..filecache import FileCache
from ..models import SessionConfig
from . import exits
from .logs import LOG_NAME, install_session_logging
from .table import SessionTable

log = logging.getLogger("jidocoder.session")

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved once in the daemon, inherited by every child
READ_CHUNK = wire.RECV_CHUNK
MAX_SPEC_BYTES = wire.CONTROL_FRAME_BYTES  # a spec is a few hundred bytes; also a log frame's cap
TEMPLATE_NAME = "jido-template"
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


    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__, config=self.config.model_dump(), state_dir=str(self.state_dir))

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "SessionSpec":
        return cls(**dict(data, config=SessionConfig(**data["config"]), state_dir=Path(data["state_dir"])))


def prepare_template(ctrl: socket.socket, warm: "SessionSpec") -> int:
    """In the template, once, what every spare would otherwise do after each clone; the spares
    inherit it all. Returns the fd stacks are dumped to. ``warm`` is a throwaway spec with the
    daemon's settings."""
    reset_signals()
    set_parent_death_signal(warm.daemon_pid)
    close_inherited_fds(keep=ctrl.fileno())
    set_process_name(TEMPLATE_NAME)
    install_session_logging(send_log_frame, warm.log_level)
    log_fd = dump_stack_on_sigusr1(warm.state_dir)
    warm_up(warm)  # here once, so that lazily built state exists before the spares copy it
    gc.freeze()
    return log_fd


def run_spare(sock: socket.socket, table: SessionTable, warm: "SessionSpec", log_fd: int,
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
    except BaseException as exc:  # noqa: BLE001 - the last word of a process that must exit
        code = getattr(exc, "exit_code", code)
        try:
            if getattr(exc, "last_word", None):
                send_blocking(sock, exc.last_word, spec.max_frame if spec else MAX_SPEC_BYTES)
            else:
                log.exception("session process failed: %s", exc)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


_own_socket: socket.socket | None = None  # a spare's socket to the daemon; None in the template


def send_log_frame(frame: dict[str, Any]) -> None:
    if _own_socket is not None:  # the template has nobody to tell
        send_blocking(_own_socket, frame, MAX_SPEC_BYTES)


def warm_up(warm: "SessionSpec") -> None:
    """Pay the copy-on-write page faults of a session start now, while nobody waits for it:
    build a throwaway session from ``warm`` and serve it one request, writing nothing. Without
    this, turning a spare into a session took 1.6 ms, almost all of it first touches."""
    table = SessionTable(1)
    try:
        process = SessionProcess(SessionSpec.from_wire(warm.to_wire()), None, table)
        process.store = None  # lazy: no file was made, and none will be
        process.encode_reply({"ready": {"message_count": 0}})
        process.encode_reply(process.handle({"id": 0, "op": "send_message",
                                             "args": {"role": "user", "content": "x"}}))
    finally:
        table.close()


def wait_for_spec(sock: socket.socket) -> "SessionSpec | None":
    decoder = wire.FrameDecoder(MAX_SPEC_BYTES)
    while True:
        data = sock.recv(READ_CHUNK)
        if not data:
            return None
        frames = decoder.feed(data)
        if frames:  # the daemon sends the spec alone, before any request
            return SessionSpec.from_wire(frames[0]["spec"])


def reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def set_parent_death_signal(daemon_pid: int) -> None:
    PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before prctl took effect
        os._exit(exits.EXIT_OK)


def set_process_name(name: str) -> None:
    PRCTL(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def close_inherited_fds(keep: int) -> None:
    """Close every fd above stderr except ``keep`` (close_range(2) under the hood: cheap)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def dump_stack_on_sigusr1(state_dir: Path) -> int:
    """The daemon sends SIGUSR1 before killing a hung session: the stack goes to daemon.log."""
    fd = os.open(state_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    faulthandler.register(signal.SIGUSR1, file=fd, all_threads=True, chain=False)
    return fd


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """A blocking ``recv`` on ``sock`` raises ``BlockingIOError`` after ``seconds`` idle."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def send_blocking(sock: socket.socket, frame: dict[str, Any], max_frame: int) -> None:
    sock.sendall(wire.pack_frame(frame, max_frame))


class StopServing(Exception):
    """Leave the loop with ``exit_code``; ``last_word`` is sent to the daemon first, if any."""

    def __init__(self, exit_code: int, last_word: dict[str, Any] | None = None) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code
        self.last_word = last_word


class SessionProcess:
    """The ContextManager loop around one ``SessionContext``, its cache and its store."""

    def __init__(self, spec: SessionSpec, sock: socket.socket, table: SessionTable) -> None:
        self.spec = spec
        self.sock = sock
        self.table = table
        self.cache = FileCache(spec.cache_max_bytes)
        self.store = open_store(spec)
        self.context = load_context(spec, self.store)
        self.beat_interval = min(1.0, spec.hang_timeout / 4)

    def serve(self) -> int:
        table, slot = self.table, self.spec.slot
        table.beat(slot)
        self.publish_counters()
        self.send({"ready": {"message_count": self.context.message_count}})
        decoder = wire.FrameDecoder(self.spec.max_frame, untrusted=True)  # a client's request
        # The socket's own receive timeout (SO_RCVTIMEO) is the heartbeat's clock: waiting in
        # recv itself costs one syscall per request where a selector cost two, plus its Python.
        set_receive_timeout(self.sock, self.beat_interval)
        recv = self.sock.recv
        while True:
            table.beat(slot)
            try:
                data = recv(READ_CHUNK)
            except BlockingIOError:  # the timeout: nothing came, beat and wait again
                continue
            if not data:
                return exits.EXIT_OK  # the daemon is gone: nothing left to serve
            try:
                frames = decoder.feed(data)
            except JidocoderError:
                return exits.EXIT_PROTOCOL
            if len(frames) == 1:
                self.mark_started(frames[0])
                self.send(self.handle(frames[0]))
            elif frames:
                self.serve_together(frames)

    def serve_together(self, frames: list[Any]) -> None:
        """Requests that arrived together: handled in order, their writes committed once and
        their replies sent in one write, all after the last is handled. A request that stops
        the process lets those before it finish first (committed and answered)."""
        store, stop = self.store, None
        replies = []
        if store is not None:
            store.begin_group()
        try:
            for frame in frames:
                self.table.beat(self.spec.slot)
                self.mark_started(frame)
                replies.append(self.handle(frame))
        except StopServing as exc:
            stop = exc
        if store is not None:
            try:
                store.end_group()
            except Exception as exc:  # a write or the commit failed: nothing of the group is
                if stop is None:      # stored, so no reply may say it is
                    log.exception("store write failed")
                raise stop or StopServing(exits.EXIT_STORE_FAILED) from exc
        self.sock.sendall(b"".join(self.encode_reply(reply) for reply in replies))
        if stop is not None:
            raise stop

    def mark_started(self, frame: Any) -> None:
        """The request's id in the table before any of its effects: after a crash, the daemon
        knows it was begun."""
        if isinstance(frame, dict) and isinstance(frame.get("id"), int):
            self.table.write_started(self.spec.slot, frame["id"])

    def handle(self, frame: Any) -> dict[str, Any]:
        if type(frame) is wire.Refused:  # over its decoding budget (wire.decode_bounded)
            return frame.reply()
        request_id = frame.get("id") if isinstance(frame, dict) else None
        try:
            op, args = parse_request(frame)
            handler = HANDLERS.get(op) or (DEBUG_HANDLERS.get(op) if self.spec.debug_ops else None)
            if handler is None:
                raise InvalidArgumentError(f"unknown operation {op!r}", code="unknown_op", field="op")
            result, events = call_handler(handler, self, args)
        except JidocoderError as exc:
            return {"id": request_id, "error": exc.to_wire()}
        except StopServing:
            raise
        except Exception as exc:  # a bug in a handler: answer, log, keep serving
            log.exception("request %s failed", frame.get("op") if isinstance(frame, dict) else "?")
            return {"id": request_id, "error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}
        self.persist(events)
        self.publish_counters()
        return {"id": request_id, "result": result, "events": events}

    def persist(self, events: list[tuple[str, dict]]) -> None:
        """Write what the events say changed, before the reply goes out. A failed write leaves
        memory ahead of the store: exiting is how the process gets back to the stored state."""
        if self.store is None:
            return
        try:
            for kind, payload in events:
                PERSISTERS[kind](self, payload)
        except Exception as exc:
            log.exception("store write failed")
            raise StopServing(exits.EXIT_STORE_FAILED) from exc

    def publish_counters(self) -> None:
        self.table.write_message_count(self.spec.slot, self.context.message_count)

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


def open_store(spec: SessionSpec):
    """The session's store; lazy, so that a new session creates no file before its first write."""
    if not spec.config.persistence_enabled:
        return None
    from .store import DamagedStoreError, SessionStore
    try:
        return SessionStore(spec.state_dir, spec.session_id, spec.durability, lazy=True)
    except DamagedStoreError as exc:
        raise StopServing(exits.EXIT_STORE_DAMAGED, {"damaged": exc.message}) from exc


def load_context(spec: SessionSpec, store) -> SessionContext:
    if store is None:
        return SessionContext(spec.session_id, spec.config)
    from .store import DamagedStoreError
    try:
        messages, files, index = store.load()
    except DamagedStoreError as exc:
        raise StopServing(exits.EXIT_STORE_DAMAGED, {"damaged": exc.message}) from exc
    return SessionContext.restore(spec.session_id, spec.config, messages, files, index)


def parse_request(frame: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
        raise InvalidArgumentError("a request needs an 'op' string", code="invalid_request")
    args = frame.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise InvalidArgumentError("'args' must be a mapping of names", code="invalid_request", field="args")
    return frame["op"], args


def call_handler(handler: Callable[..., Any], session: SessionProcess, args: dict[str, Any]):
    args = {k: v for k, v in args.items() if k != "session_id"}
    try:
        return handler(session, **args)
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:  # the call itself
            raise InvalidArgumentError(f"bad arguments: {exc}", code="invalid_argument") from None
        raise


# -- the operations: each returns (result, events) ---------------------------------------------
NO_EVENTS: list = []


def handle_send_message(s: SessionProcess, role: Any, content: Any):
    return None, s.context.add_message(role, content)


def handle_get_conversation_history(s: SessionProcess, offset: Any = 0, limit: Any = None):
    return [m.model_dump() for m in s.context.history(offset, limit)], NO_EVENTS


def handle_clear_conversation(s: SessionProcess):
    return None, s.context.clear_conversation()


def handle_add_file(s: SessionProcess, path: Any):
    return None, s.context.add_file(path)


def handle_remove_file(s: SessionProcess, path: Any):
    return None, s.context.remove_file(path)


def handle_get_active_files(s: SessionProcess):
    return [f.model_dump() for f in s.context.active_files()], NO_EVENTS


def handle_update_file_index(s: SessionProcess, path: Any, metadata: Any):
    return None, s.context.update_file_index(path, metadata)


def handle_get_file_index(s: SessionProcess):
    return s.context.file_index(), NO_EVENTS


def handle_build_context(s: SessionProcess, include: Any = ("conversation", "files", "file_index"),
                         max_messages: Any = None, max_files: Any = None):
    built = s.context.build_context(include, max_messages=max_messages, max_files=max_files)
    for key in ("conversation", "files"):
        if key in built:
            built[key] = [item.model_dump() for item in built[key]]
    return built, NO_EVENTS


def handle_cache_file(s: SessionProcess, path: Any, content: Any, metadata: Any = None):
    s.cache.put(path, content, metadata)
    return None, NO_EVENTS


def handle_get_file(s: SessionProcess, path: Any):
    cached = s.cache.get(path)
    return (cached.model_dump() if cached is not None else None), NO_EVENTS


def handle_invalidate_file(s: SessionProcess, path: Any):
    s.cache.invalidate(path)
    return None, NO_EVENTS


def handle_clear_session_cache(s: SessionProcess):
    s.cache.clear()
    return None, NO_EVENTS


HANDLERS: dict[str, Callable[..., Any]] = {
    name[len("handle_"):]: fn for name, fn in dict(globals()).items() if name.startswith("handle_")
}
SESSION_OPS = frozenset(HANDLERS)


# -- what each event means for the store --------------------------------------------------------
def _persist_message(s: SessionProcess, p: dict) -> None:
    s.store.append_message(s.context.last_message(), keep=s.spec.config.max_history)


def _persist_file_added(s: SessionProcess, p: dict) -> None:
    added = next(f for f in reversed(s.context.active_files()) if f.path == p["file_path"])
    s.store.add_file(added)


def _persist_index(s: SessionProcess, p: dict) -> None:
    s.store.put_index(p["file_path"], s.context.file_index()[p["file_path"]])


PERSISTERS: dict[str, Callable[[SessionProcess, dict], None]] = {
    "conversation_added": _persist_message,
    "conversation_cleared": lambda s, p: s.store.clear_messages(),
    "file_added": _persist_file_added,
    "file_removed": lambda s, p: s.store.remove_file(p["file_path"]),
    "file_index_updated": _persist_index,
}


# -- test hooks, served only when the daemon runs with debug_ops -------------------------------
def debug_exit(s: SessionProcess, code: int = 3):
    raise StopServing(int(code))


def debug_hang(s: SessionProcess, seconds: float = 3600.0):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:  # busy, no heartbeat: what a stuck handler looks like
        pass
    return None, NO_EVENTS


def debug_log(s: SessionProcess, marker: str = "", count: int = 1, size: int = 100):
    for i in range(int(count)):
        log.info("%s %d %s", marker, i, "x" * int(size))
    return None, NO_EVENTS


def debug_allocate(s: SessionProcess, megabytes: int = 1):
    s.__dict__.setdefault("_ballast", []).append(bytearray(int(megabytes) * 1024 * 1024))
    return None, NO_EVENTS


def debug_pid(s: SessionProcess):
    return os.getpid(), NO_EVENTS


def debug_raise(s: SessionProcess, message: str = "a bug"):
    raise RuntimeError(message)  # what a bug in a handler looks like


DEBUG_HANDLERS: dict[str, Callable[..., Any]] = {
    "debug_exit": debug_exit, "debug_hang": debug_hang, "debug_log": debug_log,
    "debug_allocate": debug_allocate, "debug_pid": debug_pid, "debug_raise": debug_raise,
}
