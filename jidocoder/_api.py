"""Every public call as data: its op, its args, and how its result becomes models.

``Client`` and ``AsyncClient`` have the same methods, with the same arguments, results and
errors (docs/api.md §11); each of their methods is one line that runs what a function here
builds, so what a call sends and returns is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._protocol import to_model
from .errors import ProtocolError
from .models import ActiveFile, CachedFile, Message, SessionConfig, SessionInfo

DEFAULT_INCLUDE = ("conversation", "files", "file_index")


def _same(result: Any) -> Any:
    return result


def _nothing(result: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    args: dict[str, Any]
    convert: Callable[[Any], Any] = _same


def _list_of(model: type) -> Callable[[Any], list]:
    return lambda result: [to_model(model, item) for item in result]


def _on(op: str, session_id: Any, **args: Any) -> Request:
    """A call that acts on one session and answers nothing."""
    return Request(op, {"session_id": session_id, **args}, _nothing)


# -- sessions --------------------------------------------------------------------------------

def create_session(metadata: dict | None, llm_config: dict | None,
                   config: dict | SessionConfig | None) -> Request:
    if isinstance(config, SessionConfig):
        config = config.model_dump()
    return Request("create_session",
                   {"metadata": metadata, "llm_config": llm_config, "config": config})


def terminate_session(session_id: str) -> Request:
    return _on("terminate_session", session_id)


def list_sessions(offset: int, limit: int | None) -> Request:
    return Request("list_sessions", {"offset": offset, "limit": limit}, _list_of(SessionInfo))


def get_session_info(session_id: str) -> Request:
    return Request("get_session_info", {"session_id": session_id},
                   lambda result: to_model(SessionInfo, result))


def get_session_pid(session_id: str) -> Request:
    return Request("get_session_pid", {"session_id": session_id})


def list_failed_sessions() -> Request:
    return Request("list_failed_sessions", {}, _list_of(SessionInfo))


def recover_session(session_id: str) -> Request:
    return _on("recover_session", session_id)


# -- conversation, files, context, cache -----------------------------------------------------

def send_message(session_id: str, role: str, content: str) -> Request:
    return _on("send_message", session_id, role=role, content=content)


def get_conversation_history(session_id: str, offset: int, limit: int | None) -> Request:
    return Request("get_conversation_history",
                   {"session_id": session_id, "offset": offset, "limit": limit}, _list_of(Message))


def clear_conversation(session_id: str) -> Request:
    return _on("clear_conversation", session_id)


def add_file(session_id: str, path: str) -> Request:
    return _on("add_file", session_id, path=path)


def remove_file(session_id: str, path: str) -> Request:
    return _on("remove_file", session_id, path=path)


def get_active_files(session_id: str) -> Request:
    return Request("get_active_files", {"session_id": session_id}, _list_of(ActiveFile))


def update_file_index(session_id: str, path: str, metadata: dict) -> Request:
    return _on("update_file_index", session_id, path=path, metadata=metadata)


def get_file_index(session_id: str) -> Request:
    return Request("get_file_index", {"session_id": session_id})


def build_context(session_id: str, include: Iterable[str], max_messages: int | None,
                  max_files: int | None) -> Request:
    return Request("build_context", {"session_id": session_id, "include": _as_list(include),
                                     "max_messages": max_messages, "max_files": max_files},
                   _context)


def cache_file(session_id: str, path: str, content: str | bytes, metadata: dict | None) -> Request:
    return _on("cache_file", session_id, path=path, content=content, metadata=metadata)


def get_file(session_id: str, path: str) -> Request:
    return Request("get_file", {"session_id": session_id, "path": path},
                   lambda result: None if result is None else to_model(CachedFile, result))


def invalidate_file(session_id: str, path: str) -> Request:
    return _on("invalidate_file", session_id, path=path)


def clear_session_cache(session_id: str) -> Request:
    return _on("clear_session_cache", session_id)


# -- events and the daemon -------------------------------------------------------------------

def subscribe_to_session(session_id: str, since: int | None) -> Request:
    return Request("subscribe_to_session", {"session_id": session_id, "since": since}, _nothing)


def unsubscribe_from_session(session_id: str) -> Request:
    return _on("unsubscribe_from_session", session_id)


def subscribe_to_all_sessions(since: int | None) -> Request:
    return Request("subscribe_to_all_sessions", {"since": since}, _nothing)


def unsubscribe_from_all_sessions() -> Request:
    return Request("unsubscribe_from_all_sessions", {}, _nothing)


def daemon_status() -> Request:
    return Request("daemon_status", {})


def shutdown() -> Request:
    return Request("shutdown", {}, _nothing)


def _context(result: Any) -> dict:
    if not isinstance(result, dict):
        raise ProtocolError(f"the daemon answered build_context with a {type(result).__name__}")
    if isinstance(result.get("conversation"), list):
        result["conversation"] = [to_model(Message, m) for m in result["conversation"]]
    if isinstance(result.get("files"), list):
        result["files"] = [to_model(ActiveFile, f) for f in result["files"]]
    return result


def _as_list(include: Any) -> Any:
    """``include`` as a list; a bare string or a non-iterable goes as it is, for the daemon to
    refuse with InvalidArgumentError (it is the one place arguments are judged)."""
    if isinstance(include, (str, bytes)):
        return include
    try:
        return list(include)
    except TypeError:
        return include

