"""The session side of the Ray backend: one session's logic in a Ray actor (docs/ray.md).

The actor is the forked session's ``SessionProcess``, handed a ``WriteRecorder`` for a store:
the same handlers, the same context, the same cache, the same replies and events. It is compute
and cache only; the calls' writes go back with their replies, and the daemon stores them before
it answers (``ray_backend``). So the actor holds nothing the daemon does not also hold, and a
node that dies takes only what no client was told was stored.

This module does not import Ray: ``ray_backend`` wraps ``SessionActor`` with ``ray.remote``, so
the class is also usable (and tested) in a plain process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .. import wire
from .exits import StopServing
from .session import SessionProcess, SessionSpec, load_context
from .callids import CallLog
from .writes import Calls, Stored, Write, WriteRecorder

# A request's ``deadline`` is CLOCK_MONOTONIC, which is one clock per machine: across nodes it
# travels as the seconds its client still waits (``budget``), turned back into this node's clock
# on arrival. Lenient by the transit time only, never strict by a clock offset.
BUDGET = "budget"


class _NoTable:
    """The shared-memory table a forked session writes to; an actor shares no memory with the
    daemon (its counters travel with its replies)."""

    def beat(self, slot: int, now: float | None = None) -> None:
        pass

    def write_message_count(self, slot: int, count: int) -> None:
        pass

    def write_started(self, slot: int, request_id: int, begun: int = 0) -> None:
        pass

    def write_counts(self, slot: int, messages: int, files: int) -> None:
        pass


class SessionActor:
    """One session, served where Ray placed it."""

    def __init__(self, spec: SessionSpec, stored: Stored, calls: Calls | None = None) -> None:
        self.recorder = WriteRecorder(stored, calls)
        self.process = SessionProcess(spec, None, _NoTable(), store=self.recorder)  # type: ignore[arg-type]

    def ready(self, node_id: str = "") -> dict[str, Any]:
        """Where it runs: the ``pid`` a client is told (§14: the actor's process on its node)."""
        return {"pid": os.getpid(), "node": node_id, "counts": self.counts()}

    def counts(self) -> tuple[int, int]:
        """Messages and files held: what a forked session writes to its table slot."""
        return self.process.context.message_count, self.process.context.file_count

    def handle(self, frame: Any, budget: float | None = None) -> tuple[dict[str, Any], list[Write], tuple[int, int]]:
        """One call: ``(reply, the writes it made, counts)``. ``frame`` is a decoded request,
        or a request framed as the daemon frames it for a forked session (``wire``), its args
        as the client sent them, decoded here under the same bounds; ``budget`` the seconds
        its client still waits. A call that asks the session to stop (a test hook) ends the
        actor's process, as it ends a forked one."""
        if isinstance(frame, bytes):
            frames = wire.FrameDecoder(self.process.spec.max_frame, relayed=True).feed(frame)
            frame = frames[0] if len(frames) == 1 else None
        if isinstance(frame, dict) and isinstance(frame.get(BUDGET), (int, float)):
            budget = frame.pop(BUDGET)
        if isinstance(frame, dict) and budget is not None:
            frame = dict(frame, deadline=time.monotonic() + budget)
        try:
            reply = self.process.handle(frame)
        except StopServing as exc:
            os._exit(exc.exit_code)
        return reply, self.recorder.take(), self.counts()

    def restore(self, stored: Stored, calls: Calls | None = None) -> int:
        """Start again from what the daemon stored: after a write the daemon could not store,
        whose change (and call id) this actor had already made in memory."""
        self.recorder = WriteRecorder(stored, calls)
        self.process.store = self.recorder
        self.process.context = load_context(self.process.spec, self.recorder)
        self.process.calls = CallLog(self.recorder)
        return self.process.context.message_count

    def watch(self) -> None:
        """Never returns: the daemon holds this call open, and its failure is how the daemon
        hears of the actor's death (process killed, node lost) while no call is in flight."""
        threading.Event().wait()
