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
from ..context import page
from ..errors import InvalidArgumentError, JidocoderError
from .calls import call_handler, internal_error
from .clients import ClientConnection
from .events import GLOBAL_TOPIC, EventBus, session_topic
from .link import Pending
from .ops import DEBUG_HANDLERS, SESSION_OPS
from .supervisor import Supervisor

log = logging.getLogger("jidocoder.daemon")

DEFERRED = object()


class Api:
    def __init__(self, supervisor: Supervisor, bus: EventBus, *, max_request_bytes: int,
                 debug_ops: bool, status: Callable[[], dict[str, Any]],
                 shutdown: Callable[[], object]) -> None:
        self.supervisor = supervisor
        self.bus = bus
        self.max_request_bytes = max_request_bytes
        self.session_ops = SESSION_OPS | (frozenset(DEBUG_HANDLERS) if debug_ops else frozenset())
        self._status = status
        self._shutdown = shutdown
        # handle_<op> by name, looked up once: a failed getattr per session call costs more
        # than the rest of its dispatch.
        self.handlers = {name[len("handle_"):]: getattr(self, name)
                         for name in dir(self) if name.startswith("handle_")}

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
        return {"pid": os.getpid(), "version": __version__, "max_request_bytes": self.max_request_bytes}

    def handle_create_session(self, conn: ClientConnection, pending: Pending,
                              metadata: Any = None, llm_config: Any = None,
                              config: Any = None) -> object:
        for name, value in (("metadata", metadata), ("llm_config", llm_config)):
            wire.check_encoded_size(value, wire.MAX_SESSION_DICT_BYTES, name)
        self.supervisor.create_session(metadata, llm_config, config, pending)
        return DEFERRED

    def handle_terminate_session(self, conn: ClientConnection, pending: Pending,
                                 session_id: Any = None) -> object:
        self.supervisor.terminate_session(self.supervisor.find(session_id), pending)
        return DEFERRED

    def handle_list_sessions(self, conn: ClientConnection, pending: Pending,
                             offset: Any = 0, limit: Any = None) -> list[dict[str, Any]]:
        return [self.supervisor.info(r) for r in page(self.supervisor.live_records(), offset, limit)]

    def handle_get_session_info(self, conn: ClientConnection, pending: Pending,
                                session_id: Any = None) -> dict[str, Any]:
        return self.supervisor.info(self.supervisor.find(session_id, any_live=True))

    def handle_get_session_pid(self, conn: ClientConnection, pending: Pending,
                               session_id: Any = None) -> object:
        self.supervisor.answer_pid(self.supervisor.find(session_id), pending)
        return DEFERRED

    def handle_list_failed_sessions(self, conn: ClientConnection,
                                    pending: Pending) -> list[dict[str, Any]]:
        return self.supervisor.failed_sessions()

    def handle_recover_session(self, conn: ClientConnection, pending: Pending,
                               session_id: Any = None) -> object:
        self.supervisor.recover_session(session_id, pending)
        return DEFERRED

    def handle_subscribe_to_session(self, conn: ClientConnection, pending: Pending,
                                    session_id: Any = None) -> None:
        self.supervisor.find(session_id)
        self.bus.subscribe(session_topic(session_id), conn)

    def handle_unsubscribe_from_session(self, conn: ClientConnection, pending: Pending,
                                        session_id: Any = None) -> None:
        if not isinstance(session_id, str):
            raise InvalidArgumentError("session_id must be a string", code="invalid_session_id",
                                       field="session_id")
        self.bus.unsubscribe(session_topic(session_id), conn)

    def handle_subscribe_to_all_sessions(self, conn: ClientConnection, pending: Pending) -> None:
        self.bus.subscribe(GLOBAL_TOPIC, conn)

    def handle_unsubscribe_from_all_sessions(self, conn: ClientConnection,
                                             pending: Pending) -> None:
        self.bus.unsubscribe(GLOBAL_TOPIC, conn)

    def handle_daemon_status(self, conn: ClientConnection, pending: Pending) -> dict[str, Any]:
        return self._status()

    def handle_shutdown(self, conn: ClientConnection, pending: Pending) -> None:
        self._shutdown()

