"""Reaching the daemon, for both clients: only a daemon we trust (docs/api.md §8).

A default socket directory must be ours alone, and the process serving the socket must run as
our own user (``SO_PEERCRED``); nothing is sent before both hold. ``Client`` connects with a
blocking socket here; ``AsyncClient`` connects with asyncio and checks the same two things.
"""

from __future__ import annotations

import os
import socket

from ._sockdir import check_socket_dir, is_default_socket_dir, peer_credentials
from .errors import DaemonUnavailableError

__all__ = ["check_directory", "check_peer", "connect", "no_daemon"]


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
