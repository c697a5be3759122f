"""Durability (docs/api.md §6): persisted sessions survive daemon stops and kills with all their data,
terminated and non-persistent ones leave no trace, and damaged or newer stores are handled."""

from __future__ import annotations

import random
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jidocoder import Client, SessionStatus, wire
from jidocoder.daemon import store
from jidocoder.errors import DaemonUnavailableError, SessionNotFoundError
from tests.support import LONG, SHORT, DaemonProcess, info_of, process_alive, wait_until

GARBAGE = b"this is not an sqlite database, just bytes someone wrote over it\n" * 64


# -- helpers ----------------------------------------------------------------------------------
def restart(daemon: DaemonProcess, daemon_factory, how: str, **settings) -> DaemonProcess:
    """Stop the daemon gracefully or SIGKILL it, then start a new one on the same socket and
    state dir with the same settings (or ``settings``, if given)."""
    if how == "graceful":
        assert daemon.stop() == 0
    else:
        daemon.kill()
    return daemon_factory(root=daemon.root, **(settings or daemon.settings))


def populate(client: Client, **config) -> str:
    """A session with metadata, llm_config, config, messages, active files and a file index."""
    sid = client.create_session(
        metadata={"project": "durable", "n": 7, "nested": {"list": [1, "two", None]}},
        llm_config={"model": "m-1", "temperature": 0.25},
        config={"max_history": 50, "max_files": 3, "features": ["alpha", "beta"], **config})
    for i, role in enumerate(["system", "user", "assistant", "tool", "user"]):
        client.send_message(sid, role, f"message {i} from {role} \u00e9\u6f22 {sid}")
    for name in ("a.py", "b.py", "c.py", "d.py"):  # d pushes a out (max_files=3)
        client.add_file(sid, f"/src/{name}")
    client.update_file_index(sid, "/src/b.py", {"lines": 10, "tags": ["x"]})
    client.update_file_index(sid, "/src/c.py", {"lines": 3})
    client.update_file_index(sid, "/src/b.py", {"summary": "merged"})
    client.remove_file(sid, "/src/c.py")
    return sid


def data_of(client: Client, sid: str) -> dict:
    return {"history": client.get_conversation_history(sid),
            "files": client.get_active_files(sid),
            "index": client.get_file_index(sid)}


def all_serving(client: Client, expected: set[str]) -> bool:
    """Exactly ``expected`` are listed, each with a process (one a start left hibernated has
    none until a call: ``get_session_pid`` is one, docs/api.md §13)."""
    listed = client.list_sessions()
    return ({i.session_id for i in listed} == expected
            and all(i.pid is not None or (i.hibernated and client.get_session_pid(i.session_id))
                    for i in listed))


def traces_of(state_dir: Path, needle: str) -> list[str]:
    """Every path under ``state_dir`` (except the logs, *.log*) whose name or bytes hold ``needle``."""
    found = []
    for path in sorted(state_dir.rglob("*")):
        if ".log" in path.name:
            continue
        relative = str(path.relative_to(state_dir))
        if needle in relative:
            found.append(f"{relative} (name)")
        elif path.is_file() and needle.encode("ascii") in path.read_bytes():
            found.append(f"{relative} (bytes)")
    return found


def log_lines_with(daemon: DaemonProcess, *words: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines() if all(w in line for w in words)]


def wait_for_log(daemon: DaemonProcess, *words: str) -> list[str]:
    return wait_until(lambda: log_lines_with(daemon, *words), SHORT,
                      f"a daemon.log line with {words!r}")


