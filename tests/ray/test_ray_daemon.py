"""A real daemon started with ``--backend ray`` on the 2-node test cluster, through the real
Client (API.md §14): the acceptance behaviour of §2 (calls, bad input, limits, a call inside a
crash), §4 (events, crashes with a reason, restarts, hangs), §6 (the daemon stopped and started
again with sessions on several nodes, every acknowledged message back byte for byte) and §10
(a resent call applied once; a closed client's calls not begun never applied)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from jidocoder import Client, SessionStatus
from jidocoder.errors import (InvalidArgumentError, LimitExceededError, SessionCrashedError,
                              SessionNotFoundError)
from tests.ray.helpers import START, node_of
from tests.support import (LONG, SHORT, debug, process_alive, send_kept_and_dropped_while_busy,
                           short_tempdir, take_events, wait_until)


def until_event(client: Client, kind: str, session_id: str, timeout: float = START):
    """The next event of ``kind`` for ``session_id``, skipping others, within ``timeout``."""
    def found():
        event = client.next_event(0.5)
        wanted = event is not None and event.type == kind and event.payload.get("session_id") == session_id
        return event if wanted else None
    return wait_until(found, timeout, f"{kind} for {session_id}")


def test_sessions_serve_calls_with_their_events_and_bad_input_changes_nothing(ray_daemon):
    daemon = ray_daemon(max_request_bytes=1024 * 1024)
    with daemon.client(timeout=START) as c, daemon.client() as watcher:
        watcher.subscribe_to_all_sessions()
        session = c.create_session(metadata={"who": "ray"})
        created, status = take_events(watcher, 2)
        assert (created.type, created.payload["metadata"]) == ("session_created", {"who": "ray"})
        assert (status.payload["previous_status"], status.payload["status"]) == ("initializing", "active")
        watcher.subscribe_to_session(session)
        pid = c.get_session_pid(session)
        assert process_alive(pid) and pid not in (daemon.pid, os.getpid())  # the actor's, on its node
        c.send_message(session, "user", "héllo\x00")
        c.add_file(session, "/a.py")
        c.update_file_index(session, "/a.py", {"k": [1, b"\x00"]})
        added, file_added, indexed = take_events(watcher, 3)
        assert (added.type, added.payload["content"]) == ("conversation_added", "héllo\x00")
        assert (file_added.type, indexed.type) == ("file_added", "file_index_updated")
        assert [m.content for m in c.get_conversation_history(session)] == ["héllo\x00"]
        info = c.get_session_info(session)
        assert (info.pid, info.status, info.conversation_count) == (pid, SessionStatus.ACTIVE, 1)
        with pytest.raises(InvalidArgumentError) as bad:
            c.send_message(session, "robot", "x")
        assert bad.value.code == "invalid_role"
        with pytest.raises(LimitExceededError):
            c.cache_file(session, "/big", b"\x00" * (2 * 1024 * 1024))  # past max_request_bytes
        assert [m.content for m in c.get_conversation_history(session)] == ["héllo\x00"]
        c.terminate_session(session)
        with pytest.raises(SessionNotFoundError):
            c.send_message(session, "user", "gone")
        wait_until(lambda: not process_alive(pid), SHORT, "the actor's process to end")
        assert not (daemon.state_dir / "sessions").exists() or not any(
            session in p.name for p in (daemon.state_dir / "sessions").iterdir())


def test_a_killed_actor_is_a_crash_with_a_reason_restarted_from_the_store(ray_daemon):
    daemon = ray_daemon()
    with daemon.client(timeout=START) as c, daemon.client() as watcher:
        session = c.create_session()
        c.send_message(session, "user", "kept")
        watcher.subscribe_to_session(session)
        old = c.get_session_pid(session)
        os.kill(old, signal.SIGKILL)
        crashed = until_event(watcher, "session_crashed", session)
        assert crashed.payload["reason"].startswith("actor died: ") and crashed.payload["will_restart"]
        restarted = until_event(watcher, "session_restarted", session)
        assert restarted.payload["pid"] == c.get_session_pid(session) != old
        assert [m.content for m in c.get_conversation_history(session)] == ["kept"]
        # A call inside the actor when it dies: SessionCrashedError, and the session serves on.
        with pytest.raises(SessionCrashedError):
            debug(c, "debug_exit", session, code=3)
        until_event(watcher, "session_restarted", session)
        c.send_message(session, "user", "after")
        assert [m.content for m in c.get_conversation_history(session)] == ["kept", "after"]
        assert c.get_session_info(session).restarts == 2


def test_a_call_running_past_hang_timeout_is_a_hang(ray_daemon):
    daemon = ray_daemon(hang_timeout=2)
    with daemon.client(timeout=START) as c, daemon.client() as watcher:
        session = c.create_session()
        watcher.subscribe_to_session(session)
        with pytest.raises(SessionCrashedError):
            debug(c, "debug_hang", session, seconds=60)
        crashed = until_event(watcher, "session_crashed", session)
        assert crashed.payload["reason"] == "hung"
        until_event(watcher, "session_restarted", session)
        c.send_message(session, "user", "served")
        assert c.get_session_info(session).status is SessionStatus.ACTIVE


def test_a_call_resent_after_its_daemon_was_killed_mid_call_is_applied_once(ray_daemon):
    """§10 across a SIGKILLed daemon: its actors end with it (the daemon owns them), the next
    start brings the session back on the cluster, and the Client's resend is applied once."""
    daemon = ray_daemon()
    with Client(daemon.socket, timeout=2 * START) as writer:
        session = writer.create_session()
        writer.send_message(session, "user", "before")
        old = writer.get_session_pid(session)
        debug(writer, "debug_kill_daemon_after_commit", session)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(
            result=writer.send_message(session, "user", "reply lost")))
        thread.start()
        wait_until(lambda: daemon.proc.poll() is not None, SHORT, "the actor to kill the daemon")
        assert daemon.proc.returncode == -signal.SIGKILL
        wait_until(lambda: not process_alive(old), LONG, "the dead daemon's actor to end")
        daemon.proc.stderr.close()
        daemon.start()
        thread.join(2 * START)
        assert outcome == {"result": None}
        writer.send_message(session, "user", "after")
        assert [m.content for m in writer.get_conversation_history(session)] == ["before", "reply lost", "after"]


