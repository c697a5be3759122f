"""``AsyncClient``: every ``Client`` method as a coroutine, for asyncio programs (docs/api.md §11).

The same calls (built in ``_api``), the same protocol core (_protocol.py), over an
``AsyncConnection`` (_async.py: one socket on the event loop, no thread). A session's own calls
go straight to its process on a channel (_adirect.py), as ``Client``'s do. Many tasks of one
event loop may use one AsyncClient at once; cancelling a call leaves the connection usable and
the call applied once or not at all. It reconnects by itself as ``Client`` does (§10).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from . import _api
from ._api import DEFAULT_INCLUDE, Request, T
from ._adirect import AsyncDirectCalls
from ._async import AsyncConnection
from ._channel import DIRECT_OPS
from .config import default_socket_path
from .errors import RequestTimeoutError
from .models import ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo

__all__ = ["AsyncClient"]


class AsyncClient:
    """``async with AsyncClient() as client:`` connects on enter, closes on exit."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0,
                 event_buffer: int = 10_000) -> None:
        self._conn = AsyncConnection(
            socket_path if socket_path is not None else default_socket_path(), timeout,
            event_buffer)
        self._direct = AsyncDirectCalls(self._conn)  # a session's own calls: on its channel

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"<AsyncClient socket={self._conn.socket_path!r} "
                f"daemon_pid={self.daemon_pid} {self._conn.life.state()}>")

    async def connect(self) -> None:
        """Connect and say hello (``async with`` does it); DaemonUnavailableError if none."""
        await self._conn.open()

    async def close(self) -> None:
        """Idempotent; leaves no task, fd (channels included) or buffered event behind."""
        self._direct.close()
        await self._conn.close()

    async def aclose(self) -> None:
        """``close()``, by the name ``contextlib.aclosing`` calls."""
        await self.close()

    @property
    def timeout(self) -> float:
        return self._conn.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._conn.timeout = seconds

    @property
    def daemon_pid(self) -> int | None:
        return self._conn.core.daemon_pid

    async def _run(self, request: Request[T]) -> T:
        if request.op in DIRECT_OPS:
            self._conn.check_open()
            return request.convert(await self._direct.call(request.op, request.args))
        return request.convert(await self._conn.call(request.op, request.args))

    async def _call(self, op: str, args: dict[str, Any]) -> Any:
        """Any op by name, its result as sent: the ``debug_*`` test hooks go through here, on
        the session's channel as its other calls do."""
        if op.startswith("debug_") and "session_id" in args:
            return await self._direct.call(op, args)
        return await self._conn.call(op, args)

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(self, *, metadata: dict[str, Any] | None = None, llm_config: dict[str, Any] | None = None,
                             config: dict[str, Any] | SessionConfig | None = None) -> str:
        return await self._run(_api.create_session(metadata, llm_config, config))

    async def terminate_session(self, session_id: str) -> None:
        await self._run(_api.terminate_session(session_id))

    async def list_sessions(self, *, offset: int = 0, limit: int | None = None) -> list[SessionInfo]:
        """Sessions not terminated, oldest first: ``[offset : offset + limit]`` of them."""
        return await self._run(_api.list_sessions(offset, limit))

    async def get_session_info(self, session_id: str) -> SessionInfo:
        return await self._run(_api.get_session_info(session_id))

    async def get_session_pid(self, session_id: str) -> int:
        return await self._run(_api.get_session_pid(session_id))

    async def list_failed_sessions(self) -> list[SessionInfo]:
        """Sessions given up after crashes, their data kept; ``error`` says why (docs/api.md §7)."""
        return await self._run(_api.list_failed_sessions())

    async def recover_session(self, session_id: str) -> None:
        """Bring a failed session back, as on create, with all its stored data."""
        await self._run(_api.recover_session(session_id))

    # -- conversation ------------------------------------------------------------------------

    async def send_message(self, session_id: str, role: str, content: str) -> None:
        await self._run(_api.send_message(session_id, role, content))

    async def get_conversation_history(self, session_id: str, *, offset: int = 0,
                                 limit: int | None = None) -> list[Message]:
        """The messages held, oldest first: ``[offset : offset + limit]`` of them."""
        return await self._run(_api.get_conversation_history(session_id, offset, limit))

    async def clear_conversation(self, session_id: str) -> None:
        await self._run(_api.clear_conversation(session_id))

    # -- active files and file index ---------------------------------------------------------

    async def add_file(self, session_id: str, path: str) -> None:
        await self._run(_api.add_file(session_id, path))

    async def remove_file(self, session_id: str, path: str) -> None:
        await self._run(_api.remove_file(session_id, path))

    async def get_active_files(self, session_id: str) -> list[ActiveFile]:
        return await self._run(_api.get_active_files(session_id))

    async def update_file_index(self, session_id: str, path: str, metadata: dict[str, Any]) -> None:
        await self._run(_api.update_file_index(session_id, path, metadata))

    async def get_file_index(self, session_id: str) -> dict[str, dict[str, Any]]:
        return await self._run(_api.get_file_index(session_id))

    # -- context -----------------------------------------------------------------------------

    async def build_context(self, session_id: str, include: Iterable[str] = DEFAULT_INCLUDE, *,
                      max_messages: int | None = None, max_files: int | None = None) -> dict[str, Any]:
        return await self._run(_api.build_context(session_id, include, max_messages, max_files))

    # -- file cache --------------------------------------------------------------------------

    async def cache_file(self, session_id: str, path: str, content: str | bytes,
                   metadata: dict[str, Any] | None = None) -> None:
        await self._run(_api.cache_file(session_id, path, content, metadata))

    async def get_file(self, session_id: str, path: str) -> CachedFile | None:
        return await self._run(_api.get_file(session_id, path))

    async def invalidate_file(self, session_id: str, path: str) -> None:
        await self._run(_api.invalidate_file(session_id, path))

    async def clear_session_cache(self, session_id: str) -> None:
        await self._run(_api.clear_session_cache(session_id))

    # -- events ------------------------------------------------------------------------------

    async def subscribe_to_session(self, session_id: str, *, since: int | None = None) -> None:
        """Events of one session; with ``since``, first every held one after that seq
        (docs/api.md §10)."""
        await self._run(_api.subscribe_to_session(session_id, since))

    async def unsubscribe_from_session(self, session_id: str) -> None:
        await self._run(_api.unsubscribe_from_session(session_id))

    async def subscribe_to_all_sessions(self, *, since: int | None = None) -> None:
        """Lifecycle events of every session; ``since`` as for ``subscribe_to_session``."""
        await self._run(_api.subscribe_to_all_sessions(since))

    async def unsubscribe_from_all_sessions(self) -> None:
        await self._run(_api.unsubscribe_from_all_sessions())

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` s (forever if None); None on timeout."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        return await self._conn.take_event(deadline)

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Yield events until ``timeout`` s pass with none (forever if None)."""
        while (event := await self.next_event(timeout)) is not None:
            yield event

    # -- daemon ------------------------------------------------------------------------------

    async def daemon_status(self) -> dict[str, Any]:
        return await self._run(_api.daemon_status())

    async def shutdown(self) -> None:
        """Ask the daemon to stop; returns once it has closed this connection (within timeout)."""
        self._conn.expect_end()
        await self._run(_api.shutdown())
        if await self._conn.await_end(time.monotonic() + self.timeout):
            return
        raise RequestTimeoutError(
            f"the daemon accepted shutdown but had not closed the connection within "
            f"{self.timeout:g} s", details={"op": "shutdown", "timeout": self.timeout})