# -- restart keeps everything -----------------------------------------------------------------
@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_sessions_survive_a_daemon_restart_with_same_ids_data_status_and_exact_timestamps(daemon_factory, how):
    daemon = daemon_factory()
    with daemon.client() as client:
        active = populate(client)
        idle = populate(client, timeout_minutes=0.01)
        data_before = {sid: data_of(client, sid) for sid in (active, idle)}  # calls: both active
        client.cache_file(active, "/src/b.py", "cached text")
        assert client.get_file(active, "/src/b.py").content == "cached text"
        wait_until(lambda: info_of(client, idle).status is SessionStatus.IDLE, SHORT,
                   "the short-timeout session to go idle")
        before = {sid: info_of(client, sid).model_dump(exclude={"pid", "hibernated"}) for sid in (active, idle)}
        old_pids = daemon.session_pids()
    assert before[idle]["status"] is SessionStatus.IDLE
    assert before[active]["status"] is SessionStatus.ACTIVE
    assert before[active]["conversation_count"] == before[idle]["conversation_count"] == 5
    assert [f.path for f in data_before[active]["files"]] == ["/src/b.py", "/src/d.py"]
    assert set(data_before[active]["index"]) == {"/src/b.py"}
    assert data_before[active]["index"]["/src/b.py"]["summary"] == "merged"

    if how == "sigkill":
        daemon.proc.kill()
        wait_until(lambda: not any(process_alive(p) for p in old_pids), 1.0,
                   "the dead daemon's session processes to exit within a second")
    daemon = restart(daemon, daemon_factory, how)

    with daemon.client() as client:
        if how == "graceful":  # a stop hibernates them: the start forks nothing (docs/api.md §13)
            assert daemon.session_pids() == []
            assert all(i.pid is None and i.hibernated for i in client.list_sessions())
        else:  # they were live when the daemon died: restarted, as after a crash
            wait_until(lambda: all_serving(client, {active, idle}), SHORT, "both sessions to serve again")
        assert [i.session_id for i in client.list_sessions()] == [active, idle]  # oldest first
        # ids, status (idle too), config, metadata, llm_config, counts, timestamps to the µs
        after = {sid: info_of(client, sid).model_dump(exclude={"pid", "hibernated"}) for sid in (active, idle)}
        assert after == before
        for sid in (active, idle):
            assert data_of(client, sid) == data_before[sid]
            pid = client.get_session_pid(sid)
            new_pids = daemon.session_pids()
            assert process_alive(pid) and pid in new_pids and pid not in old_pids
        assert client.get_file(active, "/src/b.py") is None  # the cache lived in memory only
        client.send_message(active, "user", "after the restart")
        assert [m.content for m in client.get_conversation_history(active)][-2:] == [
            data_before[active]["history"][-1].content, "after the restart"]


def test_every_acknowledged_message_survives_repeated_daemon_sigkills_in_order(daemon_factory):
    rng = random.Random(20240605)
    daemon = daemon_factory()
    with daemon.client() as client:
        sessions = [client.create_session(config={"max_history": 100_000}) for _ in range(3)]
    acked: dict[tuple[str, str], list[int]] = {(s, sid): [] for s in "AB" for sid in sessions}
    attempted: set[str] = set()
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def connect() -> Client | None:
        try:
            return Client(daemon.socket, timeout=SHORT)
        except DaemonUnavailableError:
            return None

    def sender(name: str) -> None:
        client, n = None, 0
        try:
            while not stop.is_set():
                if client is None:
                    client = wait_until(lambda: stop.is_set() or connect(), LONG,
                                        f"sender {name} to reconnect")
                    if client is True:
                        return
                sid = sessions[n % 3]
                content = f"{name}:{n}"
                with lock:
                    attempted.add(content)
                try:
                    client.send_message(sid, "user", content)
                except DaemonUnavailableError:
                    client.close()
                    client = None
                else:
                    with lock:
                        acked[(name, sid)].append(n)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            if client not in (None, True):
                client.close()

    def total() -> int:
        with lock:
            return sum(len(v) for v in acked.values())

    threads = [threading.Thread(target=sender, args=(name,)) for name in "AB"]
    for thread in threads:
        thread.start()
    try:
        for _ in range(10):
            target = total() + rng.randint(1, 25)
            wait_until(lambda target=target: total() >= target or failures, LONG, "acknowledged messages")
            assert not failures, failures
            daemon.kill()
            daemon = daemon_factory(root=daemon.root)
        target = total() + 5  # the senders reconnect to the last daemon too
        wait_until(lambda: total() >= target or failures, LONG, "messages to the last daemon")
    finally:
        stop.set()
        for thread in threads:
            thread.join(LONG)
    assert not failures, failures
    assert not any(thread.is_alive() for thread in threads)

    with daemon.client() as client:
        for sid in sessions:
            history = client.get_conversation_history(sid)
            assert all(m.role == "user" and m.content in attempted for m in history)
            for name in "AB":
                present = [int(m.content.split(":")[1]) for m in history
                           if m.content.startswith(f"{name}:")]
                assert present == sorted(set(present))  # in order, no duplicates
                assert set(acked[(name, sid)]) <= set(present)
    assert total() >= 20


