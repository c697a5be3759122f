"""``SparePool`` without a template: real forked spares that block on their socket and exit 0
on its EOF, a real Loop. Every process a test makes is reaped by pid by the test."""

from __future__ import annotations

import os
import signal
import socket
from typing import NoReturn
from collections.abc import Iterator

import pytest

from jidocoder.daemon.loop import Loop
from jidocoder.daemon.spares import SparePool
from tests.support import SHORT, wait_until


def fork_spare(sock: socket.socket, warm: bool) -> NoReturn:  # pragma: no cover - the child
    """A spare that does nothing but wait for its socket's EOF."""
    code = 0
    try:
        sock.setblocking(True)
        while sock.recv(4096):
            pass
    except BaseException:  # noqa: BLE001 - a forked child must reach os._exit whatever happens
        code = 1
    finally:
        os._exit(code)


def no_template(ctrl: socket.socket) -> NoReturn:  # pragma: no cover - never used here
    os._exit(1)


def reap(pid: int) -> int:
    """The exit status of ``pid``, waited for with a deadline."""
    return wait_until(lambda: _reaped(pid), SHORT, f"pid {pid} to exit")[0]


def _reaped(pid: int) -> tuple[int] | None:
    done, status = os.waitpid(pid, os.WNOHANG)
    return (status,) if done == pid else None  # a tuple: status 0 is an answer, not falsy


class Pool:
    def __init__(self, keep: int) -> None:
        self.loop = Loop()
        self.spared = 0
        self.failures: list[str] = []
        self.pool = SparePool(self.loop, keep, no_template, fork_spare, use_template=False,
                              on_spare=self.on_spare, on_failure=self.failures.append)
        self.made: set[int] = set()

    def on_spare(self) -> None:
        self.spared += 1

    def note(self) -> set[int]:
        self.made |= self.pool.live_pids
        return self.pool.live_pids


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    made: list[Pool] = []
    yield made
    for p in made:  # whatever a failed test left: closed, killed, reaped
        p.note()
        p.pool.close()
        for pid in p.made:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        p.loop.close()


@pytest.fixture
def pool(pools: list[Pool]) -> Pool:
    p = Pool(keep=2)
    pools.append(p)
    return p


def test_start_forks_keep_spares(pool: Pool) -> None:
    pool.pool.start()
    pids = pool.note()
    assert len(pids) == 2
    assert pool.pool.template_pid is None
    assert pool.failures == []


def test_take_hands_spares_out_oldest_first(pool: Pool) -> None:
    pool.pool.start()
    first, second = list(pool.pool._spares)  # insertion order is fork order
    pool.note()
    taken = [pool.pool.take(), pool.pool.take()]
    assert [s.pid for s in taken] == [first, second]
    assert pool.pool.take() is None
    assert pool.pool.live_pids == set()
    for spare in taken:
        spare.sock.close()
    assert [os.waitstatus_to_exitcode(reap(s.pid)) for s in taken] == [0, 0]
    pool.made.clear()


def test_top_up_with_callers_waiting_makes_keep_plus_wanted(pool: Pool) -> None:
    pool.pool.start()
    pool.pool.top_up(wanted=2)
    assert len(pool.note()) == 4


def test_a_spare_that_dies_is_replaced(pool: Pool) -> None:
    pool.pool.start()
    victim = next(iter(pool.note()))
    os.kill(victim, signal.SIGKILL)
    assert os.WTERMSIG(reap(victim)) == signal.SIGKILL
    pool.made.discard(victim)
    pool.pool.handle_exit(victim)
    pids = pool.note()
    assert victim not in pids and len(pids) == 2


def test_close_makes_every_spare_exit(pool: Pool) -> None:
    pool.pool.start()
    pool.pool.top_up(wanted=1)
    pids = pool.note()
    assert len(pids) == 3
    pool.pool.close()
    assert {pid: os.waitstatus_to_exitcode(reap(pid)) for pid in pids} == dict.fromkeys(pids, 0)
    for pid in pids:
        pool.pool.handle_exit(pid)
    assert pool.pool.live_pids == set()
    pool.made.clear()
    pool.pool.top_up(wanted=1)  # closed: nothing more is made
    assert pool.pool.live_pids == set()
