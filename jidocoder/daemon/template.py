"""The template process: forked once from the daemon, it makes every spare session process.

Why a template: it is forked right after the daemon's imports and ``gc.freeze()``, so its size
is fixed however large the daemon grows, and it prepares once (fork hygiene, logging,
faulthandler, a warm-up) what every spare would otherwise do after each start.

Why a raw ``clone(CLONE_PARENT)`` and not ``os.fork()``: the child is then the *daemon's* child,
so the daemon reaps it, gets its ``SIGCHLD`` and exit status, and ``PR_SET_PDEATHSIG`` ties it to
the daemon, exactly as if the daemon had forked it. The raw syscall also skips CPython's at-fork
hooks (threading, logging, random, the store's), which measured 0.68 → 1.13 ms from fork to the
child's first write in a 35 MB process. Skipping them is sound only in a process with one
thread and no sqlite connection, so the template checks both before every clone
(``clone_hazard``) and refuses to clone otherwise. Where the syscall is not wired (a machine
other than x86_64 or aarch64) or ``spawn=fork`` is set, there is no template: the daemon forks
spares itself with ``os.fork`` (``spares.SparePool``), at-fork hooks and all.

Protocol (SOCK_SEQPACKET, so each message stands alone): the daemon sends one byte with one fd,
``WARM`` for a spare to keep (it warms up while it waits) or ``COLD`` for a spare a session
already waits for (warming up would only delay it); the template answers each request, in
order, with the spare's pid as ``REPLY``, or ``-errno``. EOF on its socket ends the template.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import platform
import signal
import socket
import struct
from typing import NoReturn
from collections.abc import Callable

from . import exits
from .logs import install_session_logging
from .process import (close_inherited_fds, dump_stack_on_sigusr1, reset_signals,
                      set_parent_death_signal, set_process_name, thread_count)
from .session import SessionSpec, run_spare, send_log_frame, warm_up
from .table import SessionTable

REPLY = struct.Struct("<i")
WARM, COLD = b"w", b"c"
TEMPLATE_NAME = "jido-template"

_CLONE_PARENT = 0x00008000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}  # both take (flags, stack, ...): zeros do for the rest
_LIBC = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across the call
_LIBC.syscall.restype = ctypes.c_long
_STORE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")


def can_clone() -> bool:
    """Whether ``clone(CLONE_PARENT)`` is wired for this machine."""
    return platform.machine() in _SYS_CLONE


def run_template(ctrl: socket.socket, *, warm: SessionSpec, table: SessionTable) -> NoReturn:
    """In the template, just forked from the daemon: prepare once, then a spare per request
    until the daemon hangs up. ``warm`` is a throwaway spec with the daemon's settings."""
    try:
        log_fd = prepare(ctrl.fileno(), warm)
        set_process_name(TEMPLATE_NAME)
        serve(ctrl, lambda sock, warm_first: run_spare(sock, table, warm, log_fd, warm_first))
    finally:
        os._exit(exits.EXIT_BOOT_ERROR)


def run_forked_spare(sock: socket.socket, warm_first: bool, *, warm: SessionSpec,
                     table: SessionTable) -> NoReturn:
    """In a spare the daemon forked itself (no template): prepared as the template would be."""
    try:
        log_fd = prepare(sock.fileno(), warm, warm_up_now=False)
        run_spare(sock, table, warm, log_fd, warm_first)
    finally:
        os._exit(exits.EXIT_BOOT_ERROR)


def prepare(keep_fd: int, warm: SessionSpec, *, warm_up_now: bool = True) -> int:
    """The fork hygiene and set-up every session process needs, done once (by the template) or
    per spare (forked by the daemon); returns the fd stacks are dumped to."""
    reset_signals()
    set_parent_death_signal(warm.daemon_pid)
    close_inherited_fds(keep=keep_fd)
    install_session_logging(send_log_frame, warm.log_level)
    log_fd = dump_stack_on_sigusr1(warm.state_dir)
    if warm_up_now:
        warm_up(warm)  # so that lazily built state exists before the spares copy it
    gc.freeze()  # no collector ever writes to the pages shared with the daemon
    return log_fd


def serve(ctrl: socket.socket, run_spare: Callable[[socket.socket, bool], NoReturn]) -> NoReturn:
    while True:
        try:
            kind, fds, _, _ = socket.recv_fds(ctrl, 1, 1)
        except InterruptedError:
            continue
        except OSError:
            os._exit(exits.EXIT_OK)
        if not fds:
            os._exit(exits.EXIT_OK)
        pid = clone_checked()
        if pid == 0:
            ctrl.close()
            run_spare(socket.socket(fileno=fds[0]), kind == WARM)
        os.close(fds[0])
        ctrl.send(REPLY.pack(pid))


def clone_checked() -> int:
    """A new spare's pid (0 in the spare), or ``-errno``: EDEADLK when cloning is unsafe here."""
    if clone_hazard() is not None:
        return -errno.EDEADLK
    try:
        return clone_sibling()
    except OSError as exc:
        return -(exc.errno or errno.EAGAIN)


def clone_hazard() -> str | None:
    """Why a clone that skips the at-fork hooks would be unsafe now, or None: another thread
    (it may hold a lock the child inherits locked) or an open sqlite file (the child's copy of
    the connection believes it holds the parent's locks)."""
    threads = thread_count()
    if threads != 1:
        return f"{threads} threads"
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(_STORE_SUFFIXES):
            return f"an open store file {target}"
    return None


def clone_sibling() -> int:
    """``fork()`` whose child belongs to our parent; 0 in the child, its pid here."""
    number = _SYS_CLONE.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"clone(CLONE_PARENT) is not wired for {platform.machine()}")
    pid: int = _LIBC.syscall(ctypes.c_long(number), ctypes.c_ulong(_CLONE_PARENT | signal.SIGCHLD), 0, 0, 0, 0)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid
