"""Drivers of the AsyncClient (against the same floors as the Client's rows) and of reconnecting.

- AsyncClient round trip: one task awaiting ``send_message`` back to back, judged against the
  two-hop relay floor with the Client's targets.
- AsyncClient throughput: 8 AsyncClients in one event loop (the sync rows' Clients share one
  process too), 1 task each, then 32 tasks each, against the relay floors of the same loads.
- Reconnect: the daemon SIGKILLed and started again on the same state dir; from the start until
  the first call of a Client that was connected before is answered (it reconnects by itself),
  against the same for a Client made once the new daemon accepts (no reconnect to do).
"""

from __future__ import annotations

import asyncio
import time

from jidocoder import AsyncClient, Client

from .common import kill_group, percentile
from .daemon import BenchDaemon
from .drivers import CONTENT, MS, Context, latency_rows, now
from .report import Row


def measure_async_client(ctx: Context) -> list[Row]:
    f = ctx.floors
    samples = asyncio.run(_round_trips(ctx.daemon.socket, ctx.counts["rtt"]))
    rows = latency_rows("AsyncClient send_message round trip", samples, f.p50("relay"),
                        f.p99("relay"), "two-hop relay", 1.5, 2.0)
    for clients, tasks, target in ((8, 1, 0.6), (8, 32, 0.5)):
        rate = asyncio.run(_load(ctx.daemon.socket, clients, tasks, ctx.counts["duration"]))
        rows.append(Row(f"AsyncClient throughput, {clients} clients x {tasks} tasks", "req/s",
                        rate, f.values[f"throughput_{clients}x{tasks}"], target, at_least=True,
                        rate=rate, floor_name=f"relay, {clients} conns x {tasks} in flight"))
    return rows


async def _round_trips(socket_path: str, count: int) -> list[float]:
    async with AsyncClient(socket_path) as client:
        sid = await client.create_session()
        for _ in range(200):
            await client.send_message(sid, "user", CONTENT)
        samples = []
        for _ in range(count):
            start = now()
            await client.send_message(sid, "user", CONTENT)
            samples.append((now() - start) * MS)
        await client.terminate_session(sid)
    return samples


async def _load(socket_path: str, clients: int, tasks: int, duration: float) -> float:
    handles = [AsyncClient(socket_path, timeout=30) for _ in range(clients)]
    for client in handles:
        await client.connect()
    try:
        sessions = [await c.create_session() for c in handles]
        stop_at = now() + duration
        count = [0]

        async def drive(client: AsyncClient, sid: str) -> None:
            while now() < stop_at:
                await client.send_message(sid, "user", CONTENT)
                count[0] += 1

        start = now()
        await asyncio.gather(*(drive(c, s) for c, s in zip(handles, sessions, strict=True) for _ in range(tasks)))
        elapsed = now() - start
        for client, sid in zip(handles, sessions, strict=True):
            await client.terminate_session(sid)
        return count[0] / elapsed
    finally:
        for client in handles:
            await client.close()


def measure_reconnect(ctx: Context) -> list[Row]:
    daemon = BenchDaemon().start()
    reconnecting, fresh = [], []
    try:
        with Client(daemon.socket, timeout=60) as client:
            sid = client.create_session()
            for _ in range(ctx.counts["starts"]):
                reconnecting.append(_restart_then_call(daemon, client, sid))
                fresh.append(_restart_then_call(daemon, None, sid))
    finally:
        daemon.stop()
        daemon.remove()
    p50 = percentile(reconnecting, 50)
    return [Row("reconnect: daemon restart → first call answered p50", "ms", p50,
                percentile(fresh, 50), 1.3, p50=p50, p99=percentile(reconnecting, 99),
                floor_name="the same with a Client made after the restart")]


def _restart_then_call(daemon: BenchDaemon, client: Client | None, sid: str) -> float:
    """SIGKILL the daemon (its sessions follow), start it again; ms from the start until a
    send_message to a restored session is answered, by ``client`` (connected before: it
    reconnects by itself) or by a Client made once the daemon accepts."""
    kill_group(daemon.pid)
    daemon.proc.wait()
    began = time.perf_counter()
    daemon.start()
    if client is not None:
        client.send_message(sid, "user", CONTENT)
    else:
        with Client(daemon.socket) as fresh:
            fresh.send_message(sid, "user", CONTENT)
    return (time.perf_counter() - began) * MS
