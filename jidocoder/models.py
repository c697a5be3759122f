"""Public pydantic models: validated at the edges, frozen inside.

Every datetime is timezone-aware UTC (``utc_now`` makes them; ``UtcDatetime`` coerces any
aware value to UTC and refuses naive ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, UTC
from typing import Annotated, Any, ClassVar

from pydantic import (AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field,
                      Strict, ValidationError)

from .errors import InvalidArgumentError, InvalidTransitionError
from .states import SessionStatus, can_transition, parse_status


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """An aware datetime moved to UTC: the one place that conversion is written.

    A far-off date with an offset can fall outside datetime's range once moved to UTC; that
    OverflowError would escape pydantic (it only catches ValueError), so it becomes one.
    """
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from exc


UtcDatetime = Annotated[AwareDatetime, AfterValidator(to_utc)]

ROLES = ("user", "assistant", "system", "tool")


def check_path(path: object) -> None:
    """A file path argument: a non-empty str (``invalid_argument`` / ``empty_field`` otherwise)."""
    if not isinstance(path, str):
        raise InvalidArgumentError(f"path must be a str, got {type(path).__name__}", field="path")
    if not path:
        raise InvalidArgumentError("path must not be empty", code="empty_field", field="path")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SessionConfig(_Frozen):
    max_history: int = Field(100, ge=1)
    max_files: int = Field(50, ge=1)
    timeout_minutes: float = Field(30, gt=0)
    persistence_enabled: bool = True
    features: list[str] = Field(default_factory=list)


class Message(_Frozen):
    role: str
    content: str
    timestamp: UtcDatetime


class ActiveFile(_Frozen):
    path: str
    added_at: UtcDatetime


class CachedFile(_Frozen):
    path: str
    content: str | bytes
    size: int
    mtime: float | None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Event(_Frozen):
    type: str
    topic: str
    session_id: str | None
    payload: dict[str, Any]
    seq: int
    timestamp: UtcDatetime


# --- Session state and info -------------------------------------------------------------------

_TICK = timedelta(microseconds=1)


def _status(value: object) -> SessionStatus:
    status = parse_status(value)
    if status is None:
        names = ", ".join(s.value for s in SessionStatus)
        raise ValueError(f"not a session status (one of: {names})")
    return status


# Strict: a timestamp must already be a datetime here (deserialize parses strings itself, so a
# string given to update() is refused, not silently parsed); aware, and moved to UTC.
StrictUtcDatetime = Annotated[AwareDatetime, Strict(), AfterValidator(to_utc)]
Status = Annotated[SessionStatus, BeforeValidator(_status)]
SessionId = Annotated[str, Strict(), Field(min_length=1)]
Count = Annotated[int, Strict(), Field(ge=0)]


class _SessionFields(_Frozen):
    """The fields SessionState and SessionInfo share; the four without a default are required."""

    session_id: SessionId
    status: Status
    config: SessionConfig = Field(default_factory=SessionConfig)
    llm_config: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: StrictUtcDatetime
    updated_at: StrictUtcDatetime
    active_tasks: Annotated[list[Annotated[str, Strict()]], Strict()] = Field(default_factory=list)
    conversation_count: Count = 0
    error: Annotated[str, Strict()] | None = None

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


# Rule codes of docs/api.md §3 by field; a field not named here fails as "invalid_<field>".
_FIELD_CODES = {
    "session_id": "invalid_session_id",
    "created_at": "invalid_timestamps",
    "updated_at": "invalid_timestamps",
    "active_tasks": "invalid_counts",
    "conversation_count": "invalid_counts",
    "restarts": "invalid_counts",
}
_DATETIME_FIELDS = ("created_at", "updated_at")


def _translate(exc: ValidationError) -> InvalidArgumentError:
    """The one mapping from a pydantic error to a rule code: every model path raises through it."""
    error = exc.errors()[0]
    own = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and isinstance(own, InvalidArgumentError):
        return own  # raised by SessionState.__init__ inside model_validate: already translated
    loc = error["loc"]
    field = str(loc[0]) if loc else None
    kind = error["type"]
    if field == "config":  # any fault inside the config, named by its key
        code, field = "invalid_config", str(loc[1]) if len(loc) > 1 else field
    elif kind in ("extra_forbidden", "invalid_key"):
        code = "unknown_field"
    elif kind == "missing":
        code = "missing_datetime" if field in _DATETIME_FIELDS else "missing_field"
    elif field == "session_id" and kind == "string_too_short":
        code = "empty_field"
    elif field is None:  # the input as a whole is not a mapping of fields
        code = "invalid_data"
    else:
        code = _FIELD_CODES.get(field, f"invalid_{field}")
    return InvalidArgumentError(f"{field}: {error['msg']}", code=code, field=field)


def _check_keys(data: Mapping[Any, Any]) -> None:
    for key in data:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"{_describe(key)} is not a field name (keys are str)",
                                       code="unknown_field", field=str(key))


def _next_timestamp(previous: datetime) -> datetime:
    # Two changes within one clock tick (or a clock stepped back) must still order: never reuse
    # or go below the previous updated_at.
    return max(utc_now(), previous + _TICK)


class SessionState(_SessionFields):
    """A session's state: frozen; every change returns a new object with a later ``updated_at``.

    Every way of building one (the constructor, ``model_validate``, ``new``, ``update``,
    ``deserialize``) raises ``InvalidArgumentError`` with the rule's code, never pydantic's error.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("session_id", "status", "created_at", "updated_at")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _translate(exc) from None

    # pydantic calls an overridden __init__ from model_validate too, and reports what it raises
    # as a ``value_error`` whose ``ctx["error"]`` is our InvalidArgumentError: ``_translate``
    # hands that one back as it is.

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> SessionState:
        if isinstance(obj, Mapping):  # they become __init__'s keywords, which must be str
            _check_keys(obj)
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _translate(exc) from None

    @classmethod
    def new(cls, session_id: str, *, config: SessionConfig | dict[str, Any] | None = None,
            llm_config: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None) -> SessionState:
        """A fresh ``initializing`` state; ``created_at == updated_at == now``."""
        now = utc_now()
        return cls(session_id=session_id, status=SessionStatus.INITIALIZING,
                   config=SessionConfig() if config is None else config,
                   llm_config={} if llm_config is None else llm_config,
                   metadata={} if metadata is None else metadata,
                   created_at=now, updated_at=now)

    @staticmethod
    def valid_transition(frm: object, to: object) -> bool:
        """Whether the table allows ``frm → to``; False for anything not a status."""
        return can_transition(frm, to)

    def transition(self, to: SessionStatus | str) -> SessionState:
        """This state moved to ``to``; ``InvalidTransitionError`` unless the table allows it."""
        self._check_edge(to)
        return self.model_copy(update={"status": parse_status(to),
                                       "updated_at": _next_timestamp(self.updated_at)})

    def _check_edge(self, to: object) -> None:
        if not can_transition(self.status, to):
            raise InvalidTransitionError(
                f"session {self.session_id} cannot go from {self.status} to {to!s}",
                details={"from": str(self.status), "to": str(to)})

    def update(self, **changes: Any) -> SessionState:
        """This state with ``changes`` applied and validated, and ``updated_at`` moved forward.

        A given ``updated_at`` is validated but replaced. A change of ``status`` must be an edge
        of the transition table (``InvalidTransitionError``): the table is never bypassed.
        """
        changed = type(self)(**{**self._fields(), **changes})
        if changed.status != self.status:
            self._check_edge(changed.status)
        return changed.model_copy(update={"updated_at": _next_timestamp(self.updated_at)})

    def serialize(self) -> dict[str, Any]:
        """A JSON-safe dict (for JSON-safe metadata): ISO 8601 timestamps, status as its string."""
        data = self.model_dump(mode="python")
        data["status"] = self.status.value
        for name in _DATETIME_FIELDS:
            data[name] = getattr(self, name).isoformat(timespec="microseconds")
        return data

    @classmethod
    def deserialize(cls, data: object) -> SessionState:
        """The state ``serialize`` wrote; any bad input raises ``InvalidArgumentError`` only."""
        try:
            return cls._deserialize(data)
        except InvalidArgumentError:
            raise
        except Exception as exc:  # stored or sent junk of any shape must not escape as another type
            raise InvalidArgumentError(f"cannot read a session state ({type(exc).__name__})",
                                       code="invalid_data") from exc

    @classmethod
    def _deserialize(cls, data: object) -> SessionState:
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"a session state is a dict, not {type(data).__name__}",
                                       code="invalid_data")
        for name in cls.REQUIRED:
            if name not in data:
                code = "missing_datetime" if name in _DATETIME_FIELDS else "missing_field"
                raise InvalidArgumentError(f"{name} is required", code=code, field=name)
        _check_keys(data)
        values = dict(data)
        for name in _DATETIME_FIELDS:
            values[name] = _parse_timestamp(name, data[name])
        return cls(**values)


