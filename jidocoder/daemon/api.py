"""Client requests, dispatched by name to ``handle_<op>``; session operations go to the session.

A handler either answers at once (returns a result) or keeps the ``Pending`` and answers later
(returns ``DEFERRED``). Anything it raises becomes an error reply: a client's input never takes
the daemon down. The Api knows the supervisor and the event bus; what it needs of the daemon
around it (its status, a shutdown) it is given as functions, so it never reaches back into it.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from collections.abc import Callable

from .. import __version__, wire
from ..errors import InvalidArgumentError, JidocoderError
from .calls import call_handler, internal_error
from .clients import ClientConnection
from .events import GLOBAL_TOPIC, EventBus, session_topic
from .link import Pending
from .metrics import METRICS
from .records import status_value
from .ops import DEBUG_HANDLERS, SESSION_OPS
from .supervisor import Supervisor
from .table import SLOT_SIZE

log = logging.getLogger("jidocoder.daemon")

DEFERRED = object()


class Api:
    def __init__(self, supervisor: Supervisor, bus: EventBus, *, max_request_bytes: int,
                 debug_ops: bool, status: Callable[[], dict[str, Any]],
                 shutdown: Callable[[], object], clients: Callable[[], int] = lambda: 0) -> None:
        self.supervisor = supervisor
        self.bus = bus
        self.max_request_bytes = max_request_bytes
        self.session_ops = SESSION_OPS | (frozenset(DEBUG_HANDLERS) if debug_ops else frozenset())
        self._status = status
        self._shutdown = shutdown
        self._clients = clients
        # direct channels (channels.py) only from a backend whose sessions can hold an fd
        self.channels = supervisor.backend.hands_out_channels
        # handle_<op> by name, looked up once: a failed getattr per session call costs more
        # than the rest of its dispatch.
        self.handlers = {name[len("handle_"):]: getattr(self, name)
                         for name in dir(self) if name.startswith("handle_")}
        METRICS.known_ops = frozenset(self.handlers) | self.session_ops

    def dispatch(self, conn: ClientConnection, request: wire.Request) -> None:
        conn.begin_call()
        pending = Pending(conn, request.id, request.op, request.deadline)
        try:
            result = self.call(conn, request, pending)
        except JidocoderError as exc:
            pending.reply({"error": exc.to_wire()})
            return
        except Exception as exc:  # noqa: BLE001 - a bug of ours: the daemon answers and carries on
            pending.reply({"error": internal_error(log, pending.op, exc)})
            return
        if result is not DEFERRED:
            pending.reply({"result": result})

    def call(self, conn: ClientConnection, request: wire.Request, pending: Pending) -> Any:
        """The daemon's own operations decode their (small, bounded) args; a session operation's
        args go to the session as the bytes they came as, only ``session_id`` read."""
        op = request.op
        handler = self.handlers.get(op)
        if handler is not None:
            return call_handler(handler, op, conn, pending, **wire.decode_args(request.args))
        if op in self.session_ops:
            record = self.supervisor.find(request.session_id)
            self.supervisor.route(record, op, request.args, pending)
            return DEFERRED
        raise InvalidArgumentError(f"unknown operation {op!r}", code="unknown_op", field="op")

    # -- the daemon's own operations ---------------------------------------------------------------
    def handle_hello(self, conn: ClientConnection, pending: Pending, **_: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "max_request_bytes": self.max_request_bytes,
                "channels": self.channels}

    def handle_create_session(self, conn: ClientConnection, pending: Pending,
                              metadata: Any = None, llm_config: Any = None,
                              config: Any = None, call_id: Any = None) -> object:
        for name, value in (("metadata", metadata), ("llm_config", llm_config)):
            wire.check_encoded_size(value, wire.MAX_SESSION_DICT_BYTES, name)
        if not isinstance(call_id, str):
            call_id = None
        elif (created := self._created_by(call_id)) is not None:
            return created  # resent after a lost reply: the session it made (at most once)
        self.supervisor.create_session(metadata, llm_config, config, pending, call_id=call_id)
        return DEFERRED

    def _created_by(self, call_id: str) -> str | None:
        session_id = self.supervisor.registry.created_by(call_id)
        return session_id if session_id in self.supervisor.records else None

    def handle_terminate_session(self, conn: ClientConnection, pending: Pending,
                                 session_id: Any = None) -> object:
        self.supervisor.terminate_session(self.supervisor.find(session_id), pending)
        return DEFERRED

    def handle_list_sessions(self, conn: ClientConnection, pending: Pending,
                             offset: Any = 0, limit: Any = None) -> list[dict[str, Any]]:
        return self.supervisor.list_infos(offset, limit)

    def handle_get_session_info(self, conn: ClientConnection, pending: Pending,
                                session_id: Any = None) -> dict[str, Any]:
        return self.supervisor.info(self.supervisor.find(session_id, any_live=True))

    def handle_get_session_pid(self, conn: ClientConnection, pending: Pending,
                               session_id: Any = None) -> object:
        self.supervisor.answer_pid(self.supervisor.find(session_id), pending)
        return DEFERRED

    def handle_open_channel(self, conn: ClientConnection, pending: Pending,
                            session_id: Any = None) -> object:
        """A direct channel to the session's process (channels.py); ``{"pid"}`` with the fd
        attached, or ``{"relay": why}`` and none: its calls go relayed."""
        self.supervisor.channels.open(self.supervisor.find(session_id), conn, pending)
        return DEFERRED

    def handle_channel_lost(self, conn: ClientConnection, pending: Pending,
                            pid: Any = None, ids: Any = None) -> object:
        """Which of a lost channel's calls its process had begun (channels.py)."""
        answer = self.supervisor.channels.lost(pending, pid, ids)
        return DEFERRED if answer is None else answer

    def handle_list_failed_sessions(self, conn: ClientConnection,
                                    pending: Pending) -> list[dict[str, Any]]:
        return self.supervisor.failed_sessions()

    def handle_recover_session(self, conn: ClientConnection, pending: Pending,
                               session_id: Any = None) -> object:
        self.supervisor.recover_session(session_id, pending)
        return DEFERRED

    def handle_subscribe_to_session(self, conn: ClientConnection, pending: Pending,
                                    session_id: Any = None, since: Any = None) -> dict[str, int]:
        self.supervisor.find(session_id)
        return {"last_seq": self.bus.subscribe(session_topic(session_id), conn, _since(since))}

    def handle_unsubscribe_from_session(self, conn: ClientConnection, pending: Pending,
                                        session_id: Any = None) -> None:
        if not isinstance(session_id, str):
            raise InvalidArgumentError("session_id must be a string", code="invalid_session_id",
                                       field="session_id")
        self.bus.unsubscribe(session_topic(session_id), conn)

    def handle_subscribe_to_all_sessions(self, conn: ClientConnection, pending: Pending,
                                         since: Any = None) -> dict[str, int]:
        return {"last_seq": self.bus.subscribe(GLOBAL_TOPIC, conn, _since(since))}

    def handle_unsubscribe_from_all_sessions(self, conn: ClientConnection,
                                             pending: Pending) -> None:
        self.bus.unsubscribe(GLOBAL_TOPIC, conn)

    def handle_daemon_status(self, conn: ClientConnection, pending: Pending) -> dict[str, Any]:
        return self._status()

    def handle_shutdown(self, conn: ClientConnection, pending: Pending) -> None:
        self._shutdown()

    # -- operating it (docs/operations.md) ---------------------------------------------------------
    def handle_metrics(self, conn: ClientConnection, pending: Pending) -> dict[str, Any]:
        """The counters (metrics.py) and the gauges read now; ``jidocoder metrics`` renders them."""
        supervisor = self.supervisor
        by_status: dict[str, int] = {}
        for entry in supervisor.records.values():  # a sleeper as it is: not woken to be counted
            status = status_value(entry)
            by_status[status] = by_status.get(status, 0) + 1
        return {**METRICS.snapshot(), "sessions": by_status, "failed_sessions": len(supervisor.failed),
                "live_processes": len(supervisor.by_pid), "clients": self._clients()}

    def handle_share_table(self, conn: ClientConnection, pending: Pending) -> object:
        """A read-only fd of the session table, attached (SCM_RIGHTS) to this reply's first
        byte; ``jidocoder top`` maps it and reads every slot itself from then on."""
        table = self.supervisor.table
        conn.reply_with_fd(pending.request_id, {"result": {"slot_size": SLOT_SIZE,
                                                           "capacity": table.capacity}},
                           table.share_fd())
        return DEFERRED


def _since(since: Any) -> int | None:
    """A subscription's ``since``: None (live events only) or a seq >= 0."""
    if since is None or (type(since) is int and since >= 0):
        return since
    raise InvalidArgumentError(f"since must be an int >= 0 or None, not {since!r}",
                               code="invalid_argument", field="since")
