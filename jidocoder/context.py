"""One session's context: conversation, active files and file index, as a plain object.

``SessionContext`` does no I/O. Every mutating method returns the events it caused as
``(type, payload)`` pairs, payloads exactly as docs/api.md §4, and the session process around it
persists, emits and serializes. Keeping it pure lets the limits and event rules be tested
without a process, and lets a restarted process rebuild it from stored data (``restore``).

Limits: at most ``config.max_history`` messages (oldest dropped first) and ``config.max_files``
active files (the oldest dropped with its file-index entry). The file index may hold entries
for paths that are not active. Every time is a timezone-aware UTC ``datetime`` from ``clock``.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from .errors import InvalidArgumentError
from .models import ROLES, ActiveFile, Message, SessionConfig, check_path, to_utc, utc_now

T = TypeVar("T")

Events = list[tuple[str, dict[str, Any]]]
Clock = Callable[[], datetime]

INCLUDES = ("conversation", "files", "file_index")


class SessionContext:
    """The ContextManager of one session: what it holds, and the events each change sends."""

    def __init__(self, session_id: str, config: SessionConfig, *, clock: Clock = utc_now) -> None:
        self.session_id = session_id
        self.config = config
        self._clock = clock
        self._messages: deque[Message] = deque(maxlen=config.max_history)
        self._files: dict[str, ActiveFile] = {}  # insertion order is the active-files order
        self._index: dict[str, dict[str, Any]] = {}

    @classmethod
    def restore(cls, session_id: str, config: SessionConfig, messages: list[Message],
                files: list[ActiveFile], file_index: dict[str, dict[str, Any]], *,
                clock: Clock = utc_now) -> SessionContext:
        """Rebuild from stored data, applying the limits as if the items had been added in order."""
        ctx = cls(session_id, config, clock=clock)
        ctx._messages.extend(messages)  # the deque's maxlen keeps only the last max_history
        ctx._index = copy.deepcopy(file_index)
        for active in files:
            ctx._files.setdefault(active.path, active)
        while len(ctx._files) > config.max_files:
            ctx._drop_file(next(iter(ctx._files)))
        return ctx

    # -- conversation ------------------------------------------------------------------

    def add_message(self, role: str, content: str) -> Events:
        """Store a message; past ``max_history`` the oldest goes. Emits ``conversation_added``."""
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidArgumentError(f"role must be one of {', '.join(ROLES)}, got {role!r}",
                                       code="invalid_role", field="role")
        if not isinstance(content, str):
            raise InvalidArgumentError(f"content must be a str, got {type(content).__name__}",
                                       field="content")
        message = Message(role=role, content=content, timestamp=self._now())
        self._messages.append(message)
        return [("conversation_added", {"session_id": self.session_id, "role": message.role,
                                        "content": message.content,
                                        "timestamp": message.timestamp})]

    def clear_conversation(self) -> Events:
        """Drop every message. Emits ``conversation_cleared`` even if there were none."""
        self._messages.clear()
        return [("conversation_cleared", {"session_id": self.session_id})]

    def history(self, offset: int = 0, limit: int | None = None) -> list[Message]:
        """The messages held, oldest first: ``[offset : offset + limit]`` of them."""
        return page(self._messages, offset, limit)

    def last_message(self) -> Message:
        """The newest message held (the one ``add_message`` just stored); IndexError if none."""
        return self._messages[-1]

    @property
    def message_count(self) -> int:
        return len(self._messages)

    @property
    def file_count(self) -> int:
        return len(self._files)

    # -- active files and file index ---------------------------------------------------

    def add_file(self, path: str) -> Events:
        """Append ``path`` to the active files; an active path keeps its place and emits nothing.

        Past ``max_files`` the oldest is dropped with its file-index entry: ``file_added``,
        then ``file_removed`` for the dropped one.
        """
        check_path(path)
        if path in self._files:
            return []
        self._files[path] = ActiveFile(path=path, added_at=self._now())
        events = [self._file_event("file_added", path)]
        while len(self._files) > self.config.max_files:
            oldest = next(iter(self._files))
            self._drop_file(oldest)
            events.append(self._file_event("file_removed", oldest))
        return events

    def remove_file(self, path: str) -> Events:
        """Remove ``path`` and its file-index entry; ``file_removed`` only if it was active."""
        check_path(path)
        was_active = path in self._files
        self._drop_file(path)
        return [self._file_event("file_removed", path)] if was_active else []

    def update_file_index(self, path: str, metadata: dict[str, Any]) -> Events:
        """Merge ``metadata`` into ``path``'s entry (new keys win) and stamp ``last_accessed``.

        The path need not be active. Emits ``file_index_updated``.
        """
        check_path(path)
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            raise InvalidArgumentError("metadata must be a dict with str keys", field="metadata")
        entry = {**self._index.get(path, {}), **copy.deepcopy(metadata)}
        entry["last_accessed"] = self._now()
        self._index[path] = entry
        return [self._file_event("file_index_updated", path)]

    def active_files(self) -> list[ActiveFile]:
        """The active files in insertion order."""
        return list(self._files.values())

    def file_index(self) -> dict[str, dict[str, Any]]:
        """A deep copy of the file index: callers cannot reach the entries held here."""
        return copy.deepcopy(self._index)

    # -- context for an LLM call -------------------------------------------------------

    def build_context(self, include: Iterable[str] = INCLUDES, *, max_messages: int | None = None,
                      max_files: int | None = None) -> dict[str, Any]:
        """``session_id``, ``metadata`` and each part named in ``include``, as model objects.

        ``conversation`` is the last ``max_messages`` messages and ``files`` the last
        ``max_files`` active files (all when None); ``metadata`` counts what is held in total.
        """
        parts = _check_include(include)
        _check_limit(max_messages, "max_messages")
        _check_limit(max_files, "max_files")
        context: dict[str, Any] = {
            "session_id": self.session_id,
            "metadata": {"conversation_count": len(self._messages),
                         "active_file_count": len(self._files), "timestamp": self._now()},
        }
        if "conversation" in parts:
            context["conversation"] = _last(list(self._messages), max_messages)
        if "files" in parts:
            context["files"] = _last(list(self._files.values()), max_files)
        if "file_index" in parts:
            context["file_index"] = self.file_index()
        return context

    # -- internals ---------------------------------------------------------------------

    def _drop_file(self, path: str) -> None:
        self._files.pop(path, None)
        self._index.pop(path, None)

    def _file_event(self, kind: str, path: str) -> tuple[str, dict[str, Any]]:
        return (kind, {"session_id": self.session_id, "file_path": path})

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:  # astimezone would read a naive time as local: refuse instead
            raise ValueError("the clock must return timezone-aware datetimes")
        return to_utc(now)



def page(items: Iterable[T], offset: Any = 0, limit: Any = None) -> list[T]:
    """``items[offset : offset + limit]`` (to the end when ``limit`` is None), as a list;
    ``InvalidArgumentError`` naming the field for a negative or non-int offset or limit."""
    _check_count(offset, "offset")
    if limit is not None:
        _check_count(limit, "limit")
    return list(itertools.islice(items, offset, None if limit is None else offset + limit))


def _check_count(value: object, field: str) -> None:
    if type(value) is not int or value < 0:
        raise InvalidArgumentError(f"{field} must be an int >= 0, got {value!r}",
                                   code="invalid_argument", field=field)


def _check_include(include: object) -> frozenset[str]:
    # A bare str is iterable too ("files" would read as f, i, l, e, s): refuse it by type.
    if not isinstance(include, (list, tuple, set, frozenset)):
        raise InvalidArgumentError("include must be a list, tuple or set of part names",
                                   code="invalid_include", field="include")
    unknown = [name for name in include if not isinstance(name, str) or name not in INCLUDES]
    if unknown:
        raise InvalidArgumentError(f"unknown include {unknown!r}; known: {', '.join(INCLUDES)}",
                                   code="invalid_include", field="include")
    return frozenset(include)


def _check_limit(value: object, field: str) -> None:
    # bool is an int subclass, but max_messages=True is a caller's mistake, not "1".
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    raise InvalidArgumentError(f"{field} must be None or an int >= 0, got {value!r}", field=field)


def _last(items: list[T], count: int | None) -> list[T]:
    # items[-0:] is the whole list, so a count of 0 needs the explicit start index.
    return items if count is None else items[max(len(items) - count, 0):]
