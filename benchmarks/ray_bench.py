"""``scripts/bench --backend ray``: the Ray backend's figures beside the local backend's, with
Ray's plain actors as the anchor, all in one run (docs/ray.md).

Runs in a network namespace of its own with a 2-node cluster (``ray_cluster``). The Ray rows
are the backend driven directly (as the daemon would: ``send``, wait on its fd, ``collect``);
the local rows are a real daemon's, through the Client, so they include the daemon's hop and
the client's, which the Ray rows do not.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

from .common import percentile, uss_pss_mb
from .ray_cluster import LocalCluster, in_own_netns, run_in_own_netns

COUNTS = dict(rtt=2000, creates=20, crashes=8, sessions=8, pipelined=4000, warm=200)
QUICK = dict(rtt=300, creates=6, crashes=3, sessions=4, pipelined=600, warm=50)
CONTENT = "x" * 100


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def mib(uss_pss: tuple[float, float]) -> str:
    return f"{uss_pss[0]:.1f} / {uss_pss[1]:.1f} MiB"


def p50_p99(samples: list[float]) -> str:
    return f"p50 {ms(percentile(samples, 50))}, p99 {ms(percentile(samples, 99))}"


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _spec(state_dir: Path, sid: str, **config):
    from jidocoder.daemon.session import SessionSpec
    from jidocoder.models import SessionConfig
    return SessionSpec(session_id=sid, config=SessionConfig(**config), slot=0, state_dir=state_dir,
                       durability="normal", cache_max_bytes=1 << 20, hang_timeout=5.0,
                       max_frame=1 << 24, daemon_pid=0, log_level=logging.INFO, debug_ops=False)


class Driver:
    """The backend as the daemon drives it: send, wait on its fd, collect."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.seen: list = []

    def wait(self, done) -> None:
        while not done():
            select.select([self.backend.fileno()], [], [], 30)
            self.seen += self.backend.collect()

    def start(self, state_dir: Path, sid: str, **config):
        from jidocoder.daemon.backend import Died, Ready
        self.seen = []
        self.backend.start_session(_spec(state_dir, sid, **config))
        self.wait(lambda: any(isinstance(h, (Ready, Died)) for h in self.seen))
        return self.seen[-1]

    def call(self, sid: str, op: str, **args) -> dict:
        self.seen = []
        self.backend.send(sid, {"id": 1, "op": op, "args": args})
        self.wait(lambda: self.seen)
        return self.seen[0].reply


def ray_rows(cluster: LocalCluster, counts: dict, state_dir: Path) -> list[tuple[str, str]]:
    import ray
    from jidocoder.daemon.backend import Died, Ready
    from jidocoder.daemon.ray_backend import RayBackend

    @ray.remote(num_cpus=0)
    class Plain:
        def echo(self, value):
            return value

        def pid(self):
            return os.getpid()

    rows = []
    plain = Plain.remote()
    for _ in range(counts["warm"]):
        ray.get(plain.echo.remote(CONTENT))
    rows.append(("plain actor call round trip (anchor)",
                 p50_p99([timed(lambda: ray.get(plain.echo.remote(CONTENT))) for _ in range(counts["rtt"])])))
    creates = [timed(lambda: ray.get(Plain.remote().pid.remote())) for _ in range(counts["creates"])]
    rows.append(("plain actor created, first call answered (anchor)", p50_p99(creates)))
    plain_pid = ray.get(plain.pid.remote())

    backend = RayBackend(cluster.address)
    drive = Driver(backend)
    try:
        ready = drive.start(state_dir, "session_bench_rtt")
        volatile = drive.start(state_dir, "session_bench_mem", persistence_enabled=False)
        sid = ready.session_id
        for _ in range(counts["warm"]):
            drive.call(sid, "send_message", role="user", content=CONTENT)
            drive.call(volatile.session_id, "send_message", role="user", content=CONTENT)
        rows.append(("session actor read (get_file_index) round trip",
                     p50_p99([timed(lambda: drive.call(sid, "get_file_index")) for _ in range(counts["rtt"])])))
        rows.append(("session actor send_message, stored on the daemon's disk first",
                     p50_p99([timed(lambda: drive.call(sid, "send_message", role="user", content=CONTENT))
                              for _ in range(counts["rtt"])])))
        rows.append(("session actor send_message, persistence disabled (no store)",
                     p50_p99([timed(lambda: drive.call(volatile.session_id, "send_message", role="user",
                                                       content=CONTENT)) for _ in range(counts["rtt"])])))
        rows.append(("memory: a session actor's process (USS / PSS)",
                     mib(uss_pss_mb(ready.pid))))
        rows.append(("memory: a plain actor's process (USS / PSS, anchor)", mib(uss_pss_mb(plain_pid))))
        rows.append(throughput(drive, state_dir, counts))
        rows.append(("session actor created (store read, actor placed, ready)",
                     p50_p99([timed(lambda i=i: drive.start(state_dir, f"session_bench_c{i}"))
                              for i in range(counts["creates"])])))
        crashes = []
        for i in range(counts["crashes"]):
            victim = drive.start(state_dir, f"session_bench_k{i}")
            began = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            drive.wait(lambda: any(isinstance(h, Died) for h in drive.seen))
            again = drive.start(state_dir, victim.session_id)
            assert isinstance(again, Ready)
            crashes.append(time.perf_counter() - began)
        rows.append(("SIGKILL of a session actor → death noticed → new actor ready", p50_p99(crashes)))
    finally:
        backend.close()
    return rows


