"""The Ray backend on a multi-node cluster, driven directly: create, call, events, stop; an
actor's process killed; a node removed while sessions are written, with every acknowledged
message back from the daemon's store."""

from __future__ import annotations

import os
import signal
import time

from jidocoder.daemon.backend import Answered, Died, Ready
from jidocoder.daemon.store import SessionStore
from tests.ray.helpers import Collector, spec
from tests.support import process_alive, wait_until
from tests.unit.test_store_faults import FullDisk, needs_strace


def start(backend, state_dir, sid: str, **config) -> Ready:
    seen = Collector(backend)
    backend.start_session(spec(state_dir, sid, **config))
    seen.until(lambda s: seen.of(Ready, sid) or seen.of(Died, sid), what=f"{sid} ready")
    assert seen.of(Died, sid) == []
    return seen.of(Ready, sid)[0]


def send(backend, sid: str, request_id: int, op: str, **args) -> None:
    backend.send(sid, {"id": request_id, "op": op, "args": args})


def stored_messages(state_dir, sid: str) -> list[str]:
    store = SessionStore(state_dir, sid)
    try:
        return [m.content for m in store.load()[0]]
    finally:
        store.close()


def stop(backend, seen: Collector, sid: str) -> Died:
    backend.stop_session(sid)
    seen.until(lambda s: seen.of(Died, sid), what=f"{sid} stopped")
    return seen.of(Died, sid)[-1]


def test_a_session_actor_serves_calls_with_their_events_and_its_writes_are_stored_here(backend, tmp_path):
    ready = start(backend, tmp_path, "session_ray_a")
    assert ready.node and ready.message_count == 0 and process_alive(ready.pid)
    seen = Collector(backend)
    send(backend, "session_ray_a", 1, "send_message", role="user", content="héllo ✓")
    send(backend, "session_ray_a", 2, "add_file", path="/src/a.py")
    send(backend, "session_ray_a", 3, "get_conversation_history")
    send(backend, "session_ray_a", 4, "debug_pid")
    send(backend, "session_ray_a", 5, "send_message", role="nobody", content="x")
    seen.until(lambda s: len(seen.of(Answered)) == 5, what="five answers")
    replies = [a.reply for a in seen.of(Answered)]
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
    assert replies[0]["events"][0][0] == "conversation_added"
    assert replies[0]["events"][0][1]["content"] == "héllo ✓"
    assert replies[1]["events"] == [("file_added", {"session_id": "session_ray_a", "file_path": "/src/a.py"})]
    assert [m["content"] for m in replies[2]["result"]] == ["héllo ✓"]
    assert replies[3]["result"] == ready.pid
    assert replies[4]["error"]["code"] == "invalid_role"
    died = stop(backend, seen, "session_ray_a")
    assert (died.reason, died.stopped, died.unanswered) == ("stopped", True, [])
    wait_until(lambda: not process_alive(ready.pid), message="the actor's process gone")
    assert stored_messages(tmp_path, "session_ray_a") == ["héllo ✓"]


def test_a_killed_actor_process_is_a_death_with_a_reason_and_a_new_actor_starts_from_the_store(backend, tmp_path):
    sid = "session_ray_kill"
    ready = start(backend, tmp_path, sid)
    seen = Collector(backend)
    send(backend, sid, 1, "send_message", role="user", content="stored before")
    seen.until(lambda s: seen.of(Answered, sid), what="the first answer")
    send(backend, sid, 2, "debug_hang", seconds=30)
    send(backend, sid, 3, "send_message", role="user", content="queued behind the hang")
    os.kill(ready.pid, signal.SIGKILL)
    seen.until(lambda s: seen.of(Died, sid), what="the death")
    died = seen.of(Died, sid)[0]
    assert not died.stopped and "worker process has died" in died.reason, died.reason
    assert [r["id"] for r in died.unanswered] == [2, 3]
    again = start(backend, tmp_path, sid)  # our restart: a new actor, wherever Ray puts it
    assert again.pid != ready.pid and again.message_count == 1
    assert stored_messages_after_stop(backend, tmp_path, sid) == ["stored before"]


def stored_messages_after_stop(backend, state_dir, sid: str) -> list[str]:
    stop(backend, Collector(backend), sid)
    return stored_messages(state_dir, sid)


def test_a_call_whose_client_gave_up_is_refused_on_its_node_unapplied(backend, tmp_path):
    sid = "session_ray_late"
    start(backend, tmp_path, sid)
    seen = Collector(backend)
    backend.send(sid, {"id": 1, "op": "send_message", "deadline": time.monotonic() - 0.01,
                       "args": {"role": "user", "content": "late"}})
    backend.send(sid, {"id": 2, "op": "send_message", "deadline": time.monotonic() + 30,
                       "args": {"role": "user", "content": "in time"}})
    seen.until(lambda s: len(seen.of(Answered, sid)) == 2, what="two answers")
    assert seen.of(Answered, sid)[0].reply["error"]["code"] == "timeout"
    assert stored_messages_after_stop(backend, tmp_path, sid) == ["in time"]


def test_a_session_with_persistence_disabled_stores_nothing(backend, tmp_path):
    sid = "session_ray_volatile"
    start(backend, tmp_path, sid, persistence_enabled=False)
    seen = Collector(backend)
    send(backend, sid, 1, "send_message", role="user", content="kept in memory only")
    seen.until(lambda s: seen.of(Answered, sid), what="the answer")
    assert "result" in seen.of(Answered, sid)[0].reply
    stop(backend, seen, sid)
    assert not (tmp_path / "sessions").exists() or list((tmp_path / "sessions").iterdir()) == []


@needs_strace
def test_a_write_the_daemon_cannot_store_is_a_storage_error_and_the_actor_goes_back_to_the_store(backend, tmp_path):
    sid = "session_ray_full"
    start(backend, tmp_path, sid)
    seen = Collector(backend)
    send(backend, sid, 1, "send_message", role="user", content="stored")
    seen.until(lambda s: seen.of(Answered, sid), what="the first answer")
    disk = FullDisk(os.getpid())  # the daemon's disk is full: this process's pwrite64 fails
    try:
        send(backend, sid, 2, "send_message", role="user", content="not storable")
        send(backend, sid, 3, "get_conversation_history")  # ran after the unstored change
        seen.until(lambda s: len(seen.of(Answered, sid)) == 3, what="two more answers")
    finally:
        disk.close()
    failed, behind = (a.reply for a in seen.of(Answered, sid)[1:])
    assert failed["error"]["code"] == behind["error"]["code"] == "storage_unavailable"
    assert "disk is full" in failed["error"]["message"], failed
    send(backend, sid, 4, "send_message", role="user", content="stored again")
    send(backend, sid, 5, "get_conversation_history")
    seen.until(lambda s: len(seen.of(Answered, sid)) == 5, what="the answers after the fault")
    assert [m["content"] for m in seen.of(Answered, sid)[4].reply["result"]] == ["stored", "stored again"]
    assert stored_messages_after_stop(backend, tmp_path, sid) == ["stored", "stored again"]
