"""The direct-channel rows (issue 16), against floors measured in the same run.

Run as ``python -m benchmarks.direct [--quick]``. Floors: the relay floor program's one-hop echo
and two-hop relay (``benchmarks/relay.py``: the same framing and codec, no logic) and one
sqlite commit at the default durability (``normal``). Rows: ``send_message`` p50 ≤ 2× and p99
≤ 2.5× (one hop + one commit), ``get_active_files`` p50 ≤ 1.5× one hop, throughput with 8
clients ≥ 1.0× the two-hop relay's, event latency ≤ 1.5× the two-hop relay; and the fds of a
session process and of the daemon with N sessions × 8 clients that called each of them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from types import SimpleNamespace

from jidocoder import Client

from .common import percentile
from .daemon import BenchDaemon, stop_all
from .drivers import CONTENT, Floors, measure_event_latency, run_load, timed
from .run import run_floor


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    n = 500 if quick else 3000
    scratch = tempfile.mkdtemp(prefix="jdb-direct-")
    f = Floors()
    relay = run_floor("relay", count=n, duration=2.0, loads=[[8, 1]], paused=0)
    f.samples["relay"], f.samples["one_hop"] = relay["samples"], relay["one_hop"]
    sqlite = run_floor("sqlite_commit", count=n, mode="normal", directory=scratch)["samples"]
    one_hop_commit = [a + b for a, b in zip(sorted(f.samples["one_hop"]), sorted(sqlite), strict=False)]
    daemon = BenchDaemon().start()
    try:
        with Client(daemon.socket) as client:
            sid = client.create_session()
            for _ in range(200):
                client.send_message(sid, "user", CONTENT)
                client.get_active_files(sid)
            send = [timed(lambda: client.send_message(sid, "user", CONTENT)) for _ in range(n)]
            read = [timed(lambda: client.get_active_files(sid)) for _ in range(n)]
            client.terminate_session(sid)
        rate = run_load(daemon.socket, 8, 1, 2.0)
        ctx = SimpleNamespace(floors=f, daemon=daemon, counts={"events": n // 5})
        event = measure_event_latency(ctx)[0].figure  # type: ignore[arg-type]
        fd_rows = measure_fds(daemon, 100 if quick else 300)
    finally:
        stop_all()
    floor_sc50, floor_sc99 = percentile(one_hop_commit, 50) * 1e3, percentile(one_hop_commit, 99) * 1e3
    rows = [
        ("send_message p50", percentile(send, 50), floor_sc50, 2.0, False),
        ("send_message p99", percentile(send, 99), floor_sc99, 2.5, False),
        ("get_active_files p50", percentile(read, 50), f.p50("one_hop"), 1.5, False),
        ("throughput, 8 clients (req/s)", rate, relay["throughput"]["8x1"], 1.0, True),
        ("event latency p50", event, f.p50("relay"), 1.5, False),
    ]
    print(f"floors: one hop {f.p50('one_hop'):.3f} ms, relay {f.p50('relay'):.3f} ms, sqlite commit "
          f"{percentile(sqlite, 50) * 1e3:.3f} ms, one hop + commit p50 {floor_sc50:.3f} p99 {floor_sc99:.3f}")
    for name, value, floor, target, at_least in rows:
        ratio = value / floor
        ok = ratio >= target if at_least else ratio <= target
        print(f"{name:34s} {value:10.3f} floor {floor:10.3f} ratio {ratio:5.2f} target "
              f"{'>=' if at_least else '<='} {target} {'PASS' if ok else 'MISS'}")
    for line in fd_rows:
        print(line)


def measure_fds(daemon: BenchDaemon, sessions: int) -> list[str]:
    """fds with ``sessions`` sessions, each called by 8 Clients (a channel each)."""
    before = fds(daemon.proc.pid)
    clients = [Client(daemon.socket) for _ in range(8)]
    try:
        ids = [clients[0].create_session(config={"persistence_enabled": False}) for _ in range(sessions)]
        with_sessions = fds(daemon.proc.pid)
        for client in clients:
            for sid in ids:
                client.get_active_files(sid)
        pid = clients[0].get_session_pid(ids[0])
        lines = [f"fds, {sessions} sessions x 8 clients: daemon {fds(daemon.proc.pid)} "
                 f"(before sessions {before}, with sessions before any channel {with_sessions}), "
                 f"one session process {fds(pid)}, this process (8 clients) {fds(os.getpid())}"]
        for sid in ids:
            clients[0].terminate_session(sid)
        return lines
    finally:
        for client in clients:
            client.close()


if __name__ == "__main__":
    main()
