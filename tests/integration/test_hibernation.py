"""Hibernation (docs/api.md §13): a session with no call for hibernate_after_minutes, or the least
recently used one past max_live_sessions, loses its process and keeps its data; any call revives
it. Whatever is killed in the middle (the session, the daemon), nothing stored is lost."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from jidocoder import LimitExceededError, SessionStatus
from tests.support import (LONG, SHORT, children_of, cpu_seconds, info_of, process_alive,
                           process_name, take_events, wait_until)

QUICK = {"hibernate_after_minutes": 0.01}  # 0.6 s without a call
NEVER = {"hibernate_after_minutes": 0}
# One process at most, and a process told to leave is given 30 s: a test SIGSTOPs it meanwhile.
ONE_LIVE = {"max_live_sessions": 1, "terminate_grace": 30, **NEVER}


def fill(client, sid: str) -> dict:
    """Some of everything a session stores; what it holds, read back."""
    for i in range(3):
        client.send_message(sid, "user", f"message {i} \u00e9\u2603")
    client.add_file(sid, "/src/a.py")
    client.update_file_index(sid, "/src/a.py", {"summary": "parser", "n": 1})
    return held(client, sid)


def held(client, sid: str) -> dict:
    return {"history": [m.model_dump() for m in client.get_conversation_history(sid)],
            "files": [f.model_dump() for f in client.get_active_files(sid)],
            "index": client.get_file_index(sid)}


def types_of(events) -> list[tuple[str, str]]:
    return [(e.type, e.session_id) for e in events]


def next_of(client, kind: str, timeout: float = SHORT):
    """The next event of type ``kind`` (or one of them), skipping the others."""
    kinds = (kind,) if isinstance(kind, str) else kind
    while True:
        event = client.next_event(timeout)
        assert event is not None, f"no {kind} event within {timeout}s"
        if event.type in kinds:
            return event


def spares_of(daemon) -> list[int]:
    return [pid for pid in children_of(daemon.pid) if process_name(pid) == "jido-spare"]


def stop_spares(daemon) -> list[int]:
    """SIGSTOP the daemon's spares: the next revival is handed to a process that cannot start."""
    spares = spares_of(daemon)
    for spare in spares:
        os.kill(spare, signal.SIGSTOP)
    return spares


def test_an_unused_session_hibernates_keeping_everything_and_a_call_revives_it(daemon_factory):
    daemon = daemon_factory(**QUICK)
    with daemon.client() as client:
        sid = client.create_session(metadata={"p": 1})
        before = fill(client, sid)
        pid = client.get_session_pid(sid)
        info_before = info_of(client, sid)
        client.subscribe_to_all_sessions()
        event = next_of(client, "session_hibernated", LONG)
        assert event.payload == {"session_id": sid}
        wait_until(lambda: not process_alive(pid), SHORT, "its process to be gone")
        asleep = client.get_session_info(sid)  # does not revive
        assert (asleep.pid, asleep.hibernated, asleep.conversation_count) == (None, True, 3)
        assert asleep.model_dump(exclude={"pid", "hibernated"}) == info_before.model_dump(exclude={"pid", "hibernated"})
        assert daemon.session_pids() == []

        assert held(client, sid) == before  # a call: revived first, transparently
        revived = next_of(client, "session_revived")
        new_pid = client.get_session_pid(sid)
        assert revived.payload == {"session_id": sid, "pid": new_pid} and new_pid != pid
        awake = client.get_session_info(sid)
        assert (awake.pid, awake.hibernated, awake.restarts, awake.status) == (new_pid, False, 0, SessionStatus.ACTIVE)


def test_get_session_pid_revives_and_an_idle_session_stays_idle_while_it_sleeps(daemon_factory):
    daemon = daemon_factory(**QUICK)
    with daemon.client() as client:
        sid = client.create_session(config={"timeout_minutes": 0.005})
        client.subscribe_to_session(sid)
        assert next_of(client, "session_status").payload["status"] == "idle"
        next_of(client, "session_hibernated", LONG)
        assert info_of(client, sid).status is SessionStatus.IDLE  # not changed by hibernating
        pid = client.get_session_pid(sid)
        assert process_alive(pid) and next_of(client, "session_revived").payload["pid"] == pid


def test_past_max_live_sessions_the_least_recently_used_session_is_hibernated(daemon_factory):
    daemon = daemon_factory(max_live_sessions=2, **NEVER)
    with daemon.client() as client:
        first, second = client.create_session(), client.create_session()
        client.send_message(first, "user", "first is used last")
        client.subscribe_to_all_sessions()
        third = client.create_session()
        assert next_of(client, "session_hibernated").payload == {"session_id": second}
        assert [i.hibernated for i in client.list_sessions()] == [False, True, False]
        assert len(daemon.session_pids()) == 2
        client.get_session_pid(second)  # reviving it hibernates the least recently used: first
        # session_hibernated comes once first's process is gone: before or after second serves
        assert sorted(types_of([next_of(client, ("session_hibernated", "session_revived"))
                                for _ in range(2)])) == [("session_hibernated", first),
                                                         ("session_revived", second)]
        assert [i.hibernated for i in client.list_sessions()] == [True, False, False]
        assert [m.content for m in client.get_conversation_history(first)] == ["first is used last"]
        assert third in {i.session_id for i in client.list_sessions()}


