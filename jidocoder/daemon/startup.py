"""What the daemon claims before it serves: its state dir, its locks, its socket, its fd limit.

One daemon per socket and one per state dir, each held by an ``flock`` (released by the kernel
when the holder dies, however it dies), never guessed from a pid file. A socket file found
while we hold the socket's lock was left by a dead daemon and is reused. The default socket
directory is used only if ``jidocoder._sockdir`` trusts it, checked before anything is created
and again once it exists.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import socket
import stat
from pathlib import Path

from .._sockdir import check_socket_dir, is_default_socket_dir
from ..errors import AlreadyRunning, StartError

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
STATE_LOCK = "daemon.lock"


def check_socket_path(path: str) -> None:
    """Refuse, before anything is created, a socket path too long or in an untrusted default
    directory (``jidocoder._sockdir``)."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise StartError(f"socket path is too long ({size} bytes; this system allows at most "
                         f"{MAX_SOCKET_PATH}): {path}. Choose a shorter --socket.")
    check_default_socket_dir(path)


def check_default_socket_dir(socket_path: str) -> None:
    if is_default_socket_dir(socket_path):
        reason = check_socket_dir(os.path.dirname(socket_path))
        if reason is not None:
            raise StartError(reason)


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartError(f"cannot create state dir {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartError(f"state dir {path} is not writable by this user")


def lock_state_dir(state_dir: Path, socket_path: str) -> int:
    """Hold the state dir; if another daemon does, name it (pid and socket)."""
    fd = _open_lock(state_dir / STATE_LOCK)
    if not _try_lock(fd):
        holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
        os.close(fd)
        pid, sock = (holder + ["?", "?"])[:2]
        if sock == socket_path:
            raise AlreadyRunning(f"a jidocoder daemon (pid {pid}) already runs on {sock}")
        raise StartError(f"state dir {state_dir} is held by the jidocoder daemon pid {pid} on socket {sock}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{socket_path}\n".encode(), 0)
    return fd


def lock_socket(socket_path: str) -> int:
    directory = Path(socket_path).parent
    if not directory.exists():
        try:
            directory.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise StartError(f"cannot create socket dir {directory}: {exc.strerror}") from exc
    check_default_socket_dir(socket_path)  # again: it may have been made since the first check
    fd = _open_lock(Path(socket_path + ".lock"))
    if not _try_lock(fd):
        os.close(fd)
        raise AlreadyRunning(f"a jidocoder daemon already runs on {socket_path}")
    return fd


def bind_socket(socket_path: str) -> socket.socket:
    """Bind and listen with mode 0600; a stale socket file (we hold its lock) is replaced."""
    try:
        mode = os.lstat(socket_path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise StartError(f"{socket_path} exists and is not a socket: refusing to replace it")
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        listener.bind(socket_path)
    except OSError as exc:
        listener.close()
        raise StartError(f"cannot bind {socket_path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
