"""The session-scoped file cache: content in memory, least recently used goes first.

One ``FileCache`` lives in each session process, so sessions are isolated by the process
boundary, not by composite keys. It is never persisted: a restarted session starts empty
(docs/api.md §6). The bound is on content bytes (UTF-8 length for ``str``), the figure a caller
can reason about; Python's per-object overhead is left to the process's memory limit.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from typing import Any

from .errors import InvalidArgumentError, LimitExceededError
from .models import CachedFile, check_path


class FileCache:
    """Path → ``CachedFile``, at most ``max_bytes`` of content; ``get`` and ``put`` are uses."""

    def __init__(self, max_bytes: int) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be an int >= 0, got {max_bytes!r}",
                                       field="max_bytes")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedFile] = OrderedDict()  # least recently used first
        self._total = 0

    def put(self, path: str, content: str | bytes,
            metadata: dict[str, Any] | None = None) -> CachedFile:
        """Cache ``content`` under ``path``, replacing any entry, evicting the least recently used.

        ``mtime`` is the file's if ``path`` exists on disk as given, else None. An entry larger
        than ``max_bytes`` raises ``LimitExceededError`` and leaves the cache as it was.
        """
        check_path(path)
        size = _content_size(content)
        metadata = _check_metadata(metadata)
        if size > self.max_bytes:
            raise LimitExceededError(
                f"{size} bytes for {path!r} exceed the session cache's {self.max_bytes}",
                field="content", details={"size": size, "max_bytes": self.max_bytes})
        entry = CachedFile(path=path, content=content, size=size, mtime=_mtime(path),
                           metadata=metadata)
        self.invalidate(path)
        self._entries[path] = entry
        self._total += size
        self._evict()
        return entry

    def get(self, path: str) -> CachedFile | None:
        """The entry for ``path`` (now the most recently used), or None when not cached."""
        check_path(path)
        entry = self._entries.get(path)
        if entry is not None:
            self._entries.move_to_end(path)
        return entry

    def invalidate(self, path: str) -> None:
        """Forget ``path``; nothing happens if it is not cached."""
        check_path(path)
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._total -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Content bytes held now (never more than ``max_bytes``)."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        # The newest entry fits on its own (checked in put), so this stops before reaching it.
        while self._total > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self._total -= oldest.size



def _content_size(content: object) -> int:
    """Byte length of ``content``: UTF-8 for ``str``, without copying ASCII text."""
    if isinstance(content, bytes):
        return len(content)
    if not isinstance(content, str):
        raise InvalidArgumentError(f"content must be str or bytes, got {type(content).__name__}",
                                   field="content")
    if content.isascii():
        return len(content)
    try:
        return len(content.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: not text any peer could decode
        raise InvalidArgumentError("content is not encodable as UTF-8", field="content") from None


def _check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidArgumentError("metadata must be None or a dict with str keys",
                                   field="metadata")
    return copy.deepcopy(metadata)  # the caller's later changes must not reach the cache


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses (e.g. NUL)
        return None
