"""The restart policy: what a session process's exit means, what is counted, and when the next
try comes. Every rule of the ladder is here and nowhere else.

What an exit means (``judge_exit``):

  ==========================================  ===========  ==================================
  how the process ended                       verdict      what the supervisor does
  ==========================================  ===========  ==================================
  killed by a signal, any other exit code,    CRASH        restart, counted against
  killed by us: hung, memory limit,                        ``max_restarts`` in ``max_seconds``;
  broke framing on its socket                              past it: give up, data kept
  ``EXIT_STORE_UNAVAILABLE`` (its store is    RETRY        start again after ``retry_delay``,
  locked by its dying predecessor, the disk                not counted: the cause is the
  is full, an I/O error)                                   machine's, not the session's
  ``EXIT_STORE_VERSION`` (a newer jidocoder   GIVE_UP      end it now, data kept as failed
  wrote its store)
  ``EXIT_STORE_DAMAGED``                      DAMAGED      file moved to damaged/, then as
                                                           GIVE_UP
  ==========================================  ===========  ==================================

A process that cannot be *made* (fork or clone fails: process limit, memory) is not an exit at
all: a create fails with ``LimitExceededError``; a restart is retried after ``retry_delay``,
uncounted.

The ladders, in seconds: a crash restart is immediate the first time in the window, then
``CRASH_BACKOFF_FIRST`` doubling up to ``MAX_BACKOFF``, so ``max_restarts + 1`` crashes always fit
in the window; a hung process gets SIGUSR1 (its stack to daemon.log), SIGTERM after
``STACK_DUMP_GRACE``, SIGKILL ``KILL_GRACE`` later; a session being stopped gets SIGTERM, then
SIGKILL after the ``terminate_grace`` setting; a template that dies within
``TEMPLATE_RESTART_DELAY`` of its start is restarted after that delay.
"""

from __future__ import annotations

import enum
import os
import signal
from collections import deque
from dataclasses import dataclass

from . import exits

MAX_BACKOFF = 2.0  # docs/api.md §4: any backoff is at most 2 s
CRASH_BACKOFF_FIRST = 0.1
RETRY_BACKOFF_FIRST = 0.05
STACK_DUMP_GRACE = 0.2  # time for faulthandler to write before SIGTERM lands
KILL_GRACE = 0.5
TEMPLATE_RESTART_DELAY = 1.0


class Verdict(enum.Enum):
    CRASH = "crash"
    RETRY = "retry"
    GIVE_UP = "give up"
    DAMAGED = "damaged"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def judge_exit(status: int, kill_reason: str | None, last_word: str | None) -> Judgement:
    """What the exit ``status`` of a session process means; ``kill_reason`` is ours if we
    killed it, ``last_word`` what it said about its store before leaving."""
    if kill_reason is not None:
        return Judgement(Verdict.CRASH, kill_reason)
    code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None
    detail = f": {last_word}" if last_word else ""
    if code == exits.EXIT_STORE_UNAVAILABLE:
        return Judgement(Verdict.RETRY, f"its store cannot be opened now{detail}")
    if code == exits.EXIT_STORE_VERSION:
        return Judgement(Verdict.GIVE_UP, f"its store was written by a newer jidocoder{detail}")
    if code == exits.EXIT_STORE_DAMAGED:
        return Judgement(Verdict.DAMAGED, f"its store is damaged{detail}")
    return Judgement(Verdict.CRASH, describe_exit(status))


def describe_exit(status: int) -> str:
    """As docs/api.md §4 words a crash: ``killed by SIGKILL``, ``exit code 3``."""
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    max_seconds: float

    def on_crash(self, crashes: deque[float], now: float) -> float | None:
        """Record a crash at ``now`` in ``crashes`` (the session's recent ones); the delay
        before its restart, or None when it is past the limit and must be given up."""
        while crashes and now - crashes[0] > self.max_seconds:
            crashes.popleft()
        if len(crashes) >= self.max_restarts:
            return None
        delay = 0.0 if not crashes else min(MAX_BACKOFF, CRASH_BACKOFF_FIRST * 2 ** (len(crashes) - 1))
        crashes.append(now)
        return delay


def retry_delay(attempt: int) -> float:
    """Before uncounted try number ``attempt`` (1, 2, ...) to start a session's process."""
    return min(MAX_BACKOFF, RETRY_BACKOFF_FIRST * 2.0 ** max(0, attempt - 1))
