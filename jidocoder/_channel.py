"""A direct call without I/O: what ``Client`` (_direct.py) and ``AsyncClient`` (_adirect.py) share.

Like _protocol.py for the daemon connection, this module never touches a socket: each shell
moves a channel's bytes and waits in its own way (a lock and ``poll`` in a thread; a reader
callback and a Future on the event loop) and asks this module what they mean and what comes
next (docs/protocol.md, "Direct channels"):

    DirectCall.start(core, op, args, timeout) → the call (id, frame, deadline) or None: relay it
    ChannelReplies.feed(bytes) / .take(id)   → the reply to this call; late ones are dropped
    LOST / UNSENT                             → the channel ended after / before the frame went
    call.after_lost(answer)                   → SessionCrashedError if the dead process began it;
                                                 else the shell sends the same frame on a new channel
    call.outcome(reply)                       → the result, or the error the session answered
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from . import wire
from ._protocol import ClientProtocol
from .errors import ProtocolError, SessionCrashedError, from_wire

__all__ = ["CHANNEL_IDLE_SECONDS", "ChannelReplies", "DIRECT_OPS", "DirectCall", "LOST", "UNSENT",
           "unused"]

# Calls a session serves itself (the daemon's SESSION_OPS): these take a channel.
DIRECT_OPS = frozenset({
    "send_message", "get_conversation_history", "clear_conversation", "add_file",
    "remove_file", "get_active_files", "update_file_index", "get_file_index", "build_context",
    "cache_file", "get_file", "invalidate_file", "clear_session_cache"})

CHANNEL_IDLE_SECONDS = 60.0  # a channel unused this long is closed (one fd less on each side)

LOST = object()  # a channel ended (EOF, reset, broken framing) before the reply came
# The channel had ended (or was closed) before this call's frame went on it: nothing to ask the
# daemon, the call goes on a new channel (its process dead, the successor's).
UNSENT = object()


class ChannelReplies:
    """The frames one channel brought: a session's replies, in the order of its calls."""

    __slots__ = ("decoder", "frames")

    def __init__(self) -> None:
        self.decoder = wire.FrameDecoder(wire.MAX_FRAME)  # our own session's replies
        self.frames: deque[Any] = deque()  # read, not taken yet

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """False: the bytes are not frames; the channel is out of step, as good as lost."""
        try:
            self.frames.extend(self.decoder.feed(data))
        except ProtocolError:
            return False
        return True

    def take(self, request_id: int) -> dict[str, Any] | None:
        """The reply to ``request_id`` if it has come (None: not yet). Replies before it are
        late ones, to calls whose callers gave up: dropped. A refused frame (``id`` null) or
        one that is not a reply raises: the channel is out of step and must be closed."""
        frames = self.frames
        while frames:
            frame = frames.popleft()
            if not isinstance(frame, dict):
                raise ProtocolError(f"the session sent a {type(frame).__name__}, not a reply")
            if frame.get("id") == request_id:
                return frame
            if frame.get("id") is None and isinstance(frame.get("error"), dict):
                raise from_wire(frame["error"])  # the session refused a frame, closed the channel
        return None


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

    def lost_query(self, pid: int) -> dict[str, Any]:
        """The daemon's ``channel_lost`` args: did process ``pid`` begin this call?"""
        return {"pid": pid, "ids": [self.request_id]}

    def after_lost(self, answer: Any) -> None:
        """The daemon's answer to ``lost_query``: begun raises; else the caller resends."""
        if isinstance(answer, dict) and answer.get("begun"):
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


def unused(last_used: float, now: float) -> bool:
    """A channel not used for ``CHANNEL_IDLE_SECONDS``: closed at the next call."""
    return now - last_used > CHANNEL_IDLE_SECONDS
