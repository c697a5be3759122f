"""Whether the default socket directory may be trusted (docs/api.md §8); the daemon and the Client
both ask here, so that they refuse the same directories for the same reasons.

The default directory (``$XDG_RUNTIME_DIR/jidocoder``, else ``/tmp/jidocoder-<uid>``) sits
where another user may have made it first: in ``/tmp`` anyone can create
``/tmp/jidocoder-1000`` before user 1000 does, own it, and so read or replace the socket in it.
An existing default directory is therefore used only if ``lstat`` shows a real directory (not a
symlink) owned by this user and writable by nobody else. A directory named with ``--socket`` or
``JIDOCODER_SOCKET`` is the user's choice and is left as it is (the peer-credential checks
still protect it), unless it is the default directory itself.

Standard library only: the Client imports this and never imports ``jidocoder.daemon``.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path
from collections.abc import Mapping

SOCKET_NAME = "daemon.sock"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket, as the
    kernel recorded them (SO_PEERCRED): the daemon checks its clients, the Client its daemon."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def default_socket_dir(env: Mapping[str, str] | None = None) -> str:
    """$XDG_RUNTIME_DIR/jidocoder, else /tmp/jidocoder-<uid> (``JIDOCODER_SOCKET`` aside)."""
    env = os.environ if env is None else env
    if env.get("XDG_RUNTIME_DIR"):
        return str(Path(env["XDG_RUNTIME_DIR"]) / "jidocoder")
    return f"/tmp/jidocoder-{os.getuid()}"


def is_default_socket_dir(socket_path: str, env: Mapping[str, str] | None = None) -> bool:
    """True if ``socket_path`` lies in the default socket directory, however it was named."""
    return os.path.abspath(os.path.dirname(socket_path)) == os.path.abspath(default_socket_dir(env))


def check_socket_dir(path: str) -> str | None:
    """Why the existing directory ``path`` must not hold our socket, in one line; None if it may
    (or if it does not exist yet: it is then created 0700)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"socket directory {path} cannot be examined ({exc.strerror})"
    mode = stat.S_IMODE(info.st_mode)
    facts = f"owner uid {info.st_uid}, mode {mode:04o}"
    if stat.S_ISLNK(info.st_mode):
        return (f"socket directory {path} is a symbolic link ({facts}), not a directory: "
                f"remove it, or choose another socket with --socket")
    if not stat.S_ISDIR(info.st_mode):
        return (f"socket directory {path} is not a directory ({facts}): remove it, or choose "
                f"another socket with --socket")
    if info.st_uid != os.getuid():
        return (f"socket directory {path} belongs to another user ({facts}; you are uid "
                f"{os.getuid()}): have it removed, or choose another socket with --socket")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"socket directory {path} is writable by other users ({facts}): run chmod 700 "
                f"{path}, or choose another socket with --socket")
    return None
