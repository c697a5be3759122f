"""The one exception tree of jidocoder, named for what the caller should do.

    JidocoderError                    .code, .message, .field, .details
    ├── SessionNotFoundError          not_found          (also LookupError)
    ├── InvalidTransitionError        invalid_transition
    ├── InvalidArgumentError          <rule>             (also ValueError)
    ├── LimitExceededError            limit_exceeded
    ├── DaemonUnavailableError        daemon_unavailable
    ├── ProtocolError                 protocol_error
    ├── RequestTimeoutError           timeout
    └── SessionCrashedError           session_crashed

Errors cross the socket as ``{code, message, field, details}`` (``to_wire``) and are rebuilt
into the same class by ``from_wire``: ``InvalidArgumentError`` owns every validation code, the
others own exactly one.
"""

from __future__ import annotations

from typing import Any


class JidocoderError(Exception):
    """Base of every error jidocoder raises on purpose."""

    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.details = dict(details or {})

    def __reduce__(self):  # keeps code/field/details through pickle (multiprocessing, pytest-xdist)
        return (_rebuild, (self.to_wire(),))

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field,
                "details": self.details}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_wire() == other.to_wire()  # type: ignore[union-attr]

    __hash__ = Exception.__hash__


class SessionNotFoundError(JidocoderError, LookupError):
    """The session id is unknown or the session is terminated: nothing to retry."""

    code = "not_found"


class InvalidTransitionError(JidocoderError):
    """A status change the transition table does not allow."""

    code = "invalid_transition"


class InvalidArgumentError(JidocoderError, ValueError):
    """An argument of the wrong type or shape; ``code`` names the rule, ``field`` the argument."""

    code = "invalid_argument"


class LimitExceededError(JidocoderError):
    """Something is too large or too many (a request, a cache, the session table)."""

    code = "limit_exceeded"


class DaemonUnavailableError(JidocoderError):
    """No daemon answers on the socket: start one (``jidocoder daemon start``)."""

    code = "daemon_unavailable"


class ProtocolError(JidocoderError):
    """The peer sent bytes that are not a valid frame or message."""

    code = "protocol_error"


class RequestTimeoutError(JidocoderError):
    """No reply within the client's timeout; the request may still be applied."""

    code = "timeout"


class SessionCrashedError(JidocoderError):
    """The session's process died while serving this call; it may or may not be applied."""

    code = "session_crashed"


class StorageError(JidocoderError):
    """The state dir cannot take a write (disk or quota full, read-only, I/O error): nothing of
    the call was applied; writes work again once the cause is gone."""

    code = "storage_unavailable"


_BY_CODE: dict[str, type[JidocoderError]] = {
    cls.code: cls
    for cls in (JidocoderError, SessionNotFoundError, InvalidTransitionError, LimitExceededError,
                DaemonUnavailableError, ProtocolError, RequestTimeoutError, SessionCrashedError,
                StorageError)
}


# A bug on the daemon's side: nothing the caller did wrong, so not a validation error.
_BY_CODE["internal_error"] = JidocoderError


def from_wire(data: dict[str, Any]) -> JidocoderError:
    """Rebuild an error sent by ``to_wire``; any code no other class owns is a validation rule."""
    code = str(data.get("code", "error"))
    cls = _BY_CODE.get(code, InvalidArgumentError)
    return cls(str(data.get("message", "")), code=code, field=data.get("field"),
               details=data.get("details") or {})


def _rebuild(data: dict[str, Any]) -> JidocoderError:
    return from_wire(data)


__all__ = [
    "JidocoderError", "SessionNotFoundError", "InvalidTransitionError", "InvalidArgumentError",
    "LimitExceededError", "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError",
    "SessionCrashedError", "StorageError", "from_wire",
]
