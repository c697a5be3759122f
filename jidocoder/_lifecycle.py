"""A client connection's life, for both clients: open, broken, or ended, and what callers hear.

*Broken*: the daemon went away (EOF, a reset) and may come back on the same socket, so it is
dialled again until ``timeout`` after the break (docs/api.md §10). *Ended*: for good, by
``close()``, by a daemon that said why it closed (``fell_behind``), by bytes that are not our
protocol, or by a reconnect window that closed with no daemon. Which ends are worth a reconnect
(``Received.reconnect``, from the core) and the words every caller is told are written here
once, so ``Client`` and ``AsyncClient`` say the same things.
"""

from __future__ import annotations

import time

from ._protocol import Call, Received
from .errors import DaemonUnavailableError, JidocoderError, RequestTimeoutError

__all__ = ["Lifecycle", "ended", "timed_out", "unanswered"]


class Lifecycle:
    """Whether a client's connection is open, broken (its daemon went away and may come back on
    the same socket: dial again until ``timeout`` after the break) or ended for good, and why.
    Which ends are worth a reconnect is decided here once, for both clients."""

    __slots__ = ("closed", "lost", "cause", "closing", "broken_since", "final")

    def __init__(self) -> None:
        self.closed = False  # close() was called
        self.lost: str | None = None  # why it ended for good (the first reason)
        self.cause: BaseException | None = None
        self.closing: str | None = None  # the daemon's closing code, if it said why
        self.broken_since: float | None = None  # when it broke, while a daemon is dialled
        self.final = False  # shutdown() was asked: the daemon going away is the end

    def state(self) -> str:
        if self.closed:
            return "closed"
        if self.lost is not None:
            return "lost"
        return "reconnecting" if self.broken_since is not None else "open"

    @property
    def ended(self) -> bool:
        return self.closed or self.lost is not None

    @property
    def broken(self) -> bool:
        return self.broken_since is not None

    def error(self, socket_path: str) -> DaemonUnavailableError:
        return ended(socket_path, self.closed, self.lost or "", self.closing, self.cause)

    def stream_ended(self, received: Received) -> bool:
        """The stream ended as ``received`` says: True if a daemon should be dialled again
        (the connection is now broken), False if it ended for good."""
        if received.closing is not None and self.lost is None:
            self.closing = received.closing
        if received.reconnect and not self.final and not self.closed:
            self.broken_since = self.broken_since or time.monotonic()
            return True
        self.lose(received.end or "the connection ended", received.cause)
        return False

    def lose(self, reason: str, cause: BaseException | None = None) -> None:
        if self.lost is None:
            self.lost, self.cause = reason, cause

    def dial_until(self, timeout: float) -> float:
        """When the reconnect window closes."""
        return (self.broken_since or time.monotonic()) + timeout


# -- what a caller is told ---------------------------------------------------------------------

def timed_out(op: str, timeout: float, why: str) -> RequestTimeoutError:
    return RequestTimeoutError(f"the daemon did not answer {op} within {timeout:g} s ({why})",
                               details={"op": op, "timeout": timeout})


def unanswered(call: Call, socket_path: str, timeout: float, broken: bool) -> JidocoderError:
    """A call whose deadline passed: a timeout, or, while no daemon answers since the
    connection broke, DaemonUnavailableError saying whether it may have been applied (§10)."""
    if not broken:
        return timed_out(call.op, timeout, "no reply; the request may still be applied")
    applied = ("it was sent and may have been applied" if call.sent
               else "it was not sent: not applied")
    return DaemonUnavailableError(
        f"connection to the daemon lost, and no daemon on {socket_path} answered {call.op} "
        f"within {timeout:g} s; {applied}",
        details={"socket": socket_path, "op": call.op, "may_have_been_applied": call.sent})


def ended(socket_path: str, closed: bool, reason: str, closing: str | None,
          cause: BaseException | None) -> DaemonUnavailableError:
    """Why every call fails once the connection ended for good. A fresh error for each caller:
    one raised in many threads or tasks would share a traceback."""
    if closed:
        return DaemonUnavailableError("this client is closed; make a new one")
    if closing is not None:  # the daemon said why: no advice to start a daemon
        return DaemonUnavailableError(f"{reason}; this client is unusable, make a new one",
                                      details={"socket": socket_path, "closing": closing})
    error = DaemonUnavailableError(
        f"connection to the daemon lost ({reason}); check it with `jidocoder daemon status`"
        " and start one with `jidocoder daemon start`", details={"socket": socket_path})
    error.__cause__ = cause
    return error
