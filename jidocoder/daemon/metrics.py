"""The daemon's own counters, and the snapshot ``jidocoder metrics`` renders as OpenMetrics.

Plain integers and lists, bumped where things happen (a reply, an event, a crash event, a
connection, a registry commit) and read only when a client asks (``metrics`` op): no thread,
no lock (the daemon has one loop), and no library in the daemon (a process that forks
sessions must not carry a metrics library's threads or registries into them). The CLI turns
the snapshot into OpenMetrics text with ``prometheus_client`` (``jidocoder/cli/metrics.py``).

One ``METRICS`` per daemon process: the daemon is one per process, and the places that count
(``link.Pending``, ``events.EventBus``, ``clients.ClientConnection``) are far apart.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

# Seconds. A call through a session is ~40-100 µs; a create waits for a spare (ms); a call
# queued behind a busy session can take seconds.
CALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0)
# A registry COMMIT: tens of µs in WAL "normal", an fdatasync (ms) in "full".
COMMIT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                  0.1, 0.25, 1.0)


class Histogram:
    """Counts per bucket (not cumulative: the renderer adds up), their sum and count."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class Metrics:
    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()  # (op, "ok" | "error")
        self.call_seconds = Histogram(CALL_BUCKETS)
        self.events: Counter[str] = Counter()  # by type
        self.deliveries = 0  # event frames queued to subscribers: the fan-out
        self.crashes: Counter[str] = Counter()  # by reason
        self.restarts = 0
        self.connections = 0
        self.slow_clients_dropped = 0
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.known_ops: frozenset[str] = frozenset()  # set by the Api: the ops it serves

    def observe_call(self, op: str, seconds: float, failed: bool) -> None:
        if op not in self.known_ops:  # a client's made-up op must not grow the label set
            op = "unknown"
        self.calls[(op, "error" if failed else "ok")] += 1
        self.call_seconds.observe(seconds)

    def observe_event(self, kind: str, payload: dict[str, Any], delivered: int) -> None:
        self.events[kind] += 1
        self.deliveries += delivered
        if kind == "session_crashed":
            self.crashes[str(payload.get("reason"))] += 1
        elif kind == "session_restarted":
            self.restarts += 1

    def snapshot(self) -> dict[str, Any]:
        """Everything counted so far, as plain data (encodable on the wire)."""
        return {
            "calls": [[op, outcome, n] for (op, outcome), n in sorted(self.calls.items())],
            "call_seconds": self.call_seconds.snapshot(),
            "events": dict(self.events), "event_deliveries": self.deliveries,
            "crashes": dict(self.crashes), "restarts": self.restarts,
            "connections": self.connections, "slow_clients_dropped": self.slow_clients_dropped,
            "commit_seconds": self.commit_seconds.snapshot(),
        }


METRICS = Metrics()
