"""The Ray backend as the daemon drives it: ``backend.Backend`` over ``ray_backend.RayBackend``,
one ``RayLink`` per session that makes the same frames a forked session sends (API.md §14).

So the supervisor drives a Ray session as it drives a forked one: a ``ready`` frame when the
actor serves, one reply frame per call (with its events, once its writes are stored on the
daemon's disk), then EOF with the death already known (``death``, and why in ``kill_reason``),
where a forked process's exit would be reaped. What a forked session writes to its table slot
this module writes for the actor, which shares no memory with the daemon:

- counts (messages, files): carried with each answer and written to the slot here;
- heartbeat: an actor with no call outstanding is beaten here; one with a call outstanding is
  not, so a call running past ``hang_timeout`` is a hang, ended like a hung process (with no
  stack dump: SIGUSR1 has no meaning for an actor) and counted as a crash;
- memory: not sampled (its process is on another machine); Ray's memory monitor is the limit.

One call is outstanding at the actor at a time; the others wait here, in order. So a call the
actor has been sent is exactly the one begun (``take_in_flight``), and a closed client's calls
not begun are answered here, unapplied (``cancel``, API.md §10), as a forked session answers
them. The cost is one actor call's latency between a session's calls, never their order.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import time
from collections import deque
from typing import Any

from .. import wire
from ..errors import RequestTimeoutError
from .backend import Answered, Died, Happening, Ready
from .link import Call, Pending, Replier, new_request_id
from .loop import Loop
from .ray_backend import RayBackend
from .session import SessionSpec, boot_failure
from .table import SessionTable

log = logging.getLogger("jidocoder.daemon")

_keys = itertools.count(-1, -1)  # by_pid keys no pid can take: pids on two nodes may be equal
DIED = signal.SIGKILL  # the wait status a death stands as: a process killed, not one that exited


class RaySessions:
    """``backend.Backend``: sessions as actors of the Ray cluster at ``settings.ray_address``
    (one started on this machine if it is empty)."""

    name = "ray"
    hands_out_channels = False  # an actor is not on this machine: its calls stay relayed
    live_pids: set[int] = set()  # nothing of its own to wait for: the actors are the sessions

    def __init__(self, settings: Any, loop: Loop, table: SessionTable) -> None:
        self.loop = loop
        self.table = table
        self.remote = RayBackend(settings.ray_address or None)
        self.links: dict[str, RayLink] = {}
        self.beat_interval = min(1.0, settings.hang_timeout / 4)

    def start(self) -> None:
        self.loop.watch(self.remote, self._collect)
        self.loop.every(self.beat_interval, self._beat_idle)

    def open(self, spec: SessionSpec, incarnation: int, max_reply: int) -> RayLink:
        link = RayLink(self, spec, incarnation)
        try:
            self.remote.start_session(spec)
        except Exception as exc:  # noqa: BLE001 - its store cannot be read: ended as a process would be
            link.failed_to_start(exc)
        else:
            self.links[spec.session_id] = link
        return link

    def top_up(self, wanted: int) -> None:
        pass  # an actor is made on demand; Ray has no spares to keep

    def exited(self, pid: int) -> None:
        pass  # a child of Ray's (a cluster it started here), never a session

    def close(self) -> None:
        """Nothing more starts; the sessions are stopped one by one by the supervisor, and the
        actors are the daemon's (not detached): Ray ends any left when the daemon ends."""

    def _collect(self) -> None:
        for happened in self.remote.collect():
            link = self.links.get(happened.session_id)
            if link is not None:
                if isinstance(happened, Died):
                    del self.links[happened.session_id]
                link.on(happened)

    def _beat_idle(self) -> None:
        now = time.monotonic()
        for link in self.links.values():
            if link.outstanding is None:
                self.table.beat(link.slot, now)


