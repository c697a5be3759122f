"""Every public call as data: its op, its args, and how its result becomes models.

``Client`` and ``AsyncClient`` have the same methods, with the same arguments, results and
errors (docs/api.md §11); each of their methods is one line that runs what a function here
builds, so what a call sends and returns is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from ._protocol import ModelT, to_model
from .errors import ProtocolError
from .models import ActiveFile, CachedFile, Message, SessionConfig, SessionInfo

DEFAULT_INCLUDE = ("conversation", "files", "file_index")


T = TypeVar("T")
JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One call: what is sent, and what its result becomes."""

    op: str
    args: JSONDict
    convert: Callable[[Any], T]


def _as(kind: type[T]) -> Callable[[Any], T]:
    """The result as the daemon sent it, typed (the daemon is ours: not checked again)."""
    return lambda result: cast(T, result)


def _nothing(result: Any) -> None:
    return None


def _one(model: type[ModelT]) -> Callable[[Any], ModelT]:
    return lambda result: to_model(model, result)


def _list_of(model: type[ModelT]) -> Callable[[Any], list[ModelT]]:
    return lambda result: [to_model(model, item) for item in result]


def _on(op: str, session_id: Any, **args: Any) -> Request[None]:
    """A call that acts on one session and answers nothing."""
    return Request(op, {"session_id": session_id, **args}, _nothing)


# -- sessions --------------------------------------------------------------------------------

def create_session(metadata: JSONDict | None, llm_config: JSONDict | None,
                   config: JSONDict | SessionConfig | None) -> Request[str]:
    if isinstance(config, SessionConfig):
        config = config.model_dump()
    return Request("create_session",
                   {"metadata": metadata, "llm_config": llm_config, "config": config}, _as(str))


def terminate_session(session_id: str) -> Request[None]:
    return _on("terminate_session", session_id)


def list_sessions(offset: int, limit: int | None) -> Request[list[SessionInfo]]:
    return Request("list_sessions", {"offset": offset, "limit": limit}, _list_of(SessionInfo))


def get_session_info(session_id: str) -> Request[SessionInfo]:
    return Request("get_session_info", {"session_id": session_id}, _one(SessionInfo))


def get_session_pid(session_id: str) -> Request[int]:
    return Request("get_session_pid", {"session_id": session_id}, _as(int))


def list_failed_sessions() -> Request[list[SessionInfo]]:
    return Request("list_failed_sessions", {}, _list_of(SessionInfo))


def recover_session(session_id: str) -> Request[None]:
    return _on("recover_session", session_id)


# -- conversation, files, context, cache -----------------------------------------------------

def send_message(session_id: str, role: str, content: str) -> Request[None]:
    return _on("send_message", session_id, role=role, content=content)


def get_conversation_history(session_id: str, offset: int,
                             limit: int | None) -> Request[list[Message]]:
    return Request("get_conversation_history",
                   {"session_id": session_id, "offset": offset, "limit": limit}, _list_of(Message))


def clear_conversation(session_id: str) -> Request[None]:
    return _on("clear_conversation", session_id)


def add_file(session_id: str, path: str) -> Request[None]:
    return _on("add_file", session_id, path=path)


def remove_file(session_id: str, path: str) -> Request[None]:
    return _on("remove_file", session_id, path=path)


def get_active_files(session_id: str) -> Request[list[ActiveFile]]:
    return Request("get_active_files", {"session_id": session_id}, _list_of(ActiveFile))


def update_file_index(session_id: str, path: str, metadata: JSONDict) -> Request[None]:
    return _on("update_file_index", session_id, path=path, metadata=metadata)


def get_file_index(session_id: str) -> Request[dict[str, JSONDict]]:
    return Request("get_file_index", {"session_id": session_id}, _as(dict[str, JSONDict]))


def build_context(session_id: str, include: Iterable[str], max_messages: int | None,
                  max_files: int | None) -> Request[JSONDict]:
    return Request("build_context", {"session_id": session_id, "include": _as_list(include),
                                     "max_messages": max_messages, "max_files": max_files},
                   _context)


def cache_file(session_id: str, path: str, content: str | bytes,
               metadata: JSONDict | None) -> Request[None]:
    return _on("cache_file", session_id, path=path, content=content, metadata=metadata)


def get_file(session_id: str, path: str) -> Request[CachedFile | None]:
    return Request("get_file", {"session_id": session_id, "path": path}, _cached_file)


def invalidate_file(session_id: str, path: str) -> Request[None]:
    return _on("invalidate_file", session_id, path=path)


def clear_session_cache(session_id: str) -> Request[None]:
    return _on("clear_session_cache", session_id)


# -- events and the daemon -------------------------------------------------------------------

def subscribe_to_session(session_id: str, since: int | None) -> Request[None]:
    return Request("subscribe_to_session", {"session_id": session_id, "since": since}, _nothing)


def unsubscribe_from_session(session_id: str) -> Request[None]:
    return _on("unsubscribe_from_session", session_id)


def subscribe_to_all_sessions(since: int | None) -> Request[None]:
    return Request("subscribe_to_all_sessions", {"since": since}, _nothing)


def unsubscribe_from_all_sessions() -> Request[None]:
    return Request("unsubscribe_from_all_sessions", {}, _nothing)


def daemon_status() -> Request[JSONDict]:
    return Request("daemon_status", {}, _as(dict[str, Any]))


def shutdown() -> Request[None]:
    return Request("shutdown", {}, _nothing)


def _cached_file(result: Any) -> CachedFile | None:
    return None if result is None else to_model(CachedFile, result)


def _context(result: Any) -> JSONDict:
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

