"""The template process and the spare session processes it makes: killed, they are replaced, and
nothing a client sees changes. Real daemon, real SIGKILLs."""

from __future__ import annotations

import os
import signal

from tests.support import (SHORT, children_of, process_alive, process_name, session_processes,
                           wait_until, zombies_among_children)

def helpers(daemon_pid: int, name: str) -> list[int]:
    return [pid for pid in children_of(daemon_pid) if process_alive(pid) and process_name(pid) == name]

def wait_for_helpers(daemon_pid: int, name: str, count: int) -> list[int]:
    """The helpers seen when there were ``count`` of them. (Not read again after the wait: a
    spare just cloned from the template bears the template's name until it renames itself.)"""
    return wait_until(lambda: found if len(found := helpers(daemon_pid, name)) == count else None, SHORT,
                      f"{count} {name} process(es)")

def test_the_daemon_keeps_one_template_and_the_configured_spares(daemon_factory):
    daemon = daemon_factory(spare_processes=3)
    assert len(wait_for_helpers(daemon.pid, "jido-template", 1)) == 1
    spares = wait_for_helpers(daemon.pid, "jido-spare", 3)
    with daemon.client() as c:
        session_id = c.create_session()
        pid = c.get_session_pid(session_id)
    assert pid in spares  # the session runs in a spare made before it was asked for
    assert session_processes(daemon.pid) == [pid]
    assert len(wait_for_helpers(daemon.pid, "jido-spare", 3)) == 3  # topped up again

def test_a_killed_template_is_replaced_and_sessions_never_notice(daemon, client):
    session_id = client.create_session()
    client.send_message(session_id, "user", "before")
    session_pid = client.get_session_pid(session_id)
    [template] = wait_for_helpers(daemon.pid, "jido-template", 1)
    os.kill(template, signal.SIGKILL)
    wait_until(lambda: helpers(daemon.pid, "jido-template") not in ([], [template]), SHORT,
               "another template")
    assert zombies_among_children(daemon.pid) == []
    other = client.create_session()
    client.send_message(session_id, "user", "after")
    assert [m.content for m in client.get_conversation_history(session_id)] == ["before", "after"]
    assert client.get_session_pid(session_id) == session_pid
    assert client.get_session_info(session_id).restarts == 0
    assert sorted(session_processes(daemon.pid)) == sorted([session_pid, client.get_session_pid(other)])
    assert "the template process died: starting another" in daemon.log_text()

def test_a_killed_spare_is_replaced_and_creates_go_on(daemon, client):
    [spare] = wait_for_helpers(daemon.pid, "jido-spare", 1)
    os.kill(spare, signal.SIGKILL)
    wait_until(lambda: helpers(daemon.pid, "jido-spare") not in ([], [spare]), SHORT, "another spare")
    assert zombies_among_children(daemon.pid) == []
    session_id = client.create_session()
    assert client.get_session_pid(session_id) != spare
    assert client.list_sessions()[0].session_id == session_id
    assert f"spare session process {spare} died before it was used" in daemon.log_text()

def test_with_no_spares_kept_each_create_waits_for_its_own_process(daemon_factory):
    daemon = daemon_factory(spare_processes=0)
    wait_for_helpers(daemon.pid, "jido-template", 1)
    assert helpers(daemon.pid, "jido-spare") == []
    with daemon.client() as c:
        ids = [c.create_session() for _ in range(3)]
        assert [info.session_id for info in c.list_sessions()] == ids
        for session_id in ids:
            c.send_message(session_id, "user", session_id)
            assert [m.content for m in c.get_conversation_history(session_id)] == [session_id]
    assert helpers(daemon.pid, "jido-spare") == []
    assert len(session_processes(daemon.pid)) == 3

def test_a_stopped_daemon_leaves_no_template_or_spare(daemon_factory):
    daemon = daemon_factory(spare_processes=2)
    everything = wait_for_helpers(daemon.pid, "jido-template", 1) + wait_for_helpers(daemon.pid, "jido-spare", 2)
    assert daemon.stop() == 0
    assert [pid for pid in everything if process_alive(pid)] == []
