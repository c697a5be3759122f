"""The daemon's end of one session process: its socket and what is in flight on it.

One socketpair per session process, nothing shared with any other. The daemon writes requests
without blocking (a busy session's unread requests wait in a buffer here); the session answers
each in order with its events attached. EOF on the socket means the process is going; the exit
status comes from reaping it (``SIGCHLD``), which the supervisor does.
"""

from __future__ import annotations

import array
import itertools
import os
import socket
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Callable

from .. import wire
from ..errors import JidocoderError
from .metrics import METRICS


class Replier(Protocol):
    closed: bool  # the client's connection is gone: nobody waits for an answer
    # The links it has sent calls on (weakly held: a dead process's link goes when the
    # supervisor drops it), so that its close can cancel them (``cancel_calls_of``).
    links: weakref.WeakSet[SessionLink]

    def reply(self, request_id: Any, message: dict[str, Any]) -> None: ...

    def reply_packed(self, request_id: Any, packed: bytes) -> None: ...


class Pending:
    """A client call waiting for its reply: who asked (``client``), under which id, and the
    ``deadline`` its Client gives up at (``time.monotonic()``, system-wide on Linux; None if the
    client sent none), which the session is told with the request. Made for every call, so a
    plain object with slots rather than a closure."""

    __slots__ = ("client", "request_id", "op", "deadline", "began")

    def __init__(self, client: Replier, request_id: Any, op: str, deadline: float | None = None) -> None:
        self.client = client
        self.request_id = request_id
        self.op = op
        self.deadline = deadline  # CLOCK_MONOTONIC moment its client gives up on it, if it said
        self.began = time.monotonic()  # for the call latency histogram (metrics.py)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def abandoned(self) -> bool:
        """Its client closed or lost the connection: nobody waits for the call any more."""
        return self.client.closed

    def reply(self, message: dict[str, Any]) -> None:
        """Answer with ``{"result": ...}`` or ``{"error": {...}}``."""
        METRICS.observe_call(self.op, time.monotonic() - self.began, "error" in message)
        self.client.reply(self.request_id, message)

    def reply_packed(self, packed: bytes) -> None:
        """Answer with a result the session already encoded, forwarded without decoding it."""
        METRICS.observe_call(self.op, time.monotonic() - self.began, False)
        self.client.reply_packed(self.request_id, packed)


@dataclass(slots=True)
class Call:
    """A call sent to a session process, kept until it answers (or dies)."""

    op: str
    args: bytes  # encoded, as the client sent them: the daemon never decodes them
    pending: Pending


# Request ids are unique across every process of every session, so an id a dead process wrote
# as "started" can never be confused with one sent to its successor.
_request_ids = itertools.count(1)


def new_request_id() -> int:
    """An id for a request to any session process or actor, never used before (``take_in_flight``)."""
    return next(_request_ids)


