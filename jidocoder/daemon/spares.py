"""Spare session processes, made ahead of need by a template process, so no fork is ever on the
path of a call.

The daemon forks one *template* when it starts, after its imports and ``gc.freeze()``. The
template's size is fixed from then on, however large the daemon grows. When the daemon wants a
spare, it sends the template one end of a new socketpair. The template clones a child with
``CLONE_PARENT``, so that the child is the *daemon's* child: the daemon reaps it and gets its
``SIGCHLD`` and exit status exactly as before, and ``PR_SET_PDEATHSIG`` ties it to the daemon.
The template did the fork hygiene and the logging set-up once, before its first clone; a spare
sets its parent-death signal, warms up if it is to wait (``WARM``), and blocks on its socket. A
session start is the daemon sending a waiting spare its spec, and the spare answering ``ready``.

Why a raw ``clone`` and not ``os.fork()``: besides ``CLONE_PARENT``, it skips CPython's at-fork
hooks (threading, logging, multiprocessing). Measured from a 35 MB process with the daemon's
imports, they take fork → child's first write from 0.68 ms to 1.13 ms. Skipping them is sound
only in a single-threaded process with no lock held, which the template is by construction: it
is made by ``os.fork()`` (one thread survives) and only ever waits on its socket.

Template protocol (SOCK_SEQPACKET, so each message stands alone): the daemon sends one byte with
one fd, ``w`` for a spare to keep (it warms up while it waits) or ``c`` for a spare a session
already waits for (warming up would only delay it: the faults are paid once either way); the
template answers each request, in order, with the spare's pid, or ``-errno``.
EOF on its socket ends the template; EOF before a spec ends a spare.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, NoReturn

from .loop import Loop

log = logging.getLogger("jidocoder.daemon")

REPLY = struct.Struct("<i")
WARM, COLD = b"w", b"c"  # a spare to keep waits warmed up; one a session already waits for does not
RESTART_DELAY = 1.0  # a template that dies within this of its start is restarted after it

_CLONE_PARENT = 0x00008000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}  # both take (flags, stack, ...): zeros do for the rest
_LIBC = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across the call
_LIBC.syscall.restype = ctypes.c_long


def clone_sibling() -> int:
    """``fork()`` whose child belongs to our parent; 0 in the child, its pid here."""
    number = _SYS_CLONE.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"clone(CLONE_PARENT) is not wired for {platform.machine()}")
    pid = _LIBC.syscall(ctypes.c_long(number), ctypes.c_ulong(_CLONE_PARENT | signal.SIGCHLD), 0, 0, 0, 0)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def serve_template(ctrl: socket.socket, run_spare: Callable[[socket.socket, bool], NoReturn]) -> NoReturn:
    """The template's whole life: a spare per request, until the daemon hangs up."""
    while True:
        try:
            kind, fds, _, _ = socket.recv_fds(ctrl, 1, 1)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not fds:
            os._exit(0)
        try:
            pid = clone_sibling()
        except OSError as exc:
            pid = -(exc.errno or 1)
        if pid == 0:
            ctrl.close()
            run_spare(socket.socket(fileno=fds[0]), kind == WARM)
        os.close(fds[0])
        ctrl.send(REPLY.pack(pid))


@dataclass
class Spare:
    pid: int
    sock: socket.socket


