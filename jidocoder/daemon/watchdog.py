"""The watchdog: what the supervisor checks periodically, from outside each session.

- **Hangs**: a session's loop beats a heartbeat into its table slot at every turn. A slot whose
  beat is older than ``hang_timeout`` (a busy loop, a deadlock, a SIGSTOPped process) gets
  SIGUSR1 first, so faulthandler writes its stack to daemon.log, then SIGTERM, then SIGKILL
  (the only one a stopped process cannot ignore); the crash is reported as ``"hung"``.
- **Memory** (every ``MEMORY_CHECK_INTERVAL``; the rest on every tick): a session whose resident
  set passes ``memory_limit_mb`` is SIGKILLed and reported as ``"memory limit"``. Enforced from outside: ``RLIMIT_AS`` would only raise MemoryError,
  which the session's own error handling would swallow.
- **Idleness**: an active session with no call for its ``timeout_minutes`` goes idle.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from ..states import SessionStatus
from .link import SessionLink

if TYPE_CHECKING:
    from .supervisor import SessionRecord, Supervisor

log = logging.getLogger("jidocoder.daemon")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
STACK_DUMP_GRACE = 0.2  # time for faulthandler to write before SIGTERM lands
KILL_GRACE = 0.5


MEMORY_CHECK_INTERVAL = 2.0  # reading /proc costs ~10 µs a session: not on every tick


def check_sessions(supervisor: "Supervisor") -> None:
    """Every tick: hangs (a read of the shared table) and idleness, for every session."""
    now = time.monotonic()
    for record, link in watched(supervisor):
        check_hung(supervisor, record, link, now)
    for record in list(supervisor.records.values()):
        check_idle(supervisor, record, now)


def check_memory_use(supervisor: "Supervisor") -> None:
    for _, link in watched(supervisor):
        check_memory(supervisor, link)


def watched(supervisor: "Supervisor") -> list[tuple["SessionRecord", SessionLink]]:
    """Sessions with a live process that nobody is already stopping or killing."""
    return [(record, record.link) for record in list(supervisor.records.values())
            if record.link is not None and record.link.exit_status is None
            and not record.link.stopping and record.link.kill_reason is None]


def check_hung(supervisor: "Supervisor", record: "SessionRecord", link: SessionLink, now: float) -> bool:
    beat = max(supervisor.table.read(record.slot).heartbeat, record.spawned_at)
    if now - beat <= supervisor.settings.hang_timeout:
        return False
    log.error("session %s (pid %d) hung for %.1fs: dumping its stack, then killing it",
              record.session_id, link.pid, now - beat)
    link.kill_reason = "hung"
    supervisor.signal_process(link, signal.SIGUSR1)
    supervisor.loop.call_later(STACK_DUMP_GRACE, lambda: supervisor.signal_process(link, signal.SIGTERM))
    supervisor.loop.call_later(STACK_DUMP_GRACE + KILL_GRACE,
                               lambda: supervisor.signal_process(link, signal.SIGKILL))
    return True


def check_memory(supervisor: "Supervisor", link: SessionLink) -> bool:
    rss = resident_bytes(link.pid)
    limit = supervisor.settings.memory_limit_mb * 1024 * 1024
    if rss is None or rss <= limit:
        return False
    log.error("session pid %d uses %d MiB, over memory_limit_mb=%d: killing it",
              link.pid, rss // (1024 * 1024), supervisor.settings.memory_limit_mb)
    link.kill_reason = "memory limit"
    supervisor.signal_process(link, signal.SIGKILL)
    return True


def check_idle(supervisor: "Supervisor", record: "SessionRecord", now: float) -> None:
    if record.state.status is not SessionStatus.ACTIVE or (record.link and record.link.in_flight):
        return  # a call still being served is activity too
    if now - record.last_activity > record.state.config.timeout_minutes * 60:
        supervisor.change_status(record, SessionStatus.IDLE)


def resident_bytes(pid: int) -> int | None:
    try:  # three syscalls, not the seven of open(): this runs for every session on every tick
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 256).split()[1]) * PAGE_SIZE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return None