def test_the_daemon_stopped_and_started_again_brings_back_every_acknowledged_message(ray_daemon, cluster):
    root = short_tempdir()
    daemon = ray_daemon(root)
    written: dict[str, list[str]] = {}
    with daemon.client(timeout=START) as c:
        for n in range(4):
            session = c.create_session(config={"max_history": 1000})
            written[session] = []
            for i in range(10):
                content = f"{n}-{i}-\x00é"
                c.send_message(session, "user", content)
                written[session].append(content)
        pids = {session: c.get_session_pid(session) for session in written}
    assert len({node_of(cluster, pid) for pid in pids.values()}) >= 2, "sessions on several nodes"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(LONG) == 0
    wait_until(lambda: not any(process_alive(pid) for pid in pids.values()), SHORT, "the actors to end")
    daemon.proc.stderr.close()
    again = ray_daemon(root)
    with again.client(timeout=START) as c:
        assert {info.session_id for info in c.list_sessions()} == set(written)
        for session, contents in written.items():
            assert [m.content for m in c.get_conversation_history(session)] == contents
            assert c.get_session_pid(session) not in pids.values()


def test_a_message_whose_client_closed_while_its_actor_was_busy_is_not_applied(ray_daemon):
    """§10 with an actor: the call waits in the daemon behind the busy one (one call at a time
    goes to an actor) when its client closes, and is answered there, unapplied; a call from a
    client that stays is served as usual."""
    daemon = ray_daemon(hang_timeout=60)
    with daemon.client(timeout=START) as client:
        session = client.create_session()
        client.send_message(session, "user", "before")
        pid = client.get_session_pid(session)
        send_kept_and_dropped_while_busy(daemon, session, pid)
        assert [m.content for m in client.get_conversation_history(session)] == ["before", "kept"]
        assert client.get_session_pid(session) == pid