def test_a_session_without_persistence_is_never_hibernated_and_cannot_make_room(daemon_factory):
    daemon = daemon_factory(max_live_sessions=1, **QUICK)
    with daemon.client() as client:
        volatile = client.create_session(config={"persistence_enabled": False})
        pid = client.get_session_pid(volatile)
        with pytest.raises(LimitExceededError) as raised:
            client.create_session()
        assert raised.value.code == "limit_exceeded" and "max_live_sessions" in str(raised.value)
        assert [i.session_id for i in client.list_sessions()] == [volatile]  # nothing added
        client.subscribe_to_all_sessions()
        assert client.next_event(timeout=1.5) is None  # past hibernate_after: nothing happens
        assert client.get_session_info(volatile).hibernated is False and process_alive(pid)


def test_a_call_arriving_while_its_session_hibernates_waits_and_is_served_by_the_revived_process(daemon_factory):
    daemon = daemon_factory(**ONE_LIVE)
    with daemon.client() as client, daemon.client() as other:
        sid = client.create_session()
        before = fill(client, sid)
        pid = client.get_session_pid(sid)
        client.subscribe_to_all_sessions()
        os.kill(pid, signal.SIGSTOP)  # it cannot leave until it is continued
        newer = client.create_session()  # hibernates sid first: EOF sent, its process stopped
        answered = []
        call = threading.Thread(target=lambda: answered.append(other.send_message(sid, "user", "late")))
        call.start()
        assert client.get_session_info(sid).pid is None  # leaving: not serving
        assert call.is_alive()
        os.kill(pid, signal.SIGCONT)
        call.join(SHORT)
        assert answered == [None]
        events = types_of(take_events(client, 5))  # newer's created and status first
        assert events[2] == ("session_hibernated", sid)  # then its revival made room: newer goes
        assert sorted(events[3:]) == [("session_hibernated", newer), ("session_revived", sid)]
        after = held(client, sid)
        assert after["history"][:3] == before["history"] and after["history"][3]["content"] == "late"
        assert after["files"] == before["files"] and after["index"] == before["index"]


@pytest.mark.parametrize("when", ["hibernating", "reviving"])
def test_a_session_process_sigkilled_while_it_hibernates_or_revives_loses_nothing(daemon_factory, when):
    daemon = daemon_factory(**ONE_LIVE)
    with daemon.client() as client:
        sid = client.create_session()
        before = fill(client, sid)
        client.subscribe_to_all_sessions()
        if when == "hibernating":
            pid = client.get_session_pid(sid)
            os.kill(pid, signal.SIGSTOP)
            client.create_session()  # hibernates sid: told to leave, stopped before it could
            os.kill(pid, signal.SIGKILL)
            assert next_of(client, "session_hibernated").session_id == sid  # not a crash
            assert client.get_session_info(sid).restarts == 0
        else:
            other = client.create_session()
            assert next_of(client, "session_hibernated").session_id == sid
            stopped = stop_spares(daemon)  # the process the revival will use among them
            answered = []
            call = threading.Thread(target=lambda: answered.append(held(client, sid)))
            call.start()
            wait_until(lambda: client.get_session_info(other).hibernated, SHORT, "room made for it")
            for spare in stopped:
                os.kill(spare, signal.SIGKILL)  # one of them was reviving sid
            call.join(LONG)
            assert answered == [before]
        assert held(client, sid) == before


@pytest.mark.parametrize("when", ["hibernating", "reviving"])
def test_the_daemon_sigkilled_while_a_session_hibernates_or_revives_loses_nothing(daemon_factory, when):
    daemon = daemon_factory(**ONE_LIVE)
    with daemon.client() as client:
        sid = client.create_session()
        before = fill(client, sid)
        pid = client.get_session_pid(sid)
        if when == "hibernating":
            os.kill(pid, signal.SIGSTOP)
            client.create_session()  # sid is marked hibernated, then told to leave
        else:
            client.create_session()
            wait_until(lambda: client.get_session_info(sid).hibernated, SHORT, "sid to hibernate")
            stop_spares(daemon)
            threading.Thread(target=lambda: _ignore(lambda: client.get_session_pid(sid)), daemon=True).start()
            wait_until(lambda: f"session {sid} revives" in daemon.log_text(), SHORT, "the revival to begin")
    daemon.kill()
    daemon = daemon_factory(root=daemon.root, max_live_sessions=1, **NEVER)
    with daemon.client() as client:
        assert held(client, sid) == before


