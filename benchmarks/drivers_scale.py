"""Scale (1, 100, 1,000 live sessions and the most this machine holds), restart restoring
1,000, and fork from a grown process.

One daemon grows through the scale points; it is then stopped and started again on the same
state dir, and the time until every session is listed with a serving process is the restore.
In the full run the restored daemon (``max_sessions`` raised to ``scale_most``) then keeps
creating sessions until that cap or until MemAvailable falls below ``MOST_RESERVE`` of MemTotal:
the "most" point. It is measured after the restore so that the restore row still times 1,000
sessions; the restored 1,000 (hibernated by the stop, docs/api.md §13) are called first, so that
every session counted there is live.
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


def mem_available_fraction() -> float:
    """/proc/meminfo MemAvailable / MemTotal."""
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, rest = line.split(":", 1)
            values[name] = int(rest.split()[0])
    return values["MemAvailable"] / values["MemTotal"]


def reading(ctx: Context, daemon: BenchDaemon, sid: str, label: object) -> tuple:
    """(round-trip p50, mean USS, mean PSS per session, daemon RSS) with the daemon as it is."""
    time.sleep(0.5)
    uss, pss, seen = session_memory(daemon.pid)
    got = (rtt_p50(daemon.socket, sid, ctx.counts["scale_rtt"]), uss, pss, rss_mb(daemon.pid))
    ctx.log(f"  scale {label}: rtt p50 {got[0]:.3f} ms, USS {uss:.2f} MB, PSS {pss:.2f} MB, "
            f"daemon RSS {got[3]:.1f} MB ({seen} processes)")
    return got


def scale_rows(label: str, got: tuple, base: tuple, base_label: str, note: str) -> list[Row]:
    rtt, uss, pss, _ = got
    floor_name = f"same at {base_label} session"
    return [Row(f"scale: send_message p50 at {label}", "ms", rtt, base[0], 1.5, p50=rtt,
                floor_name=floor_name, note=note),
            Row(f"scale: USS per session at {label}", "MB", uss, base[1], 1.5,
                floor_name=floor_name, note=note),
            Row(f"scale: PSS per session at {label}", "MB", pss, base[2], 1.5,
                floor_name=floor_name, note=note)]


# What the "most" point leaves free: each live session takes ~2.24 MB of MemAvailable here
# (2.0 MB USS, plus the kernel's page tables and stacks), so 10,000 take ~22.4 GB of this
# 24.7 GB machine and the full run wants it to itself. A quarter kept free stopped it at 7,902
# while others ran their suites; 5 % at 9,871 on a quiet machine; 3 % leaves ~0.7 GB.
MOST_RESERVE = 0.03


def revive_all(socket_path: str, ids: list[str]) -> None:
    """Each session called once: a hibernated one is live again when this returns."""
    with Client(socket_path, timeout=60) as client:
        for sid in ids:
            client.get_session_pid(sid)


def grow_to_most(ctx: Context, daemon: BenchDaemon, have: int, cap: int,
                 min_available: float = MOST_RESERVE) -> tuple[int, str]:
    """Create sessions in batches (8 concurrent clients) until ``cap`` live sessions or until
    MemAvailable falls below ``min_available`` of MemTotal. Batches shrink as memory nears the
    limit (estimated from what the sessions so far took), so it is overshot by little. A batch
    that fails ends the growth too. Returns the count reached and what stopped it."""
    began, first = time.monotonic(), mem_available_fraction()
    made = 0
    while True:
        left = mem_available_fraction()
        if left < min_available:
            reason = f"MemAvailable {left:.1%} of MemTotal"
            break
        if have >= cap:
            reason = f"max_sessions cap {cap} (MemAvailable {left:.1%})"
            break
        batch = min(256, cap - have)
        if made >= 64 and first > left:
            per_session = (first - left) / made
            batch = max(8, min(batch, int((left - min_available) / per_session) + 1))
        try:
            create_many(daemon.socket, batch)
        except Exception as exc:  # noqa: BLE001 - e.g. the machine refused a fork: that is the most it holds
            with Client(daemon.socket, timeout=60) as client:
                have = len(client.list_sessions())
            reason = f"{type(exc).__name__}: {exc}"
            break
        have, made = have + batch, made + batch
    ctx.log(f"  grew to {have} sessions in {time.monotonic() - began:.1f} s; stopped by {reason}")
    return have, reason


def measure_scale_and_restore(ctx: Context) -> list[Row]:
    """1, 100, 1,000 sessions on one daemon; stop it and time the restart restoring the 1,000;
    then (full run) the restored daemon grows to the most this machine holds."""
    points = ctx.counts["scale"]
    last, cap = points[-1], int(ctx.counts.get("scale_most") or 0)
    max_sessions = max(1024, last * 2, cap)
    daemon = BenchDaemon(max_sessions=max_sessions, max_live_sessions=max_sessions).start()
    restored = None
    rows: list[Row] = []
    try:
        ids = create_many(daemon.socket, 1, clients=1)
        readings = {}
        for point in points:
            if point > len(ids):
                ids += create_many(daemon.socket, point - len(ids))
            readings[point] = reading(ctx, daemon, ids[0], point)
        base = readings[points[0]]
        for point in points[1:]:
            rows += scale_rows(f"{point} sessions", readings[point], base, str(points[0]),
                               f"daemon RSS {readings[point][3]:.1f} MB")
        daemon.stop()
        # the restore measures exactly the ``last`` sessions persisted above; only then grow
        restore_row, restored = measure_restore(ctx, daemon.root, ids, max_sessions,
                                                keep=cap > last)
        rows.append(restore_row)
        if restored is not None:
            revive_all(restored.socket, ids)
            most, reason = grow_to_most(ctx, restored, last, cap)
            got = reading(ctx, restored, ids[0], f"{most} (most)")
            rows += scale_rows(f"{most} sessions (most)", got, base, str(points[0]),
                               f"daemon RSS {got[3]:.1f} MB; stopped by {reason}; sessions "
                               f"{last + 1}..{most} created on the daemon that restored (and revived) {last}")
    finally:
        if restored is not None:
            restored.stop()
        daemon.stop()
        daemon.remove()
    return rows


def measure_restore(ctx: Context, root: str, ids: list[str], max_sessions: int,
                    keep: bool = False) -> tuple[Row, BenchDaemon | None]:
    """Start on a state dir holding the sessions ``ids`` → all listed, each with a serving pid.
    Each session is watched with ``get_session_info`` (O(1) in the daemon), then one
    ``list_sessions`` confirms; polling ``list_sessions`` itself (32 ms at 1,000 sessions) every
    few ms would take most of the daemon's time away from restoring. With ``keep`` the restored
    daemon is returned running (the caller stops it)."""
    count = len(ids)
    daemon = BenchDaemon(root=root, max_sessions=max_sessions, max_live_sessions=max_sessions)
    try:
        start = now()
        daemon.start()
        with Client(daemon.socket, timeout=60) as client:
            deadline = time.monotonic() + 60
            waiting = list(ids)
            while time.monotonic() < deadline:
                while waiting and _back(client.get_session_info(waiting[-1])):
                    waiting.pop()
                if not waiting:
                    infos = client.list_sessions()
                    if len(infos) >= count and all(_back(i) for i in infos):
                        break
                    waiting = [i.session_id for i in infos if not _back(i)]
                time.sleep(0.001)
            else:
                raise RuntimeError("restored sessions never all served")
        elapsed = (now() - start) * MS
        if len(infos) != count:
            raise RuntimeError(f"restored {len(infos)} sessions, expected {count}")
    except BaseException:
        daemon.stop()
        raise
    if not keep:
        daemon.stop()
    f = ctx.floors
    floor = f.p50("interpreter") + count * f.p50("fork_ready")
    row = Row(f"daemon restart restoring {count} sessions", "ms", elapsed, floor, None,
              absolute_max=2000.0, floor_name=f"interpreter + {count} x fork→ready")
    return row, (daemon if keep else None)


def _back(info) -> bool:
    """Restored: serving, or hibernated (a stop hibernates every session: docs/api.md §13)."""
    return info.pid is not None or info.hibernated


def measure_fork_choice(ctx: Context) -> list[Row]:
    """Three ways to start a worker for a parent of 30 and 200 MB, all floor programs: fork
    from the parent, fork from a template forked while small, and a spare the template made
    ahead of need. jidocoder uses the spare (``jidocoder/daemon/spares.py``); the row compares it
    with the faster of the other two, so it passes only if the choice is the fastest."""
    f = ctx.floors
    rows = []
    for size in ("30", "200"):
        direct, template, spare = f"fork_ready_{size}", f"template_fork_{size}", f"spare_start_{size}"
        other, other_name = min(((f.p50(direct), "direct fork→ready"),
                                 (f.p50(template), "fork→ready via a template")))
        rows.append(Row(f"start a worker for a {f.values[direct + '_rss']:.0f} MB parent: "
                        "spare from a template (chosen)",
                        "ms", f.p50(spare), other, 1.0, p50=f.p50(spare), p99=f.p99(spare),
                        floor_name=other_name,
                        note=f"direct fork {f.p50(direct):.2f} ms, via a template {f.p50(template):.2f} ms"))
    return rows
