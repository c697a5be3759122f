"""Where each event topic's seq mark is stored: the registry (events.py says why marks).

A session with persistence disabled leaves nothing in the state dir (docs/api.md §6), so its
topic's mark is not stored: its topic ends with the daemon anyway. The global topic's mark and
those of persisted sessions are; a persisted session's mark goes with its registry row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import GLOBAL_TOPIC, session_topic

if TYPE_CHECKING:
    from .store import Registry

_SESSION_PREFIX = session_topic("")


class RegistryMarks:
    def __init__(self, registry: Registry, persistent: Callable[[str], bool]) -> None:
        self._registry = registry
        self._persistent = persistent

    def load_seq_marks(self) -> dict[str, int]:
        return self._registry.load_seq_marks()

    def put_seq_mark(self, topic: str, mark: int) -> None:
        if topic == GLOBAL_TOPIC or self._persistent(topic[len(_SESSION_PREFIX):]):
            self._registry.put_seq_mark(topic, mark)
