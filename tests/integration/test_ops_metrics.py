"""``jidocoder metrics`` parsed by the OpenMetrics parser of prometheus_client, and ``top --json``
read from the daemon's shared memory, checked against what the test did to a real daemon."""

from __future__ import annotations

import json
import os
import signal
import threading

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support import LONG, SHORT, run_cli, take_events, wait_until


def metrics_of(daemon) -> dict[str, list]:
    result = run_cli(daemon.socket, "metrics")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("# EOF\n")
    return {family.name: family.samples for family in text_string_to_metric_families(result.stdout)}


def value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_metrics_count_sessions_calls_crashes_restarts_fan_out_and_clients(daemon, client):
    first, second = client.create_session(), client.create_session()
    for n in range(3):
        client.send_message(first, "user", f"m{n}")
    client.subscribe_to_all_sessions()
    old_pid = client.get_session_pid(second)
    os.kill(old_pid, signal.SIGKILL)
    types = [e.type for e in take_events(client, 2)]
    assert types == ["session_crashed", "session_restarted"]
    families = metrics_of(daemon)

    sessions = families["jidocoder_sessions"]
    assert value(sessions, "jidocoder_sessions", status="active") == 2
    assert value(sessions, "jidocoder_sessions", status="failed") == 0
    assert value(families["jidocoder_session_processes"], "jidocoder_session_processes") == 2
    assert value(families["jidocoder_session_crashes"], "jidocoder_session_crashes_total",
                 reason="killed by SIGKILL") == 1
    assert value(families["jidocoder_session_restarts"], "jidocoder_session_restarts_total") == 1
    calls = families["jidocoder_calls"]
    assert value(calls, "jidocoder_calls_total", op="send_message", outcome="ok") == 3
    assert value(calls, "jidocoder_calls_total", op="create_session", outcome="ok") == 2
    answered = sum(s.value for s in calls)
    latency = families["jidocoder_call_seconds"]
    assert value(latency, "jidocoder_call_seconds_count") == answered
    assert value(latency, "jidocoder_call_seconds_bucket", le="+Inf") == answered
    events = families["jidocoder_events"]
    assert value(events, "jidocoder_events_total", type="conversation_added") == 3
    assert value(events, "jidocoder_events_total", type="session_crashed") == 1
    # the crash and the restart reached our one subscriber: two frames of fan-out
    assert value(families["jidocoder_event_deliveries"], "jidocoder_event_deliveries_total") == 2
    assert value(families["jidocoder_clients"], "jidocoder_clients") == 2  # ours and metrics' own
    assert value(families["jidocoder_client_connections"], "jidocoder_client_connections_total") >= 2
    assert value(families["jidocoder_slow_clients_dropped"], "jidocoder_slow_clients_dropped_total") == 0
    commits = families["jidocoder_registry_commit_seconds"]
    assert value(commits, "jidocoder_registry_commit_seconds_count") >= 2  # each create's row


def test_top_json_reads_every_sessions_slot_from_shared_memory(daemon, client):
    busy, quiet = client.create_session(), client.create_session()
    for n in range(4):
        client.send_message(busy, "user", f"m{n}")
    client.add_file(busy, "/x.py")
    client.add_file(busy, "/y.py")

    def rows() -> dict[str, dict]:
        result = run_cli(daemon.socket, "top", "--json")
        assert result.returncode == 0, result.stderr
        return {row["session_id"]: row for row in json.loads(result.stdout)}

    # CPU and RSS come from the daemon's watchdog, every MEMORY_CHECK_INTERVAL: wait for one
    shown = wait_until(lambda: (r := rows()) and all(row["rss"] > 0 for row in r.values()) and r, LONG,
                       "the watchdog to sample both processes")
    assert {k: (r["status"], r["pid"], r["restarts"], r["messages"], r["files"]) for k, r in shown.items()} == {
        busy: ("active", client.get_session_pid(busy), 0, 4, 2),
        quiet: ("active", client.get_session_pid(quiet), 0, 0, 0)}
    assert all(0 <= r["heartbeat_age_s"] < SHORT and 0 <= r["idle_s"] < LONG for r in shown.values())
    filtered = run_cli(daemon.socket, "top", "--json", "--filter", busy[-12:], "--sort", "rss")
    assert [r["session_id"] for r in json.loads(filtered.stdout)] == [busy]
    text = run_cli(daemon.socket, "top", "--once").stdout.splitlines()
    assert text[0].split() == ["ID", "STATUS", "PID", "CPU%", "RSS", "RESTARTS", "BEAT", "CALLS/S", "MSGS",
                               "FILES", "IDLE"]
    assert sorted(line.split()[0] for line in text[1:]) == sorted([busy, quiet])


def test_top_shows_a_busy_sessions_cpu_from_the_watchdog(daemon, client):
    """A session kept busy shows CPU in top (its share depends on the machine's load, so the
    bound is low: an idle session, beating once a second, stays far below 1 %)."""
    sid = client.create_session()
    stop = threading.Event()
    spinning = threading.Thread(target=lambda: _spin(daemon, sid, stop), daemon=True)
    spinning.start()

    def cpu() -> float:
        rows = json.loads(run_cli(daemon.socket, "top", "--json").stdout)
        return float(rows[0]["cpu_percent"]) if rows else 0.0
    try:
        wait_until(lambda: cpu() > 1.0, LONG, "a CPU % over 1 for a busy session")
    finally:
        stop.set()
        spinning.join(LONG)


def _spin(daemon, sid: str, stop: threading.Event) -> None:
    """Busy in 1 s handlers, as a stuck one is, until told to stop (each beat resets the hang clock)."""
    with daemon.client(timeout=LONG) as c:
        while not stop.is_set():
            c._call("debug_hang", {"session_id": sid, "seconds": 1.0})


def test_direct_calls_with_no_events_are_counted_without_a_frame_each(daemon, client):
    """A session reports direct calls that made no events when its loop is about to wait, at
    most every REPORT_SECONDS, and those that made events with their events: none is lost."""
    session = client.create_session()

    def counted(op: str) -> float:
        calls = metrics_of(daemon)["jidocoder_calls"]
        found = [s.value for s in calls if s.name == "jidocoder_calls_total"
                 and s.labels.get("op") == op and s.labels.get("outcome") == "ok"]
        return found[0] if found else 0

    for _ in range(5):
        client.get_active_files(session)
    wait_until(lambda: counted("get_active_files") == 5, SHORT, "the five reads counted")
    for _ in range(3):
        client.get_active_files(session)
    client.send_message(session, "user", "m")  # its events frame carries the reads before it
    wait_until(lambda: counted("send_message") == 1, SHORT, "the write counted")
    assert counted("get_active_files") == 8