def _ignore(call) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - the daemon is killed under it on purpose
        pass


def test_terminating_a_hibernated_session_leaves_no_trace(daemon_factory):
    daemon = daemon_factory(**QUICK)
    with daemon.client() as client:
        sid = client.create_session()
        fill(client, sid)
        client.subscribe_to_all_sessions()
        next_of(client, "session_hibernated", LONG)
        client.terminate_session(sid)
        assert [(e.type, e.payload.get("status")) for e in take_events(client, 3)] == [
            ("session_status", "terminating"), ("session_status", "terminated"),
            ("session_terminated", None)]
        assert client.list_sessions() == []
    found = [p for p in daemon.state_dir.rglob("*") if ".log" not in p.name and p.is_file()
             and (sid in p.name or sid.encode() in p.read_bytes())]
    assert found == []


def test_a_crash_loop_does_not_hibernate_its_way_around_max_restarts(daemon_factory):
    daemon = daemon_factory(max_restarts=2, max_seconds=60, **QUICK)
    with daemon.client() as client:
        sid = client.create_session()
        client.subscribe_to_session(sid)
        for crashes in range(3):
            os.kill(client.get_session_pid(sid), signal.SIGKILL)  # revives it first if asleep
            crashed = next_of(client, "session_crashed")
            assert crashed.payload["restarts"] == crashes
            if crashes < 2:
                assert crashed.payload["will_restart"] is True
                next_of(client, "session_hibernated", LONG)
        assert crashed.payload["will_restart"] is False
        assert next_of(client, "session_terminated").payload["session_id"] == sid
        assert [f.session_id for f in client.list_failed_sessions()] == [sid]


def test_a_daemon_start_forks_nothing_for_hibernated_sessions(daemon_factory):
    daemon = daemon_factory(**NEVER)
    with daemon.client() as client:
        sids = [client.create_session() for _ in range(3)]
        contents = {sid: fill(client, sid) for sid in sids}
        listed = [i.model_dump(exclude={"pid", "hibernated"}) for i in client.list_sessions()]
    assert daemon.stop() == 0  # a stop hibernates every session
    daemon = daemon_factory(root=daemon.root, **NEVER)
    with daemon.client() as client:
        assert daemon.session_pids() == []
        infos = client.list_sessions()
        assert [i.model_dump(exclude={"pid", "hibernated"}) for i in infos] == listed
        assert all(i.hibernated and i.pid is None for i in infos)
        assert [i.session_id for i in client.list_sessions(offset=1, limit=1)] == [sids[1]]
        assert held(client, sids[1]) == contents[sids[1]]
        assert len(daemon.session_pids()) == 1  # only the one called


def test_a_revival_with_no_room_waits_for_a_busy_session_to_finish_and_then_takes_its_place(daemon_factory):
    daemon = daemon_factory(max_live_sessions=1, **NEVER)
    with daemon.client() as client, daemon.client() as busy_client:
        asleep = client.create_session()
        client.send_message(asleep, "user", "kept")
        busy = client.create_session()  # hibernates asleep
        wait_until(lambda: client.get_session_info(asleep).hibernated, SHORT, "room made for busy")
        busy_pid = client.get_session_pid(busy)
        client.subscribe_to_all_sessions()
        spent = cpu_seconds(busy_pid)
        call = threading.Thread(target=lambda: busy_client._call("debug_hang", {"session_id": busy, "seconds": 1.0}))
        call.start()
        wait_until(lambda: cpu_seconds(busy_pid) > spent + 0.05, SHORT, "busy to be inside its call")
        assert [m.content for m in client.get_conversation_history(asleep)] == ["kept"]  # waited
        call.join(SHORT)
        assert "waits for a live session to hibernate" in daemon.log_text()
        assert sorted(types_of([next_of(client, ("session_hibernated", "session_revived"))
                                for _ in range(2)])) == [("session_hibernated", busy),
                                                         ("session_revived", asleep)]


def test_max_sessions_counts_hibernated_sessions_a_start_left_asleep(daemon_factory):
    daemon = daemon_factory(max_sessions=2, **NEVER)
    with daemon.client() as client:
        kept = [client.create_session(), client.create_session()]
    assert daemon.stop() == 0
    daemon = daemon_factory(root=daemon.root, max_sessions=2, **NEVER)
    with daemon.client() as client:
        with pytest.raises(LimitExceededError) as raised:
            client.create_session()  # two known, though neither has a process nor was asked for
        assert "max_sessions" in str(raised.value)
        assert [i.session_id for i in client.list_sessions()] == kept
        client.terminate_session(kept[0])
        assert client.create_session() not in kept
