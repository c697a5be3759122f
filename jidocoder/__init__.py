"""jidocoder: a session supervisor for a coding assistant, one OS process per work-session.

The public surface is exactly ``__all__`` (docs/api.md): the ``Client``, the models and the errors.
Everything else (``wire``, ``daemon``, ``cli``) is internal. Importing ``jidocoder`` stays light:
it never imports the daemon, and the ``Client`` and the models are imported on first use
(PEP 562). That keeps the daemon, started as ``python -m jidocoder.cli``, free of the client's
modules, and lets the command turn pydantic's plugins off before any model is built
(``jidocoder/_no_plugins.py``).
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (DaemonUnavailableError, InvalidArgumentError, InvalidTransitionError,
                     JidocoderError, LimitExceededError, ProtocolError, RequestTimeoutError,
                     SessionCrashedError, SessionNotFoundError, StorageError)
from .states import SessionStatus

if TYPE_CHECKING:
    from .async_client import AsyncClient
    from .client import Client
    from .models import (ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo,
                         SessionState)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient",
    "SessionStatus",
    "SessionConfig", "SessionState", "SessionInfo", "Message", "ActiveFile", "CachedFile", "Event",
    "JidocoderError", "SessionNotFoundError", "InvalidTransitionError", "InvalidArgumentError",
    "LimitExceededError", "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError",
    "SessionCrashedError", "StorageError",
]

_LAZY = {"Client": "client", "AsyncClient": "async_client", "SessionConfig": "models", "SessionState": "models",
         "SessionInfo": "models", "Message": "models", "ActiveFile": "models",
         "CachedFile": "models", "Event": "models"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
