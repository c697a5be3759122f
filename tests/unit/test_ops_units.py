"""The pure parts of operating jidocoder: the sd_notify datagram, the settings file, the
progress line on a real pty, top's rates/sort/filter/fitting, watch's lines, metrics' text."""

from __future__ import annotations

import os
import socket
from datetime import datetime, UTC

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from jidocoder.cli import metrics as metrics_cmd
from jidocoder.cli.common import Progress, ago
from jidocoder.cli.daemon_cmds import read_word
from jidocoder.cli.top import Rates, arrange, format_line, rows_of
from jidocoder.cli.watch import line_of
from jidocoder.config import Settings, read_settings_file
from jidocoder.daemon.metrics import Metrics
from jidocoder.daemon.systemd import Notifier
from jidocoder.daemon.table import Slot
from jidocoder.errors import InvalidArgumentError
from jidocoder.models import Event


def test_notify_sends_one_datagram_to_an_abstract_socket():
    name = f"jidocoder-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.stopping()
        assert listener.recv(100) == b"STOPPING=1"


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "3000000"}, 1.5), ({}, None), ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
])
def test_the_watchdog_is_petted_at_half_its_interval_and_only_when_meant_for_us(env, interval):
    assert Notifier(env).watchdog_interval == interval


def test_no_notify_socket_sends_nothing():
    Notifier({}).ready("x")  # no error, nowhere to send


def test_the_settings_file_uses_environment_file_syntax_beneath_the_environment(tmp_path):
    path = tmp_path / "s.env"
    path.write_text("# comment\n\nexport JIDOCODER_MAX_RESTARTS=4\nJIDOCODER_LOG_LEVEL=\"DEBUG\"\n"
                    "JIDOCODER_MAX_SECONDS='7.5'\n")
    assert read_settings_file(str(path)) == {"JIDOCODER_MAX_RESTARTS": "4", "JIDOCODER_LOG_LEVEL": "DEBUG",
                                             "JIDOCODER_MAX_SECONDS": "7.5"}
    settings = Settings.load({"settings_file": str(path)}, env={"JIDOCODER_MAX_RESTARTS": "9"})
    assert (settings.max_restarts, settings.log_level, settings.max_seconds) == (9, "DEBUG", 7.5)


def test_a_settings_file_line_that_is_no_setting_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "s.env"
    path.write_text("JIDOCODER_MAX_RESTARTS=4\nrm -rf /\n")
    with pytest.raises(InvalidArgumentError, match="line 2"):
        read_settings_file(str(path))


def test_progress_draws_on_a_terminal_and_clears_itself():
    master, slave = os.openpty()
    with open(slave, "w") as tty:
        progress = Progress("terminating", 10, tty)
        progress.began -= Progress.DELAY  # as if the work had lasted
        progress.update(3)
        progress.done()
    assert read_all(master) == b"\rterminating 3/10\x1b[K\r\x1b[K"


def read_all(master: int) -> bytes:
    """Everything written to the pty, its other end closed (one read may return a part)."""
    chunks = []
    try:
        while chunk := os.read(master, 1000):
            chunks.append(chunk)
    except OSError:  # EIO: the other end is closed and all was read
        pass
    os.close(master)
    return b"".join(chunks)


def test_progress_draws_nothing_when_stderr_is_no_terminal(tmp_path):
    with open(tmp_path / "out", "w") as not_a_tty:
        progress = Progress("x", 2, not_a_tty)
        progress.began -= Progress.DELAY
        progress.update(1)
        progress.done()
    assert (tmp_path / "out").read_text() == ""


def slot(session_id: str, *, pid: int = 10, calls: int = 0, cpu: float = 0.0, incarnation: int = 1) -> Slot:
    return Slot(2, incarnation, pid, 0, 100.0, 90.0, 3, 1, 0, calls, 0, cpu, session_id)


def test_top_rates_sort_and_filter():
    rates = Rates()
    rows_of([slot("a", calls=10), slot("b", calls=5)], rates, 200.0)
    rows = rows_of([slot("a", calls=30, cpu=1.0), slot("b", calls=6, cpu=50.0, pid=11, incarnation=2)], rates, 202.0)
    assert {r.session_id: r.calls_per_s for r in rows} == {"a": 10.0, "b": 0.0}  # b: a new process
    assert [r.session_id for r in arrange(rows, "cpu", "")] == ["b", "a"]
    assert [r.session_id for r in arrange(rows, "calls", "")] == ["a", "b"]
    assert [r.session_id for r in arrange(rows, "cpu", "b")] == ["b"]  # "a" is in "active"
    assert rows[0].heartbeat_age_s == 102.0 and rows[0].idle_s == 112.0


def test_a_session_without_a_process_is_marked_and_lines_fit_the_terminal():
    row = rows_of([slot("session_" + "x" * 36, pid=0)], Rates(), 200.0)[0]
    assert row.status == "active*" and row.pid is None
    assert len(format_line(["session_" + "x" * 36] + ["1"] * 10, 60)) == 60


def test_watch_lines_say_what_happened_in_short():
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    event = Event(type="session_crashed", topic="client.global_events", session_id="s1", seq=7, timestamp=when,
                  payload={"session_id": "s1", "reason": "hung", "restarts": 2, "will_restart": False})
    assert line_of(event) == "03:04:05.678 session_crashed      s1 #7 hung, given up (restarts so far 2)"


def test_durations_read_as_a_person_reads_them():
    assert [ago(s) for s in (None, 5, 65, 3 * 3600 + 120, 2 * 86400 + 3600)] == ["-", "5s", "1m05s", "3h02m", "2d01h"]


def test_metrics_text_of_a_fresh_daemon_parses_as_openmetrics():
    counters = Metrics()
    counters.known_ops = frozenset({"send_message"})
    counters.observe_call("send_message", 0.0003, False)
    counters.observe_call("made_up_op", 0.002, True)
    counters.commit_seconds.observe(0.0001)
    data = {**counters.snapshot(), "sessions": {"active": 1}, "failed_sessions": 0, "live_processes": 1,
            "clients": 1}
    families = {f.name: f for f in text_string_to_metric_families(metrics_cmd.render(data))}
    calls = {(s.labels["op"], s.labels["outcome"]): s.value for s in families["jidocoder_calls"].samples}
    assert calls == {("send_message", "ok"): 1, ("unknown", "error"): 1}
    buckets = {s.labels.get("le"): s.value for s in families["jidocoder_call_seconds"].samples
               if s.name.endswith("_bucket")}
    assert (buckets["0.00025"], buckets["0.0005"], buckets["0.0025"], buckets["+Inf"]) == (0, 1, 2, 2)


def test_daemon_start_draws_the_restore_progress_and_returns_the_last_word():
    read_end, write_end = os.pipe()
    os.write(write_end, b"progress 1 4000\nprogress 4000 4000\nready 4242\n")
    os.close(write_end)
    master, slave = os.openpty()
    with open(slave, "w") as tty:
        progress = Progress("restoring sessions", 0, tty)
        progress.began -= Progress.DELAY
        progress.EVERY = 3600.0  # so that exactly one draw happens, however slow this machine is
        assert read_word(read_end, 5.0, progress) == "ready 4242"
    drawn = read_all(master)
    assert drawn == b"\rrestoring sessions 1/4000\x1b[K\r\x1b[K"  # drawn, then cleared
