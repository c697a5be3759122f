"""Running under systemd: the notify protocol on a datagram socket the test listens on, SIGHUP
reloading the settings file, SIGUSR1 reopening daemon.log after logrotate moved it."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time

import pytest

from tests.support import LONG, SHORT, wait_until

WATCHDOG_USEC = 200_000  # a pet every 0.1 s


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    yield listener
    listener.close()


def next_datagram(listener: socket.socket, timeout: float = SHORT) -> str:
    listener.settimeout(timeout)
    return listener.recv(4096).decode()


def test_ready_once_it_accepts_watchdog_at_half_the_interval_and_stopping_on_sigterm(daemon_factory, notify_socket):
    daemon = daemon_factory()
    ready = next_datagram(notify_socket).split("\n")
    assert ready[0] == "READY=1" and f"MAINPID={daemon.pid}" in ready
    daemon.client().close()  # it accepts: READY=1 was not sent early
    began = time.monotonic()
    pets = [next_datagram(notify_socket) for _ in range(3)]
    assert pets == ["WATCHDOG=1"] * 3
    assert time.monotonic() - began >= 2 * WATCHDOG_USEC / 2 / 1e6  # not faster than half the interval
    daemon.proc.send_signal(signal.SIGTERM)
    while (message := next_datagram(notify_socket)) == "WATCHDOG=1":
        pass
    assert message == "STOPPING=1"
    assert daemon.proc.wait(LONG) == 0


def test_sighup_reloads_the_settings_file_and_logs_what_changed(daemon_factory, tmp_path):
    settings = tmp_path / "jidocoder.env"
    settings.write_text("JIDOCODER_MAX_RESTARTS=10\n")
    daemon = daemon_factory(settings_file=settings)
    settings.write_text("# edited\nJIDOCODER_MAX_RESTARTS=0\nexport JIDOCODER_LOG_LEVEL='DEBUG'\n"
                        "JIDOCODER_MAX_SESSIONS=5\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP: settings reloaded" in daemon.log_text(), SHORT, "the reload to be logged")
    log = daemon.log_text()
    assert "log_level INFO -> DEBUG, max_restarts 10 -> 0" in log
    assert "max_sessions changed in" in log and "only at the next start" in log
    with daemon.client() as client:  # max_restarts 0 now holds: the first crash gives up
        sid = client.create_session()
        client.subscribe_to_session(sid)
        os.kill(client.get_session_pid(sid), signal.SIGKILL)
        crashed = client.next_event(SHORT)
        assert (crashed.type, crashed.payload["will_restart"]) == ("session_crashed", False)


def test_a_bad_settings_file_on_sighup_changes_nothing(daemon_factory, tmp_path):
    settings = tmp_path / "jidocoder.env"
    settings.write_text("JIDOCODER_MAX_RESTARTS=10\n")
    daemon = daemon_factory(settings_file=settings)
    settings.write_text("JIDOCODER_MAX_RESTARTS=-3\n")
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: "settings not reloaded, nothing changed" in daemon.log_text(), SHORT, "the refusal")
    with daemon.client() as client:
        assert client.daemon_status()["pid"] == daemon.pid


def test_sigusr1_reopens_daemon_log_after_logrotate_moved_it(daemon, client):
    log_path = daemon.state_dir / "daemon.log"
    rotated = daemon.state_dir / "daemon.log.1"
    log_path.rename(rotated)
    os.kill(daemon.pid, signal.SIGUSR1)
    wait_until(lambda: log_path.exists() and "daemon.log reopened" in log_path.read_text(), SHORT,
               "a new daemon.log")
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    before = rotated.read_text()
    sid = client.create_session()
    client._call("debug_log", {"session_id": sid, "marker": "after-rotation"})
    wait_until(lambda: "after-rotation" in log_path.read_text(), SHORT, "the line in the new file")
    assert rotated.read_text() == before
    assert client.list_sessions()[0].session_id == sid  # SIGUSR1 stopped nothing
