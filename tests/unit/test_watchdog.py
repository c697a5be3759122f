"""The watchdog's questions, answered from numbers and from this process's own /proc."""

from __future__ import annotations

import os

from jidocoder.daemon.watchdog import check_interval, is_hung, is_idle, over_memory, resident_bytes


def test_is_hung_counts_from_the_process_start_not_an_older_beat() -> None:
    # the slot's beat (0) is its predecessor's; this process started at 100
    assert not is_hung(heartbeat=0.0, spawned_at=100.0, now=104.0, hang_timeout=5.0)
    assert is_hung(heartbeat=0.0, spawned_at=100.0, now=105.5, hang_timeout=5.0)


def test_is_hung_counts_from_the_latest_beat() -> None:
    assert not is_hung(heartbeat=110.0, spawned_at=100.0, now=114.0, hang_timeout=5.0)
    assert is_hung(heartbeat=110.0, spawned_at=100.0, now=115.5, hang_timeout=5.0)


def test_is_idle_is_in_minutes() -> None:
    assert not is_idle(last_activity=0.0, now=59.0, timeout_minutes=1)
    assert is_idle(last_activity=0.0, now=61.0, timeout_minutes=1)
    assert not is_idle(last_activity=0.0, now=61.0, timeout_minutes=2)


def test_over_memory_of_this_process() -> None:
    rss = over_memory(os.getpid(), 1)
    assert rss is not None and rss > 1024 * 1024
    assert over_memory(os.getpid(), 1024 * 1024) is None


def test_resident_bytes_of_a_dead_pid_is_none() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    assert resident_bytes(pid) is None
    assert over_memory(pid, 1) is None


def test_check_interval_is_at_most_half_a_second_and_four_per_timeout() -> None:
    assert check_interval(10.0) == 0.5
    assert check_interval(1.0) == 0.25
