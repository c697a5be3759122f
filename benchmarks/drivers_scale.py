"""Scale (1, 100, 1,000 live sessions), restart restoring them, and fork from a grown process.

One daemon grows through the scale points; it is then stopped and started again on the same
state dir, and the time until every session is listed with a serving process is the restore.
"""

from __future__ import annotations

import time

from jidocoder import Client

from .common import rss_mb
from .daemon import BenchDaemon
from .drivers import CONTENT, MS, Context, now, timed
from .drivers_more import create_many, session_memory
from .common import percentile
from .report import Row


def rtt_p50(socket_path: str, sid: str, count: int) -> float:
    with Client(socket_path) as client:
        for _ in range(20):
            client.send_message(sid, "user", CONTENT)
        return percentile([timed(lambda: client.send_message(sid, "user", CONTENT))
                           for _ in range(count)], 50)


def measure_scale_and_restore(ctx: Context) -> list[Row]:
    points = ctx.counts["scale"]
    most = points[-1]
    daemon = BenchDaemon(max_sessions=max(1024, most * 2)).start()
    rows: list[Row] = []
    try:
        ids = create_many(daemon.socket, 1, clients=1)
        readings = {}
        for point in points:
            if point > len(ids):
                ids += create_many(daemon.socket, point - len(ids))
            time.sleep(0.5)
            uss, pss, seen = session_memory(daemon.pid)
            readings[point] = (rtt_p50(daemon.socket, ids[0], ctx.counts["scale_rtt"]), uss, pss,
                               rss_mb(daemon.pid))
            ctx.log(f"  scale {point}: rtt p50 {readings[point][0]:.3f} ms, USS {uss:.2f} MB, "
                    f"PSS {pss:.2f} MB, daemon RSS {readings[point][3]:.1f} MB ({seen} processes)")
        base = readings[points[0]]
        for point in points[1:]:
            rtt, uss, pss, rss = readings[point]
            note = f"daemon RSS {rss:.1f} MB"
            rows += [Row(f"scale: send_message p50 at {point} sessions", "ms", rtt, base[0], 1.5,
                         p50=rtt, floor_name=f"same at {points[0]} session", note=note),
                     Row(f"scale: USS per session at {point} sessions", "MB", uss, base[1], 1.5,
                         floor_name=f"same at {points[0]} session", note=note),
                     Row(f"scale: PSS per session at {point} sessions", "MB", pss, base[2], 1.5,
                         floor_name=f"same at {points[0]} session", note=note)]
        daemon.stop()
        rows.append(measure_restore(ctx, daemon.root, most))
    finally:
        daemon.stop()
        daemon.remove()
    return rows


def measure_restore(ctx: Context, root: str, count: int) -> Row:
    """Start on a state dir holding ``count`` sessions → all listed, each with a serving pid."""
    daemon = BenchDaemon(root=root, max_sessions=max(1024, count * 2))
    try:
        start = now()
        daemon.start()
        with Client(daemon.socket, timeout=60) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                infos = client.list_sessions()
                if len(infos) >= count and all(i.pid is not None for i in infos):
                    break
                time.sleep(0.002)
            else:
                raise RuntimeError("restored sessions never all served")
        elapsed = (now() - start) * MS
    finally:
        daemon.stop()
    f = ctx.floors
    floor = f.p50("interpreter") + count * f.p50("fork_ready")
    return Row(f"daemon restart restoring {count} sessions", "ms", elapsed, floor, None,
               absolute_max=2000.0, floor_name=f"interpreter + {count} x fork→ready")


def measure_fork_choice(ctx: Context) -> list[Row]:
    f = ctx.floors
    rows = []
    for size in ("30", "200"):
        direct, template = f"fork_ready_{size}", f"template_fork_{size}"
        rows.append(Row(f"fork→ready from a {f.values[direct + '_rss']:.0f} MB parent (daemon forks)",
                        "ms", f.p50(direct), f.p50(template), 1.0, p50=f.p50(direct),
                        p99=f.p99(direct), floor_name="via a small template process"))
    return rows
