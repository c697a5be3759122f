"""What the Ray backend's tests share: a session's spec, and waiting on what a backend tells."""

from __future__ import annotations

import logging
import select
import time
from pathlib import Path
from collections.abc import Callable

from jidocoder.daemon.backend import Happening
from jidocoder.daemon.session import SessionSpec
from jidocoder.models import SessionConfig
from benchmarks.ray_cluster import descendants
from tests.support import LONG

# Starting an actor is ~0.6 s on an idle machine and several seconds on 2 busy cores.
START = LONG


def spec(state_dir: Path, session_id: str, **config) -> SessionSpec:
    return SessionSpec(session_id=session_id, config=SessionConfig(**config), slot=0,
                       state_dir=state_dir, durability="normal", cache_max_bytes=1 << 20,
                       hang_timeout=5.0, max_frame=1 << 24, daemon_pid=0,
                       log_level=logging.INFO, debug_ops=True)


class Collector:
    """What a backend told, kept in order; ``until`` waits on its fd, with a deadline."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.seen: list[Happening] = []

    def until(self, done: Callable[[list[Happening]], object], timeout: float = LONG,
              what: str = "the backend") -> list[Happening]:
        deadline = time.monotonic() + timeout
        while not done(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.seen[-5:]}")
            select.select([self.backend.fileno()], [], [], left)
            self.seen += self.backend.collect()
        return self.seen

    def of(self, kind: type, session_id: str | None = None) -> list:
        return [h for h in self.seen if isinstance(h, kind)
                and (session_id is None or h.session_id == session_id)]


def node_of(cluster, pid: int) -> str:
    """The node whose raylet runs ``pid`` (an actor's worker is the raylet's child); actors
    asking no CPU may be placed on the head too."""
    for node in [cluster.cluster.head_node, *cluster.workers]:
        if any(pid in descendants(info.process.pid) for infos in node.all_processes.values() for info in infos):
            return node.node_id
    raise AssertionError(f"pid {pid} is on no node of the cluster")
