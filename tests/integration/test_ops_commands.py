"""The §12 commands end to end, as a person types them: a real daemon, ``python -m jidocoder.cli``
in a subprocess, the exit codes of docs/api.md §12 and one-line errors; what they stored is
checked through the Client, byte for byte."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.support import LONG, ROOT, SHORT, remove_tree, run_cli, short_tempdir, wait_until

ID = re.compile(r"^session_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def jido(daemon, *args: str, stdin: str | None = None):
    return run_cli(daemon.socket, *args, state_dir=daemon.state_dir, stdin=stdin)


def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jidocoder: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_session_created_messaged_listed_shown_and_terminated_from_the_shell(daemon, client):
    created = jido(daemon, "session", "create", "--metadata", '{"project": "p1"}',
                   "--config", '{"max_history": 7}', "--llm-config", '{"model": "m"}')
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    assert ID.match(sid)
    assert jido(daemon, "session", "send", sid, "user", "héllo\nworld").returncode == 0
    assert jido(daemon, "session", "send", sid, "assistant", "-", stdin="from stdin\n").returncode == 0
    client.add_file(sid, "/a.py")
    client.update_file_index(sid, "/a.py", {"lines": 3})

    history = json.loads(jido(daemon, "session", "history", sid, "--json").stdout)
    assert [(m["role"], m["content"]) for m in history] == [("user", "héllo\nworld"), ("assistant", "from stdin")]
    assert [m.content for m in client.get_conversation_history(sid)] == ["héllo\nworld", "from stdin"]
    page = jido(daemon, "session", "history", sid, "--offset", "1", "--limit", "1")
    assert page.stdout.endswith(" assistant: from stdin\n") and page.stdout.count("\n") == 1

    rows = json.loads(jido(daemon, "session", "list", "--json").stdout)
    assert [(r["session_id"], r["status"], r["pid"], r["restarts"], r["conversation_count"], r["files"])
            for r in rows] == [(sid, "active", client.get_session_pid(sid), 0, 2, 1)]
    assert 0 <= rows[0]["idle_s"] < LONG
    text = jido(daemon, "sessions").stdout.splitlines()
    assert text[0].split() == ["ID", "STATUS", "PID", "RESTARTS", "MESSAGES", "FILES", "IDLE", "FOR"]
    assert text[1].split()[:6] == [sid, "active", str(client.get_session_pid(sid)), "0", "2", "1"]

    shown = json.loads(jido(daemon, "session", "show", sid, "--json").stdout)
    assert shown["info"]["metadata"] == {"project": "p1"} and shown["info"]["config"]["max_history"] == 7
    assert shown["info"]["llm_config"] == {"model": "m"}
    assert [f["path"] for f in shown["active_files"]] == ["/a.py"]
    assert shown["file_index"]["/a.py"]["lines"] == 3

    ended = jido(daemon, "session", "terminate", sid)
    assert (ended.returncode, ended.stdout) == (0, f"terminated {sid}\n")
    assert client.list_sessions() == []
    assert "no session" in one_line_error(jido(daemon, "session", "show", sid), 4)


def test_bad_arguments_exit_2_with_one_line_and_change_nothing(daemon, client):
    sid = client.create_session()
    client.send_message(sid, "user", "kept")
    for args in (("session", "send", sid, "wizard", "x"),
                 ("session", "create", "--metadata", "{bad"),
                 ("session", "create", "--config", "[1]"),
                 ("session", "create", "--config", '{"max_history": -1}'),
                 ("session", "history", sid, "--limit", "-2")):
        one_line_error(jido(daemon, *args), 2)
    for args in (("session", "history", sid, "--limit", "many"), ("session", "frobnicate"), ("nonsense",)):
        result = jido(daemon, *args)
        assert result.returncode == 2 and "usage:" in result.stderr, result.stderr
    assert [s.session_id for s in client.list_sessions()] == [sid]
    assert [m.content for m in client.get_conversation_history(sid)] == ["kept"]


def test_unknown_ids_exit_4_and_terminate_goes_on_past_them(daemon, client):
    nope = "session_00000000-0000-4000-8000-000000000000"
    for args in (("session", "show", nope), ("session", "send", nope, "user", "x"),
                 ("session", "history", nope), ("session", "recover", nope), ("watch", nope)):
        assert nope in one_line_error(jido(daemon, *args), 4)
    first, second = client.create_session(), client.create_session()
    result = jido(daemon, "session", "terminate", first, nope, second)
    assert result.returncode == 4
    assert result.stdout == f"terminated {first}\nterminated {second}\n"
    assert result.stderr.count("\n") == 1 and nope in result.stderr
    assert client.list_sessions() == []


@pytest.mark.parametrize("args", [("session", "list"), ("sessions",), ("session", "create"), ("watch",),
                                  ("top", "--once"), ("metrics",), ("session", "failed")])
def test_every_command_without_a_daemon_exits_3_saying_how_to_start_one(args):
    root = short_tempdir()
    try:
        line = one_line_error(run_cli(str(root / "none.sock"), *args, state_dir=root), 3)
        assert "jidocoder daemon start" in line
    finally:
        remove_tree(root)


def test_a_session_given_up_is_listed_as_failed_and_recovered_with_its_data(daemon_factory):
    daemon = daemon_factory(max_restarts=0)
    with daemon.client() as client:
        sid = client.create_session()
        client.send_message(sid, "user", "survives")
        os.kill(client.get_session_pid(sid), signal.SIGKILL)
        wait_until(lambda: not client.list_sessions(), SHORT, "the session to be given up")
        failed = json.loads(jido(daemon, "session", "failed", "--json").stdout)
        assert [(f["session_id"], f["error"]) for f in failed] == [(sid, "killed by SIGKILL")]
        assert sid in jido(daemon, "session", "failed").stdout
        assert jido(daemon, "session", "recover", sid).stdout == f"recovered {sid}\n"
        assert [m.content for m in client.get_conversation_history(sid)] == ["survives"]
        assert json.loads(jido(daemon, "session", "failed", "--json").stdout) == []


def test_logs_prints_the_daemon_log_and_one_sessions_lines(daemon, client):
    first, second = client.create_session(), client.create_session()
    for session in (first, second):
        client._call("debug_log", {"session_id": session, "marker": f"from-{session}"})
    wait_until(lambda: f"from-{second}" in daemon.log_text(), SHORT, "both sessions' lines in the log")
    whole = jido(daemon, "logs")
    assert whole.returncode == 0 and whole.stdout == daemon.log_text()
    mine = jido(daemon, "logs", "--session", first).stdout.splitlines()
    assert any(f"from-{first}" in line for line in mine)
    assert all(first in line for line in mine) and not any(second in line for line in mine)
    assert jido(daemon, "logs", "-n", "1").stdout == daemon.log_text().splitlines(keepends=True)[-1]
    missing = run_cli(daemon.socket, "logs", state_dir=daemon.state_dir / "nowhere")
    assert "no daemon.log" in one_line_error(missing, 1)


@contextlib.contextmanager
def following(daemon, *args: str) -> Iterator[list[str]]:
    """A command that runs until ^C (``logs -f``, ``watch``): the lines it prints, as they come;
    ended with SIGINT, as a person ends it, and it must exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "jidocoder.cli", *args],
                            env={**os.environ, "JIDOCODER_SOCKET": daemon.socket,
                                 "JIDOCODER_STATE_DIR": str(daemon.state_dir)},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(SHORT) == 0
        reader.join(SHORT)
        proc.stdout.close()
        proc.stderr.close()


