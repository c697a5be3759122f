"""A direct call without I/O: what ``Client`` (_direct.py) and ``AsyncClient`` (_adirect.py) share.

Like _protocol.py for the daemon connection, this module never touches a socket: each shell
moves a channel's bytes and waits in its own way (threads taking turns to read; a reader
callback and a Future per call on the event loop) and asks this module what they mean and
what comes next (docs/protocol.md, "Direct channels"):

    DirectCall.start(core, op, args, timeout) → the call (id, frame, deadline) or None: relay it
    ChannelCalls.sent(id) / .feed(bytes)      → the calls in flight on a channel, in the order
                                                 sent, and each reply routed to its call
    .take(id) → reply | LOST | None           → answered; the channel ended first; not yet
    CLOSED                                    → closed on this side before the frame went on
                                                 it: the call goes on a new channel, no question
    call.after_lost(answer)                   → SessionCrashedError if the dead process began it;
                                                 else the shell sends the same frame again
    call.outcome(reply)                       → the result, or the error the session answered
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from . import wire
from ._protocol import ClientProtocol
from .errors import ProtocolError, SessionCrashedError, from_wire

__all__ = ["CHANNEL_IDLE_SECONDS", "CLOSED", "ChannelCalls", "DIRECT_OPS", "DirectCall", "LOST",
           "Sweep", "take_unused"]

# Calls a session serves itself (the daemon's SESSION_OPS): these take a channel.
DIRECT_OPS = frozenset({
    "send_message", "get_conversation_history", "clear_conversation", "add_file",
    "remove_file", "get_active_files", "update_file_index", "get_file_index", "build_context",
    "cache_file", "get_file", "invalidate_file", "clear_session_cache"})

CHANNEL_IDLE_SECONDS = 60.0  # a channel unused this long is closed (one fd less on each side)


class _Used(Protocol):
    last_used: float


C = TypeVar("C", bound=_Used)

LOST = object()  # the channel ended (EOF, reset, bytes not frames) before the reply came
CLOSED = object()  # the channel was closed on this side before the call was sent on it


class ChannelCalls:
    """The calls one channel carries: those in flight (in the order sent: the daemon's answer
    on a loss needs it), the replies come for them, and, once it ended, which were in flight."""

    __slots__ = ("decoder", "in_flight", "replies", "lost_ids")

    def __init__(self) -> None:
        self.decoder = wire.FrameDecoder(wire.MAX_FRAME)  # our own session's replies
        self.in_flight: dict[int, None] = {}  # ids sent, not answered, in the order sent
        self.replies: dict[int, Any] = {}  # answered, not yet taken by their caller
        self.lost_ids: list[int] | None = None  # set when it ended: the ids then in flight

    def sent(self, request_id: int) -> None:
        self.in_flight[request_id] = None

    def forget(self, request_id: int) -> None:
        """Its caller is done, or gave up: a late reply finds no call and is dropped."""
        self.in_flight.pop(request_id, None)
        self.replies.pop(request_id, None)

    def take(self, request_id: int) -> Any:
        """Its reply (a dict), ``LOST`` if the channel ended first, or None: not yet."""
        if request_id in self.replies:
            return self.replies.pop(request_id)
        return LOST if self.lost_ids is not None else None

    def end(self) -> None:
        """The channel ended (EOF, a reset): the calls in flight are lost."""
        if self.lost_ids is None:
            self.lost_ids = list(self.in_flight)

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Route each reply ``data`` completes to its call. False: the channel is finished
        and must be closed (bytes that are not replies: lost; or the session refused a frame
        and closed it: each call in flight has that refusal as its reply)."""
        try:
            frames = self.decoder.feed(data)
        except ProtocolError:
            self.end()
            return False
        for frame in frames:
            if not isinstance(frame, dict):
                self.end()  # not our session's: unusable
                return False
            request_id = frame.get("id")
            if request_id in self.in_flight:
                del self.in_flight[request_id]
                self.replies[request_id] = frame
            elif request_id is None and isinstance(frame.get("error"), dict):
                for waiting in self.in_flight:
                    self.replies[waiting] = frame
                self.in_flight.clear()
                return False
        return True


class DirectCall:
    """One call of a session's own op on its channel: the frame, sent as it is however many
    channels it takes (same id, call id, deadline), and what each answer means."""

    __slots__ = ("session_id", "op", "request_id", "frame", "args", "deadline")

    def __init__(self, session_id: str, op: str, request_id: int, frame: bytes,
                 args: dict[str, Any], deadline: float) -> None:
        self.session_id = session_id
        self.op = op
        self.request_id = request_id
        self.frame = frame
        self.args = args  # with the call id: a relayed resend keeps it
        self.deadline = deadline

    @classmethod
    def start(cls, core: ClientProtocol, op: str, args: dict[str, Any],
              timeout: float) -> DirectCall | None:
        """The call, packed; None where it goes to the daemon instead: no session named (the
        daemon says what is wrong) or a daemon that hands out no channels."""
        session_id = args.get("session_id")
        if not isinstance(session_id, str) or not core.channels:
            return None
        deadline = time.monotonic() + timeout
        request_id, frame, args = core.direct_request(op, args, deadline)
        return cls(session_id, op, request_id, frame, args, deadline)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def lost_query(self, pid: int, lost_ids: list[int] | None) -> dict[str, Any]:
        """The daemon's ``channel_lost`` args: which of the calls in flight when process
        ``pid``'s channel ended (this one among them) had it begun?"""
        return {"pid": pid, "ids": lost_ids or [self.request_id]}

    def after_lost(self, answer: Any) -> None:
        """The daemon's answer to ``lost_query``: begun raises; else the caller resends."""
        begun = answer.get("begun") if isinstance(answer, dict) else None
        if isinstance(begun, list) and self.request_id in begun:
            raise SessionCrashedError(
                f"session {self.session_id}'s process died serving this call; it may or may "
                "not have been applied")

    def mark(self, core: ClientProtocol, reply: dict[str, Any]) -> int:
        """The mark of the events this client must receive before the reply returns (0: none)."""
        return core.mark_to_await(self.session_id, reply)

    @staticmethod
    def outcome(reply: dict[str, Any]) -> Any:
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply.get("result")


class Sweep:
    """When a client looks for channels unused for ``CHANNEL_IDLE_SECONDS``: at a call, once in
    every tenth of that time, not at every call (a look goes over all of its channels: a client
    calling 1,000 sessions would spend more on that than on its call)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = time.monotonic()

    def take(self, channels: dict[str, C], now: float, busy: Callable[[C], object]) -> list[C]:
        """``take_unused``, if a look is due."""
        if now - self.at < CHANNEL_IDLE_SECONDS / 10:
            return []
        self.at = now
        return take_unused(channels, now, busy)


def take_unused(channels: dict[str, C], now: float, busy: Callable[[C], object]) -> list[C]:
    """The channels not used for ``CHANNEL_IDLE_SECONDS`` and not ``busy``, taken out of
    ``channels`` for the shell to close (at a call: a session holds one fd per client that
    uses it, not per client ever)."""
    idle = [session_id for session_id, channel in channels.items()
            if now - channel.last_used > CHANNEL_IDLE_SECONDS and not busy(channel)]
    return [channels.pop(session_id) for session_id in idle]
