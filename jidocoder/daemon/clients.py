"""One client connection as the daemon's loop sees it: a decoder in, a bounded buffer out.

The loop never blocks on a client, and no client can make the daemon grow without bound:
- a request frame is at most ``wire.request_limit(max_request_bytes)`` and is split, not decoded
  (``wire.split_request``): a session call's args are forwarded as bytes, a daemon call's args
  decoded only if at most ``wire.DAEMON_ARGS_BYTES``, within a memory budget
  (``wire.decode_bounded``); a request refused is answered (``limit_exceeded``,
  ``invalid_request``) and the connection goes on;
- events a client has not read wait in its out-buffer. An event always goes to a client whose
  out-buffer is empty, whatever its size; one that would then be more than
  ``client_buffer_bytes`` behind (a subscriber that stopped reading while events flow) falls
  behind: it gets no more events or replies, a last ``{"closing": {code, message}}`` frame is
  queued after what it has not read yet, and the connection closes once that is sent (or the
  peer is gone), so its Client can say why it was dropped; a client more than half that far
  behind slows the sessions whose events it takes until it catches up (pacing.py), for at most
  ``pacing.STALL_SECONDS`` if it has stopped reading;
- replies are never dropped (the client asked for them), so a client that sends requests but
  does not read the replies is throttled instead: while its out-buffer is over the bound, or it
  has ``MAX_IN_FLIGHT`` calls unanswered, the daemon stops reading from it.
"""

from __future__ import annotations

import array
import logging
import socket
import time
import weakref
from collections import deque
from typing import Any, Protocol
from collections.abc import Callable, Iterator

from .. import wire
from ..errors import InvalidArgumentError, JidocoderError
from .metrics import METRICS

log = logging.getLogger("jidocoder.daemon")


class Pacer(Protocol):
    """Told when a connection's unsent bytes cross half of its bound (pacing.Pacing)."""

    def congestion_began(self, conn: ClientConnection) -> None: ...
    def congestion_ended(self, conn: ClientConnection) -> None: ...


MAX_IN_FLIGHT = 128  # unanswered calls per connection before the daemon stops reading it


