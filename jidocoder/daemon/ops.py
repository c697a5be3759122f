"""What a session process does for each operation, and what each event means for its store.

A handler takes the ``SessionProcess`` and the call's arguments and returns ``(result,
events)``; the process persists what the events say changed before it replies (``PERSISTERS``).
``DEBUG_HANDLERS`` are test hooks, served only by a daemon started with ``--debug-ops``.
"""

from __future__ import annotations

import logging
import os
import time
import socket
from typing import Any, NoReturn, Protocol
from collections.abc import Callable

from ..context import Events, SessionContext
from ..filecache import FileCache
from .exits import StopServing


class SessionProcess(Protocol):
    """What a handler may use of the session process (``session.SessionProcess``)."""

    context: SessionContext
    cache: FileCache
    store: Any  # store.SessionStore, or None for a session with persistence disabled
    spec: Any  # session.SessionSpec
    kill_daemon_after_commit: bool  # a test hook: debug_kill_daemon_after_commit

    @property
    def sock(self) -> socket.socket: ...

log = logging.getLogger("jidocoder.session")

Handler = Callable[..., Any]
Reply = tuple[Any, Events]  # (result, events)
NO_EVENTS: Events = []


# -- the operations: each returns (result, events) ---------------------------------------------
def handle_send_message(s: SessionProcess, role: Any, content: Any) -> Reply:
    return None, s.context.add_message(role, content)


def handle_get_conversation_history(s: SessionProcess, offset: Any = 0, limit: Any = None) -> Reply:
    return [m.model_dump() for m in s.context.history(offset, limit)], NO_EVENTS


def handle_clear_conversation(s: SessionProcess) -> Reply:
    return None, s.context.clear_conversation()


def handle_add_file(s: SessionProcess, path: Any) -> Reply:
    return None, s.context.add_file(path)


def handle_remove_file(s: SessionProcess, path: Any) -> Reply:
    return None, s.context.remove_file(path)


def handle_get_active_files(s: SessionProcess) -> Reply:
    return [f.model_dump() for f in s.context.active_files()], NO_EVENTS


def handle_update_file_index(s: SessionProcess, path: Any, metadata: Any) -> Reply:
    return None, s.context.update_file_index(path, metadata)


def handle_get_file_index(s: SessionProcess) -> Reply:
    return s.context.file_index(), NO_EVENTS


def handle_build_context(s: SessionProcess, include: Any = ("conversation", "files", "file_index"),
                         max_messages: Any = None, max_files: Any = None) -> Reply:
    built = s.context.build_context(include, max_messages=max_messages, max_files=max_files)
    for key in ("conversation", "files"):
        if key in built:
            built[key] = [item.model_dump() for item in built[key]]
    return built, NO_EVENTS


def handle_cache_file(s: SessionProcess, path: Any, content: Any, metadata: Any = None) -> Reply:
    s.cache.put(path, content, metadata)
    return None, NO_EVENTS


def handle_get_file(s: SessionProcess, path: Any) -> Reply:
    cached = s.cache.get(path)
    return (cached.model_dump() if cached is not None else None), NO_EVENTS


def handle_invalidate_file(s: SessionProcess, path: Any) -> Reply:
    s.cache.invalidate(path)
    return None, NO_EVENTS


def handle_clear_session_cache(s: SessionProcess) -> Reply:
    s.cache.clear()
    return None, NO_EVENTS


HANDLERS: dict[str, Handler] = {
    name[len("handle_"):]: fn for name, fn in dict(globals()).items() if name.startswith("handle_")
}
SESSION_OPS = frozenset(HANDLERS)


# -- what each event means for the store --------------------------------------------------------
def _persist_message(s: SessionProcess, p: dict[str, Any]) -> None:
    s.store.append_message(s.context.last_message(), keep=s.spec.config.max_history)


def _persist_file_added(s: SessionProcess, p: dict[str, Any]) -> None:
    added = next(f for f in reversed(s.context.active_files()) if f.path == p["file_path"])
    s.store.add_file(added)


def _persist_index(s: SessionProcess, p: dict[str, Any]) -> None:
    s.store.put_index(p["file_path"], s.context.file_index()[p["file_path"]])


PERSISTERS: dict[str, Callable[[SessionProcess, dict[str, Any]], None]] = {
    "conversation_added": _persist_message,
    "conversation_cleared": lambda s, p: s.store.clear_messages(),
    "file_added": _persist_file_added,
    "file_removed": lambda s, p: s.store.remove_file(p["file_path"]),
    "file_index_updated": _persist_index,
}


# -- test hooks, served only when the daemon runs with debug_ops -------------------------------
def debug_exit(s: SessionProcess, code: int = 3) -> NoReturn:
    raise StopServing(int(code))


def debug_hang(s: SessionProcess, seconds: float = 3600.0) -> Reply:
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:  # busy, no heartbeat: what a stuck handler looks like
        pass
    return None, NO_EVENTS


def debug_log(s: SessionProcess, marker: str = "", count: int = 1, size: int = 100) -> Reply:
    for i in range(int(count)):
        log.info("%s %d %s", marker, i, "x" * int(size))
    return None, NO_EVENTS


def debug_allocate(s: SessionProcess, megabytes: int = 1) -> Reply:
    s.__dict__.setdefault("_ballast", []).append(bytearray(int(megabytes) * 1024 * 1024))
    return None, NO_EVENTS


def debug_pid(s: SessionProcess) -> Reply:
    return os.getpid(), NO_EVENTS


def debug_raise(s: SessionProcess, message: str = "a bug") -> NoReturn:
    raise RuntimeError(message)  # what a bug in a handler looks like


def debug_send_garbage(s: SessionProcess) -> Reply:
    """Write bytes that are no frame to the daemon: what a session that breaks framing does."""
    s.sock.sendall(b"\xff\xff\xff\xffnot a frame")
    return None, NO_EVENTS


def debug_kill_daemon_after_commit(s: SessionProcess) -> Reply:
    """The next call this session stores SIGKILLs the daemon once committed, before the reply
    leaves: a reply lost with the daemon (at-most-once resend, docs/api.md §10)."""
    s.kill_daemon_after_commit = True
    return None, NO_EVENTS


DEBUG_HANDLERS: dict[str, Handler] = {
    "debug_kill_daemon_after_commit": debug_kill_daemon_after_commit,
    "debug_exit": debug_exit, "debug_hang": debug_hang, "debug_log": debug_log,
    "debug_allocate": debug_allocate, "debug_pid": debug_pid, "debug_raise": debug_raise,
    "debug_send_garbage": debug_send_garbage,
}
