"""Drivers: the same figures as the floors, measured through a real daemon and its Client.

Each ``measure_*`` takes the run's context and returns rows. Times are in ms, memory in MB,
throughput in requests per second. A driver leaves the daemon as it found it, except for
sessions it documents as kept.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING

from jidocoder import Client

from .common import PAUSE, percentile
from .report import Row

if TYPE_CHECKING:  # daemon.py is not imported at run time here: only drivers_more starts one
    from .daemon import BenchDaemon

now = time.perf_counter
MS = 1000.0
CONTENT = "hello from the benchmark"


@dataclass
class Floors:
    """Floor samples by name (seconds) and other floor readings."""
    samples: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    def p50(self, name: str) -> float:
        return percentile(self.samples[name], 50) * MS

    def p99(self, name: str) -> float:
        return percentile(self.samples[name], 99) * MS


@dataclass
class Context:
    quick: bool
    floors: Floors
    daemon: BenchDaemon          # the main daemon: durability normal, restarts unlimited
    counts: dict[str, int | float]
    log: Callable[[str], None] = print


def timed(fn: Callable[[], object]) -> float:
    start = now()
    fn()
    return (now() - start) * MS


def latency_rows(name: str, samples: list[float], floor50: float, floor99: float, floor_name: str,
                 t50: float, t99: float | None) -> list[Row]:
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    rows = [Row(f"{name} p50", "ms", p50, floor50, t50, p50=p50, p99=p99, floor_name=floor_name)]
    if t99 is not None:
        rows.append(Row(f"{name} p99", "ms", p99, floor99, t99, p50=p50, p99=p99,
                        floor_name=floor_name + " (p99)"))
    return rows


# -- latency of one call ----------------------------------------------------------------------

def measure_create(ctx: Context) -> list[Row]:
    """One create's latency with the daemon otherwise idle (``PAUSE`` before each sample, and
    the floors measured the same way), and back to back, where each create also waits for the
    spare the previous one used up (the rate spares are made at; bursts are "100 at once")."""
    f = ctx.floors
    with Client(ctx.daemon.socket) as client:
        client.terminate_session(client.create_session())  # warm up
        isolated = create_samples(client, ctx.counts["create"], PAUSE)
        back_to_back = create_samples(client, ctx.counts["create"], 0.0)
    rows = latency_rows("create_session", isolated, f.p50("fork_ready_paused") + f.p50("relay_paused"),
                        f.p99("fork_ready_paused") + f.p99("relay_paused"),
                        "fork→ready + relay, each after the same pause", 2.0, 2.5)
    p50 = percentile(back_to_back, 50)
    rows.append(Row("create_session back to back p50", "ms", p50, f.p50("fork_ready") + f.p50("relay"),
                    None, p50=p50, p99=percentile(back_to_back, 99), floor_name="fork→ready + relay",
                    note="for information: bounded by the rate spares are made"))
    return rows


def create_samples(client: Client, count: int, pause: float) -> list[float]:
    ids, samples = [], []
    for _ in range(count):
        time.sleep(pause)
        start = now()
        ids.append(client.create_session())
        samples.append((now() - start) * MS)
    for sid in ids:
        client.terminate_session(sid)
    return samples


def measure_send_message(ctx: Context) -> list[Row]:
    f = ctx.floors
    with Client(ctx.daemon.socket) as client:
        sid = client.create_session()
        for _ in range(200):
            client.send_message(sid, "user", CONTENT)
        samples = [timed(lambda: client.send_message(sid, "user", CONTENT))
                   for _ in range(ctx.counts["rtt"])]
        client.terminate_session(sid)
    return latency_rows("send_message round trip", samples, f.p50("relay"), f.p99("relay"),
                        "two-hop relay", 1.5, 2.0)


def measure_event_latency(ctx: Context) -> list[Row]:
    """Sender's send_message starts → a second client, subscribed, has conversation_added."""
    f = ctx.floors
    with Client(ctx.daemon.socket) as sender, Client(ctx.daemon.socket) as listener:
        sid = sender.create_session()
        listener.subscribe_to_session(sid)
        arrived = threading.Event()
        stamps: list[float] = []
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                event = listener.next_event(0.2)
                if event is not None and event.type == "conversation_added":
                    stamps.append(now())
                    arrived.set()

        thread = threading.Thread(target=listen)
        thread.start()
        samples = []
        try:
            for i in range(ctx.counts["events"] + 20):
                arrived.clear()
                start = now()
                sender.send_message(sid, "user", CONTENT)
                if not arrived.wait(5):
                    raise RuntimeError("conversation_added never arrived")
                if i >= 20:
                    samples.append((stamps[-1] - start) * MS)
        finally:
            stop.set()
            thread.join()
        sender.terminate_session(sid)
    return latency_rows("event latency (conversation_added)", samples, f.p50("relay"),
                        f.p99("relay"), "two-hop relay", 1.5, None)