class RayLink:
    """``backend.SessionHandle`` for one incarnation of a session as a Ray actor."""

    on_this_machine = False

    def __init__(self, sessions: RaySessions, spec: SessionSpec, incarnation: int) -> None:
        self.sessions = sessions
        self.session_id = spec.session_id
        self.slot = spec.slot
        self.max_frame = spec.max_frame
        self.key = next(_keys)
        self.pid = 0  # the actor's process on its node, once it is ready
        self.incarnation = incarnation
        self.ready = False
        self.eof = False
        self.exit_status: int | None = None
        self.kill_reason: str | None = None
        self.stopping = False
        self.last_word: str | None = None
        self.broken: str | None = None
        self.death: int | None = None
        self.in_flight: dict[int, Call] = {}
        self.outstanding: int | None = None  # the call the actor has been sent
        self._queue: deque[tuple[int, bytes]] = deque()  # calls not sent yet, in order
        self._frames: list[Any] = []
        self._ended = False
        self._stop_asked = False
        self._begun = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        sessions.table.beat(self.slot)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    # -- calls ---------------------------------------------------------------------------------
    def request(self, op: str, args: bytes, pending: Pending) -> bool:
        """As ``SessionLink.request``: framed around ``args`` (LimitExceededError past the
        session's frame limit), sent when the call before it is answered."""
        link_id = new_request_id()
        frame = b"".join(wire.request_buffers(link_id, op, args, None, self.max_frame))
        self.in_flight[link_id] = Call(op, args, pending)
        pending.client.links.add(self)  # type: ignore[arg-type]  # a handle, as a SessionLink is
        self._queue.append((link_id, frame))
        self._send_next()
        return False  # nothing for the loop to flush

    def _send_next(self) -> None:
        if self.outstanding is not None or not self._queue or self._ended or not self.ready:
            return
        link_id, frame = self._queue.popleft()
        deadline = self.in_flight[link_id].pending.deadline
        self.outstanding = link_id
        self._begun += 1
        table = self.sessions.table
        table.write_started(self.slot, link_id, self._begun)
        table.beat(self.slot)  # from here, hang_timeout without an answer is a hang
        budget = None if deadline is None else deadline - time.monotonic()
        self.sessions.remote.send(self.session_id, frame, budget)

    def cancel(self, client: Replier) -> bool:
        """The client is gone: its calls not sent to the actor are answered here, unapplied."""
        gone = [(link_id, frame) for link_id, frame in self._queue
                if self.in_flight[link_id].pending.client is client]
        for entry in gone:
            self._queue.remove(entry)
            self._frames.append({"id": entry[0], "error": RequestTimeoutError(
                "its client closed before its session began it: not applied").to_wire()})
        if gone:
            self._wake()
        return False

    @property
    def unsent(self) -> bool:
        return bool(self._queue)

    def send(self, frame: dict[str, Any]) -> bool:
        return False  # a forked session's control frames (its spec, cancels) have no actor

    def flush(self) -> None:
        pass

    def read_frames(self) -> list[Any]:
        """What the actor said since the last read; EOF once its death has been read."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        frames, self._frames = self._frames, []
        if self._ended:
            self.eof = True
        return frames

    def take_in_flight(self, started: int) -> tuple[list[Call], list[Call]]:
        """The call the actor was sent (begun), and those that waited here (never read)."""
        begun = [self.in_flight.pop(self.outstanding)] if self.outstanding in self.in_flight else []
        unread = list(self.in_flight.values())
        self.in_flight.clear()
        self._queue.clear()
        return begun, unread

    # -- what the actor did ----------------------------------------------------------------------
    def on(self, happened: Happening) -> None:
        if isinstance(happened, Ready):
            self.pid = happened.pid
            self._counts(happened.message_count, happened.file_count)
            self._frames.append({"ready": {"message_count": happened.message_count}})
        elif isinstance(happened, Answered):
            self.outstanding = None
            self._counts(happened.message_count, happened.file_count)
            self._frames.append(happened.reply)
            self._send_next()  # the next waiting call, now that this one is answered
        else:
            self._died(happened)
        self._wake()

    def _counts(self, messages: int, files: int) -> None:
        self.sessions.table.write_counts(self.slot, messages, files)
        self.sessions.table.beat(self.slot)

    def _died(self, died: Died) -> None:
        self._ended = True
        self.death = DIED
        if self.kill_reason is None and not self.stopping:
            self.kill_reason = died.reason  # a crash with Ray's reason (its process, its node)
        log.info("session %s: its actor (pid %d) ended: %s", self.session_id, self.pid, died.reason)

    def failed_to_start(self, exc: Exception) -> None:
        """Its store could not be read: ended as a forked process ends for it (``session``),
        so that the supervisor retries, gives up or moves the store aside, as for one."""
        try:
            stop = boot_failure(exc)
        except Exception:  # noqa: BLE001 - not a store's failure: a crash, with its words
            self.kill_reason = f"could not start its actor: {exc}"
            self.death = DIED
        else:
            self.last_word = next(iter((stop.last_word or {}).values()), None)
            self.death = stop.exit_code << 8  # the wait status of a process that exited so
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # full: the loop will read anyway; closed: gone
            pass

    # -- ending it -------------------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        """SIGTERM or SIGKILL end the actor (``ray.kill``); SIGUSR1 (a stack dump) has no actor
        equivalent and is skipped."""
        if self._ended or self._stop_asked or signum not in (signal.SIGTERM, signal.SIGKILL):
            return
        self._stop_asked = True
        self.sessions.remote.stop_session(self.session_id)

    def hang_up(self) -> None:
        """Hibernation: nothing of the actor needs keeping (the daemon stored it all)."""
        self.signal(signal.SIGTERM)

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
