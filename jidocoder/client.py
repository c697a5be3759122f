"""``Client``: the public, thread-safe handle on a running jidocoder daemon.

One Unix stream socket carries both the replies to this client's requests and the events it
subscribed to, interleaved in whatever order the daemon sends them (docs/protocol.md). So one
thread must own the reading side, or a caller waiting for its reply could swallow an event, or
another caller's reply, and events arriving while no one calls ``next_event`` would sit unread
in the kernel until the daemon gave up on a slow client. The design:

    caller threads ──(send lock: one whole frame at a time)──► socket ──► daemon
    caller threads ◄── slot per request id (Event) ◄── reader thread ◄── socket
    next_event()   ◄── queue.Queue of Event       ◄──┘

- The reader thread ("jidocoder-client-reader", a daemon thread) reads frames and routes each
  reply by its ``id`` to the slot its caller waits on, and each event into an unbounded queue,
  so events pushed while a call is in flight are buffered, in order, for ``next_event``.
- A request is packed first (``LimitExceededError`` / ``InvalidArgumentError`` before anything
  is sent, the Client stays usable), then written whole under the send lock, with a deadline:
  a daemon that stops reading cannot hold a caller past ``timeout``.
- Every wait has the client's ``timeout`` → ``RequestTimeoutError``; a reply that arrives for a
  request that already timed out finds no slot and is dropped.
- When the connection ends (EOF, socket error, a bad frame) the reader records why, wakes every
  waiting caller and leaves a marker at the end of the event queue; from then on every call and
  ``next_event`` (once the buffered events are drained) raise ``DaemonUnavailableError``.

This module never imports ``jidocoder.daemon``: a client process must stay small and free of
the daemon's threads and state.
"""

from __future__ import annotations

import itertools
import queue
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import wire
from .config import MiB, default_socket_path
from .errors import (DaemonUnavailableError, InvalidArgumentError, LimitExceededError,
                     ProtocolError, RequestTimeoutError, from_wire)
from .models import ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo

__all__ = ["Client", "DEFAULT_MAX_REQUEST_BYTES", "READER_THREAD_NAME"]

DEFAULT_MAX_REQUEST_BYTES = 16 * MiB  # used until (and unless) hello names the daemon's limit
READER_THREAD_NAME = "jidocoder-client-reader"

# Replies come from our own daemon (a 0600 socket), and one may carry a whole cached file or a
# long conversation, so the bound is generous (the largest max_request_bytes the daemon takes):
# it only keeps a garbage header from making the reader allocate up to 4 GiB.
_MAX_REPLY_BYTES = 1024 * MiB

# Each send is non-blocking for that call only (MSG_DONTWAIT), so the reader's blocking recv
# on the same socket is untouched; MSG_NOSIGNAL turns a dead peer into EPIPE, never SIGPIPE,
# even in a program that restored SIGPIPE's default action.
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)

