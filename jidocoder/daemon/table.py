"""The session table: one fixed-size slot per session in a shared memory file (a memfd).

Created by the daemon before it forks any session, so every session process inherits the same
pages. A memfd, not a named segment: no name, nothing a killed daemon leaves behind
(``multiprocessing.shared_memory`` was refused because its resource-tracker process outlives a
SIGKILLed daemon and may unlink a segment still in use). A memfd, not ``MAP_ANONYMOUS``: its fd
can be handed to ``jidocoder top`` over the socket (``share_fd``, SCM_RIGHTS), which maps it
read-only and reads every slot itself, so however many ``top``s refresh, the daemon does no work
for them. The daemon keeps only a read-only fd once it has mapped the file, and seals it against
any new writable mapping (``F_SEAL_FUTURE_WRITE``): a reader can never write the table.

Slot layout (128 bytes, every field naturally aligned, so a reader never sees a torn value on
the machines we run on), with each field's one writer:

=====  ================  ========  ==========================================================
 off   field             writer    meaning
=====  ================  ========  ==========================================================
   0   status_code  u8   daemon    ``SessionStatus.code`` (states.py)
   4   incarnation  u32  daemon    which process of the session (counts restarts and revivals)
   8   pid          i32  daemon    the session's process, 0 while it has none
  12   restarts     u32  daemon    restarts after crashes, as in ``SessionInfo``
  16   heartbeat    f64  session   CLOCK_MONOTONIC (system-wide) of its loop's last turn
  24   last_activity f64 daemon    CLOCK_MONOTONIC of its last call (idleness)
  32   message_count u32 session   messages held
  36   file_count   u32  session   active files held
  40   started      u64  session   id of the request it is serving, 0 between calls (after a
                                   crash, the daemon knows exactly which calls the process had
                                   read; a process at 0 may be hibernated)
  48   calls        u64  session   requests it began, since its process started
  56   rss          u64  daemon    resident bytes, from its watchdog (``usage.py``)
  64   cpu_percent  f64  daemon    CPU % over the watchdog's last interval
  72   session_id   56s  daemon    the id, UTF-8, NUL-padded; empty for a free slot
=====  ================  ========  ==========================================================
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from dataclasses import dataclass
from collections.abc import Iterator

_SLOT = struct.Struct("<B3xIiIddIIQQQd56s")
SLOT_SIZE = _SLOT.size
ID_BYTES = 56
_STATUS = struct.Struct("<B")
_OWNER = struct.Struct("<IiI")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_COUNTS = struct.Struct("<II")
_USAGE = struct.Struct("<Qd")
_ID = struct.Struct("<56s")
_OWNER_OFFSET, _HEARTBEAT_OFFSET, _ACTIVITY_OFFSET = 4, 16, 24
_COUNTS_OFFSET, _STARTED_OFFSET, _CALLS_OFFSET = 32, 40, 48
_USAGE_OFFSET, _ID_OFFSET = 56, 72
# F_SEAL_FUTURE_WRITE (Linux 5.1): no new writable mapping or write(); existing mappings (the
# daemon's, the sessions' inherited through fork) keep writing. Not every Python names it.
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


@dataclass(frozen=True)
class Slot:
    status_code: int
    incarnation: int
    pid: int
    restarts: int
    heartbeat: float
    last_activity: float
    message_count: int
    file_count: int
    started: int
    calls: int
    rss: int
    cpu_percent: float
    session_id: str


def _unpack(buffer: mmap.mmap, index: int) -> Slot:
    fields = list(_SLOT.unpack_from(buffer, index * SLOT_SIZE))
    fields[-1] = fields[-1].rstrip(b"\0").decode("utf-8", "replace")
    return Slot(*fields)


class SessionTable:
    """``capacity`` slots; the daemon hands them out (``allocate``/``release``).

    One slot per session *known*, hibernated ones too (their last ``message_count`` stays in
    it): 48 bytes each, in pages the kernel maps only once they are written. Slots never used
    are not listed anywhere (``_fresh``): a free list of 100,000 ints cost the daemon 3.6 MB.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        size = max(1, capacity) * SLOT_SIZE
        fd = os.memfd_create("jidocoder-table", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            self._readonly_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:  # before this, a reader could reopen the memfd writable through /proc
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SHRINK
                            | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            except OSError:
                pass  # a kernel before 5.1: the fd handed out is still opened read-only
        finally:
            os.close(fd)
        self._free: list[int] = []  # released slots, reused first
        self._fresh = 0  # slots from here on were never handed out

    def share_fd(self) -> int:
        """A read-only fd of the table, for a reader to map (``TableView``); the table keeps it."""
        return self._readonly_fd

    # -- daemon side -------------------------------------------------------------------------
    def allocate(self, session_id: str = "") -> int | None:
        """A zeroed free slot named ``session_id``, or None when the table is full."""
        if self._free:
            index = self._free.pop()
        elif self._fresh < self.capacity:
            index, self._fresh = self._fresh, self._fresh + 1
        else:
            return None
        self._map[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
        _ID.pack_into(self._map, index * SLOT_SIZE + _ID_OFFSET,
                      session_id.encode("utf-8")[:ID_BYTES])
        return index

    def release(self, index: int) -> None:
        self._map[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
        self._free.append(index)

    def write_owner(self, index: int, *, status_code: int, incarnation: int, pid: int,
                    restarts: int, last_activity: float) -> None:
        """The daemon's fields only: a session may be writing its own at this very moment."""
        base = index * SLOT_SIZE
        _STATUS.pack_into(self._map, base, status_code)
        _OWNER.pack_into(self._map, base + _OWNER_OFFSET, incarnation, pid, restarts)
        _F64.pack_into(self._map, base + _ACTIVITY_OFFSET, last_activity)

    def write_status(self, index: int, status_code: int) -> None:
        _STATUS.pack_into(self._map, index * SLOT_SIZE, status_code)

    def write_activity(self, index: int, when: float) -> None:
        _F64.pack_into(self._map, index * SLOT_SIZE + _ACTIVITY_OFFSET, when)

    def write_usage(self, index: int, rss: int, cpu_percent: float) -> None:
        _USAGE.pack_into(self._map, index * SLOT_SIZE + _USAGE_OFFSET, rss, cpu_percent)

    def read(self, index: int) -> Slot:
        return _unpack(self._map, index)

    # -- session side ------------------------------------------------------------------------
    def beat(self, index: int, now: float | None = None) -> None:
        _F64.pack_into(self._map, index * SLOT_SIZE + _HEARTBEAT_OFFSET,
                       time.monotonic() if now is None else now)

    def write_counts(self, index: int, message_count: int, file_count: int) -> None:
        _COUNTS.pack_into(self._map, index * SLOT_SIZE + _COUNTS_OFFSET, message_count, file_count)

    def write_started(self, index: int, request_id: int, calls: int) -> None:
        base = index * SLOT_SIZE
        _U64.pack_into(self._map, base + _STARTED_OFFSET, request_id)
        _U64.pack_into(self._map, base + _CALLS_OFFSET, calls)

    def close(self) -> None:
        self._map.close()
        os.close(self._readonly_fd)


class TableView:
    """A reader's read-only mapping of a table handed over as an fd (``jidocoder top``)."""

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        self.capacity = size // SLOT_SIZE
        self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)

    def slots(self) -> Iterator[Slot]:
        """Every slot in use (named), in slot order."""
        for index in range(self.capacity):
            if self._map[index * SLOT_SIZE + _ID_OFFSET] != 0:
                yield _unpack(self._map, index)

    def close(self) -> None:
        self._map.close()
