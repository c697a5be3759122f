"""One client connection as the daemon's loop sees it: a decoder in, a bounded buffer out.

The loop never blocks on a client, and no client can make the daemon grow without bound:
- events a client has not read wait in its out-buffer; one that falls ``client_buffer_bytes``
  behind (a subscriber that stopped reading while events flow) is disconnected, with a reason;
- replies are never dropped (the client asked for them), so a client that sends requests but
  does not read the replies is throttled instead: while its out-buffer is over the bound, or it
  has ``MAX_IN_FLIGHT`` calls unanswered, the daemon stops reading from it.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any, Callable

from .. import wire
from ..errors import JidocoderError

log = logging.getLogger("jidocoder.daemon")

READ_CHUNK = 64 * 1024
MAX_IN_FLIGHT = 128  # unanswered calls per connection before the daemon stops reading it


class ClientConnection:
    def __init__(self, sock: socket.socket, peer_pid: int, *, max_request: int, max_buffer: int,
                 on_interest: Callable[["ClientConnection", bool, bool], None],
                 on_closed: Callable[["ClientConnection"], None],
                 flush_soon: Callable[["ClientConnection"], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer_pid = peer_pid
        self.decoder = wire.FrameDecoder(max_request + wire.HEADER_SIZE + 1024)
        self.max_frame = max_request + 1024 * 1024  # replies may be a little larger than requests
        self.max_buffer = max_buffer
        self.topics: set[str] = set()
        self.closed = False
        self.close_reason = ""
        self._out: deque[bytes | memoryview] = deque()
        self._out_bytes = 0
        self._on_interest = on_interest
        self._flush_soon = flush_soon
        self._flush_due = False  # a flush is scheduled for the end of the loop's turn
        self.in_flight = 0
        self.backlog: deque[Any] = deque()  # requests read but held back while throttled
        self.resume_scheduled = False
        self._on_closed = on_closed
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
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            self.close(f"read failed: {exc}")
            return []
        if not data:
            self.close("disconnected")
            return []
        try:
            return self.decoder.feed(data)
        except JidocoderError as exc:
            self.send({"id": None, "error": exc.to_wire()})
            self.flush()
            self.close(f"bad frame: {exc}")
            return []

    # -- calls -------------------------------------------------------------------------------
    def next_call(self) -> Any:
        """The next request to dispatch, or None while throttled (or none is waiting)."""
        if self.backlog and self.accepting_calls:
            return self.backlog.popleft()
        return None

    def begin_call(self) -> None:
        self.in_flight += 1
        self._update_interest()

    def reply(self, request_id: Any, message: dict[str, Any]) -> None:
        """The answer to a call that ``begin_call`` counted."""
        self.in_flight -= 1
        self.send({"id": request_id, **message})
        self._update_interest()

    @property
    def accepting_calls(self) -> bool:
        return not self.closed and self.in_flight < MAX_IN_FLIGHT and self._out_bytes <= self.max_buffer

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
        if self.closed:
            return
        try:
            frame = wire.pack_frame(message, self.max_frame)
        except JidocoderError as exc:  # a reply too large for the link, or unencodable
            frame = wire.pack_frame({"id": message.get("id"), "error": exc.to_wire()}, self.max_frame)
        self._queue(frame)

    def send_event(self, event: dict[str, Any]) -> None:
        """Events are what a client can fall behind on: past the bound it is cut off. (A reply
        is never dropped: the client asked for it, and one request brings one reply.)"""
        if self.closed:
            return
        frame = wire.pack_frame({"event": event}, self.max_frame)
        if self._out_bytes + len(frame) > self.max_buffer:
            self.close(f"fell {self._out_bytes} bytes behind (client_buffer_bytes="
                       f"{self.max_buffer}): not reading its events")
            return
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        """Frames queued in one turn of the loop leave together at its end (one send)."""
        was_empty = not self._out
        self._out.append(frame)
        self._out_bytes += len(frame)
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
        self._update_interest()

    @property
    def pending_bytes(self) -> int:
        return self._out_bytes

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._out.clear()
        self._out_bytes = 0
        if reason != "disconnected":
            log.warning("client %s disconnected: %s", self.peer_pid, reason)
        self._on_closed(self)