_LOST = object()  # the last item in the event queue once the connection has ended

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Slot:
    """Where the reader thread leaves one reply for the caller waiting on it."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None  # stays None if the connection ended first


class Client:
    """A connection to the jidocoder daemon; safe to share between threads (API.md §2)."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path if socket_path is not None else default_socket_path()
        self.timeout = timeout
        self.max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
        self.daemon_pid: int | None = None
        self.daemon_version: str | None = None
        self._ids = itertools.count(1)
        self._state_lock = threading.Lock()  # guards _pending, _lost, _closed
        self._send_lock = threading.Lock()   # one whole frame at a time on the socket
        self._pending: dict[int, _Slot] = {}
        self._events: queue.Queue[Any] = queue.Queue()
        self._lost: tuple[str, BaseException | None] | None = None
        self._closed = False
        self._gone = threading.Event()  # set once the reader has ended
        self._sock = self._connect()
        self._reader = threading.Thread(target=self._read_loop, name=READER_THREAD_NAME,
                                        daemon=True)
        self._reader.start()
        try:
            self._hello()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)  # a full listen backlog must not block forever
            sock.connect(self.socket_path)
            sock.settimeout(None)  # the reader blocks in recv; sends bring their own deadline
        except OSError as e:
            sock.close()
            reason = e.strerror or str(e) or type(e).__name__
            raise DaemonUnavailableError(
                f"no jidocoder daemon answers on {self.socket_path} ({reason}); "
                "start one with `jidocoder daemon start`",
                details={"socket": self.socket_path}) from e
        return sock

    def _hello(self) -> None:
        info = self._call("hello", {}) or {}
        self.daemon_pid = info.get("pid")
        self.daemon_version = info.get("version")
        self.max_request_bytes = info.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES

    def close(self) -> None:
        """Close the connection and end the reader thread; idempotent, leaves no fd behind."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv and any send
        except OSError:
            pass  # already disconnected
        if threading.current_thread() is not self._reader:
            self._reader.join()
        with self._send_lock:  # no sender may be inside the socket while it is closed
            self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._lost is not None:
            state = "lost"
        else:
            state = "open"
        return (f"<Client socket={self.socket_path!r} daemon_pid={self.daemon_pid} "
                f"{state}>")

    # -- requests ----------------------------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and return its result, or raise the error the daemon answered."""
        deadline = time.monotonic() + self.timeout
        request_id = next(self._ids)  # itertools.count is atomic under the GIL
        frame = self._pack(op, {"id": request_id, "op": op, "args": args})
        slot = self._register(request_id)
        try:
            self._send(op, frame, deadline)
            reply = self._await(op, slot, deadline)
        finally:
            with self._state_lock:
                self._pending.pop(request_id, None)  # a late reply now finds no slot: dropped
        if "error" not in reply:
            return reply.get("result")
        if not isinstance(reply["error"], dict):
            raise ProtocolError(f"the daemon answered {op} with a malformed error")
        raise from_wire(reply["error"])

    def _pack(self, op: str, request: dict[str, Any]) -> bytes:
        try:
            return wire.pack_frame(request, self.max_request_bytes)
        except LimitExceededError as e:
            size = e.details.get("size")
            raise LimitExceededError(
                f"the {op} request ({size} bytes) is larger than the daemon's max_request_bytes "
                f"({self.max_request_bytes}); nothing was sent",
                details={"op": op, "size": size, "limit": self.max_request_bytes}) from e

    def _register(self, request_id: int) -> _Slot:
        slot = _Slot()
        with self._state_lock:  # same lock as _fail_pending: no slot is registered too late
            if self._closed or self._lost is not None:
                raise self._unavailable()
            self._pending[request_id] = slot
        return slot

    def _send(self, op: str, frame: bytes, deadline: float) -> None:
        if not self._send_lock.acquire(timeout=_remaining(deadline)):
            raise self._timeout(op, "waiting to send; nothing was sent")
        try:
            sent = self._send_until(frame, deadline)
        except OSError as e:
            self._lose("sending failed: " + (e.strerror or str(e)), e)
            raise self._unavailable() from e
        finally:
            self._send_lock.release()
        if sent == 0:
            raise self._timeout(op, "the daemon is not reading; nothing was sent")
        if sent < len(frame):
            # Half a frame is on the wire: nothing after it could be framed correctly.
            self._lose("a request was cut off mid-frame by the timeout", None)
            raise self._timeout(op, "the daemon is not reading; the connection is dropped")

    def _send_until(self, frame: bytes, deadline: float) -> int:
        """Write ``frame`` until done or the deadline passes; the number of bytes written."""
        view = memoryview(frame)
        sent = 0
        while sent < len(frame):
            try:
                sent += self._sock.send(view[sent:], _SEND_FLAGS)
            except BlockingIOError:
                if not _wait_writable(self._sock, deadline):
                    break
        return sent

    def _await(self, op: str, slot: _Slot, deadline: float) -> dict[str, Any]:
        slot.done.wait(_remaining(deadline))
        if slot.reply is not None:
            return slot.reply
        if slot.done.is_set():  # woken without a reply: the connection ended
            raise self._unavailable()
        raise self._timeout(op, "no reply; the request may still be applied")

    def _timeout(self, op: str, why: str) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the daemon did not answer {op} within {self.timeout:g} s ({why})",
            details={"op": op, "timeout": self.timeout})

    def _unavailable(self) -> DaemonUnavailableError:
        """A fresh error for each caller: one exception raised in many threads would share a
        traceback."""
        if self._closed:
            return DaemonUnavailableError("this Client is closed; make a new one")
        reason = self._lost[0] if self._lost else "unknown reason"
        error = DaemonUnavailableError(
            f"connection to the daemon lost ({reason}); check it with `jidocoder daemon status`"
            " and start one with `jidocoder daemon start`",
            details={"socket": self.socket_path})
        if self._lost and self._lost[1] is not None:
            error.__cause__ = self._lost[1]
        return error

    # -- the reader thread -------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                frame = wire.read_frame(self._sock, _MAX_REPLY_BYTES)
                if frame is None:
                    self._lose("the daemon closed the connection", None)
                    return
                self._route(frame)
        except Exception as e:  # noqa: BLE001 -- whatever ends the reader must still wake
            # every waiting caller below, or they would wait out their whole timeout
            self._lose(f"{type(e).__name__}: {e}", e)
        finally:
            self._fail_pending()
            self._events.put(_LOST)
            self._gone.set()

    def _route(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            raise ProtocolError(f"the daemon sent a {type(frame).__name__}, not a message")
        if "event" in frame:
            self._events.put(_to_model(Event, frame["event"]))
            return
        with self._state_lock:
            slot = self._pending.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if slot is not None:
            slot.reply = frame
            slot.done.set()

    def _lose(self, reason: str, cause: BaseException | None) -> None:
        """Record why the connection ended (the first reason wins) and end it."""
        with self._state_lock:
            if self._lost is None:
                self._lost = (reason, cause)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader sees EOF and ends
        except OSError:
            pass  # already shut down or closed

    def _fail_pending(self) -> None:
        with self._state_lock:
            if self._lost is None:
                self._lost = ("the client was closed", None)
            slots = list(self._pending.values())
            self._pending.clear()
        for slot in slots:
            slot.done.set()

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, *, metadata: dict | None = None, llm_config: dict | None = None,
                       config: dict | SessionConfig | None = None) -> str:
        if isinstance(config, SessionConfig):
            config = config.model_dump()
        return self._call("create_session",
                          {"metadata": metadata, "llm_config": llm_config, "config": config})

    def terminate_session(self, session_id: str) -> None:
        self._call("terminate_session", {"session_id": session_id})

    def list_sessions(self) -> list[SessionInfo]:
        return [_to_model(SessionInfo, item) for item in self._call("list_sessions", {})]

    def get_session_info(self, session_id: str) -> SessionInfo:
        return _to_model(SessionInfo, self._call("get_session_info", {"session_id": session_id}))

    def get_session_pid(self, session_id: str) -> int:
        return self._call("get_session_pid", {"session_id": session_id})

    # -- conversation ------------------------------------------------------------------------

    def send_message(self, session_id: str, role: str, content: str) -> None:
        self._call("send_message", {"session_id": session_id, "role": role, "content": content})

    def get_conversation_history(self, session_id: str) -> list[Message]:
        result = self._call("get_conversation_history", {"session_id": session_id})
        return [_to_model(Message, item) for item in result]

    def clear_conversation(self, session_id: str) -> None:
        self._call("clear_conversation", {"session_id": session_id})

    # -- active files and file index ---------------------------------------------------------

    def add_file(self, session_id: str, path: str) -> None:
        self._call("add_file", {"session_id": session_id, "path": path})

    def remove_file(self, session_id: str, path: str) -> None:
        self._call("remove_file", {"session_id": session_id, "path": path})

    def get_active_files(self, session_id: str) -> list[ActiveFile]:
        result = self._call("get_active_files", {"session_id": session_id})
        return [_to_model(ActiveFile, item) for item in result]

    def update_file_index(self, session_id: str, path: str, metadata: dict) -> None:
        self._call("update_file_index",
                   {"session_id": session_id, "path": path, "metadata": metadata})

    def get_file_index(self, session_id: str) -> dict[str, dict]:
        return self._call("get_file_index", {"session_id": session_id})

    # -- context -----------------------------------------------------------------------------

    def build_context(self, session_id: str,
                      include: Iterable[str] = ("conversation", "files", "file_index"), *,
                      max_messages: int | None = None, max_files: int | None = None) -> dict:
        result = self._call("build_context", {
            "session_id": session_id, "include": _as_list(include),
            "max_messages": max_messages, "max_files": max_files})
        if not isinstance(result, dict):
            raise ProtocolError(f"the daemon answered build_context with a {type(result).__name__}")
        if isinstance(result.get("conversation"), list):
            result["conversation"] = [_to_model(Message, m) for m in result["conversation"]]
        if isinstance(result.get("files"), list):
            result["files"] = [_to_model(ActiveFile, f) for f in result["files"]]
        return result

    # -- file cache --------------------------------------------------------------------------

    def cache_file(self, session_id: str, path: str, content: str | bytes,
                   metadata: dict | None = None) -> None:
        self._call("cache_file", {"session_id": session_id, "path": path, "content": content,
                                  "metadata": metadata})

    def get_file(self, session_id: str, path: str) -> CachedFile | None:
        result = self._call("get_file", {"session_id": session_id, "path": path})
        return None if result is None else _to_model(CachedFile, result)

    def invalidate_file(self, session_id: str, path: str) -> None:
        self._call("invalidate_file", {"session_id": session_id, "path": path})

    def clear_session_cache(self, session_id: str) -> None:
        self._call("clear_session_cache", {"session_id": session_id})

    # -- events ------------------------------------------------------------------------------

    def subscribe_to_session(self, session_id: str) -> None:
        self._call("subscribe_to_session", {"session_id": session_id})

    def unsubscribe_from_session(self, session_id: str) -> None:
        self._call("unsubscribe_from_session", {"session_id": session_id})

    def subscribe_to_all_sessions(self) -> None:
        self._call("subscribe_to_all_sessions", {})

    def unsubscribe_from_all_sessions(self) -> None:
        self._call("unsubscribe_from_all_sessions", {})

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next buffered event, waiting up to ``timeout`` s (forever if None); None on
        timeout. Once the connection has ended and the buffer is empty, DaemonUnavailableError."""
        try:
            item = self._events.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _LOST:
            self._events.put(_LOST)  # leave the marker for every other waiter
            raise self._unavailable()
        return item

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until ``timeout`` s pass with none (forever if None)."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    # -- daemon (used by the CLI) ------------------------------------------------------------

    def daemon_status(self) -> dict:
        """``{pid, socket, state_dir, uptime_s, sessions}`` of the daemon."""
        return self._call("daemon_status", {})

    def shutdown(self) -> None:
        """Ask the daemon to stop; returns once it has closed this connection (within timeout)."""
        self._call("shutdown", {})
        if not self._gone.wait(self.timeout):
            raise RequestTimeoutError(
                f"the daemon accepted shutdown but had not closed the connection within "
                f"{self.timeout:g} s", details={"op": "shutdown", "timeout": self.timeout})


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _wait_writable(sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` can take more bytes; False if the deadline passed first."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(_remaining(deadline) * 1000))


def _as_list(include: Any) -> Any:
    """``include`` as a list; a bare string or a non-iterable goes as it is, for the daemon to
    refuse with InvalidArgumentError (it is the one place arguments are judged)."""
    if isinstance(include, (str, bytes)):
        return include
    try:
        return list(include)
    except TypeError:
        return include


def _to_model(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except (ValidationError, InvalidArgumentError) as e:  # the models may translate their errors
        raise ProtocolError(f"the daemon sent an invalid {model.__name__}: {e}") from e