def test_durability_full_keeps_messages_across_a_sigkill(daemon_factory):
    daemon = daemon_factory(durability="full")
    with daemon.client() as client:
        sid = client.create_session()
        for i in range(5):
            client.send_message(sid, "user", f"full {i}")
        before = client.get_conversation_history(sid)
    daemon = restart(daemon, daemon_factory, "sigkill")
    with daemon.client() as client:
        assert client.get_conversation_history(sid) == before
        assert [m.content for m in before] == [f"full {i}" for i in range(5)]


def test_a_restored_session_holds_exactly_its_last_max_history_messages(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        sid = client.create_session(config={"max_history": 5})
        for i in range(12):
            client.send_message(sid, "user", f"m{i}")
    daemon = restart(daemon, daemon_factory, "sigkill")
    with daemon.client() as client:
        assert [m.content for m in client.get_conversation_history(sid)] == [
            f"m{i}" for i in range(7, 12)]
        assert client.get_session_info(sid).conversation_count == 5


def test_requests_arriving_together_are_each_answered_and_all_stored_in_order(daemon_factory):
    """Pipelined on one connection, the calls reach the session in one read: they share one
    commit, and every reply comes only after it."""
    daemon = daemon_factory(durability="full")
    count = 40
    with daemon.client() as client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        sid = client.create_session()
        raw.connect(daemon.socket)
        raw.sendall(b"".join(
            wire.pack_frame({"id": i, "op": "send_message",
                             "args": {"session_id": sid, "role": "user", "content": f"piped {i}"}},
                            1 << 20) for i in range(count)))
        replies = [wire.read_frame(raw, 1 << 20) for _ in range(count)]
        assert replies == [{"id": i, "result": None} for i in range(count)]
    daemon = restart(daemon, daemon_factory, "sigkill")
    with daemon.client() as client:
        history = client.get_conversation_history(sid)
    assert [m.content for m in history] == [f"piped {i}" for i in range(count)]


# -- nothing left behind ----------------------------------------------------------------------
def test_a_terminated_session_leaves_no_trace_and_does_not_come_back(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        kept = populate(client)
        gone = populate(client)
        client.send_message(gone, "user", "x" * 20_000)  # spills over pages of its own
        assert traces_of(daemon.state_dir, gone) != []  # it was stored
        client.terminate_session(gone)
        assert traces_of(daemon.state_dir, gone) == []
    daemon = restart(daemon, daemon_factory, "sigkill")
    with daemon.client() as client:
        wait_until(lambda: all_serving(client, {kept}), SHORT, "the kept session to serve")
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(gone)
        assert len(client.get_conversation_history(kept)) == 5
    assert traces_of(daemon.state_dir, gone) == []


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_a_non_persistent_session_is_never_stored_and_gone_after_a_restart(daemon_factory, how):
    daemon = daemon_factory()
    with daemon.client() as client:
        kept = populate(client)
        volatile = populate(client, persistence_enabled=False)
        assert len(client.get_conversation_history(volatile)) == 5
        assert traces_of(daemon.state_dir, volatile) == []
    daemon = restart(daemon, daemon_factory, how)
    with daemon.client() as client:
        wait_until(lambda: all_serving(client, {kept}), SHORT, "only the persisted session to serve")
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(volatile)
    assert traces_of(daemon.state_dir, volatile) == []


def test_a_session_found_terminating_at_start_is_finished_off(daemon_factory):
    from jidocoder.daemon.store import Registry

    daemon = daemon_factory()
    with daemon.client() as client:
        kept = populate(client)
        dying = populate(client)
    assert daemon.stop() == 0
    with Registry(daemon.state_dir) as registry:
        states, damaged = registry.load_all()
        assert damaged == []
        state = next(s for s in states if s.session_id == dying)
        registry.put(state.transition(SessionStatus.TERMINATING))
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:
        wait_until(lambda: all_serving(client, {kept}), SHORT, "only the kept session to serve")
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(dying)
    assert log_lines_with(daemon, dying, "terminating")
    assert traces_of(daemon.state_dir, dying) == []


# -- damaged and newer stores -----------------------------------------------------------------
def test_a_corrupted_session_store_is_moved_aside_and_the_others_are_restored(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        bad = populate(client)
        good = populate(client)
        good_data = data_of(client, good)
    assert daemon.stop() == 0
    (daemon.state_dir / "sessions" / f"{bad}.db").write_bytes(GARBAGE)

    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:  # the stop hibernated it: its store is opened on revival
        with pytest.raises(SessionNotFoundError):
            client.get_session_pid(bad)
    lines = wait_for_log(daemon, bad, "moved to")  # which
    assert any("damaged" in line for line in lines), lines
    assert log_lines_with(daemon, bad, "not an SQLite database")  # why, in the session's words
    moved = daemon.state_dir / "damaged" / f"{bad}.db"
    assert moved.read_bytes() == GARBAGE
    assert (daemon.state_dir / "damaged" / f"{bad}.db.reason").read_text().strip() != ""
    assert not (daemon.state_dir / "sessions" / f"{bad}.db").exists()
    with daemon.client() as client:
        wait_until(lambda: all_serving(client, {good}), SHORT, "the good session to serve")
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(bad)
        [failed] = client.list_failed_sessions()  # kept, not forgotten: its row says what it was
        assert failed.session_id == bad and "not an SQLite database" in failed.error
        assert data_of(client, good) == good_data
        assert process_alive(client.get_session_pid(good))
        client.send_message(good, "user", "still serving")


def test_a_damaged_registry_is_moved_aside_and_the_daemon_starts(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        populate(client)
    assert daemon.stop() == 0
    (daemon.state_dir / "registry.db").write_bytes(GARBAGE)

    daemon = daemon_factory(root=daemon.root)
    assert (daemon.state_dir / "damaged" / "registry.db").read_bytes() == GARBAGE
    assert log_lines_with(daemon, "registry", "damaged", "moved to")
    with daemon.client() as client:
        assert client.list_sessions() == []
        sid = client.create_session()
        client.send_message(sid, "user", "a fresh registry works")
        assert [i.session_id for i in client.list_sessions()] == [sid]


def test_a_damaged_registry_keeps_every_session_as_a_failed_one_to_recover(daemon_factory):
    """Losing the registry must not cost the conversations kept in each session's own
    database: each is offered as a failed session, and recovering it brings its data back."""
    daemon = daemon_factory()
    with daemon.client() as client:
        sid = populate(client)
        stored = data_of(client, sid)
    assert daemon.stop() == 0
    (daemon.state_dir / "registry.db").write_bytes(GARBAGE)

    daemon = daemon_factory(root=daemon.root)
    assert (daemon.state_dir / "sessions" / f"{sid}.db").exists()
    with daemon.client() as client:
        assert client.list_sessions() == []
        [failed] = client.list_failed_sessions()
        assert failed.session_id == sid and failed.error == store.ORPHAN_ERROR
        client.recover_session(sid)
        assert client.get_session_info(sid).status is SessionStatus.ACTIVE
        assert data_of(client, sid) == stored
        assert client.list_failed_sessions() == []


def test_a_store_from_a_newer_version_is_refused_and_left_unchanged(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        populate(client)
    assert daemon.stop() == 0
    registry = daemon.state_dir / "registry.db"
    with sqlite3.connect(registry) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = {p: p.read_bytes() for p in daemon.state_dir.rglob("*")
              if p.is_file() and ".log" not in p.name and p.name != "daemon.lock"}
    assert registry in before and not Path(f"{registry}-wal").exists()

    probe = DaemonProcess(daemon.root)
    done = subprocess.run([sys.executable, "-m", "jidocoder.cli", "daemon", "start", "--foreground"],
                          env=probe.env(), capture_output=True, timeout=LONG)
    message = done.stderr.decode()
    assert done.returncode != 0
    assert "999" in message and "newer" in message and str(registry) in message, message
    assert "Traceback" not in message
    after = {p: p.read_bytes() for p in daemon.state_dir.rglob("*")
             if p.is_file() and ".log" not in p.name and p.name != "daemon.lock"}
    assert after == before
