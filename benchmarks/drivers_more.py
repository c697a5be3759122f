"""Drivers for memory, start-up, durability, bursts, kill storms, restore and scale.

Memory is read from /proc/<pid>/smaps_rollup: USS = Private_Clean + Private_Dirty (what the
process alone holds), PSS = its share of everything.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from jidocoder import Client

from .common import children_of, percentile, session_processes, uss_pss_mb
from .daemon import BenchDaemon
from .drivers import CONTENT, MS, Context, latency_rows, now, timed
from .report import Row


def session_memory(daemon_pid: int) -> tuple[float, float, int]:
    """Mean USS and PSS (MB) over the daemon's session processes, and how many there are."""
    readings = []
    for pid in session_processes(daemon_pid):
        try:
            readings.append(uss_pss_mb(pid))
        except OSError:
            continue
    if not readings:
        return float("nan"), float("nan"), 0
    return (sum(u for u, _ in readings) / len(readings), sum(p for _, p in readings) / len(readings),
            len(readings))


def group_pss(daemon_pid: int) -> float:
    """PSS of the daemon plus every process it forked (helpers included)."""
    total = uss_pss_mb(daemon_pid)[1]
    return total + sum(uss_pss_mb(pid)[1] for pid in children_of(daemon_pid))


def create_many(socket_path: str, count: int, clients: int = 8) -> list[str]:
    """``count`` sessions, created by ``clients`` threads each with a Client of its own."""
    ids: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with Client(socket_path, timeout=60) as client:
            made = [client.create_session() for _ in range(n)]
        with lock:
            ids.extend(made)

    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=work, args=(n,)) for n in shares if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(ids) != count:
        raise RuntimeError(f"created {len(ids)} of {count} sessions")
    return ids


def terminate_all(socket_path: str, ids: list[str]) -> None:
    with Client(socket_path, timeout=60) as client:
        for sid in ids:
            client.terminate_session(sid)


def measure_idle_memory(ctx: Context) -> list[Row]:
    n = ctx.counts["idle_sessions"]
    ids = create_many(ctx.daemon.socket, n)
    time.sleep(1.0)  # let every process settle into its idle loop
    uss, pss, seen = session_memory(ctx.daemon.pid)
    terminate_all(ctx.daemon.socket, ids)
    f = ctx.floors.values
    note = f"{seen} session processes"
    return [Row(f"idle session USS at {n} sessions", "MB", uss, f["idle_uss"], 2.5,
                floor_name="idle forked worker USS", note=note),
            Row(f"idle session PSS at {n} sessions", "MB", pss, f["idle_pss"], None,
                absolute_max=3.0, floor_name="idle forked worker PSS", note=note)]


def measure_start(ctx: Context) -> list[Row]:
    """Fresh daemons: start → accepting, and the base PSS of a daemon with no session."""
    starts, pss = [], []
    for _ in range(ctx.counts["starts"]):
        daemon = BenchDaemon()
        try:
            daemon.start()
            starts.append(daemon.start_seconds * MS)
            time.sleep(0.3)
            pss.append(group_pss(daemon.pid))
        finally:
            daemon.stop()
            daemon.remove()
    f = ctx.floors
    p50 = percentile(starts, 50)
    return [Row("daemon start → accepting p50", "ms", p50, f.p50("interpreter"), 2.0, p50=p50,
                p99=percentile(starts, 99), floor_name="interpreter start + preload"),
            Row("daemon base PSS, no sessions", "MB", percentile(pss, 50),
                f.values["interpreter_pss"], 2.5, floor_name="one preloaded interpreter PSS")]


def measure_durability(ctx: Context) -> list[Row]:
    rows = []
    f = ctx.floors
    for mode in ("normal", "full"):
        daemon = ctx.daemon if mode == "normal" else BenchDaemon(durability="full").start()
        try:
            with Client(daemon.socket) as client:
                sid = client.create_session()
                for _ in range(20):
                    client.send_message(sid, "user", CONTENT)
                samples = [timed(lambda sid=sid: client.send_message(sid, "user", CONTENT))
                           for _ in range(ctx.counts["durable"])]
                client.terminate_session(sid)
        finally:
            if daemon is not ctx.daemon:
                daemon.stop()
                daemon.remove()
        commit = f"sqlite_{mode}"
        rows += latency_rows(f"send_message, durability {mode}", samples,
                             f.p50("relay") + f.p50(commit), f.p99("relay") + f.p99(commit),
                             f"relay + one sqlite commit ({mode}: {f.p50(commit):.3f} ms)", 2.0, None)
    return rows


def measure_burst(ctx: Context) -> list[Row]:
    """``burst`` sessions created at once: one thread per session, spread over 10 Clients."""
    n = ctx.counts["burst"]
    clients = [Client(ctx.daemon.socket, timeout=60) for _ in range(10)]
    ids: list[str] = []
    try:
        barrier = threading.Barrier(n + 1)

        def make(i: int) -> None:
            barrier.wait()
            ids.append(clients[i % 10].create_session())

        threads = [threading.Thread(target=make, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        start = now()
        barrier.wait()
        for t in threads:
            t.join()
        elapsed = (now() - start) * MS
    finally:
        for c in clients:
            c.close()
    terminate_all(ctx.daemon.socket, ids)
    return [Row(f"{n} sessions created at once", "ms", elapsed, ctx.floors.p50("fork_burst"), 2.0,
                floor_name=f"fork {n} ready workers")]


def measure_kill_storm(ctx: Context) -> list[Row]:
    """send_message p99 to one session, without and then with a neighbour SIGKILLed every 100 ms."""
    n = ctx.counts["storm"]
    with Client(ctx.daemon.socket) as client:
        sid = client.create_session()
        victims = [client.create_session() for _ in range(4)]
        own = client.get_session_pid(sid)
        calm = [timed(lambda: client.send_message(sid, "user", CONTENT)) for _ in range(n)]
        stop = threading.Event()
        kills = [0]

        def killer() -> None:
            while not stop.wait(0.1):
                others = [p for p in session_processes(ctx.daemon.pid) if p != own]
                if others:
                    try:
                        os.kill(random.choice(others), signal.SIGKILL)
                        kills[0] += 1
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            stormy = [timed(lambda: client.send_message(sid, "user", CONTENT)) for _ in range(n)]
            while kills[0] < 5:  # a storm worth the name, even if the calls were fast
                stormy.append(timed(lambda: client.send_message(sid, "user", CONTENT)))
        finally:
            stop.set()
            thread.join()
        for v in [sid, *victims]:
            client.terminate_session(v)
    p99 = percentile(stormy, 99)
    return [Row("other sessions' calls during a kill storm p99", "ms", p99, percentile(calm, 99),
                1.5, p50=percentile(stormy, 50), p99=p99, floor_name="p99 without kills",
                note=f"{kills[0]} SIGKILLs")]
