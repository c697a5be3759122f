"""The shared-memory session table: slots, the daemon's and the session's disjoint fields, sharing across fork."""

from __future__ import annotations

import os

from jidocoder.daemon.table import SLOT_SIZE, SessionTable


def test_slots_are_handed_out_until_capacity_then_none():
    table = SessionTable(3)
    assert [table.allocate() for _ in range(4)] == [0, 1, 2, None]
    table.release(1)
    assert table.allocate() == 1
    assert table.allocate() is None


def test_daemon_fields_do_not_overwrite_the_sessions_fields():
    table = SessionTable(2)
    slot = table.allocate()
    table.beat(slot, now=123.5)
    table.write_message_count(slot, 7)
    table.write_started(slot, 9)
    table.write_owner(slot, status_code=2, incarnation=3, pid=4242, restarts=1, last_activity=55.25)
    assert table.read(slot) == type(table.read(slot))(2, 3, 4242, 1, 123.5, 55.25, 7, 9)


def test_released_slot_comes_back_zeroed():
    table = SessionTable(1)
    slot = table.allocate()
    table.write_message_count(slot, 5)
    table.release(slot)
    assert table.read(table.allocate()).message_count == 0


def test_a_forked_child_writes_its_slot_and_the_parent_sees_it():
    table = SessionTable(4)
    slot = table.allocate()
    pid = os.fork()
    if pid == 0:
        try:
            table.write_message_count(slot, 11)
            table.beat(slot, now=99.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert (table.read(slot).message_count, table.read(slot).heartbeat) == (11, 99.0)


def test_slot_size_keeps_every_field_aligned():
    assert SLOT_SIZE % 8 == 0


def test_a_large_table_lists_no_slot_it_never_handed_out():
    table = SessionTable(100_000)
    assert table._free == [] and table.allocate() == 0 and table.allocate() == 1
    table.release(0)
    assert table.allocate() == 0 and table.allocate() == 2
