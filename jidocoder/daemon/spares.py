"""The daemon's side of spare session processes: made ahead of need, so no fork is ever on the
path of a call.

Where ``clone(CLONE_PARENT)`` is wired (``template.can_clone``) and ``spawn`` is not ``fork``,
the daemon forks one *template* process when it starts and asks it for spares over a
SOCK_SEQPACKET socket (the protocol is in ``template``); each spare is the daemon's own child.
Otherwise the daemon forks each spare itself (``os.fork``; the child goes through the same
preparation the template does once). Either way a spare blocks on its socket until the daemon
sends it a session's spec, and ``spare_processes`` of them are kept waiting, warmed up.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import NoReturn
from collections.abc import Callable

from .loop import Loop
from .restarts import TEMPLATE_RESTART_DELAY
from .template import COLD, REPLY, WARM

log = logging.getLogger("jidocoder.daemon")


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
                 fork_spare: Callable[[socket.socket, bool], NoReturn], use_template: bool,
                 on_spare: Callable[[], None], on_failure: Callable[[str], None]) -> None:
        self.loop = loop
        self.keep = keep
        self._start_template = start_template
        self._fork_spare = fork_spare
        self.use_template = use_template
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
        """Fork the template (retried in the background if the machine refuses a fork now), or
        the first spares."""
        if self.use_template:
            self._restart()
        else:
            self.top_up()

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
        if not self.use_template:
            self._fork_spares(wanted)
            return
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

    def _fork_spares(self, wanted: int) -> None:
        """Without a template: fork spares here, now. A fork that fails is reported once."""
        made = False
        while not self.closed and len(self._spares) < self.keep + wanted:
            kind = WARM if len(self._spares) < self.keep else COLD
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                pid = os.fork()
            except OSError as exc:
                ours.close()
                theirs.close()
                reason = exc.strerror or str(exc)  # exc is unbound once the except ends
                log.error("cannot fork a session process: %s", reason)
                self.loop.call_later(0, functools.partial(self._on_failure, reason))
                break
            if pid == 0:
                ours.close()
                self._fork_spare(theirs, kind == WARM)  # never returns
            theirs.close()
            ours.setblocking(False)
            self._spares[pid] = Spare(pid, ours)
            made = True
        if made:  # later: the caller may be handing out spares right now
            self.loop.call_later(0, self._on_spare)

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
        delay = TEMPLATE_RESTART_DELAY if time.monotonic() - self._template_started < TEMPLATE_RESTART_DELAY else 0
        self.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self.closed and self.template_pid is None:
            try:
                self._fork_template()
            except OSError as exc:
                log.error("cannot start the template process: %s", exc.strerror)
                self._on_failure(f"cannot fork: {exc.strerror}")
                self.loop.call_later(TEMPLATE_RESTART_DELAY, self._restart)

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