def _parse_timestamp(name: str, value: object) -> datetime:
    """An aware datetime, or an ISO 8601 string with a UTC offset, as a UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(f"{name}: {_describe(value)} is not an ISO 8601 time with a UTC "
                                   "offset", code="invalid_datetime_format", field=name)
    try:
        return to_utc(value)
    except ValueError as exc:
        raise InvalidArgumentError(f"{name}: {exc}", code="invalid_datetime_format",
                                   field=name) from None


def _describe(value: object) -> str:
    # Never repr() arbitrary input: a hostile __repr__ would replace the rule's error with its own.
    if isinstance(value, (str, datetime)):
        return repr(value)
    return f"a value of type {type(value).__name__}"


class SessionInfo(_SessionFields):
    """What ``list_sessions``/``get_session_info`` return: the state plus its process's facts.

    ``conversation_count`` is the number of messages held now; ``pid`` is None during a restart
    and while ``hibernated`` (docs/api.md §13: no process until its next call).
    """

    pid: Annotated[int, Strict(), Field(gt=0)] | None = None
    restarts: Count = 0
    hibernated: bool = False

    @classmethod
    def from_state(cls, state: SessionState, *, pid: int | None, restarts: int,
                   conversation_count: int) -> SessionInfo:
        try:
            return cls.model_validate({**state._fields(), "pid": pid, "restarts": restarts,
                                       "conversation_count": conversation_count})
        except ValidationError as exc:
            raise _translate(exc) from None
