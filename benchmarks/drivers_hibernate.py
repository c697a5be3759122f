"""Hibernation and scale (docs/api.md §13), each figure against its floor in the same run:

- revive latency: a call to a hibernated session, answered (``get_session_pid``), against a
  ``create_session`` on the same daemon (target ≤ 1.5×), neither having to make room.
- daemon start with N known sessions (until a first call is answered), all hibernated (a
  registry written by ``Registry.put``, and an empty file per session in sessions/: a start
  lists them, never opens them), against twice a start with none plus reading the registry as a start does, in
  this process: the figure must not pass that sum.
- daemon RSS per known session: (RSS with N known − RSS with none) / N, against the bytes of a
  stored row (the least the daemon could hold); the issue's target is ≤ 2 KiB.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from pathlib import Path

from jidocoder import Client, SessionStatus
from jidocoder.daemon.store import Registry
from jidocoder.models import SessionState

from .common import percentile
from .daemon import BenchDaemon
from .drivers import MS, Context, now, timed
from .report import Row

SETTLE = 0.3  # s after a start before RSS is read: the first tick and spares are done


def measure_hibernation(ctx: Context) -> list[Row]:
    return measure_revive(ctx) + measure_known(ctx)


def measure_revive(ctx: Context) -> list[Row]:
    """Neither side makes room: ``n`` creates on a daemon that may keep ``n`` processes, then
    ``n`` more that hibernate the first ``n`` and are terminated, then the first ``n`` called
    again, one by one, each revived into the room the terminated ones left."""
    n = ctx.counts["revive"]
    daemon = BenchDaemon(max_live_sessions=n, hibernate_after_minutes=0).start()
    try:
        with Client(daemon.socket, timeout=60) as client:
            first: list[str] = []
            creates = [timed(lambda: first.append(client.create_session())) for _ in range(n)]
            pushing = [client.create_session() for _ in range(n)]  # the first n hibernate
            for sid in pushing:
                client.terminate_session(sid)
            if not all(info.hibernated for info in client.list_sessions()):
                raise RuntimeError("the first sessions did not all hibernate")
            revives = [timed(functools.partial(client.get_session_pid, sid)) for sid in first]
            for sid in first:
                client.terminate_session(sid)
    finally:
        daemon.stop()
        daemon.remove()
    p50, floor = percentile(revives, 50), percentile(creates, 50)
    return [Row("revive a hibernated session (call answered) p50", "ms", p50, floor, 1.5, p50=p50,
                p99=percentile(revives, 99), floor_name="create_session p50, same daemon",
                note=f"{n} each, neither making room")]


def write_known(state_dir: Path, count: int) -> float:
    """``count`` hibernated rows in a new registry, each with a (empty) database file in
    sessions/, which a start lists; the mean stored row size (bytes)."""
    registry = Registry(state_dir)
    sessions = state_dir / "sessions"
    sessions.mkdir(mode=0o700, exist_ok=True)
    total = 0
    try:
        for i in range(count):
            state = SessionState.new(f"session_{uuid.uuid4()}", metadata={"project": f"p{i}"},
                                     llm_config={"model": "bench"}).transition(SessionStatus.ACTIVE)
            registry.put(state, hibernated=True)
            (sessions / f"{state.session_id}.db").touch(mode=0o600)
            if i < 100:
                total += len(registry._encode(state))
    finally:
        registry.close()
    return total / min(count, 100)


def read_known(state_dir: Path) -> float:
    """ms to open the registry and read what a start reads of it, in this process."""
    start = now()
    registry = Registry(state_dir)
    try:
        registry.load_rows()
        registry.load_asleep()
    finally:
        registry.close()
    return (now() - start) * MS


PAGE = 100  # sessions per list_sessions page


def start_rss(root: str | None, settings: dict) -> tuple[float, int, int, float]:
    """(ms until a first call is answered, the daemon's RSS in KiB, sessions listed, ms for the last page of
    ``PAGE`` sessions, p50) for a daemon on ``root``."""
    daemon = BenchDaemon(root=root, **settings)
    try:
        began = now()
        daemon.start()  # its socket accepts from its first moment: not yet served
        with Client(daemon.socket, timeout=60) as client:
            client.list_sessions(limit=1)  # answered once the stored sessions are known
        started = (now() - began) * MS
        time.sleep(SETTLE)  # not a synchronisation: RSS read after the first ticks
        with open(f"/proc/{daemon.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        with Client(daemon.socket, timeout=60) as client:
            listed = len(client.list_sessions())
            last = max(0, listed - PAGE)
            pages = [timed(lambda: client.list_sessions(offset=last, limit=PAGE)) for _ in range(20)]
        return started, rss, listed, percentile(pages, 50)
    finally:
        daemon.stop()
        if root is None:
            daemon.remove()


def known_registry(count: int, ctx: Context) -> tuple[BenchDaemon, float]:
    """A root whose registry holds ``count`` hibernated sessions (a daemon object only for its
    temporary root: the caller removes it); the mean stored row size."""
    holder = BenchDaemon()
    state_dir = Path(holder.state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    began = time.monotonic()
    row_bytes = write_known(state_dir, count)
    ctx.log(f"  wrote {count} hibernated rows in {time.monotonic() - began:.1f} s")
    return holder, row_bytes


def measure_known(ctx: Context) -> list[Row]:
    count, starts = ctx.counts["known"], ctx.counts["starts"]
    settings = {"max_sessions": max(count, 1024)}
    empty = [start_rss(None, settings) for _ in range(starts)]
    few, _ = known_registry(PAGE, ctx)
    many, row_bytes = known_registry(count, ctx)
    try:
        page_floor = start_rss(few.root, settings)[3]
        reading = min(read_known(Path(many.state_dir)) for _ in range(2))
        full = [start_rss(many.root, settings) for _ in range(starts)]
    finally:
        few.remove()
        many.remove()
    if any(f[2] != count for f in full):
        raise RuntimeError(f"a start listed {[f[2] for f in full]}, expected {count}")
    start0, start_n = percentile([e[0] for e in empty], 50), percentile([f[0] for f in full], 50)
    rss0, rss_n = percentile([e[1] for e in empty], 50), percentile([f[1] for f in full], 50)
    page = percentile([f[3] for f in full], 50)
    per_session = (rss_n - rss0) * 1024 / count
    return [Row(f"daemon start with {count} known (hibernated) sessions", "ms", start_n,
                2 * start0 + reading, 1.0, floor_name="2 × a start with none + reading the registry",
                note=f"none: {start0:.0f} ms; reading {count} rows: {reading:.0f} ms"),
            Row(f"daemon RSS per known session at {count}", "bytes", per_session, row_bytes, 6.0,
                absolute_max=2048.0, floor_name="one stored registry row",
                note=f"RSS {rss0 / 1024:.1f} MiB with none, {rss_n / 1024:.1f} MiB with {count}"),
            Row(f"list_sessions last page of {PAGE} at {count} known", "ms", page, page_floor, 1.5,
                p50=page, floor_name=f"the same page with {PAGE} known")]
