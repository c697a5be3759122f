"""What each session process uses, sampled by the daemon's watchdog into the session table.

Every ``MEMORY_CHECK_INTERVAL`` the supervisor's memory check asks ``UsageSampler.sample`` for a
process's resident bytes; the same read of ``/proc/<pid>/stat`` gives its CPU time, so the CPU %
over the interval and the RSS are written into the slot (the daemon is their one writer) for
``jidocoder top`` to read, at no further cost to the daemon. One read a process, not two.
"""

from __future__ import annotations

import os
import time

from .table import SessionTable

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_stat(pid: int) -> tuple[int, int] | None:
    """``(cpu_ticks, rss_bytes)`` of ``pid`` (user + system time), or None if it is gone."""
    try:  # three syscalls, not the seven of open(): this runs for every session
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1024)
        finally:
            os.close(fd)
        fields = data.rsplit(b")", 1)[1].split()  # the name may hold spaces and parentheses
        return int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class UsageSampler:
    """Remembers each pid's last CPU reading, to turn the next one into a percentage."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        self._last: dict[int, tuple[float, int]] = {}  # pid -> (when, cpu ticks)

    def sample(self, slot: int, pid: int) -> int | None:
        """Write ``pid``'s CPU % and RSS into ``slot``; its RSS, or None if it is gone."""
        reading = read_stat(pid)
        if reading is None:
            self._last.pop(pid, None)
            return None
        ticks, rss = reading
        now = time.monotonic()
        before = self._last.get(pid)
        self._last[pid] = (now, ticks)
        percent = 0.0
        if before is not None and now > before[0]:
            percent = 100.0 * (ticks - before[1]) / CLOCK_TICKS / (now - before[0])
        self.table.write_usage(slot, rss, percent)
        return rss

    def forget_gone(self, live_pids: set[int]) -> None:
        """Drop the readings of processes that ended (pids are reused)."""
        for pid in self._last.keys() - live_pids:
            del self._last[pid]
