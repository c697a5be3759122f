"""The shared-memory session table: slots, the daemon's and the session's disjoint fields,
sharing across fork, and the read-only view ``jidocoder top`` maps from the fd it is handed."""

from __future__ import annotations

import mmap
import os

import pytest

from jidocoder.daemon.table import SLOT_SIZE, SessionTable, Slot, TableView


@pytest.fixture
def table():
    made = []

    def make(capacity: int) -> SessionTable:
        made.append(SessionTable(capacity))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_slots_are_handed_out_until_capacity_then_none(table):
    t = table(3)
    assert [t.allocate() for _ in range(4)] == [0, 1, 2, None]
    t.release(1)
    assert t.allocate() == 1
    assert t.allocate() is None


def test_each_writer_writes_only_its_own_fields(table):
    t = table(2)
    slot = t.allocate("session_x")
    t.beat(slot, now=123.5)
    t.write_counts(slot, 7, 2)
    t.write_started(slot, 9, 4)
    t.write_owner(slot, status_code=2, incarnation=3, pid=4242, restarts=1, last_activity=55.25)
    t.write_usage(slot, 5 * 1024 * 1024, 12.5)
    assert t.read(slot) == Slot(2, 3, 4242, 1, 123.5, 55.25, 7, 2, 9, 4, 5 * 1024 * 1024, 12.5,
                                "session_x")


def test_released_slot_comes_back_zeroed_and_nameless(table):
    t = table(1)
    slot = t.allocate("session_a")
    t.write_counts(slot, 5, 1)
    t.release(slot)
    assert t.read(t.allocate()) == Slot(0, 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0.0, "")


def test_a_forked_child_writes_its_slot_and_the_parent_sees_it(table):
    t = table(4)
    slot = t.allocate("s")
    pid = os.fork()
    if pid == 0:
        try:
            t.write_counts(slot, 11, 3)
            t.beat(slot, now=99.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert (t.read(slot).message_count, t.read(slot).file_count, t.read(slot).heartbeat) == (11, 3, 99.0)


def test_a_view_of_the_shared_fd_sees_named_slots_live_and_cannot_write(table):
    t = table(3)
    first, second = t.allocate("session_1"), t.allocate("session_2")
    t.release(first)
    view = TableView(t.share_fd())
    try:
        assert [s.session_id for s in view.slots()] == ["session_2"]
        t.write_counts(second, 8, 0)  # written after the view was mapped: seen at once
        assert next(view.slots()).message_count == 8
        with pytest.raises(PermissionError):
            mmap.mmap(t.share_fd(), SLOT_SIZE, flags=mmap.MAP_SHARED)  # a writable mapping
        writable = os.open(f"/proc/self/fd/{t.share_fd()}", os.O_RDWR)  # reopened through /proc
        try:
            with pytest.raises(PermissionError):  # the memfd is sealed against it
                mmap.mmap(writable, SLOT_SIZE, flags=mmap.MAP_SHARED)
        finally:
            os.close(writable)
    finally:
        view.close()


def test_slot_size_keeps_every_field_aligned():
    assert SLOT_SIZE % 8 == 0


def test_a_large_table_lists_no_slot_it_never_handed_out():
    table = SessionTable(100_000)
    try:
        assert table._free == [] and table.allocate() == 0 and table.allocate() == 1
        table.release(0)
        assert table.allocate() == 0 and table.allocate() == 2
    finally:
        table.close()  # a memfd's read-only fd, since the table is shared with top
