"""The one exception tree of jidocoder, named for what the caller should do.

    JidocoderError                    .code, .message, .field, .details
    ├── SessionNotFoundError          not_found          (also LookupError)
    ├── InvalidTransitionError        invalid_transition
    ├── InvalidArgumentError          <rule>             (also ValueError)
    ├── LimitExceededError            limit_exceeded
    ├── DaemonUnavailableError        daemon_unavailable
    ├── ProtocolError                 protocol_error
    ├── RequestTimeoutError           timeout
    ├── SessionCrashedError           session_crashed
    ├── StorageError                  storage_unavailable
    ├── StoreBusyError                store_busy
    ├── StoreVersionError             store_version
    ├── DamagedStoreError             store_damaged
    └── StartError                    start_failed       (the daemon cannot start)
        └── AlreadyRunning            start_failed       (one runs on that socket: exit 0)

``exit_code`` is what the ``jidocoder`` command exits with when the error ends it (docs/api.md
§12): 1, but 2 for ``InvalidArgumentError`` (bad usage), 3 for ``DaemonUnavailableError`` (no
daemon runs), 4 for ``SessionNotFoundError`` (no such session), and 0 for ``AlreadyRunning``.

Errors cross the socket as ``{code, message, field, details}`` (``to_wire``) and are rebuilt
into the same class by ``from_wire``: ``InvalidArgumentError`` owns exactly the validation rule
codes in ``VALIDATION_CODES``, every other class owns one code, and a code nobody owns (sent by
a newer daemon, say) comes back as a plain ``JidocoderError`` carrying that code: guessing it
was the caller's fault would tell the caller to change its arguments for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class JidocoderError(Exception):
    """Base of every error jidocoder raises on purpose."""

    code: str = "error"
    exit_code: int = 1  # the jidocoder command's exit status when this error ends it

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

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], JidocoderError], tuple[dict[str, Any]]]:
        # keeps code/field/details through pickle (multiprocessing, pytest-xdist)
        return (_rebuild, (self.to_wire(),))

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field,
                "details": self.details}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_wire() == other.to_wire()

    __hash__ = Exception.__hash__


class SessionNotFoundError(JidocoderError, LookupError):
    """The session id is unknown or the session is terminated: nothing to retry."""

    code = "not_found"
    exit_code = 4


class InvalidTransitionError(JidocoderError):
    """A status change the transition table does not allow."""

    code = "invalid_transition"


class InvalidArgumentError(JidocoderError, ValueError):
    """An argument of the wrong type or shape; ``code`` names the rule, ``field`` the argument."""

    code = "invalid_argument"
    exit_code = 2


class LimitExceededError(JidocoderError):
    """Something is too large or too many (a request, a cache, the session table)."""

    code = "limit_exceeded"


class DaemonUnavailableError(JidocoderError):
    """No daemon answers on the socket: start one (``jidocoder daemon start``)."""

    code = "daemon_unavailable"
    exit_code = 3


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
    the call was stored; retry once the cause named in the message is gone. Not a crash."""

    code = "storage_unavailable"


class StoreBusyError(JidocoderError):
    """Another process still holds the store's lock (a session's previous process, dying):
    retry shortly; nothing was read or written, and it is not a crash."""

    code = "store_busy"


class StoreVersionError(JidocoderError):
    """The store was written by a newer jidocoder: upgrade (the file is left untouched)."""

    code = "store_version"


class DamagedStoreError(JidocoderError):
    """The file is not a usable database: move it aside with ``quarantine`` and start empty."""

    code = "store_damaged"


class StartError(JidocoderError):
    """The daemon cannot start (a lock held, a socket path too long or untrusted, a newer store):
    the message says why and what to do."""

    code = "start_failed"


class AlreadyRunning(StartError):
    """A daemon already serves that socket: ``daemon start`` says so and succeeds."""

    exit_code = 0


# Every rule code an InvalidArgumentError is raised with: docs/api.md §3's, the other explicit ones
# in the package, and the "invalid_<field>" that models._translate derives from a model field.
# tests/unit/test_errors.py checks the package's sources and models against this set.
VALIDATION_CODES = frozenset({
    # docs/api.md §3
    "invalid_session_id", "empty_field", "invalid_status", "invalid_timestamps",
    "invalid_counts", "missing_field", "missing_datetime", "invalid_datetime_format",
    "invalid_role",
    # raised with an explicit code elsewhere in the package
    "invalid_argument", "invalid_config", "invalid_data", "invalid_durability",
    "invalid_include", "invalid_request", "invalid_setting", "unknown_op", "unknown_field",
    "invalid_json", "unsupported",  # the jidocoder command's own usage errors (cli/)
    # models._translate: "invalid_" + the failing model field
    "invalid_added_at", "invalid_content", "invalid_error", "invalid_features",
    "invalid_hibernated", "invalid_llm_config", "invalid_max_files", "invalid_max_history", "invalid_metadata",
    "invalid_mtime", "invalid_path", "invalid_payload", "invalid_persistence_enabled",
    "invalid_pid", "invalid_seq", "invalid_size", "invalid_timeout_minutes", "invalid_timestamp",
    "invalid_topic", "invalid_type",
})

_BY_CODE: dict[str, type[JidocoderError]] = {
    cls.code: cls
    for cls in (JidocoderError, SessionNotFoundError, InvalidTransitionError, InvalidArgumentError,
                LimitExceededError, DaemonUnavailableError, ProtocolError, RequestTimeoutError,
                SessionCrashedError, StorageError, StoreBusyError, StoreVersionError,
                DamagedStoreError, StartError)
}
_BY_CODE.update(dict.fromkeys(VALIDATION_CODES, InvalidArgumentError))


# A bug on the daemon's side: nothing the caller did wrong, so not a validation error.
_BY_CODE["internal_error"] = JidocoderError


def from_wire(data: dict[str, Any]) -> JidocoderError:
    """Rebuild an error sent by ``to_wire``; a code no class owns gives a plain JidocoderError."""
    code = str(data.get("code", "error"))
    cls = _BY_CODE.get(code, JidocoderError)
    return cls(str(data.get("message", "")), code=code, field=data.get("field"),
               details=data.get("details") or {})


def _rebuild(data: dict[str, Any]) -> JidocoderError:
    return from_wire(data)


__all__ = [
    "JidocoderError", "SessionNotFoundError", "InvalidTransitionError", "InvalidArgumentError",
    "LimitExceededError", "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError",
    "SessionCrashedError", "StorageError", "StoreBusyError", "StoreVersionError",
    "DamagedStoreError", "VALIDATION_CODES", "from_wire",
]
