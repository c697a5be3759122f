"""``jidocoder top`` and ``jidocoder watch`` on a real terminal (tmux): the screen is read back
and checked for the sessions, their status changes, a crash, the keys, and a daemon that stops."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from tests.support import LONG, SHORT, Tmux, wait_until


@pytest.fixture
def terminal():
    opened: list[Tmux] = []

    def open_(daemon, *args: str) -> Tmux:
        env = {"JIDOCODER_SOCKET": daemon.socket, "JIDOCODER_STATE_DIR": str(daemon.state_dir)}
        opened.append(Tmux([sys.executable, "-m", "jidocoder.cli", *args], env))
        return opened[-1]

    yield open_
    for tmux in opened:
        tmux.close()


def row(screen: str, session_id: str) -> list[str]:
    return next((line.split() for line in screen.splitlines() if line.startswith(session_id)), [])


def test_top_shows_sessions_a_crash_sorts_filters_and_outlives_its_daemon(daemon_factory, terminal):
    daemon = daemon_factory()
    with daemon.client() as client:
        first, second = client.create_session(), client.create_session()
        client.send_message(first, "user", "one")
        top = terminal(daemon, "top")
        screen = top.wait_for(lambda s: row(s, first) and row(s, second), "both sessions on the screen")
        assert "sort: cpu" in screen
        assert row(screen, first)[1:3] == ["active", str(client.get_session_pid(first))]
        assert row(screen, first)[8] == "1"  # messages

        old_pid = client.get_session_pid(second)
        os.kill(old_pid, signal.SIGKILL)
        new_pid = wait_until(lambda: (p := client.get_session_pid(second)) != old_pid and p, SHORT, "a restart")
        top.wait_for(lambda s: row(s, second)[1:3] == ["active", str(new_pid)] and row(s, second)[5] == "1",
                     "the restarted process and one restart")

        client.terminate_session(first)
        top.wait_for(lambda s: not row(s, first) and row(s, second), "the terminated session gone")

        top.keys("s")
        top.wait_for(lambda s: "sort: rss" in s, "the next sort column")
        third = client.create_session()
        top.wait_for(lambda s: row(s, third), "a new session")
        top.keys("/", third[-12:], "Enter")
        top.wait_for(lambda s: f"filter: {third[-12:]}" in s and row(s, third) and not row(s, second),
                     "only the filtered session")

    daemon.stop()
    top.wait_for(lambda s: "the daemon stopped" in s and not row(s, third), "top saying the daemon stopped")
    top.keys("q")
    top.wait_for(lambda s: "EXITED 0" in s, "top to quit on q with status 0")


def test_watch_prints_lifecycle_events_a_crash_and_ends_on_ctrl_c(daemon_factory, terminal):
    daemon = daemon_factory()
    with daemon.client() as client:
        watch = terminal(daemon, "watch")
        # watch subscribes once it is connected: a session made before that is not shown
        wait_until(lambda: metrics_clients(daemon) >= 3, LONG, "watch to connect")  # ours, this, watch
        sid = client.create_session()
        screen = watch.wait_for(lambda s: "initializing → active" in s, "the create's events")
        lines = [line for line in screen.splitlines() if sid in line]
        assert [line.split()[1] for line in lines] == ["session_created", "session_status"]
        assert [line.split()[3] for line in lines] == ["#1", "#2"]

        os.kill(client.get_session_pid(sid), signal.SIGKILL)
        screen = watch.wait_for(lambda s: "session_restarted" in s, "the crash and the restart")
        crashed = next(line for line in screen.splitlines() if "session_crashed" in line)
        assert "killed by SIGKILL, will restart (restarts so far 0)" in crashed
        client.terminate_session(sid)
        watch.wait_for(lambda s: "session_terminated" in s and "active → terminating" in s, "the terminate")
    watch.keys("C-c")
    watch.wait_for(lambda s: "EXITED 0" in s, "watch to end on ^C with status 0")


def test_watch_of_one_session_shows_its_messages(daemon_factory, terminal):
    daemon = daemon_factory()
    with daemon.client() as client:
        sid = client.create_session()
        watch = terminal(daemon, "watch", sid)
        wait_until(lambda: metrics_clients(daemon) >= 3, LONG, "watch to connect")  # ours, this, watch
        client.send_message(sid, "user", "hello from the test " + "x" * 100)  # #1 was its → active
        screen = watch.wait_for(lambda s: "conversation_added" in s, "the message event")
        line = next(line for line in screen.splitlines() if "conversation_added" in line)
        assert re.search(r"#2 user: hello from the test x+…$", line.rstrip()), line
    watch.keys("C-c")
    watch.wait_for(lambda s: "EXITED 0" in s, "watch to end on ^C")


def metrics_clients(daemon) -> int:
    """Client connections open now, as the daemon counts them (one is this question's own)."""
    with daemon.client() as client:
        return client.daemon_metrics()["clients"]
