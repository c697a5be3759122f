"""Reaching the daemon, for both clients: only a daemon we trust (docs/api.md §8).

A default socket directory must be ours alone, and the process serving the socket must run as
our own user (``SO_PEERCRED``); nothing is sent before both hold. ``Client`` connects with a
blocking socket here; ``AsyncClient`` connects with asyncio and checks the same two things.
"""

from __future__ import annotations

import os
import select
import socket
import time

from ._sockdir import check_socket_dir, is_default_socket_dir, peer_credentials
from .errors import DaemonUnavailableError

__all__ = ["check_directory", "check_peer", "connect", "no_daemon", "send_until", "shutdown"]

# Each send is non-blocking for that call only, so a socket stays blocking for its reader's
# recv; MSG_NOSIGNAL turns a dead peer into EPIPE, never SIGPIPE.
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)


def check_directory(socket_path: str) -> None:
    """A default socket directory that is not ours alone is refused before connecting."""
    if is_default_socket_dir(socket_path) and \
            (why := check_socket_dir(os.path.dirname(socket_path))):
        raise DaemonUnavailableError(why, details={"socket": socket_path})


def check_peer(sock: socket.socket, socket_path: str) -> None:
    """The process at the other end runs as our user, or nothing is sent to it."""
    _, uid, _ = peer_credentials(sock)
    if uid != os.getuid():
        raise DaemonUnavailableError(
            f"the socket {socket_path} is served by a process of uid {uid}, not by you "
            f"(uid {os.getuid()}): nothing was sent to it; use a socket of your own",
            details={"socket": socket_path, "peer_uid": uid})


def no_daemon(socket_path: str, error: OSError) -> DaemonUnavailableError:
    reason = error.strerror or str(error) or type(error).__name__
    return DaemonUnavailableError(
        f"no jidocoder daemon answers on {socket_path} ({reason}); "
        "start one with `jidocoder daemon start`", details={"socket": socket_path})


def connect(socket_path: str, timeout: float) -> socket.socket:
    """A blocking socket connected to a daemon we trust."""
    check_directory(socket_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)  # a full listen backlog must not block forever
        sock.connect(socket_path)
        sock.settimeout(None)
        check_peer(sock, socket_path)
    except OSError as e:
        sock.close()
        raise no_daemon(socket_path, e) from e
    except BaseException:
        sock.close()
        raise
    return sock


def send_until(sock: socket.socket, frame: bytes, deadline: float) -> int:
    """Write ``frame`` until done or the deadline passes; the number of bytes written."""
    try:
        sent = sock.send(frame, _SEND_FLAGS)  # nearly always the whole of it
    except BlockingIOError:
        sent = 0
    if sent == len(frame):
        return sent
    view = memoryview(frame)
    while sent < len(frame):
        try:
            sent += sock.send(view[sent:], _SEND_FLAGS)
        except BlockingIOError:
            if not wait_writable(sock, deadline):
                break
    return sent


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected, or closed


def wait_writable(sock: socket.socket, deadline: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))
