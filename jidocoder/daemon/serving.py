"""A session process's one wait: its link to the daemon and every client's direct channel.

The daemon hands a session one end of a socketpair per client that calls it (``{"channel": n}``
on the link, the fd attached with SCM_RIGHTS; docs/protocol.md, "Direct channels"); the client
holds the other end and sends the session's calls there, so a call crosses one hop. The daemon
keeps no end. What a channel may cost the session is bounded per channel:

- a request frame is at most ``spec.max_frame`` and decoded within the same memory budget as a
  relayed one (``wire.FrameDecoder(relayed=True)``); a header over it closes that channel only;
- a client that does not read its replies is throttled: a channel's requests are served at most
  ``CHANNEL_BATCH`` at a time, and while replies to it are unsent the session serves and reads
  nothing more of that channel, so its backlog is one batch of replies; one read of a channel
  is at most ``wire.RECV_CHUNK``, so what is read and not yet served is bounded too;
- while ``spec.events_window`` bytes of its direct calls' events are unacknowledged by the
  daemon (a subscriber of them is behind: the daemon's pacing.py) no channel is read; the link
  still is;
- a closed channel's requests not yet begun are dropped unapplied (API.md §10: its client gave
  up), exactly as the daemon's ``cancel`` does for relayed calls.

Ordering with events: a direct call's events go to the daemon on the link (``{"events": [...],
"mark": n}``) before its reply goes on the channel, and the reply carries ``mark`` too; the
daemon sends the events with ``mark: [pid, n]``, so a Client subscribed to the session holds
the reply until it has seen that mark (docs/protocol.md). A session the daemon said is idle asks
the daemon to make it active (``{"wake": n}``) and waits for ``{"awake": published}`` before it
begins a direct call: ``idle → active`` is stored and published before the call is served.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from typing import Any

from .. import wire
from ..errors import JidocoderError
from . import exits

log = logging.getLogger("jidocoder.session")

_MAX_FDS = 16  # channel fds one read of the link may bring
_FD_SPACE = socket.CMSG_SPACE(_MAX_FDS * 4)  # 4: sizeof(int)
CHANNEL_BATCH = 16  # a channel's requests served together at most (their replies: its backlog)
_IN = select.POLLIN | select.POLLPRI
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL
# Direct calls that sent no events are told to the daemon's metrics at most this often (those
# that did are told with their events): a reader called back to back would otherwise cost the
# session and the daemon one frame per call.
REPORT_SECONDS = 0.05


class Channel:
    """One client's direct channel, as its session holds it."""

    __slots__ = ("sock", "decoder", "out", "pending", "writing")

    def __init__(self, fd: int, max_frame: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.decoder = wire.FrameDecoder(max_frame, relayed=True)
        self.out: deque[bytes | memoryview] = deque()
        self.pending: deque[Any] = deque()  # requests read and not yet begun
        self.writing = False  # polled for POLLOUT: replies unsent, or requests pending

    def read(self) -> bool:
        """One read's whole frames into ``pending``; False once the client closed its end."""
        try:
            data = self.sock.recv(wire.RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        self.pending += self.decoder.feed(data)
        return True

    def flush(self) -> bool:
        """Send what the socket takes now; True once nothing is left."""
        while self.out:
            try:
                sent = wire.send_buffers(self.sock, self.out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # the client is gone: its replies with it
                self.out.clear()
                return True
            wire.drop_sent(self.out, sent)
        return True


class SessionLoop:
    """``SessionProcess.serve``'s loop: the link's frames as before (relayed calls, cancels),
    plus channels handed over on it, each served in batches like the link's."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.link = process.sock
        self.decoder = wire.FrameDecoder(process.spec.max_frame, relayed=True)
        self.channels: dict[int, Channel] = {}
        self.fds: deque[int] = deque()  # received with the link's bytes, for its channel frames
        self.poller = select.poll()
        self.poller.register(self.link, _IN)
        self.idle = False  # the daemon said so: a direct call first asks to be made active
        self.holding = False  # the events window is full: no channel is read (pacing.py)
        self.unacked: deque[tuple[int, int]] = deque()  # events frames sent: (mark, bytes)
        self.unacked_bytes = 0
        self.ack_asked = False
        self.mark = 0  # event batches sent on the link for direct calls (and wakes)
        self.held: list[Any] = []  # link requests read while waiting to be woken
        # Direct calls served, [op, seconds, failed], for the daemon's metrics (it sees none of
        # them): sent with the next events frame, or alone when the loop is about to wait
        # (at most every REPORT_SECONDS), never in a frame of their own on a call's path.
        self.served: list[list[Any]] = []
        self.reported_at = 0.0

    def run(self) -> int:
        process, table, slot = self.process, self.process.table, self.process.spec.slot
        timeout_ms = process.beat_interval * 1000
        while True:
            table.beat(slot)
            ready = self.poller.poll(self.report_in_ms() if self.served else timeout_ms)
            if not ready and self.served:  # about to wait: the daemon's metrics first
                if self.report_in_ms() == 0:
                    self.report_calls()
                continue
            for fd, mask in ready:
                if fd == self.link.fileno():
                    code = self.on_link()
                    if code is not None:
                        return code
                elif fd in self.channels and not self.holding:
                    self.on_channel(fd, mask)

    # -- the link ----------------------------------------------------------------------------
    def on_link(self) -> int | None:
        """Serve what the daemon sent; an exit code when the process is to end."""
        try:
            frames, eof = self.read_link()
        except JidocoderError:
            return exits.EXIT_PROTOCOL
        requests = self.take_control(frames)
        if self.held:
            requests, self.held = self.held + requests, []
        if requests:
            self.serve_link(requests)
        if eof:  # hibernated (docs/api.md §13), or the daemon is gone
            self.process.close_store()
            return exits.EXIT_OK
        return None

    def read_link(self) -> tuple[list[Any], bool]:
        """Every whole frame on the link now (a ``cancel`` must be seen before the calls it
        names begin), the fds that came with them queued in order."""
        frames: list[Any] = []
        while True:
            try:
                data, ancillary, _flags, _ = self.link.recvmsg(wire.RECV_CHUNK, _FD_SPACE,
                                                               socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return frames, False
            except OSError:
                return frames, True
            self._keep_fds(ancillary)
            if not data:
                return frames, True
            frames += self.decoder.feed(data)

    def _keep_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        self.fds.extend(wire.received_fds(ancillary))

    def take_control(self, frames: list[Any]) -> list[Any]:
        """Act on the daemon's control frames (channels, idleness); the rest are requests."""
        requests = []
        for frame in frames:
            if type(frame) is not dict:
                requests.append(frame)
            elif "channel" in frame:
                self.add_channel()
            elif "acked" in frame:
                self.acked(frame["acked"])
            elif "idle" in frame:
                self.idle = True
                if self.process.begun > frame["idle"]:  # calls the daemon had not counted yet
                    self.wake()
            elif "awake" not in frame:
                requests.append(frame)
        return requests

    def serve_link(self, frames: list[Any]) -> None:
        process = self.process
        frames = process.without_cancelled(frames)
        if len(frames) == 1:
            process.mark_started(frames[0])
            process.send(process.handle(frames[0]))
        elif frames:
            process.serve_together(frames)
        process.mark_done()

    def add_channel(self) -> None:
        if not self.fds:  # cannot be: the fd comes with its frame's first byte
            log.error("a channel frame came without its fd")
            return
        channel = Channel(self.fds.popleft(), self.process.spec.max_frame)
        self.channels[channel.sock.fileno()] = channel
        if not self.holding:
            self.poller.register(channel.sock, _IN)

    def send_events(self, events: list[Any], mark: int) -> None:
        """A direct call's events, to the daemon, under the events window (pacing.py): an
        acknowledgement is asked for once half of it is used; with all of it used, no channel
        is read until one comes."""
        process, window = self.process, self.process.spec.events_window
        frame: dict[str, Any] = {"events": events, "mark": mark}
        if self.served:  # the calls that made them, and any before, for the metrics
            frame["served"], self.served, self.reported_at = self.served, [], time.monotonic()
        data = process.encode_reply(frame)
        if not self.ack_asked and self.unacked_bytes + len(data) >= window // 2:
            self.ack_asked = True
            frame["ack"] = True
            data = process.encode_reply(frame)
        self.unacked.append((mark, len(data)))
        self.unacked_bytes += len(data)
        process.sock.sendall(data)
        if self.unacked_bytes >= window:
            self.hold(True)

    def acked(self, mark: Any) -> None:
        """The daemon published (and its subscribers took enough of) the events up to ``mark``."""
        if type(mark) is not int:
            return
        while self.unacked and self.unacked[0][0] <= mark:
            self.unacked_bytes -= self.unacked.popleft()[1]
        self.ack_asked = False
        if self.unacked_bytes < self.process.spec.events_window:
            self.hold(False)
        elif self.unacked:  # one frame larger than the window is still out: ask for it alone
            self.ack_asked = True
            self.process.send({"mark": self.unacked[-1][0], "ack": True})

    def hold(self, holding: bool) -> None:
        """Serve no channel while the events window is full; its clients wait, their calls
        unread, until the daemon acknowledges."""
        if holding == self.holding:
            return
        self.holding = holding
        for fd, channel in self.channels.items():
            if holding:
                self.poller.unregister(fd)
            else:  # POLLOUT: its requests still pending are served at once
                channel.writing = bool(channel.out or channel.pending)
                self.poller.register(fd, select.POLLOUT if channel.writing else _IN)

    def wake(self) -> int | None:
        """Ask the daemon to make the session active (stored, published) and wait until it
        has: the mark to carry if it published, else None. Link requests read meanwhile wait
        in ``held``; channels handed over meanwhile are added."""
        self.mark += 1
        mark = self.mark
        self.process.send({"wake": mark})
        awake: bool | None = None
        rest: list[Any] = []
        while awake is None:
            try:  # the link's receive timeout (SO_RCVTIMEO) keeps the heartbeat going
                data, ancillary, _flags, _ = self.link.recvmsg(wire.RECV_CHUNK, _FD_SPACE)
            except (BlockingIOError, InterruptedError):
                self.process.table.beat(self.process.spec.slot)
                continue
            except OSError:
                data, ancillary = b"", []
            self._keep_fds(ancillary)
            if not data:  # the daemon is gone: the loop's next read of the link says so
                break
            for frame in self.decoder.feed(data):
                if awake is None and type(frame) is dict and "awake" in frame:
                    awake = bool(frame["awake"])
                else:
                    rest.append(frame)
        self.idle = False
        self.held += self.take_control(rest)
        return mark if awake else None

    # -- channels ----------------------------------------------------------------------------
    def on_channel(self, fd: int, mask: int) -> None:
        channel = self.channels[fd]
        if channel.out and not channel.flush():
            return  # still not taken: nothing more for this client until it is
        if not channel.pending and mask & (_IN | _GONE):
            try:
                open_ = channel.read()
            except JidocoderError as exc:  # a header over the limit: that channel is unusable
                channel.out.append(wire.pack_frame({"id": None, "error": exc.to_wire()}, wire.MAX_FRAME))
                channel.flush()
                self.drop(fd)
                return
            if not open_:  # its client closed it: what it had not begun is never applied
                self.drop(fd)
                return
        self.serve_pending(channel)

    def serve_pending(self, channel: Channel) -> None:
        """Serve the channel's requests, a batch at a time, while its replies are taken; wait
        for POLLOUT while some are not (or requests wait behind a hold), else for requests."""
        pending = channel.pending
        while pending and not self.holding:
            count = min(len(pending), CHANNEL_BATCH)
            self.serve_channel(channel, [pending.popleft() for _ in range(count)])
            if channel.out:
                break
        if self.holding:  # its channels are not polled now: hold(False) sets them up again
            return
        writing = bool(channel.out or pending)
        if writing != channel.writing:
            channel.writing = writing
            self.poller.modify(channel.sock, select.POLLOUT if writing else _IN)

    def serve_channel(self, channel: Channel, frames: list[Any]) -> None:
        woke = self.wake() if self.idle else None
        mark = None
        process = self.process
        began = time.monotonic()
        if len(frames) == 1:
            process.mark_started(frames[0])
            replies = [process.handle(frames[0])]
        else:
            replies = process.serve_together(frames, send=False)
        seconds = (time.monotonic() - began) / len(replies) if replies else 0.0
        self.served += [[_op(frame), seconds, "error" in reply]  # a stop ends the batch early
                        for frame, reply in zip(frames, replies, strict=False)]
        events = [event for reply in replies for event in reply.pop("events", None) or ()]
        if events:
            self.mark += 1
            mark = self.mark
            self.send_events(events, mark)
        for reply in replies:  # the marks its caller waits for, if subscribed (_direct.py)
            if mark is not None:
                reply["mark"] = mark  # its events: on the session's topic
            if woke is not None:
                reply["woke"] = woke  # idle → active: on both topics
            channel.out.append(_packed(reply))
        # Between calls from here, before the replies leave: a process lost with them unsent has
        # committed each write with its call id, so its successor, sent the call again (not
        # begun, says the daemon), answers it from that record; and a process whose client does
        # not read its replies may still be hibernated.
        process.mark_done()
        channel.flush()

    def report_in_ms(self) -> float:
        """How long the loop may wait before ``served`` is due to the daemon."""
        return max(0.0, (self.reported_at + REPORT_SECONDS - time.monotonic()) * 1000)

    def report_calls(self) -> None:
        self.process.send({"served": self.served})
        self.served, self.reported_at = [], time.monotonic()

    def drop(self, fd: int) -> None:
        channel = self.channels.pop(fd)
        if not self.holding:
            self.poller.unregister(fd)
        channel.sock.close()


def _op(frame: Any) -> str:
    op = frame.get("op") if type(frame) is dict else None
    return op if type(op) is str else "unknown"


def _packed(reply: dict[str, Any]) -> bytes:
    try:
        return wire.pack_frame(reply, wire.MAX_FRAME)
    except JidocoderError as exc:  # over 4 GiB, or not encodable: say so instead
        return wire.pack_frame({"id": reply.get("id"), "error": exc.to_wire()}, wire.MAX_FRAME)
