"""``jidocoder metrics``: the daemon's counters and gauges as OpenMetrics text.

The daemon only counts (daemon/metrics.py) and answers one ``metrics`` call with plain data; the
text is made here, by ``prometheus_client`` (a well-kept library that owns the format's escaping,
``_total``/``_bucket`` naming, cumulative buckets and ``# EOF``) through a custom collector, so
no metric object, registry or thread of it ever exists in the daemon or a session process.
Scrape it with a node_exporter textfile collector or any agent that runs a command.
"""

from __future__ import annotations

import argparse
import sys
from itertools import accumulate
from typing import Any
from collections.abc import Iterator

from ..states import SessionStatus
from .common import EXIT_OK, add_command, connect

PREFIX = "jidocoder_"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(commands, "metrics", cmd_metrics, "the daemon's metrics in the OpenMetrics text format",
                "Print the daemon's metrics (sessions by status, live processes, crashes by reason, "
                "restarts, calls and their latency, event fan-out, clients, slow clients dropped, "
                "registry commit time) in the OpenMetrics text format.")


def cmd_metrics(args: argparse.Namespace) -> int:
    with connect(args) as client:
        data = client.daemon_metrics()
    sys.stdout.write(render(data))
    return EXIT_OK


def render(data: dict[str, Any]) -> str:
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(data))
    text: bytes = generate_latest(registry)  # type: ignore[no-untyped-call]  # the library ships no types
    return text.decode()


class _Snapshot:
    """A custom collector over one snapshot (prometheus_client's documented collector API)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        d = self.data
        sessions = GaugeMetricFamily(PREFIX + "sessions", "Sessions known, by status.", labels=["status"])
        for status in SessionStatus:
            if status is not SessionStatus.TERMINATED:
                sessions.add_metric([status.value], d["sessions"].get(status.value, 0))
        sessions.add_metric(["failed"], d["failed_sessions"])
        yield sessions
        yield GaugeMetricFamily(PREFIX + "session_processes", "Session processes alive now.",
                                value=d["live_processes"])
        crashes = CounterMetricFamily(PREFIX + "session_crashes", "Session process crashes, by reason.",
                                      labels=["reason"])
        for reason, count in sorted(d["crashes"].items()):
            crashes.add_metric([reason], count)
        yield crashes
        yield CounterMetricFamily(PREFIX + "session_restarts", "Session processes restarted after a crash.",
                                  value=d["restarts"])
        calls = CounterMetricFamily(PREFIX + "calls", "Client calls answered, by operation and outcome.",
                                    labels=["op", "outcome"])
        for op, outcome, count in d["calls"]:
            calls.add_metric([op, outcome], count)
        yield calls
        yield _histogram(HistogramMetricFamily, PREFIX + "call_seconds",
                         "Time from a call's arrival to its reply.", d["call_seconds"])
        events = CounterMetricFamily(PREFIX + "events", "Events published, by type.", labels=["type"])
        for kind, count in sorted(d["events"].items()):
            events.add_metric([kind], count)
        yield events
        yield CounterMetricFamily(PREFIX + "event_deliveries", "Event frames queued to subscribers (fan-out).",
                                  value=d["event_deliveries"])
        yield GaugeMetricFamily(PREFIX + "clients", "Client connections open now.", value=d["clients"])
        yield CounterMetricFamily(PREFIX + "client_connections", "Client connections accepted.",
                                  value=d["connections"])
        yield CounterMetricFamily(PREFIX + "slow_clients_dropped",
                                  "Clients disconnected for falling behind (client_buffer_bytes).",
                                  value=d["slow_clients_dropped"])
        yield _histogram(HistogramMetricFamily, PREFIX + "registry_commit_seconds",
                         "Time of each commit of the session registry.", d["commit_seconds"])


def _histogram(family: Any, name: str, documentation: str, h: dict[str, Any]) -> Any:
    bounds = [str(b) for b in h["bounds"]] + ["+Inf"]
    cumulative = list(accumulate(h["counts"]))
    return family(name, documentation, buckets=list(zip(bounds, cumulative, strict=True)), sum_value=h["sum"])
