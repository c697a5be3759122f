"""``Client``: the public, thread-safe, blocking handle on a running jidocoder daemon.

Each method is one request (docs/protocol.md, docs/api.md), built in ``_api`` (shared with
``AsyncClient``), sent and answered by a ``SyncConnection`` (_sync.py: threads and a blocking
socket) over the protocol core (_protocol.py). The Client composes its connection; it is not
one. It reconnects by itself when the daemon comes back within ``timeout`` (docs/api.md §10).

This module never imports ``jidocoder.daemon``: a client process must stay small and free of
the daemon's threads and state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from . import _api
from ._api import DEFAULT_INCLUDE, Request, T
from ._direct import DIRECT_OPS, DirectCalls
from ._protocol import DEFAULT_MAX_REQUEST_BYTES
from ._sync import DRAIN_THREAD_NAME, SyncConnection
from .config import default_socket_path
from .errors import RequestTimeoutError
from .models import ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo

__all__ = ["Client", "DEFAULT_MAX_REQUEST_BYTES", "DRAIN_THREAD_NAME"]


class Client:
    """A connection to the jidocoder daemon; safe to share between threads (docs/api.md §2)."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0,
                 event_buffer: int = 10_000) -> None:
        self._conn = SyncConnection(
            socket_path if socket_path is not None else default_socket_path(), timeout,
            event_buffer)
        self._direct = DirectCalls(self._conn)  # a session's own calls: on its channel

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Client socket={self.socket_path!r} daemon_pid={self.daemon_pid} "
                f"{self._conn.life.state()}>")

    def close(self) -> None:
        """Close the connection; idempotent, leaves no fd, thread or buffered event behind.
        Every waiting thread, and every later call, raises ``DaemonUnavailableError``."""
        self._direct.close()
        self._conn.close()

    @property
    def socket_path(self) -> str:
        return self._conn.socket_path

    @property
    def timeout(self) -> float:
        return self._conn.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._conn.timeout = seconds

    @property
    def event_buffer(self) -> int:
        return self._conn.core.event_buffer

    @property
    def daemon_pid(self) -> int | None:
        return self._conn.core.daemon_pid

    @property
    def daemon_version(self) -> str | None:
        return self._conn.core.daemon_version

    @property
    def max_request_bytes(self) -> int:
        return self._conn.core.max_request_bytes

    def _run(self, request: Request[T]) -> T:
        if request.op in DIRECT_OPS:
            if self._conn.life.ended:
                raise self._conn.life.error(self.socket_path)
            return request.convert(self._direct.call(request.op, request.args))
        return request.convert(self._conn.call(request.op, request.args))

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        """Any op by name, its result as sent: the ``debug_*`` test hooks go through here, on
        the session's channel as its other calls do."""
        if op.startswith("debug_") and "session_id" in args:
            return self._direct.call(op, args)
        return self._conn.call(op, args)

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, *, metadata: dict[str, Any] | None = None, llm_config: dict[str, Any] | None = None,
                       config: dict[str, Any] | SessionConfig | None = None) -> str:
        return self._run(_api.create_session(metadata, llm_config, config))

    def terminate_session(self, session_id: str) -> None:
        self._run(_api.terminate_session(session_id))

    def list_sessions(self, *, offset: int = 0, limit: int | None = None) -> list[SessionInfo]:
        """Sessions not terminated, oldest first: ``[offset : offset + limit]`` of them."""
        return self._run(_api.list_sessions(offset, limit))

    def get_session_info(self, session_id: str) -> SessionInfo:
        return self._run(_api.get_session_info(session_id))

    def get_session_pid(self, session_id: str) -> int:
        return self._run(_api.get_session_pid(session_id))

    def list_failed_sessions(self) -> list[SessionInfo]:
        """Sessions given up after crashes, their data kept; ``error`` says why (docs/api.md §7)."""
        return self._run(_api.list_failed_sessions())

    def recover_session(self, session_id: str) -> None:
        """Bring a failed session back, as on create, with all its stored data."""
        self._run(_api.recover_session(session_id))

    # -- conversation ------------------------------------------------------------------------

    def send_message(self, session_id: str, role: str, content: str) -> None:
        self._run(_api.send_message(session_id, role, content))

    def get_conversation_history(self, session_id: str, *, offset: int = 0,
                                 limit: int | None = None) -> list[Message]:
        """The messages held, oldest first: ``[offset : offset + limit]`` of them."""
        return self._run(_api.get_conversation_history(session_id, offset, limit))

    def clear_conversation(self, session_id: str) -> None:
        self._run(_api.clear_conversation(session_id))

    # -- active files and file index ---------------------------------------------------------

    def add_file(self, session_id: str, path: str) -> None:
        self._run(_api.add_file(session_id, path))

    def remove_file(self, session_id: str, path: str) -> None:
        self._run(_api.remove_file(session_id, path))

    def get_active_files(self, session_id: str) -> list[ActiveFile]:
        return self._run(_api.get_active_files(session_id))

    def update_file_index(self, session_id: str, path: str, metadata: dict[str, Any]) -> None:
        self._run(_api.update_file_index(session_id, path, metadata))

    def get_file_index(self, session_id: str) -> dict[str, dict[str, Any]]:
        return self._run(_api.get_file_index(session_id))

    # -- context -----------------------------------------------------------------------------

    def build_context(self, session_id: str, include: Iterable[str] = DEFAULT_INCLUDE, *,
                      max_messages: int | None = None, max_files: int | None = None) -> dict[str, Any]:
        return self._run(_api.build_context(session_id, include, max_messages, max_files))

    # -- file cache --------------------------------------------------------------------------

    def cache_file(self, session_id: str, path: str, content: str | bytes,
                   metadata: dict[str, Any] | None = None) -> None:
        self._run(_api.cache_file(session_id, path, content, metadata))

    def get_file(self, session_id: str, path: str) -> CachedFile | None:
        return self._run(_api.get_file(session_id, path))

    def invalidate_file(self, session_id: str, path: str) -> None:
        self._run(_api.invalidate_file(session_id, path))

    def clear_session_cache(self, session_id: str) -> None:
        self._run(_api.clear_session_cache(session_id))

    # -- events ------------------------------------------------------------------------------

    def subscribe_to_session(self, session_id: str, *, since: int | None = None) -> None:
        """Events of one session; with ``since``, first every held one after that seq
        (docs/api.md §10)."""
        self._run(_api.subscribe_to_session(session_id, since))
        self._conn.start_drain()

    def unsubscribe_from_session(self, session_id: str) -> None:
        self._run(_api.unsubscribe_from_session(session_id))

    def subscribe_to_all_sessions(self, *, since: int | None = None) -> None:
        """Lifecycle events of every session; ``since`` as for ``subscribe_to_session``."""
        self._run(_api.subscribe_to_all_sessions(since))
        self._conn.start_drain()

    def unsubscribe_from_all_sessions(self) -> None:
        self._run(_api.unsubscribe_from_all_sessions())

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` s (forever if None) and reading the socket
        itself if no other thread does; None on timeout. Once the connection has ended and
        the buffered events are drained, DaemonUnavailableError."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        return self._conn.take_event(deadline)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until ``timeout`` s pass with none (forever if None)."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    # -- daemon (used by the CLI) ------------------------------------------------------------

    def daemon_status(self) -> dict[str, Any]:
        """``{pid, socket, state_dir, uptime_s, sessions}`` of the daemon."""
        return self._run(_api.daemon_status())

    def daemon_metrics(self) -> dict[str, Any]:
        """The daemon's counters and gauges (docs/protocol.md, ``metrics``), which
        ``jidocoder metrics`` prints as OpenMetrics text."""
        metrics: dict[str, Any] = self._call("metrics", {})
        return metrics

    def shutdown(self) -> None:
        """Ask the daemon to stop; returns once it has closed this connection (within timeout)."""
        self._conn.expect_end()
        self._run(_api.shutdown())
        if self._conn.await_end(time.monotonic() + self.timeout):  # events in flight are buffered
            return
        raise RequestTimeoutError(
            f"the daemon accepted shutdown but had not closed the connection within "
            f"{self.timeout:g} s", details={"op": "shutdown", "timeout": self.timeout})
