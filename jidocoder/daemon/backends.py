"""Which backend runs the sessions: the setting ``backend`` (``backend`` is the seam, docs/ray.md)."""

from __future__ import annotations

import importlib.util
from typing import Any
from collections.abc import Callable

from .backend import Backend
from .loop import Loop
from .session import SessionSpec
from .table import SessionTable

# What a user without the extra is told to run (daemon start --backend ray checks first).
RAY_EXTRA = "pip install 'jidocoder[ray]'"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def open_backend(settings: Any, loop: Loop, table: SessionTable, warm: SessionSpec,
                 on_available: Callable[[], None], on_failure: Callable[[str], None]) -> Backend:
    """The backend ``settings.backend`` names."""
    if settings.backend == "ray":
        from .ray_link import RaySessions  # imports Ray: only when asked for
        return RaySessions(settings, loop, table)
    from .local_backend import LocalBackend
    return LocalBackend(settings, loop, table, warm, on_available, on_failure)