def measure_crash(ctx: Context) -> list[Row]:
    """SIGKILL a session's process → session_crashed at a subscriber; → session_restarted
    (sent once the replacement serves). A fresh session per sample: no restart backoff; each
    kill comes with the daemon idle (its spare made), as for an isolated create."""
    f = ctx.floors
    crashed, restarted = [], []
    with Client(ctx.daemon.socket) as client:
        for _ in range(ctx.counts["kills"]):
            sid = client.create_session()
            client.subscribe_to_session(sid)
            pid = client.get_session_pid(sid)
            while client.next_event(0) is not None:
                pass
            time.sleep(PAUSE)  # the daemon idle, as for an isolated create
            start = now()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                event = client.next_event(5)
                if event is None or event.session_id != sid:
                    continue
                if event.type == "session_crashed":
                    crashed.append((now() - start) * MS)
                elif event.type == "session_restarted":
                    restarted.append((now() - start) * MS)
                    break
            client.unsubscribe_from_session(sid)
            client.terminate_session(sid)
    return (latency_rows("SIGKILL → session_crashed received", crashed,
                         f.p50("crash_eof_paused") + f.p50("one_hop_paused"),
                         f.p99("crash_eof_paused") + f.p99("one_hop_paused"),
                         "crash noticed + one hop, after the same pause", 1.5, None)
            + latency_rows("SIGKILL → replacement serving", restarted,
                           f.p50("crash_eof_paused") + f.p50("fork_ready_paused"),
                           f.p99("crash_eof_paused") + f.p99("fork_ready_paused"),
                           "crash noticed + fork→ready, after the same pause", 2.0, None))


def measure_terminate(ctx: Context) -> list[Row]:
    f = ctx.floors
    samples = []
    with Client(ctx.daemon.socket) as client:
        for _ in range(ctx.counts["terminate"]):
            sid = client.create_session()
            pid = client.get_session_pid(sid)
            samples.append(timed(lambda sid=sid: client.terminate_session(sid)))
            if os.path.exists(f"/proc/{pid}"):
                raise RuntimeError("terminate_session returned before the process was reaped")
    return latency_rows("terminate_session → reaped", samples, f.p50("exit_reap"),
                        f.p99("exit_reap"), "worker exit/reap", 2.0, None)


# -- throughput -------------------------------------------------------------------------------

def run_load(socket_path: str, clients: int, threads_per_client: int, duration: float) -> float:
    """Round trips per second: ``clients`` Clients, each with its own session, shared by
    ``threads_per_client`` threads (one request in flight per thread)."""
    handles = [Client(socket_path, timeout=30) for _ in range(clients)]
    try:
        sessions = [c.create_session() for c in handles]
        counts = [0] * (clients * threads_per_client)
        barrier = threading.Barrier(len(counts) + 1)
        stop_at = [0.0]

        def drive(slot: int) -> None:
            client, sid = handles[slot // threads_per_client], sessions[slot // threads_per_client]
            barrier.wait()
            while now() < stop_at[0]:
                client.send_message(sid, "user", CONTENT)
                counts[slot] += 1

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(counts))]
        for t in threads:
            t.start()
        stop_at[0] = now() + duration
        start = now()
        barrier.wait()
        for t in threads:
            t.join()
        elapsed = now() - start
        for client, sid in zip(handles, sessions, strict=True):
            client.terminate_session(sid)
        return sum(counts) / elapsed
    finally:
        for client in handles:
            client.close()


def measure_throughput(ctx: Context) -> list[Row]:
    rows = []
    duration = ctx.counts["duration"]
    for clients, in_flight, target in ((8, 1, 1.0), (64, 1, 0.6), (8, 32, 0.5)):
        key = f"{clients}x{in_flight}"
        rate = run_load(ctx.daemon.socket, clients, in_flight, duration)
        floor = ctx.floors.values[f"throughput_{key}"]
        label = (f"throughput, {clients} clients" if in_flight == 1 else
                 f"throughput, {clients} clients x {in_flight} in flight (threads)")
        rows.append(Row(label, "req/s", rate, floor, target, at_least=True, rate=rate,
                        floor_name=f"relay, {clients} conns x {in_flight} in flight"))
    return rows
