"""What watching the daemon costs it: ``jidocoder top`` readers against a quiet daemon.

Each ``top`` maps the session table read-only (``share_table``) and reads every slot itself, so
however many refresh, the daemon should spend no more CPU than when nobody watches. The floor
is the daemon's own CPU over the same time with nobody watching (its watchdog ticks); the
figure is its CPU while ``OBSERVERS`` readers read the whole table ``REFRESHES_PER_S`` times a
second (ten times top's rate). For comparison, shown and not judged: the same number of clients
asking ``list_sessions`` at that rate, which is what ``top`` would cost through the socket.
CPU time is the daemon's own (``/proc/<pid>/schedstat``, nanoseconds), not its sessions'.
"""

from __future__ import annotations

import threading
import time

from jidocoder import Client
from jidocoder.cli.tableview import SharedTable

from .drivers import Context
from .drivers_more import create_many, terminate_all
from .report import Row

OBSERVERS = 10
REFRESHES_PER_S = 10
SESSIONS = 50
ABOVE_IDLE_MAX = 2.0  # ms of daemon CPU per second that the readers may add, all of them


def daemon_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_ms_per_s(pid: int, seconds: float, work: threading.Event | None = None) -> float:
    """The daemon's CPU (ms per second) over ``seconds``; ``work`` is set for that time."""
    began, before = time.monotonic(), daemon_cpu_ns(pid)
    if work is not None:
        work.set()
    time.sleep(seconds)  # the measured interval itself, not a synchronisation
    if work is not None:
        work.clear()
    return (daemon_cpu_ns(pid) - before) / 1e6 / (time.monotonic() - began)


def read_table_often(socket_path: str, go: threading.Event, done: threading.Event) -> None:
    table = SharedTable(socket_path)
    try:
        while not done.is_set():
            if go.wait(0.05):
                table.slots()
                time.sleep(1 / REFRESHES_PER_S)
    finally:
        table.close()


def list_often(socket_path: str, go: threading.Event, done: threading.Event) -> None:
    with Client(socket_path) as client:
        while not done.is_set():
            if go.wait(0.05):
                client.list_sessions()
                time.sleep(1 / REFRESHES_PER_S)


def observed(socket_path: str, pid: int, reader: object, seconds: float) -> float:
    go, done = threading.Event(), threading.Event()
    threads = [threading.Thread(target=reader, args=(socket_path, go, done)) for _ in range(OBSERVERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)  # every reader connected before the interval starts
        return cpu_ms_per_s(pid, seconds, go)
    finally:
        done.set()
        for thread in threads:
            thread.join()


def measure_observers(ctx: Context) -> list[Row]:
    daemon = ctx.daemon
    seconds = float(ctx.counts["duration"])
    ids = create_many(daemon.socket, SESSIONS)
    try:
        idle = cpu_ms_per_s(daemon.pid, seconds)
        tops = observed(daemon.socket, daemon.pid, read_table_often, seconds)
        lists = observed(daemon.socket, daemon.pid, list_often, seconds)
    finally:
        terminate_all(daemon.socket, ids)
    note = f"{OBSERVERS} readers x {REFRESHES_PER_S}/s over {SESSIONS} sessions"
    return [Row(f"daemon CPU while {OBSERVERS} tops refresh", "ms/s", tops, idle, None,
                absolute_max=idle + ABOVE_IDLE_MAX, floor_name="daemon CPU, nobody watching", note=note),
            Row(f"daemon CPU, {OBSERVERS} clients polling list_sessions", "ms/s", lists, idle, None,
                floor_name="daemon CPU, nobody watching", note="for comparison: top through the socket")]