class SparePool:
    """The daemon's side: the template, the spares it made, and the requests still unanswered.

    ``on_spare`` is called when a spare is ready to hand out, ``on_failure`` with the reason
    when the template could not make one.
    """

    def __init__(self, loop: Loop, keep: int, start_template: Callable[[socket.socket], NoReturn],
                 on_spare: Callable[[], None], on_failure: Callable[[str], None]) -> None:
        self.loop = loop
        self.keep = keep
        self._start_template = start_template
        self._on_spare = on_spare
        self._on_failure = on_failure
        self.template_pid: int | None = None
        self._ctrl: socket.socket | None = None
        self._template_started = 0.0
        self._asked: deque[socket.socket] = deque()  # daemon ends, in the order asked
        self._spares: dict[int, Spare] = {}  # insertion order: oldest first
        self._exited_unknown: set[int] = set()  # reaped before the template named them
        self.closed = False

    # -- the template -------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the template (retried in the background if the machine refuses a fork now)."""
        self._restart()

    def _fork_template(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            self._start_template(theirs)  # never returns
        theirs.close()
        ours.setblocking(False)
        self.template_pid, self._ctrl, self._template_started = pid, ours, time.monotonic()
        self.loop.watch(ours, self._on_replies)
        self.top_up()

    def _on_replies(self) -> None:
        while self._ctrl is not None:
            try:
                data = self._ctrl.recv(REPLY.size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the template is gone; its exit is handled when it is reaped
                self.loop.unwatch(self._ctrl)
                return
            self._on_reply(REPLY.unpack(data)[0])

    def _on_reply(self, pid: int) -> None:
        sock = self._asked.popleft()
        if pid < 0:
            sock.close()
            reason = os.strerror(-pid)
            log.error("the template could not make a session process: %s", reason)
            self._on_failure(reason)
        elif pid in self._exited_unknown:  # died before we knew it: nothing to hand out
            self._exited_unknown.discard(pid)
            sock.close()
            self.top_up()
        else:
            sock.setblocking(False)
            self._spares[pid] = Spare(pid, sock)
            self._on_spare()

    # -- spares -------------------------------------------------------------------------------
    def top_up(self, wanted: int = 0) -> None:
        """Ask for spares until ``keep`` plus ``wanted`` (callers waiting) are made or coming."""
        while not self.closed and self._ctrl is not None and \
                len(self._spares) + len(self._asked) < self.keep + wanted:
            kind = WARM if len(self._spares) + len(self._asked) < self.keep else COLD
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                socket.send_fds(self._ctrl, [kind], [theirs.fileno()])
            except (BlockingIOError, InterruptedError):  # it is busy: ask again when it answers
                ours.close()
                return
            except OSError:
                ours.close()
                return  # the template is gone; its reaping restarts it
            finally:
                theirs.close()
            self._asked.append(ours)

    def take(self) -> Spare | None:
        if not self._spares:
            return None
        spare = self._spares.pop(next(iter(self._spares)))
        return spare

    # -- exits --------------------------------------------------------------------------------
    def handle_exit(self, pid: int) -> None:
        """Any reaped child that is not a session's: the template, a spare, or one not named yet."""
        if pid == self.template_pid:
            self._template_gone()
        elif pid in self._spares:
            self._spares.pop(pid).sock.close()
            if not self.closed:
                log.warning("spare session process %d died before it was used", pid)
                self.top_up()
        elif self._asked:
            self._exited_unknown.add(pid)

    def _template_gone(self) -> None:
        self.template_pid = None
        if self._ctrl is not None:
            self.loop.unwatch(self._ctrl)
            self._ctrl.close()
            self._ctrl = None
        while self._asked:  # unanswered: a spare made but not named hangs up on its own EOF
            self._asked.popleft().close()
        self._exited_unknown.clear()
        if self.closed:
            return
        log.error("the template process died: starting another")
        delay = RESTART_DELAY if time.monotonic() - self._template_started < RESTART_DELAY else 0
        self.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self.closed and self.template_pid is None:
            try:
                self._fork_template()
            except OSError as exc:
                log.error("cannot start the template process: %s", exc.strerror)
                self._on_failure(f"cannot fork: {exc.strerror}")
                self.loop.call_later(RESTART_DELAY, self._restart)

    @property
    def live_pids(self) -> set[int]:
        pids = set(self._spares)
        if self.template_pid is not None:
            pids.add(self.template_pid)
        return pids

    def close(self) -> None:
        """No more spares: the template and every spare exit on their EOF (and are reaped)."""
        self.closed = True
        if self._ctrl is not None:
            self.loop.unwatch(self._ctrl)
            self._ctrl.close()
            self._ctrl = None
        for sock in self._asked:
            sock.close()
        self._asked.clear()
        for spare in self._spares.values():
            spare.sock.close()
