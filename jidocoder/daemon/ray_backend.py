"""The Ray backend: each session a Ray actor, placed by Ray anywhere in its cluster (API.md §14,
docs/ray.md).

Where what a call stores is written: on the daemon's disk, before the reply goes out. The actor
(``ray_actor.SessionActor``) is compute and cache; its reply carries the writes it made, the
backend stores them in the session's ``SessionStore`` here (one transaction per call) and only
then hands the reply up. A node that dies loses replies nobody was given, never a stored write;
a session restarted on another node starts from this store. A write the store cannot take is
the caller's ``StorageError``, nothing of it kept: the actor is sent the stored state again,
and the calls already sent behind the failed one (they ran on the unstored change) are answered
``StorageError`` too, unapplied.

How a death is noticed: every actor holds one call open for the daemon (``watch``, in its own
concurrency group so that it never waits behind a call), and Ray fails it when the actor's
process dies or its node is lost, with a reason. Ray's own restarts are off (``max_restarts=0``):
what a death leads to is the daemon's restart policy (``restarts``).

The loop is never blocked: each call is an ObjectRef whose completion (on a thread of Ray's)
only notes the session and writes a byte to ``fileno``; ``collect`` does the rest on the
daemon's thread, each session's calls strictly in the order they were sent.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError

from ..errors import StorageError
from .backend import Answered, Died, Happening, Ready
from .ray_actor import BUDGET, SessionActor
from .session import SessionSpec, as_storage_error
from .writes import Write, apply_writes

log = logging.getLogger("jidocoder.daemon")

# Ray schedules an actor by its resources: a session is idle most of the time, so it asks for
# no CPU (the default asks 1 to place and 0 to run). SPREAD: sessions over every node, so that
# losing one loses the fewest.
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}
# A node whose actors the daemon could not reach is avoided for new actors this long: Ray goes
# on placing actors on a lost node until its health checks give up on it (seconds), and each
# would die there once more. Long enough for that, short enough that a blip costs little.
AVOID_LOST_NODE_SECONDS = 60.0
NODE_ID_LABEL = "ray.io/node-id"  # the label every Ray node carries (its id)


class _RaySessionActor(SessionActor):
    def ready(self, node_id: str = "") -> dict[str, Any]:
        return SessionActor.ready(self, ray.get_runtime_context().get_node_id())


# Ray's own restarts off: a death is the daemon's to handle (restarts.py). ``watch`` is sent to
# a concurrency group of its own, so that it never waits behind a call, nor a call behind it.
_ACTOR_CLASS_OPTIONS: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0,
                                        "concurrency_groups": {"watch": 1}}
RaySessionActor: Any = ray.remote(**_ACTOR_CLASS_OPTIONS)(_RaySessionActor)


@dataclass(eq=False)
class _Call:
    request: Any
    future: Future[Any]
    doomed: bool = False  # sent before the actor was given back the stored state: not applied


@dataclass(eq=False)
class _Session:
    spec: SessionSpec
    store: Any  # store.SessionStore, or None for a session with persistence disabled
    actor: Any
    ready: Future[Any] | None
    watch: Future[Any]
    calls: deque[_Call] = field(default_factory=deque)
    stopping: bool = False
    node: str = ""  # where Ray placed it, once ready
    unreachable: str = ""  # why the daemon ended an actor it could no longer reach


class RayBackend:
    """``backend.SessionBackend`` over a Ray cluster (``address``; None starts a local one)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, actor_options: dict[str, Any] | None = None,
                 namespace: str = "jidocoder") -> None:
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            ray.init(address=address, namespace=namespace, log_to_driver=False,
                     logging_level=logging.WARNING)
        self.actor_options = {**DEFAULT_ACTOR_OPTIONS, **(actor_options or {})}
        self.sessions: dict[str, _Session] = {}
        self.lost_nodes: dict[str, float] = {}  # node id -> when its loss was seen
        self._noted: deque[str] = deque()  # appended by Ray's threads, taken by collect
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- the seam ---------------------------------------------------------------------------
    def start_session(self, spec: SessionSpec) -> None:
        """Raises what the store raised (nothing started) if the stored state cannot be read."""
        store = _open_store(spec)
        try:
            stored = store.load() if store is not None else ([], [], {})
            calls = store.load_calls() if store is not None else {}
            actor = RaySessionActor.options(**self._placement()).remote(spec, stored, calls)
        except BaseException:
            if store is not None:
                store.close()
            raise
        sid = spec.session_id
        session = _Session(spec, store, actor, self._future(sid, actor.ready.remote()),
                           self._future(sid, _watch(actor)))
        self.sessions[sid] = session

    def _placement(self) -> dict[str, Any]:
        """The actor options, less the nodes lately seen lost."""
        now = time.monotonic()
        self.lost_nodes = {node: seen for node, seen in self.lost_nodes.items()
                           if now - seen < AVOID_LOST_NODE_SECONDS}
        if not self.lost_nodes:
            return self.actor_options
        avoid = f"!in({','.join(sorted(self.lost_nodes))})"
        # Ray's default strategy: with SPREAD, Ray 2.60 placed a first restart on the lost node
        # in every run of the node-loss test (it died there again ~12 s on, when Ray gave up on
        # the node); with DEFAULT, in about one run of three.
        return {**self.actor_options, "scheduling_strategy": "DEFAULT",
                "label_selector": {NODE_ID_LABEL: avoid}}

    def send(self, session_id: str, request: Any, budget: float | None = None) -> None:
        """A call: a decoded request ``{id, op, args, deadline?}``, or one framed for a forked
        session (``wire.request_buffers``) with the seconds its client still waits."""
        frame = request
        if isinstance(request, dict):
            frame = dict(request)
            deadline = frame.pop("deadline", None)
            if isinstance(deadline, (int, float)):
                frame[BUDGET] = deadline - time.monotonic()
        session = self.sessions[session_id]
        ref = session.actor.handle.remote(frame, budget)
        session.calls.append(_Call(request, self._future(session_id, ref)))

    def stop_session(self, session_id: str) -> None:
        session = self.sessions[session_id]
        session.stopping = True
        ray.kill(session.actor, no_restart=True)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def collect(self) -> list[Happening]:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        noted = set()
        while self._noted:
            noted.add(self._noted.popleft())
        happened: list[Happening] = []
        for sid in noted:
            session = self.sessions.get(sid)
            if session is not None:
                happened += self._progress(session)
        return happened

    def close(self) -> None:
        for session in self.sessions.values():
            ray.kill(session.actor, no_restart=True)
            if session.store is not None:
                session.store.close()
        self.sessions.clear()
        if self.owns_ray:
            ray.shutdown()
        self._wake_r.close()
        self._wake_w.close()

    # -- what a session's completions mean --------------------------------------------------
    def _progress(self, session: _Session) -> list[Happening]:
        happened: list[Happening] = []
        sid = session.spec.session_id
        if session.ready is not None:
            if not session.ready.done():
                return happened
            ready, session.ready = session.ready, None
            if ready.exception() is None:
                info = ready.result()
                session.node = info["node"]
                happened.append(Ready(sid, info["pid"], info["node"], *info["counts"]))
        while session.calls and session.calls[0].future.done():
            call = session.calls[0]
            if call.future.exception() is not None:
                self._end_unreachable(session, call.future.exception())
                break  # the actor is gone, or is being ended: its watch says when
            session.calls.popleft()
            happened.append(self._answer(session, call, *call.future.result()))
        if session.watch.done():
            error = session.watch.exception()
            if isinstance(error, ActorUnavailableError) and not session.unreachable:
                self._end_unreachable(session, error)  # its watch is held again, to hear the end
            elif all(call.future.done() for call in session.calls):
                happened.append(self._died(session))  # dead, or ended and still unreachable
        return happened

    def _end_unreachable(self, session: _Session, error: BaseException | None) -> None:
        """Ray could not reach the actor (its node's connection lost): the actor may still be
        alive and may have made a change the daemon never heard of, so the daemon ends it, and
        its successor starts from the store. Its watch is held again to hear the end."""
        if not isinstance(error, ActorUnavailableError) or session.unreachable:
            return
        session.unreachable = death_reason(error).replace("actor died: ", "actor unreachable: ", 1)
        if session.node:
            self.lost_nodes[session.node] = time.monotonic()
        ray.kill(session.actor, no_restart=True)
        session.watch = self._future(session.spec.session_id, _watch(session.actor))

    def _answer(self, session: _Session, call: _Call, reply: dict[str, Any], writes: list[Write],
                counts: tuple[int, int]) -> Answered:
        """The reply, once its writes are stored; a StorageError (nothing kept) if they cannot be."""
        sid = session.spec.session_id
        if call.doomed:
            error = StorageError("an earlier call's write could not be stored, and this call ran "
                                 "after it: nothing of this call was applied")
            return Answered(sid, {"id": reply.get("id"), "error": error.to_wire()}, *counts)
        if writes and session.store is not None:
            try:
                apply_writes(session.store, writes)
            except Exception as exc:  # noqa: BLE001 - whatever the store raised: not stored, said so
                log.error("session %s: a write could not be stored, nothing of it kept: %s", sid, exc)
                self._give_back_stored(session)
                return Answered(sid, {"id": reply.get("id"), "error": as_storage_error(exc).to_wire()},
                                *counts)
        return Answered(sid, reply, *counts)

    def _give_back_stored(self, session: _Session) -> None:
        """The actor made a change that was not stored: it starts again from the store, and
        every call sent before it hears so ran on the change, so none of them is applied."""
        for call in session.calls:
            call.doomed = True
        try:
            stored, calls = session.store.load(), session.store.load_calls()
        except Exception as exc:  # noqa: BLE001 - the store cannot even be read: the session cannot go on
            log.error("session %s: its store cannot be read back (%s); ending its actor",
                      session.spec.session_id, exc)
            ray.kill(session.actor, no_restart=True)
            return
        session.actor.restore.remote(stored, calls)

    def _died(self, session: _Session) -> Died:
        sid = session.spec.session_id
        del self.sessions[sid]
        if session.store is not None:
            session.store.close()
        reason = "stopped" if session.stopping else death_reason(session.watch.exception())
        if session.unreachable and not session.stopping:
            reason = session.unreachable  # what the end by ray.kill that followed would hide
        elif "node has died" in reason and session.node:
            self.lost_nodes[session.node] = time.monotonic()
        return Died(sid, reason, session.stopping, [call.request for call in session.calls])

    def _future(self, session_id: str, ref: Any) -> Future[Any]:
        future: Future[Any] = ref.future()
        future.add_done_callback(lambda _: self._note(session_id))
        return future

    def _note(self, session_id: str) -> None:
        """On a thread of Ray's: note, and wake the loop; nothing else."""
        self._noted.append(session_id)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # full: the loop will wake anyway; closed: shut down
            pass


def _watch(actor: Any) -> Any:
    return actor.watch.options(concurrency_group="watch").remote()


def _open_store(spec: SessionSpec) -> Any:
    if not spec.config.persistence_enabled:
        return None
    from .store import SessionStore
    return SessionStore(spec.state_dir, spec.session_id, spec.durability, lazy=True)


def death_reason(exc: BaseException | None) -> str:
    """One line of why Ray says the actor died: its process, or its node."""
    text = getattr(exc, "error_msg", None) or str(exc)
    found = re.search(r"The actor (?:is dead|died) because (.*)", text, re.S)
    reason = " ".join((found.group(1) if found else text).split())
    return "actor died: " + reason.split(" Some common causes")[0][:300]