class SessionLink:
    """``backend.SessionHandle`` for a forked process: a socketpair and a pid of ours."""

    on_this_machine = True  # its pid is ours to measure (/proc) and signal
    death: int | None = None  # its exit status comes from reaping it (waitpid), never from here

    def __init__(self, pid: int, sock: socket.socket, incarnation: int, max_frame: int,
                 on_writable_change: Callable[[SessionLink, bool], None],
                 max_reply: int = wire.MAX_FRAME) -> None:
        self.pid = pid
        self.sock = sock
        self.incarnation = incarnation
        self.ready = False
        self.eof = False
        self.exit_status: int | None = None
        self.kill_reason: str | None = None  # set when the daemon kills it (hung, memory limit)
        self.stopping = False  # the daemon asked it to stop: its exit is no crash
        self.last_word: str | None = None  # why its store is unusable, as it said before exiting
        self.broken: str | None = None  # it broke framing: what the decoder said
        # Replies have no limit of their own; a frame larger than the process may hold
        # (``max_reply``: its memory limit) cannot be a reply, only broken framing.
        self.decoder = wire.FrameDecoder(max_reply)
        self.max_frame = max_frame  # what a request frame to the session may be
        self.in_flight: dict[int, Call] = {}
        self._out: deque[bytes | memoryview] = deque()
        self._on_writable_change = on_writable_change
        self._wants_write = False  # as last told through on_writable_change

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def key(self) -> int:
        """What the supervisor finds it by when a process is reaped: its pid."""
        return self.pid

    def signal(self, signum: int) -> None:
        if self.exit_status is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def hang_up(self) -> None:
        """EOF on its socket: it closes its store and exits 0 (hibernation)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone: its exit is on its way

    def request(self, op: str, args: bytes, pending: Pending) -> bool:
        """Queue the call, ``args`` encoded as the client sent them (framed around, never
        decoded: ``wire.request_buffers``); True when the queue was empty, i.e. the caller must
        see that ``flush`` runs (the loop's ``flush_soon``: every call of a turn leaves in one
        send)."""
        link_id = new_request_id()
        buffers = wire.request_buffers(link_id, op, args, pending.deadline, self.max_frame)
        self.in_flight[link_id] = Call(op, args, pending)
        pending.client.links.add(self)
        return self._queue(buffers)

    @property
    def unsent(self) -> bool:
        """Bytes queued for the process that it has not been sent yet."""
        return bool(self._out)

    def cancel(self, client: Replier) -> bool:
        """Tell the process that ``client`` is gone: it answers, unapplied, each of the client's
        calls it has not begun (API.md §10: a call its Client gave up on is never applied
        later). The ``cancel`` frame follows those calls on the socket, and the process reads
        everything there before it begins a call, so no call it had not begun escapes. True
        as for ``request``; False with nothing sent if the client had no call in flight here."""
        ids = [link_id for link_id, call in self.in_flight.items() if call.pending.client is client]
        return bool(ids) and not self.eof and self.send({"cancel": ids})

    def send(self, frame: dict[str, Any]) -> bool:
        """Queue a frame; True as for ``request``."""
        return self._queue([wire.pack_frame(frame, self.max_frame)])

    def send_with_fd(self, frame: dict[str, Any], fd: int) -> bool:
        """Send ``frame`` now with ``fd`` attached (SCM_RIGHTS) to its first byte; False, with
        nothing sent, if the process has not taken what was queued before it (the fd must
        ride on this frame's bytes and no other's) or is gone. The caller closes ``fd``: once
        sent, the process holds its own copy."""
        self.flush()
        if self._out or self.eof or self.exit_status is not None:
            return False
        data = wire.pack_frame(frame, self.max_frame)
        try:
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", [fd]))])
        except OSError:  # full (BlockingIOError), or the process is going
            return False
        if sent < len(data):
            self._queue([data[sent:]])
            self.flush()
        return True

    def _queue(self, buffers: list[bytes]) -> bool:
        was_empty = not self._out
        self._out.extend(buffers)
        return was_empty and not self._wants_write

    def flush(self) -> None:
        out = self._out
        while out:
            try:
                sent = wire.send_buffers(self.sock, out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the process is going; EOF and the reaper will say so
                out.clear()
                break
            wire.drop_sent(out, sent)
        wants_write = bool(out)
        if wants_write is not self._wants_write:  # the loop hears of changes only
            self._wants_write = wants_write
            self._on_writable_change(self, wants_write)

    def read_frames(self) -> list[Any]:
        """Frames from the process; sets ``eof`` when it closed its end (or broke framing)."""
        try:
            data = self.sock.recv(wire.RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return []
        try:
            return self.decoder.feed(data)
        except JidocoderError as exc:
            self.eof = True  # nothing after it can be framed: the supervisor kills the process
            self.broken = exc.message
            return []

    def take_in_flight(self, started: int) -> tuple[list[Call], list[Call]]:
        """Split what was in flight when the process died: the calls it had begun (ids up to
        ``started``, which it handles strictly in order) and the calls it never read."""
        begun = [call for call_id, call in self.in_flight.items() if call_id <= started]
        unread = [call for call_id, call in self.in_flight.items() if call_id > started]
        self.in_flight.clear()
        return begun, unread

    def close(self) -> None:
        self.sock.close()