def test_logs_follow_prints_new_lines_and_carries_on_after_logrotate(daemon, client):
    sid = client.create_session()
    with following(daemon, "logs", "-f", "--session", sid) as lines:
        client._call("debug_log", {"session_id": sid, "marker": "before-rotation"})
        wait_until(lambda: any("before-rotation" in line for line in lines), SHORT, "the first line")
        (daemon.state_dir / "daemon.log").rename(daemon.state_dir / "daemon.log.1")
        os.kill(daemon.pid, signal.SIGUSR1)
        wait_until(lambda: (daemon.state_dir / "daemon.log").exists(), SHORT, "the reopened log")
        client._call("debug_log", {"session_id": sid, "marker": "after-rotation"})
        wait_until(lambda: any("after-rotation" in line for line in lines), SHORT, "the line after rotation")
        assert all(sid in line for line in lines)


def test_watch_since_prints_the_held_events_after_seq_then_the_live_ones(daemon, client):
    sid = client.create_session()
    client.send_message(sid, "user", "held")
    with following(daemon, "watch", "--json", "--since", "0", sid) as lines:
        wait_until(lambda: any("held" in line for line in lines), SHORT, "the held message")
        client.send_message(sid, "user", "live")
        wait_until(lambda: any("live" in line for line in lines), SHORT, "the live message")
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # from the first, no gap
    added = [e["payload"]["content"] for e in events if e["type"] == "conversation_added"]
    assert added == ["held", "live"]
