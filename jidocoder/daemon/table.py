"""The session table: one fixed-size slot per session in an anonymous shared mapping.

Created by the daemon before it forks any session, so every session process inherits the same
pages (``MAP_SHARED | MAP_ANONYMOUS``: no file, no name, nothing a killed daemon leaves behind;
``multiprocessing.shared_memory`` was refused because its resource-tracker process outlives a
SIGKILLed daemon and may unlink a segment still in use).

Two writers, disjoint fields, so no lock is shared between processes:
- the daemon writes ``status``, ``incarnation``, ``pid``, ``restarts`` and ``last_activity``;
- a session process writes only its own slot's ``heartbeat`` (CLOCK_MONOTONIC, system-wide),
  ``message_count`` and ``started`` (the id of the last request it began to handle: after a
  crash, the daemon knows exactly which calls the process had read and which it never saw).
Every field is naturally aligned, so a reader never sees a torn value on the machines we run on.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

# status u8 | pad | incarnation u32 | pid i32 | restarts u32 | heartbeat f64 | last_activity f64
# | message_count u32 | pad | started u64
_SLOT = struct.Struct("<B3xIiIddI4xQ")
SLOT_SIZE = _SLOT.size
_HEARTBEAT_OFFSET = 16
_COUNT = struct.Struct("<I")
_COUNTERS_OFFSET = 32
_STARTED = struct.Struct("<Q")
_STARTED_OFFSET = 40
_HEARTBEAT = struct.Struct("<d")
_STATUS = struct.Struct("<B")
_OWNER = struct.Struct("<IiI")
_OWNER_OFFSET = 4
_ACTIVITY_OFFSET = 24


@dataclass(frozen=True)
class Slot:
    status_code: int
    incarnation: int
    pid: int
    restarts: int
    heartbeat: float
    last_activity: float
    message_count: int
    started: int


class SessionTable:
    """``capacity`` slots; the daemon hands them out (``allocate``/``release``).

    One slot per session *known*, hibernated ones too (their last ``message_count`` stays in
    it): 48 bytes each, in pages the kernel maps only once they are written. Slots never used
    are not listed anywhere (``_fresh``): a free list of 100,000 ints cost the daemon 3.6 MB.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, max(1, capacity) * SLOT_SIZE,
                              flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._free: list[int] = []  # released slots, reused first
        self._fresh = 0  # slots from here on were never handed out

    # -- daemon side -------------------------------------------------------------------------
    def allocate(self) -> int | None:
        """A zeroed free slot, or None when the table is full."""
        if self._free:
            index = self._free.pop()
        elif self._fresh < self.capacity:
            index, self._fresh = self._fresh, self._fresh + 1
        else:
            return None
        self._map[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
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
        _HEARTBEAT.pack_into(self._map, base + _ACTIVITY_OFFSET, last_activity)

    def write_status(self, index: int, status_code: int) -> None:
        _STATUS.pack_into(self._map, index * SLOT_SIZE, status_code)

    def write_activity(self, index: int, when: float) -> None:
        _HEARTBEAT.pack_into(self._map, index * SLOT_SIZE + _ACTIVITY_OFFSET, when)

    def read(self, index: int) -> Slot:
        return Slot(*_SLOT.unpack_from(self._map, index * SLOT_SIZE))

    # -- session side ------------------------------------------------------------------------
    def beat(self, index: int, now: float | None = None) -> None:
        _HEARTBEAT.pack_into(self._map, index * SLOT_SIZE + _HEARTBEAT_OFFSET,
                             time.monotonic() if now is None else now)

    def write_message_count(self, index: int, message_count: int) -> None:
        _COUNT.pack_into(self._map, index * SLOT_SIZE + _COUNTERS_OFFSET, message_count)

    def write_started(self, index: int, request_id: int) -> None:
        _STARTED.pack_into(self._map, index * SLOT_SIZE + _STARTED_OFFSET, request_id)

    def close(self) -> None:
        self._map.close()
