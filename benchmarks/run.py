"""``scripts/bench``: measure every figure against its floor, in one run, and print the table.

Order: floors first (each a separate program, ``benchmarks.floors``), then the main daemon's
figures in the issue's priority, then the figures that need daemons of their own. Whatever
happens, every daemon and floor process is gone when this returns (``finally`` + killpg), and
SIGTERM is turned into the same unwinding as ^C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from .common import kill_group
from .daemon import BenchDaemon, stop_all
from .drivers import (Context, Floors, measure_create, measure_crash, measure_event_latency,
                      measure_send_message, measure_terminate, measure_throughput)
from .drivers_direct import measure_direct
from .drivers_async import measure_async_client, measure_reconnect
from .drivers_more import (measure_burst, measure_durability, measure_idle_memory,
                           measure_kill_storm, measure_start)
from .drivers_ops import measure_observers
from .drivers_hibernate import measure_hibernation
from .drivers_scale import measure_fork_choice, measure_scale_and_restore
from .report import Row, table, write_json

FULL = dict(fork=500, relay=3000, create=200, rtt=3000, events=1000, kills=40, terminate=100,
            duration=3.0, idle_sessions=200, starts=5, durable=1000, burst=100, storm=1000,
            scale=[1, 100, 1000], scale_rtt=1000, scale_most=10000, commits=1000, interpreters=10,
            revive=200, known=100_000, channel_sessions=1000)
QUICK = dict(fork=100, relay=500, create=30, rtt=500, events=100, kills=8, terminate=15,
             duration=0.7, idle_sessions=50, starts=2, durable=200, burst=100, storm=200,
             scale=[1, 20, 100], scale_rtt=200, scale_most=0, commits=200, interpreters=3,
             revive=20, known=2000, channel_sessions=50)

DRIVERS = [measure_create, measure_send_message, measure_direct, measure_throughput, measure_event_latency,
           measure_crash, measure_terminate, measure_idle_memory, measure_start,
           measure_durability, measure_burst, measure_kill_storm, measure_scale_and_restore,
           measure_fork_choice, measure_async_client, measure_reconnect, measure_observers,
           measure_hibernation]
FLOOR_PROCS: set[int] = set()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_floor(name: str, **args: object) -> dict:
    """One floor program in a process group of its own; killed with its children if we stop."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.floors", name, json.dumps(args)],
                            stdout=subprocess.PIPE, start_new_session=True)
    FLOOR_PROCS.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        kill_group(proc.pid)
        FLOOR_PROCS.discard(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"floor {name} failed with exit code {proc.returncode}")
    return json.loads(out)


def measure_floors(counts: dict, scratch: str) -> Floors:
    f = Floors()
    n = counts["fork"]
    log("floors: fork→ready, template, burst, exit, crash, idle memory, sqlite, interpreter, relay")
    for size, ballast in (("30", 0), ("200", 170)):
        got = run_floor("fork_ready", count=n, ballast_mb=ballast)
        f.samples[f"fork_ready_{size}"], f.values[f"fork_ready_{size}_rss"] = got["samples"], got["rss"]
        got = run_floor("template_fork", count=n, ballast_mb=ballast)
        f.samples[f"template_fork_{size}"] = got["samples"]
        f.samples[f"spare_start_{size}"] = run_floor("spare_start", count=n, ballast_mb=ballast)["samples"]
    f.samples["fork_ready"] = f.samples["fork_ready_30"]
    f.samples["fork_burst"] = run_floor("fork_burst", workers=counts["burst"], repeats=5)["samples"]
    f.samples["exit_reap"] = run_floor("exit_reap", count=n)["samples"]
    f.samples["crash_eof"] = run_floor("crash_eof", count=n)["samples"]
    # the same three, each sample after PAUSE s idle, for the figures measured that way
    f.samples["fork_ready_paused"] = run_floor("fork_ready", count=counts["create"], paused=True)["samples"]
    f.samples["crash_eof_paused"] = run_floor("crash_eof", count=counts["kills"], paused=True)["samples"]
    idle = run_floor("idle_memory", count=10)
    f.values["idle_uss"] = sorted(idle["uss"])[len(idle["uss"]) // 2]
    f.values["idle_pss"] = sorted(idle["pss"])[len(idle["pss"]) // 2]
    for mode in ("normal", "full"):
        f.samples[f"sqlite_{mode}"] = run_floor("sqlite_commit", count=counts["commits"], mode=mode,
                                                directory=scratch)["samples"]
    interp = run_floor("interpreter", count=counts["interpreters"])
    f.samples["interpreter"] = interp["samples"]
    f.values["interpreter_pss"] = sorted(interp["pss"])[len(interp["pss"]) // 2]
    relay = run_floor("relay", count=counts["relay"], duration=counts["duration"],
                      loads=[[8, 1], [64, 1], [8, 32]], paused=counts["create"])
    f.samples["relay"], f.samples["one_hop"] = relay["samples"], relay["one_hop"]
    f.samples["relay_paused"], f.samples["one_hop_paused"] = relay["paused"], relay["one_hop_paused"]
    for key, rate in relay["throughput"].items():
        f.values[f"throughput_{key}"] = rate
    log(f"  fork→ready {f.p50('fork_ready'):.3f} ms, relay {f.p50('relay'):.3f} ms, one hop "
        f"{f.p50('one_hop'):.3f} ms, crash noticed {f.p50('crash_eof'):.3f} ms, exit/reap "
        f"{f.p50('exit_reap'):.3f} ms, idle USS {f.values['idle_uss']:.2f} MB; after a pause: "
        f"fork→ready {f.p50('fork_ready_paused'):.3f} ms, relay {f.p50('relay_paused'):.3f} ms, "
        f"one hop {f.p50('one_hop_paused'):.3f} ms, crash noticed {f.p50('crash_eof_paused'):.3f} ms")
    return f


def on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every row at reduced counts (< 60 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated driver names (debugging)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    counts = QUICK if args.quick else FULL
    rows: list[Row] = []
    began = time.monotonic()
    interrupted = False
    main_daemon = None
    try:
        with tempfile.TemporaryDirectory(prefix="jdb-", dir="/tmp") as scratch:
            floors = measure_floors(counts, scratch)
            main_daemon = BenchDaemon(max_restarts=1_000_000).start()
            ctx = Context(args.quick, floors, main_daemon, counts, log)
            wanted = set(args.only.split(",")) if args.only else None
            for driver in DRIVERS:
                name = driver.__name__.removeprefix("measure_")
                if wanted and name not in wanted:
                    continue
                log(f"{name} ...")
                t0 = time.monotonic()
                try:
                    rows += driver(ctx)
                except Exception:  # noqa: BLE001 - a broken figure is reported, the others still run
                    log(traceback.format_exc())
                    rows.append(Row(f"{name} (failed)", "-", float("nan"), float("nan"), 1.0))
                log(f"  {time.monotonic() - t0:.1f} s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process of the benchmark")
    finally:
        stop_all()
        for pgid in list(FLOOR_PROCS):
            kill_group(pgid)
    if interrupted:
        os._exit(130)  # threads of a half-run driver must not keep the process alive
    print(table(rows))
    counts = {status: sum(r.status == status for r in rows) for status in ("PASS", "MISS", "INFO")}
    print(f"\n{counts['PASS']} PASS, {counts['MISS']} MISS, {counts['INFO']} for information; "
          f"{time.monotonic() - began:.0f} s ({'quick' if args.quick else 'full'} run)")
    if args.json:
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
