"""What the supervisor watches in each session from outside, as questions with answers; what
is done about an answer (a kill, a status change) is the supervisor's (``check_sessions``).

- **Hangs**: a session's loop beats a heartbeat into its table slot at every turn; one whose
  beat is older than ``hang_timeout`` (a busy loop, a deadlock, a SIGSTOPped process) is hung.
- **Memory**: a session whose resident set passes ``memory_limit_mb``. Enforced from outside:
  ``RLIMIT_AS`` would only raise MemoryError, which the session's own error handling would
  swallow. Read every ``MEMORY_CHECK_INTERVAL``, not on every tick.
- **Idleness**: an active session with no call for its ``timeout_minutes``.
"""

from __future__ import annotations

import os

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MEMORY_CHECK_INTERVAL = 2.0  # reading /proc costs ~10 µs a session: not on every tick
CHECK_INTERVAL_MAX = 0.5  # hangs and idleness: at least this often, and 4 times per hang_timeout


def check_interval(hang_timeout: float) -> float:
    return min(CHECK_INTERVAL_MAX, hang_timeout / 4)


def is_hung(heartbeat: float, spawned_at: float, now: float, hang_timeout: float) -> bool:
    """A process counts from its start: a beat older than that is its predecessor's slot."""
    return now - max(heartbeat, spawned_at) > hang_timeout


def is_idle(last_activity: float, now: float, timeout_minutes: float) -> bool:
    return now - last_activity > timeout_minutes * 60


def over_memory(pid: int, limit_mb: int) -> int | None:
    """The resident bytes of ``pid`` if over ``limit_mb`` MiB, else None."""
    rss = resident_bytes(pid)
    return rss if rss is not None and rss > limit_mb * 1024 * 1024 else None


def resident_bytes(pid: int) -> int | None:
    try:  # three syscalls, not the seven of open(): this runs for every session
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 256).split()[1]) * PAGE_SIZE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return None
