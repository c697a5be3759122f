"""jidocoder: a session supervisor for a coding assistant, one OS process per work-session.

The public surface is exactly ``__all__`` (API.md): the ``Client``, the models and the errors.
Everything else (``wire``, ``daemon``, ``cli``) is internal. Importing ``jidocoder`` stays light:
it never imports the daemon.
"""

from .client import Client
from .errors import (DaemonUnavailableError, InvalidArgumentError, InvalidTransitionError,
                     JidocoderError, LimitExceededError, ProtocolError, RequestTimeoutError,
                     SessionCrashedError, SessionNotFoundError)
from .models import ActiveFile, CachedFile, Event, Message, SessionConfig, SessionInfo, SessionState
from .states import SessionStatus

__version__ = "0.1.0"

__all__ = [
    "Client",
    "SessionStatus",
    "SessionConfig", "SessionState", "SessionInfo", "Message", "ActiveFile", "CachedFile", "Event",
    "JidocoderError", "SessionNotFoundError", "InvalidTransitionError", "InvalidArgumentError",
    "LimitExceededError", "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError",
    "SessionCrashedError",
]
