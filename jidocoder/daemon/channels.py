"""Direct channels, the daemon's part: handing them out, and what it still does for them.

A Client's calls to a session go straight to the session's process on a channel of their own
(docs/protocol.md, "Direct channels"): the daemon makes a socketpair, sends one end to the
process over its link and the other to the Client with the ``open_channel`` reply (SCM_RIGHTS
both, the ``share_table`` code in ``clients.py``), and closes both at once: it never holds a
channel. It keeps what only it can do:

- lifecycle: a hibernated session is revived, a restarting one awaited, before a channel is
  handed out; a terminated one has none (``SessionNotFoundError``);
- events: a direct call's events come on the link (``{"events", "mark"}``) and are published
  from there, with their mark (``EventBus.publish_all``);
- idleness: activity is the session's ``calls`` counter in the table, read every check; a
  session marked idle is told (``{"idle": calls seen}``), and asks to be woken (``{"wake": n}``)
  before it serves a direct call: ``idle → active`` is stored and published first;
- crashes: when a channel ends with calls unanswered, the Client asks ``channel_lost`` with the
  process's pid and its calls' ids, in the order sent. The daemon answers once that process is
  reaped, from the ``started`` field its slot held then: the calls up to the started one were
  begun (``SessionCrashedError``), the rest were never read (resent to the successor).

Why a fallback at all: a backend whose sessions have no fd (the Ray actors of §14) or a daemon
out of fds cannot make a channel; it answers ``{"relay": why}`` and the Client sends that
session's calls relayed, as before. One path is the rule, the relay the exception.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from typing import Any

from ..states import SessionStatus
from .backend import SessionHandle
from .link import Pending, SessionLink
from .metrics import METRICS
from .records import SessionRecord

log = logging.getLogger("jidocoder.daemon")

KEPT_EXITS = 4096  # dead processes whose last started call is remembered for channel_lost


class Channels:
    """The supervisor's part for direct channels; ``supervisor`` is the ``Supervisor`` that
    owns it (not imported here: it imports this module)."""

    def __init__(self, supervisor: Any) -> None:
        self.sup = supervisor
        self.made = 0
        self.started_at_exit: OrderedDict[int, int] = OrderedDict()  # pid → its last started id
        self.lost_queries: dict[int, list[tuple[Pending, list[int]]]] = {}  # pid → waiting

    # -- handing out -------------------------------------------------------------------------
    def open(self, record: SessionRecord, conn: Any, pending: Pending) -> None:
        """Hand ``conn`` a channel to the process serving ``record`` now, once one does."""
        sup = self.sup
        sup.touch(record)
        if not record.serving:
            record.waiting.append((pending, lambda: self.open(record, conn, pending)))
            if record.hibernated:
                sup.hibernation.revive(record)
            return
        if pending.abandoned():  # its client is gone: nobody to hand it to
            self.relay(pending, "the client is gone")
            return
        link = record.running_link
        if not isinstance(link, SessionLink):  # a backend's session with no fd to hand (Ray's)
            self.relay(pending, "this backend's sessions take no channels")
            return
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE, ENFILE: out of fds
            self.relay(pending, f"no channel can be made now: {exc.strerror or exc}")
            return
        try:
            self.made += 1
            if not link.send_with_fd({"channel": self.made}, theirs.fileno()):
                self.relay(pending, "the session's process is not reading its link now")
                return
            conn.reply_with_fd(pending.request_id, {"result": {"pid": link.pid, "channel": True}}, ours.fileno(),
                               refused={"result": {"relay": "the client has replies unread"}})
        finally:
            ours.close()  # the daemon never keeps a channel: the process and the client hold it
            theirs.close()

    @staticmethod
    def relay(pending: Pending, why: str) -> None:
        pending.reply({"result": {"relay": why}})

    # -- frames from the process -------------------------------------------------------------
    def on_frame(self, record: SessionRecord, link: SessionHandle, frame: dict[str, Any]) -> None:
        """A direct call's events, a wake, or the calls served (for the metrics: the process
        times them, the daemon never sees them); ``link`` is the process that sent it."""
        if "mark" in frame:
            self.sup.bus.publish_all(record.session_id, frame.get("events") or (),
                                     [link.pid, frame.get("mark")])
            if frame.get("ack") is True:  # its events window is half used (pacing.py)
                self.sup.pacing.ack(record.session_id, link, frame["mark"])
        elif "wake" in frame:
            self.wake(record, link, frame["wake"])
        served = frame.get("served")  # alone, or with the events of the calls it counts
        if type(served) is list:  # direct calls, for the metrics
            for op, seconds, failed in served:
                METRICS.observe_call(str(op), float(seconds), bool(failed))

    def wake(self, record: SessionRecord, link: SessionHandle, mark: Any) -> None:
        """``idle → active`` for a direct call, published with the call's mark, before the
        session serves it; it is told whether anything was published."""
        sup = self.sup
        was_idle = record.status is SessionStatus.IDLE
        sup.bus.marking = [link.pid, mark]
        try:
            sup.touch(record)
        finally:
            sup.bus.marking = None
        if link.send({"awake": was_idle and record.status is SessionStatus.ACTIVE}):
            sup.loop.flush_soon(link)

    # -- idleness ----------------------------------------------------------------------------
    def note_activity(self, record: SessionRecord, now: float) -> None:
        """Direct calls begun since the last check are activity, as a relayed call is."""
        calls = self.sup.table.read(record.slot).calls
        if calls != record.seen_calls:
            record.seen_calls = calls
            record.last_activity = now
            self.sup.table.write_activity(record.slot, now)
            self.sup.hibernation.touch(record)

    def tell_idle(self, record: SessionRecord) -> None:
        """The session was marked idle: its process wakes it before its next direct call."""
        link = record.link
        if record.status is SessionStatus.IDLE and link is not None and link.exit_status is None:
            if link.send({"idle": record.seen_calls}):
                self.sup.loop.flush_soon(link)

    # -- crashes -----------------------------------------------------------------------------
    def lost(self, pending: Pending, pid: Any, ids: Any) -> dict[str, Any] | None:
        """``channel_lost``: which of ``ids`` (in the order sent) process ``pid`` had begun;
        answered once it is reaped (None: later, to ``pending``). ``{"begun": None}``: not a
        process of this daemon (it was restarted): the Client resends, its call ids keep that
        at most once."""
        ids = [i for i in ids if type(i) is int] if type(ids) is list else []
        if not isinstance(pid, int) or pid not in self.sup.by_pid and pid not in self.started_at_exit:
            return {"begun": None}
        if pid in self.sup.by_pid:
            self.lost_queries.setdefault(pid, []).append((pending, ids))
            return None
        return {"begun": _begun(ids, self.started_at_exit[pid])}

    def on_exit(self, link: SessionHandle, started: int) -> None:
        """A session process was reaped: remember where it stopped, answer who asked."""
        self.started_at_exit[link.pid] = started
        while len(self.started_at_exit) > KEPT_EXITS:
            self.started_at_exit.popitem(last=False)
        for pending, ids in self.lost_queries.pop(link.pid, ()):
            pending.reply({"result": {"begun": _begun(ids, started)}})


def _begun(ids: list[int], started: int) -> list[int]:
    """A process serves a channel's calls in order: those up to the one it last started."""
    return ids[:ids.index(started) + 1] if started in ids else []
