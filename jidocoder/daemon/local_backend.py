"""The local backend: each session a process forked on this machine (the default, API.md §1-§13).

A session starts in a spare process made ahead of need (``spares``), reached over its own
socketpair (``link.SessionLink``); its death is its exit, reaped by the supervisor (``waitpid``
answers only for our own children, and only this backend has children). This module is the
spares and the link behind the calls every backend answers (``backend.Backend``).
"""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

from .link import SessionLink
from .loop import Loop
from .session import SessionSpec
from .spares import SparePool
from .table import SessionTable
from .template import can_clone, run_forked_spare, run_template


class LocalBackend:
    name = "local"
    hands_out_channels = True  # a forked session can be given a client's socket (issue 16)

    def __init__(self, settings: Any, loop: Loop, table: SessionTable, warm: SessionSpec,
                 on_available: Callable[[], None], on_failure: Callable[[str], None]) -> None:
        self.loop = loop
        use_template = settings.spawn == "clone" or (settings.spawn == "auto" and can_clone())
        self.spares = SparePool(loop, settings.spare_processes,
                                functools.partial(run_template, warm=warm, table=table),
                                functools.partial(run_forked_spare, warm=warm, table=table),
                                use_template, on_spare=on_available, on_failure=on_failure)

    def start(self) -> None:
        """After the daemon's imports and ``gc.freeze()``, before any session."""
        self.spares.start()

    def open(self, spec: SessionSpec, incarnation: int, max_reply: int) -> SessionLink | None:
        """A spare process given ``spec``'s session, or None when none is ready (``on_available``
        is called when one is)."""
        spare = self.spares.take()
        if spare is None:
            return None
        link = SessionLink(spare.pid, spare.sock, incarnation, spec.max_frame, self._want_write,
                           max_reply=max_reply)
        if link.send({"spec": spec.to_wire()}):
            self.loop.flush_soon(link)
        return link

    def top_up(self, wanted: int) -> None:
        self.spares.top_up(wanted=wanted)

    def exited(self, pid: int) -> None:
        """A child reaped that served no session: a spare or the template."""
        self.spares.handle_exit(pid)

    @property
    def live_pids(self) -> set[int]:
        return self.spares.live_pids

    def close(self) -> None:
        self.spares.close()

    def _want_write(self, link: SessionLink, wanted: bool) -> None:
        if not link.eof and link.exit_status is None:
            self.loop.want_write(link, wanted)