class ClientConnection:
    def __init__(self, sock: socket.socket, peer_pid: int, *, max_request: int, max_buffer: int,
                 on_interest: Callable[[ClientConnection, bool, bool], None],
                 on_closed: Callable[[ClientConnection], None],
                 flush_soon: Callable[[ClientConnection], None],
                 pacer: Pacer | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer_pid = peer_pid
        # Split, not decoded: the daemon reads a request's id, op, deadline and session_id,
        # and forwards a session call's args as the bytes they came as (wire.split_request).
        self.decoder = wire.FrameDecoder(wire.request_limit(max_request), requests=True)
        self.max_buffer = max_buffer
        self.closed = False
        self.closing: str | None = None  # why it fell behind: the last frame is on its way
        self._out: deque[bytes | memoryview] = deque()
        self._out_bytes = 0
        self._on_interest = on_interest
        self._flush_soon = flush_soon
        self._flush_due = False  # a flush is scheduled for the end of the loop's turn
        self.in_flight = 0
        self.links: weakref.WeakSet[Any] = weakref.WeakSet()  # session links it sent calls on
        self.backlog: deque[Any] = deque()  # requests read but held back while throttled
        self.resume_scheduled = False
        self._on_closed = on_closed
        self._pacer = pacer
        self.congested_since: float | None = None  # over half of max_buffer since (pacing.py)
        # What the loop was last told to wait for (it starts watching for reads): the loop is
        # told only of changes, not on every call and reply.
        self._interest = (True, False)

    def __repr__(self) -> str:
        return f"<client fd={self.sock.fileno()} pid={self.peer_pid}>"

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- in ----------------------------------------------------------------------------------
    def read_requests(self) -> list[Any]:
        """Frames that arrived; [] and ``closed`` set when the peer hung up or broke framing."""
        try:
            data = self.sock.recv(wire.RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            self.close(f"read failed: {exc}")
            return []
        if not data:
            self.close("disconnected")
            return []
        try:
            frames = self.decoder.feed(data)
        except JidocoderError as exc:
            self.send({"id": None, "error": exc.to_wire()})
            self.flush()
            self.close(f"bad frame: {exc}")
            return []
        if self.closing is not None:
            return []  # it fell behind: nothing more is served
        return [frame for frame in frames if not self._refuse(frame)]

    def _refuse(self, frame: Any) -> bool:
        """Answer a frame the decoder refused (over its memory budget); True if it was one."""
        if type(frame) is not wire.Refused:
            return False
        log.warning("client %s: request refused: %s", self.peer_pid, frame.error)
        self.send(frame.reply())
        return True

    # -- calls -------------------------------------------------------------------------------
    def next_calls(self) -> Iterator[Any]:
        """The requests to dispatch now, in order, until throttled or none is left. A request
        may be any decoded object, ``None`` (msgpack nil) too: the caller answers each."""
        while self.backlog and self.accepting_calls:
            yield self.backlog.popleft()

    def begin_call(self) -> None:
        self.in_flight += 1
        self._update_interest()

    def reply(self, request_id: Any, message: dict[str, Any]) -> None:
        """The answer to a call that ``begin_call`` counted."""
        self.in_flight -= 1
        self.send({"id": request_id, **message})
        self._update_interest()

    def reply_packed(self, request_id: Any, packed: bytes) -> None:
        """The answer to a call, its result already encoded by the session: the bytes are
        forwarded as they came, never decoded (wire.reply_buffers)."""
        self.in_flight -= 1
        if not self.closed and self.closing is None:
            try:
                buffers = wire.reply_buffers(request_id, packed)
            except JidocoderError as exc:
                self.send({"id": request_id, "error": exc.to_wire()})
            else:
                for buffer in buffers:
                    self._queue(buffer)
        self._update_interest()

    def reply_with_fd(self, request_id: Any, message: dict[str, Any], fd: int,
                      refused: dict[str, Any] | None = None) -> None:
        """The answer to a call, with ``fd`` passed along (SCM_RIGHTS) on its first byte. Sent
        now, after whatever was queued before it (so the fd arrives with this reply and no
        other); what the socket does not take at once is queued as usual. If it cannot go now,
        ``refused`` is the answer (None: an ``invalid_request`` error)."""
        self.in_flight -= 1
        frame = wire.pack_frame({"id": request_id, **message}, wire.MAX_FRAME)
        self.flush()
        if self.closed or self.closing is not None:
            return
        if self._out:  # the peer is not reading: no fd for it
            self._refuse_fd(request_id, "the client has not read its earlier replies", refused)
            return
        try:
            sent = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", [fd]))])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.close(f"write failed: {exc}")
            return
        if sent == 0:
            self._refuse_fd(request_id, "the connection could not take the reply", refused)
            return
        if sent < len(frame):
            self._queue(frame[sent:])
        self._update_interest()

    def _refuse_fd(self, request_id: Any, why: str, refused: dict[str, Any] | None) -> None:
        if refused is not None:
            self.send({"id": request_id, **refused})
        else:
            error = InvalidArgumentError(f"{why}: ask for the table on a connection of its own, "
                                         "with nothing else in flight", code="invalid_request",
                                         field="op")
            self.send({"id": request_id, "error": error.to_wire()})
        self._update_interest()

    @property
    def accepting_calls(self) -> bool:
        return (not self.closed and self.closing is None and self.in_flight < MAX_IN_FLIGHT
                and self._out_bytes <= self.max_buffer)

    def _update_interest(self) -> None:
        """Tell the loop what to wait for when that changed, or when held-back requests may now
        be dispatched (the loop's callback schedules that)."""
        if self.closed:
            return
        accepting = self.accepting_calls
        # Writability is waited for only once a send could not take everything.
        interest = (accepting and not self.backlog, bool(self._out) and not self._flush_due)
        if interest != self._interest or (self.backlog and accepting and not self.resume_scheduled):
            self._interest = interest
            self._on_interest(self, *interest)

    # -- out ---------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self.closed or self.closing is not None:
            return
        try:
            frame = wire.pack_frame(message, wire.MAX_FRAME)
        except JidocoderError as exc:  # over 4 GiB, or unencodable
            frame = wire.pack_frame({"id": message.get("id"), "error": exc.to_wire()}, wire.MAX_FRAME)
        self._queue(frame)

    def send_event(self, event: dict[str, Any], frame: bytes | None = None) -> None:
        """Events are what a client can fall behind on: one that has nothing queued takes any
        event; past the bound it is cut off. (A reply is never dropped: the client asked for
        it, and one request brings one reply.) ``frame`` is the event already framed, shared by
        every subscriber."""
        if self.closed or self.closing is not None:
            return
        if frame is None:
            frame = wire.pack_frame({"event": event}, wire.MAX_FRAME)
        if self._out_bytes and self._out_bytes + len(frame) > self.max_buffer:
            self._fall_behind(self._out_bytes + len(frame))
            return
        self._queue(frame)

    def _fall_behind(self, behind: int) -> None:
        """No more events or replies; the reason goes last, after what it has not read yet
        (at most client_buffer_bytes and its replies), and ``flush`` closes once it is out."""
        self.closing = (f"fell {behind} bytes behind (client_buffer_bytes={self.max_buffer}): "
                        "it did not read its events fast enough")
        log.warning("client %s disconnected: %s", self.peer_pid, self.closing)
        METRICS.slow_clients_dropped += 1
        self._queue(wire.pack_frame({"closing": {"code": "fell_behind", "message": self.closing}},
                                    wire.MAX_FRAME))
        self._update_interest()

    def _queue(self, frame: bytes) -> None:
        """Frames queued in one turn of the loop leave together at its end (one send)."""
        was_empty = not self._out
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > self.max_buffer // 2 and self.congested_since is None:
            self._congested(True)
        if was_empty and not self._flush_due:
            self._flush_due = True
            self._flush_soon(self)

    def flush(self) -> None:
        self._flush_due = False
        out = self._out
        while out and not self.closed:
            try:
                sent = wire.send_buffers(self.sock, out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"write failed: {exc}")
                return
            self._out_bytes -= sent
            wire.drop_sent(out, sent)
        if self.congested_since is not None and self._out_bytes <= self.max_buffer // 2:
            self._congested(False)
        if self.closing is not None and not out and not self.closed:
            self.close("disconnected")  # the closing frame is out: already logged
            return
        self._update_interest()

    def _congested(self, now_congested: bool) -> None:
        """Over half of ``max_buffer`` unsent, or back under it: the sessions whose events it
        takes are paced by it meanwhile (pacing.py)."""
        self.congested_since = time.monotonic() if now_congested else None
        if self._pacer is not None:
            if now_congested:
                self._pacer.congestion_began(self)
            else:
                self._pacer.congestion_ended(self)

    @property
    def pending_bytes(self) -> int:
        return self._out_bytes

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self._out_bytes = 0
        if self.congested_since is not None:
            self._congested(False)
        if reason != "disconnected":
            log.warning("client %s disconnected: %s", self.peer_pid, reason)
        self._on_closed(self)
