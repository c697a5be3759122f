"""``scripts/soak``: a long fault soak of one daemon, checked against docs/api.md §6.

While writer threads (each its own Client) append numbered messages to every session, the soak

1. SIGKILLs a random session's process, ``kills`` times, each after the writers made progress;
2. SIGKILLs the daemon itself, ``daemon_kills`` times, checks that every process it had exits by
   itself within 1 s (the orphans otherwise), and starts it again on the same state dir;
3. opens ``fuzz`` hostile connections to its socket (``benchmarks/soak_fuzz.py``), then checks
   that it is alive, answers ``list_sessions``, and that its RSS grew by at most ``RSS_BOUND``.

Then it reads every session's history back and checks it against the writers' ledgers
(``benchmarks/soak_load.py``): each acknowledged message exactly once and in its writer's order,
each uncertain one (``SessionCrashedError``, lost connection, timeout: not retried) at most
once, nothing refused or foreign. It prints a table, writes the figures with ``--json``, and
exits 1 if an invariant fails (2 if the soak itself could not run). Whatever happens, every
process it started is ended by pid (``finally``); SIGTERM unwinds like ^C.

The daemon runs with ``max_restarts`` of a million in ``max_seconds`` of 1 (``SETTINGS``), so
that no kill reaches the restart limit and the restart backoff stays short, and sessions hold
every message (``max_history`` ten million).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

from jidocoder import Client
from jidocoder.errors import JidocoderError

from .soak_fuzz import PROBE_WAIT, REPLY_WAIT, fuzz, unanswered_probes
from .common import rss_kib
from .soak_load import (SoakDaemon, Writer, alive, check_histories, poll_until, start_writers,
                        wait_for_progress)

FULL = dict(writers=4, sessions=8, kills=1000, daemon_kills=100, fuzz=100_000)
QUICK = dict(writers=3, sessions=4, kills=30, daemon_kills=3, fuzz=2_000)
RSS_BOUND_KIB = 32 * 1024  # the daemon's RSS may grow by at most this over the fuzz
ORPHAN_WINDOW = 1.0        # docs/api.md §6: a dead daemon's session processes exit within 1 s
PROGRESS_DEADLINE = 60.0   # writers must get acknowledgements again within this after a fault
MAX_HISTORY = 10_000_000
# A million restarts allowed, so that no kill reaches the limit (which ends a session by design);
# counted over 1 s, which also keeps the restart backoff (0.05 s doubled per restart in the
# window, at most 2 s) short, so kills come as fast as writers make progress between them.
SETTINGS = dict(max_restarts=1_000_000, max_seconds=1.0)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Soak:
    def __init__(self, counts: dict, seed: int, root: str) -> None:
        self.counts = counts
        self.rng = random.Random(seed)
        self.seed = seed
        self.daemon = SoakDaemon(root, **SETTINGS)
        self.stop_writers = threading.Event()
        self.writers: list[Writer] = []
        self.sessions: list[str] = []
        self.figures: dict = {"seed": seed, "counts": counts, "session_kills": 0, "daemon_kills": 0,
                              "orphans": 0, "orphan_pids": [], "slowest_exit_s": 0.0,
                              "daemon_restart_s": [], "fuzz_connections": 0}

    # -- the run, as a list of verbs ---------------------------------------------------------------
    def run(self) -> dict:
        self.daemon.start()
        self.create_sessions()
        self.writers = start_writers(self.counts["writers"], self.daemon.socket, self.sessions,
                                     self.stop_writers, self.seed)
        self.progress(10 * len(self.writers))
        for phase in (self.kill_sessions, self.kill_daemons, self.fuzz_socket):
            began = time.monotonic()
            phase()
            self.figures[f"{phase.__name__}_s"] = round(time.monotonic() - began, 1)
        self.progress(10 * len(self.writers))  # legitimate clients still served after it all
        self.join_writers()
        self.check()
        return self.figures

    def create_sessions(self) -> None:
        with Client(self.daemon.socket) as client:
            self.sessions = [client.create_session(metadata={"soak": i},
                                                   config={"max_history": MAX_HISTORY})
                             for i in range(self.counts["sessions"])]

    def progress(self, more: int) -> None:
        wait_for_progress(self.writers, more, PROGRESS_DEADLINE)
        self.check_writers()

    def check_writers(self) -> None:
        failed = [f"{w.name}: {w.failure}" for w in self.writers if w.failure]
        if failed:
            raise RuntimeError(f"writers failed: {failed}")

    def kill_sessions(self) -> None:
        log(f"session kills: {self.counts['kills']}")
        last_killed: dict[str, int] = {}
        with Client(self.daemon.socket) as client:
            for k in range(self.counts["kills"]):
                sid = self.rng.choice(self.sessions)
                pid = poll_until(lambda sid=sid: (p := client.get_session_pid(sid)) != last_killed.get(sid) and p,
                                 PROGRESS_DEADLINE, f"a new process for {sid}")
                os.kill(pid, signal.SIGKILL)
                last_killed[sid] = pid
                self.figures["session_kills"] += 1
                self.progress(self.rng.randint(1, 2 * len(self.writers)))
                if (k + 1) % 100 == 0:
                    log(f"  {k + 1} kills")

    def kill_daemons(self) -> None:
        log(f"daemon kills: {self.counts['daemon_kills']}")
        for k in range(self.counts["daemon_kills"]):
            orphans, took = self.daemon.kill(ORPHAN_WINDOW)
            self.figures["daemon_kills"] += 1
            self.figures["orphans"] += len(orphans)
            self.figures["orphan_pids"] += orphans[:10]
            self.figures["slowest_exit_s"] = max(self.figures["slowest_exit_s"], took)
            self.figures["daemon_restart_s"].append(round(self.restart_daemon(), 4))
            self.progress(self.rng.randint(1, 4 * len(self.writers)))
            if (k + 1) % 10 == 0:
                log(f"  {k + 1} daemon kills")

    def restart_daemon(self) -> float:
        """Start it on the same state dir; seconds until every session is served again."""
        began = time.monotonic()
        self.daemon.start()
        with Client(self.daemon.socket) as client:
            poll_until(lambda: self.all_serving(client), PROGRESS_DEADLINE,
                       "every session to be served again")
        return time.monotonic() - began

    def all_serving(self, client: Client) -> bool:
        listed = {i.session_id: i.pid for i in client.list_sessions()}
        return all(listed.get(sid) for sid in self.sessions)

    def fuzz_socket(self) -> None:
        count = self.counts["fuzz"]
        log(f"wire fuzz: {count} connections")
        before = rss_kib(self.daemon.pid)
        peak = [before]
        done = threading.Event()
        sampler = threading.Thread(target=self.sample_rss, args=(peak, done), daemon=True)
        sampler.start()
        try:
            outcome = fuzz(self.daemon.socket, self.sessions, count, self.seed,
                           on_progress=lambda n: log(f"  {n} connections"))
        finally:
            done.set()
            sampler.join()
        alive_after = self.daemon.proc.poll() is None and alive(self.daemon.pid)
        if alive_after:
            self.figures["unanswered_probes"] = unanswered_probes(self.daemon.socket)
        self.figures.update(fuzz_connections=sum(outcome.values()), fuzz_outcomes=dict(sorted(outcome.items())),
                            rss_before_kib=before, rss_peak_kib=peak[0],
                            rss_after_kib=rss_kib(self.daemon.pid) if alive_after else None,
                            rss_bound_kib=RSS_BOUND_KIB, daemon_alive=alive_after,
                            fuzz_unanswered=sum(n for key, n in outcome.items()
                                                if key.endswith(":silent") and not key.startswith("random_bytes")),
                            answers_list_sessions=alive_after and self.answers())

    def sample_rss(self, peak: list[int], done: threading.Event) -> None:
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], rss_kib(self.daemon.pid))
            except (OSError, RuntimeError):
                return

    def answers(self) -> bool:
        try:
            with Client(self.daemon.socket) as client:
                return {i.session_id for i in client.list_sessions()} >= set(self.sessions)
        except JidocoderError as exc:
            log(f"list_sessions after the fuzz failed: {exc!r}")
            return False

    def join_writers(self) -> None:
        self.stop_writers.set()
        for writer in self.writers:
            writer.join(30.0)  # an in-flight call ends within its Client's timeout (10 s)
        stuck = [w.name for w in self.writers if w.is_alive()]
        if stuck:
            raise RuntimeError(f"writers did not stop: {stuck}")
        self.check_writers()

    def check(self) -> None:
        histories: dict[int, list[str] | None] = {}
        with Client(self.daemon.socket, timeout=60.0) as client:
            for s, sid in enumerate(self.sessions):
                try:
                    histories[s] = [m.content for m in client.get_conversation_history(sid)]
                except Exception as exc:  # noqa: BLE001 - an unreadable history is a finding
                    log(f"history of {sid} unreadable: {exc!r}")
                    histories[s] = None
        verdict = check_histories(histories, self.writers)
        errors: dict[str, int] = {}
        for writer in self.writers:
            for code, n in writer.errors.items():
                errors[code] = errors.get(code, 0) + n
        self.figures.update(vars(verdict), call_errors=errors,
                            recreated=sum(w.recreated for w in self.writers),
                            sessions=self.sessions)


# -- verdict and report -----------------------------------------------------------------------------
ZERO = ["lost", "duplicated", "out_of_order", "refused_but_applied", "foreign",
        "unreadable_sessions", "orphans", "recreated"]


def failures(figures: dict) -> list[str]:
    failed = [name for name in ZERO if figures.get(name, 0) != 0]
    if not figures.get("daemon_alive"):
        failed.append("daemon_alive")
    if not figures.get("answers_list_sessions"):
        failed.append("answers_list_sessions")
    after, before = figures.get("rss_after_kib"), figures.get("rss_before_kib")
    if after is None or before is None or after - before > RSS_BOUND_KIB:
        failed.append("rss_growth")
    if figures.get("stop_exit_code") != 0:
        failed.append("graceful_stop")
    return failed


def table(figures: dict) -> str:
    restarts = sorted(figures.get("daemon_restart_s") or [0.0])
    rows = [
        ("acknowledged messages", figures.get("acknowledged"), ""),
        ("uncertain (maybe applied)", figures.get("uncertain"),
         f"{figures.get('uncertain_applied')} of them applied"),
        ("refused", figures.get("refused"), str(figures.get("call_errors", {}))),
        ("lost", figures.get("lost"), "must be 0"),
        ("duplicated", figures.get("duplicated"), "must be 0"),
        ("out of order", figures.get("out_of_order"), "must be 0"),
        ("refused but applied / foreign", f"{figures.get('refused_but_applied')} / {figures.get('foreign')}",
         "must be 0"),
        ("session kills", figures.get("session_kills"), ""),
        ("daemon kills", figures.get("daemon_kills"),
         f"restart to all served: p50 {restarts[len(restarts) // 2]:.2f} s, max {restarts[-1]:.2f} s"),
        ("Clients recreated by hand", figures.get("recreated"),
         "must be 0: each Client reconnects by itself (docs/api.md §10)"),
        ("orphans (alive 1 s after)", figures.get("orphans"),
         f"must be 0; slowest exit {figures.get('slowest_exit_s', 0):.3f} s"),
        ("hostile connections", figures.get("fuzz_connections"),
         f"{figures.get('fuzz_unanswered')} framed ones got no answer or close in {REPLY_WAIT} s (information)"),
        ("unanswered requests", len(figures.get("unanswered_probes") or []),
         f"information: no answer in {PROBE_WAIT:g} s to {figures.get('unanswered_probes')}"),
        ("daemon alive / answers", f"{figures.get('daemon_alive')} / {figures.get('answers_list_sessions')}", ""),
        ("daemon RSS KiB before/peak/after", f"{figures.get('rss_before_kib')} / {figures.get('rss_peak_kib')}"
         f" / {figures.get('rss_after_kib')}", f"growth must be <= {RSS_BOUND_KIB} KiB"),
        ("graceful stop exit code", figures.get("stop_exit_code"), "must be 0"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {str(value):>14}  {note}" for name, value, note in rows)


def on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt("SIGTERM")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced counts (well under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed; default: random)")
    parser.add_argument("--dir", default="/tmp", help="where to make the soak's socket and state dir")
    return parser.parse_args(argv)


def run(soak: Soak) -> str | None:
    """Run the soak; every process of it is ended whatever happens. Returns the traceback of a
    soak that could not finish (None if it did); ^C and SIGTERM propagate after the cleanup."""
    try:
        soak.run()
    except Exception:  # noqa: BLE001 - reported, and the processes still ended below
        text = traceback.format_exc()
        log(text)
        return text
    finally:
        soak.stop_writers.set()
        soak.figures["stop_exit_code"] = soak.daemon.stop()
        for writer in soak.writers:
            writer.join(15.0)
    return None


def report(figures: dict, failed: list[str], json_path: str | None) -> None:
    print(table(figures))
    verdict = "FAIL: " + ", ".join(failed) if failed else "PASS"
    kept = f"; state kept in {figures['state_dir']}" if failed else ""
    print(f"\n{verdict}; {figures['seconds']} s, seed {figures['seed']}{kept}")
    for example in figures.get("examples", [])[:10]:
        print(f"  {example}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=2, default=str)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    counts = QUICK if args.quick else FULL
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    root = tempfile.mkdtemp(prefix="jds-", dir=args.dir)
    log(f"soak seed {seed}, counts {counts}, state in {root}")
    soak, began = Soak(counts, seed, root), time.monotonic()
    try:
        crashed = run(soak)
    except KeyboardInterrupt:
        log("interrupted: every process of the soak is stopped")
        shutil.rmtree(root, ignore_errors=True)
        return 130
    figures = soak.figures
    failed = failures(figures) if crashed is None else ["soak did not finish"]
    figures.update(seconds=round(time.monotonic() - began, 1), failed=failed, error=crashed,
                   state_dir=root if failed else None)
    report(figures, failed, args.json)
    if not failed:
        shutil.rmtree(root, ignore_errors=True)
    return 2 if crashed else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
