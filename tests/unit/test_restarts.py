"""The restart policy: every row of the table in ``restarts``' docstring, and its ladders."""

from __future__ import annotations

import os
import signal
from collections import deque

import pytest

from jidocoder.daemon import exits
from jidocoder.daemon.restarts import (
    MAX_BACKOFF,
    RestartPolicy,
    Verdict,
    describe_exit,
    judge_exit,
    retry_delay,
)


def exited(code: int) -> int:
    """The wait status of a process that called ``_exit(code)`` (the inverse of WEXITSTATUS)."""
    return code << 8


def killed(signum: int) -> int:
    return signum


def real_status(code: int | None = None, signum: int | None = None) -> int:
    """The wait status of a real child that exits with ``code`` or is killed by ``signum``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if signum is not None:
            os.kill(os.getpid(), signum)
        os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    return status


def test_the_status_helpers_match_real_children() -> None:
    assert real_status(code=3) == exited(3)
    assert real_status(signum=signal.SIGKILL) == killed(signal.SIGKILL)


@pytest.mark.parametrize("status", [killed(signal.SIGKILL), killed(signal.SIGSEGV), exited(1), exited(3),
                                    exited(0), exited(exits.EXIT_BOOT_ERROR), exited(exits.EXIT_PROTOCOL)])
def test_a_signal_or_any_other_exit_code_is_a_crash(status: int) -> None:
    judgement = judge_exit(status, None, None)
    assert judgement.verdict is Verdict.CRASH
    assert judgement.reason == describe_exit(status)


@pytest.mark.parametrize("reason", ["hung", "over its memory limit", "broke framing"])
def test_a_process_killed_by_us_is_a_crash_for_our_reason(reason: str) -> None:
    # even if it left with a store exit code: our kill is what happened to it
    judgement = judge_exit(exited(exits.EXIT_STORE_UNAVAILABLE), reason, "locked")
    assert judgement.verdict is Verdict.CRASH
    assert judgement.reason == reason


def test_store_unavailable_is_an_uncounted_retry_with_its_last_word() -> None:
    judgement = judge_exit(real_status(code=exits.EXIT_STORE_UNAVAILABLE), None, "database is locked")
    assert judgement.verdict is Verdict.RETRY
    assert judgement.reason == "its store cannot be opened now: database is locked"


def test_store_version_gives_up() -> None:
    judgement = judge_exit(exited(exits.EXIT_STORE_VERSION), None, None)
    assert judgement.verdict is Verdict.GIVE_UP
    assert judgement.reason == "its store was written by a newer jidocoder"


def test_store_damaged_is_damaged() -> None:
    judgement = judge_exit(exited(exits.EXIT_STORE_DAMAGED), None, "file is not a database")
    assert judgement.verdict is Verdict.DAMAGED
    assert judgement.reason == "its store is damaged: file is not a database"


def test_a_signal_number_equal_to_a_store_code_is_still_a_crash() -> None:
    # 72 as a signal number does not exist, but a status must be read as a signal first
    assert judge_exit(killed(signal.SIGTERM), None, None).verdict is Verdict.CRASH


def test_describe_exit_words_it_as_api_md_does() -> None:
    assert describe_exit(real_status(signum=signal.SIGKILL)) == "killed by SIGKILL"
    assert describe_exit(real_status(code=3)) == "exit code 3"
    assert describe_exit(exited(0)) == "exit code 0"


def test_the_crash_ladder_is_immediate_then_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(max_restarts=10, max_seconds=1000.0)
    crashes: deque[float] = deque()
    delays = [policy.on_crash(crashes, now=float(i)) for i in range(8)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, MAX_BACKOFF, MAX_BACKOFF]
    assert MAX_BACKOFF == 2.0


def test_past_max_restarts_within_the_window_it_gives_up() -> None:
    policy = RestartPolicy(max_restarts=3, max_seconds=60.0)
    crashes: deque[float] = deque()
    assert [policy.on_crash(crashes, now=t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.1, 0.2]
    assert policy.on_crash(crashes, now=3.0) is None
    assert len(crashes) == 3  # a refused crash is not recorded


def test_the_window_slides() -> None:
    policy = RestartPolicy(max_restarts=2, max_seconds=10.0)
    crashes: deque[float] = deque()
    assert policy.on_crash(crashes, now=0.0) == 0.0
    assert policy.on_crash(crashes, now=5.0) == 0.1
    assert policy.on_crash(crashes, now=9.0) is None
    # at 10.5 the crash at 0 is out of the window: one left, so the ladder's second step
    assert policy.on_crash(crashes, now=10.5) == 0.1
    assert list(crashes) == [5.0, 10.5]
    # long after every crash: immediate again
    assert policy.on_crash(crashes, now=100.0) == 0.0


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.2, 0.4]
    assert retry_delay(100) == MAX_BACKOFF == 2.0
    assert retry_delay(0) == 0.05
