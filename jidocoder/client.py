"""``Client``: the public, thread-safe handle on a running jidocoder daemon.

Each method is one request (docs/protocol.md, docs/api.md) whose result comes back as a model. The
connection under it (one socket for replies and events, read by whichever thread needs a frame,
and a drain thread only once the client subscribes) is ``Connection``, in ``_connection.py``,
and its mixin ``Reader``, in ``_reader.py``, whose docstrings explain the design and the hazards
they guard against.

This module never imports ``jidocoder.daemon``: a client process must stay small and free of
the daemon's threads and state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from ._connection import DEFAULT_MAX_REQUEST_BYTES, Connection
from ._reader import DRAIN_THREAD_NAME, to_model
from .config import default_socket_path
from .errors import ProtocolError, RequestTimeoutError
from .models import ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo

__all__ = ["Client", "DEFAULT_MAX_REQUEST_BYTES", "DRAIN_THREAD_NAME"]


class Client(Connection):
    """A connection to the jidocoder daemon; safe to share between threads (docs/api.md §2)."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0,
                 event_buffer: int = 10_000) -> None:
        super().__init__(socket_path if socket_path is not None else default_socket_path(),
                         timeout, event_buffer)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Client socket={self.socket_path!r} daemon_pid={self.daemon_pid} "
                f"{self._state()}>")

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, *, metadata: dict[str, Any] | None = None,
                       llm_config: dict[str, Any] | None = None,
                       config: dict[str, Any] | SessionConfig | None = None) -> str:
        if isinstance(config, SessionConfig):
            config = config.model_dump()
        session_id: str = self._call(
            "create_session", {"metadata": metadata, "llm_config": llm_config, "config": config})
        return session_id

    def terminate_session(self, session_id: str) -> None:
        self._call("terminate_session", {"session_id": session_id})

    def list_sessions(self, *, offset: int = 0, limit: int | None = None) -> list[SessionInfo]:
        """Sessions not terminated, oldest first: ``[offset : offset + limit]`` of them."""
        result = self._call("list_sessions", {"offset": offset, "limit": limit})
        return [to_model(SessionInfo, item) for item in result]

    def get_session_info(self, session_id: str) -> SessionInfo:
        return to_model(SessionInfo, self._call("get_session_info", {"session_id": session_id}))

    def get_session_pid(self, session_id: str) -> int:
        pid: int = self._call("get_session_pid", {"session_id": session_id})
        return pid

    def list_failed_sessions(self) -> list[SessionInfo]:
        """Sessions given up after crashes, their data kept; ``error`` says why (docs/api.md §7)."""
        return [to_model(SessionInfo, item) for item in self._call("list_failed_sessions", {})]

    def recover_session(self, session_id: str) -> None:
        """Bring a failed session back, as on create, with all its stored data."""
        self._call("recover_session", {"session_id": session_id})

    # -- conversation ------------------------------------------------------------------------

    def send_message(self, session_id: str, role: str, content: str) -> None:
        self._call("send_message", {"session_id": session_id, "role": role, "content": content})

    def get_conversation_history(self, session_id: str, *, offset: int = 0,
                                 limit: int | None = None) -> list[Message]:
        """The messages held, oldest first: ``[offset : offset + limit]`` of them."""
        result = self._call("get_conversation_history",
                            {"session_id": session_id, "offset": offset, "limit": limit})
        return [to_model(Message, item) for item in result]

    def clear_conversation(self, session_id: str) -> None:
        self._call("clear_conversation", {"session_id": session_id})

    # -- active files and file index ---------------------------------------------------------

    def add_file(self, session_id: str, path: str) -> None:
        self._call("add_file", {"session_id": session_id, "path": path})

    def remove_file(self, session_id: str, path: str) -> None:
        self._call("remove_file", {"session_id": session_id, "path": path})

    def get_active_files(self, session_id: str) -> list[ActiveFile]:
        result = self._call("get_active_files", {"session_id": session_id})
        return [to_model(ActiveFile, item) for item in result]

    def update_file_index(self, session_id: str, path: str, metadata: dict[str, Any]) -> None:
        self._call("update_file_index",
                   {"session_id": session_id, "path": path, "metadata": metadata})

    def get_file_index(self, session_id: str) -> dict[str, dict[str, Any]]:
        index: dict[str, dict[str, Any]] = self._call("get_file_index", {"session_id": session_id})
        return index

    # -- context -----------------------------------------------------------------------------

    def build_context(self, session_id: str,
                      include: Iterable[str] = ("conversation", "files", "file_index"), *,
                      max_messages: int | None = None,
                      max_files: int | None = None) -> dict[str, Any]:
        result = self._call("build_context", {
            "session_id": session_id, "include": _as_list(include),
            "max_messages": max_messages, "max_files": max_files})
        if not isinstance(result, dict):
            raise ProtocolError(f"the daemon answered build_context with a {type(result).__name__}")
        if isinstance(result.get("conversation"), list):
            result["conversation"] = [to_model(Message, m) for m in result["conversation"]]
        if isinstance(result.get("files"), list):
            result["files"] = [to_model(ActiveFile, f) for f in result["files"]]
        return result

    # -- file cache --------------------------------------------------------------------------

    def cache_file(self, session_id: str, path: str, content: str | bytes,
                   metadata: dict[str, Any] | None = None) -> None:
        self._call("cache_file", {"session_id": session_id, "path": path, "content": content,
                                  "metadata": metadata})

    def get_file(self, session_id: str, path: str) -> CachedFile | None:
        result = self._call("get_file", {"session_id": session_id, "path": path})
        return None if result is None else to_model(CachedFile, result)

    def invalidate_file(self, session_id: str, path: str) -> None:
        self._call("invalidate_file", {"session_id": session_id, "path": path})

    def clear_session_cache(self, session_id: str) -> None:
        self._call("clear_session_cache", {"session_id": session_id})

    # -- events ------------------------------------------------------------------------------

    def subscribe_to_session(self, session_id: str) -> None:
        self._call("subscribe_to_session", {"session_id": session_id})
        self._start_drain()

    def unsubscribe_from_session(self, session_id: str) -> None:
        self._call("unsubscribe_from_session", {"session_id": session_id})

    def subscribe_to_all_sessions(self) -> None:
        self._call("subscribe_to_all_sessions", {})
        self._start_drain()

    def unsubscribe_from_all_sessions(self) -> None:
        self._call("unsubscribe_from_all_sessions", {})

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` s (forever if None) and reading the socket
        itself if no other thread does; None on timeout. Once the connection has ended and
        the buffered events are drained, DaemonUnavailableError."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        return self._take_event(deadline)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until ``timeout`` s pass with none (forever if None)."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    # -- daemon (used by the CLI) ------------------------------------------------------------

    def daemon_status(self) -> dict[str, Any]:
        """``{pid, socket, state_dir, uptime_s, sessions}`` of the daemon."""
        status: dict[str, Any] = self._call("daemon_status", {})
        return status

    def shutdown(self) -> None:
        """Ask the daemon to stop; returns once it has closed this connection (within timeout)."""
        self._call("shutdown", {})
        if self._await_end(time.monotonic() + self.timeout):  # events in flight are buffered
            return
        raise RequestTimeoutError(
            f"the daemon accepted shutdown but had not closed the connection within "
            f"{self.timeout:g} s", details={"op": "shutdown", "timeout": self.timeout})


def _as_list(include: Any) -> Any:
    """``include`` as a list; a bare string or a non-iterable goes as it is, for the daemon to
    refuse with InvalidArgumentError (it is the one place arguments are judged)."""
    if isinstance(include, (str, bytes)):
        return include
    try:
        return list(include)
    except TypeError:
        return include

