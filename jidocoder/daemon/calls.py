"""A request as both its servers see it, the daemon (``api``) and a session process
(``session``): its shape, the call of its handler, and the reply to a bug.

Written once so that the two agree on what a malformed request is and what a caller is told.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable

from .. import wire
from ..errors import InvalidArgumentError

Handler = Callable[..., Any]


def parse_request(frame: Any) -> tuple[str, dict[str, Any]]:
    """``(op, args)`` of a decoded request ``{id, op, args}`` (a session's: the daemon reads
    its clients' requests with ``wire.split_request``, by the same rules); InvalidArgumentError
    if it is not one."""
    if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
        raise wire.bad_request()
    args = frame.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise wire.bad_args()
    return frame["op"], args


def call_handler(handler: Handler, op: str, *leading: Any, **args: Any) -> Any:
    """``handler(*leading, **args)``; arguments it does not take are the caller's mistake
    (InvalidArgumentError), a TypeError from deeper inside is a bug and propagates."""
    try:
        return handler(*leading, **args)
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:  # the call itself
            raise InvalidArgumentError(f"bad arguments for {op}: {exc}", code="invalid_argument") from None
        raise


def internal_error(log: logging.Logger, op: Any, exc: BaseException) -> dict[str, Any]:
    """Log a bug met while serving ``op`` and return the error the caller gets for it: the
    server answers and carries on."""
    log.error("request %r failed", op, exc_info=exc)
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