def throughput(drive: Driver, state_dir: Path, counts: dict) -> tuple[str, str]:
    """``pipelined`` send_message calls over ``sessions`` sessions, 16 in flight each."""
    from jidocoder.daemon.backend import Answered
    sids = [drive.start(state_dir, f"session_bench_t{i}").session_id for i in range(counts["sessions"])]
    backend, total, sent, answered = drive.backend, counts["pipelined"], 0, 0
    began = time.perf_counter()
    for _ in range(16):
        for sid in sids:
            backend.send(sid, {"id": sent, "op": "send_message", "args": {"role": "user", "content": CONTENT}})
            sent += 1
    while answered < total:
        select.select([backend.fileno()], [], [], 30)
        for happening in backend.collect():
            if isinstance(happening, Answered):
                answered += 1
                if sent < total:
                    backend.send(happening.session_id, {"id": sent, "op": "send_message",
                                                        "args": {"role": "user", "content": CONTENT}})
                    sent += 1
    rate = total / (time.perf_counter() - began)
    return (f"throughput: send_message over {len(sids)} session actors, stored", f"{rate:,.0f} calls/s")


def store_rows(state_dir: Path, counts: dict) -> list[tuple[str, str]]:
    """The floor of persist-first: the daemon's own write of one message."""
    from jidocoder.daemon.store import SessionStore
    from jidocoder.models import Message, utc_now
    store = SessionStore(state_dir, "session_bench_floor")
    try:
        message = Message(role="user", content=CONTENT, timestamp=utc_now())
        samples = [timed(lambda: store.append_message(message, 1000)) for _ in range(counts["rtt"])]
    finally:
        store.close()
    return [("one message stored by the daemon (SessionStore.append_message)", p50_p99(samples))]


def local_rows(counts: dict) -> list[tuple[str, str]]:
    """The local backend, a real daemon through the Client (two hops more than the Ray rows)."""
    from jidocoder import Client

    from .daemon import BenchDaemon
    daemon = BenchDaemon().start()
    try:
        with Client(daemon.socket) as client:
            sid = client.create_session()
            for _ in range(counts["warm"]):
                client.send_message(sid, "user", CONTENT)
            rtt = [timed(lambda: client.send_message(sid, "user", CONTENT)) for _ in range(counts["rtt"])]
            creates = [timed(client.create_session) for _ in range(counts["creates"])]
            pid = client.get_session_pid(sid)
            memory = mib(uss_pss_mb(pid))
    finally:
        daemon.stop()
        daemon.remove()
    return [("local: send_message through daemon and Client", p50_p99(rtt)),
            ("local: create_session through daemon and Client", p50_p99(creates)),
            ("local: memory of a session process (USS / PSS)", memory)]


def main(argv: list[str]) -> int:
    counts = QUICK if "--quick" in argv else COUNTS
    if not in_own_netns():
        return run_in_own_netns([sys.executable, "-m", "benchmarks.ray_bench", *argv], 1800).returncode
    import ray
    with tempfile.TemporaryDirectory(prefix="jd-raybench-") as root:
        state_dir = Path(root)
        rows = local_rows(counts) + store_rows(state_dir, counts)
        cluster = LocalCluster(nodes=2)
        try:
            rows.append(("2-node cluster up (head + 2 nodes, in its namespace)", f"{cluster.up_in:.1f} s"))
            ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
            rows += ray_rows(cluster, counts, state_dir)
        finally:
            survivors = cluster.shutdown()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if survivors:
        print(f"killed after the cluster's shutdown: {survivors}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
