"""Faults injected from outside the daemon (docs/api.md §2, §4, §6, §7, §10): sessions given up and
recovered, storage failures that are not crashes, failed registry writes, a broken framing,
spawning by fork, a clone-safe template. Real daemon, real Client, real signals, strace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from jidocoder import Client
from jidocoder.errors import (JidocoderError, LimitExceededError, RequestTimeoutError, SessionNotFoundError,
                              StorageError)
from tests.integration.test_crashes import EventLog, kill_new_pid, subset, watch
from tests.integration.test_durability import traces_of
from tests.support import (LONG, SHORT, DaemonProcess, children_of, contents, cpu_seconds, debug, info_of,
                           process_name, raw_message, send_kept_and_dropped_while_busy, wait_until)

if shutil.which("strace") is None:  # pragma: no cover - the environment's fault, said plainly
    pytest.fail("these tests inject faults with strace: apt-get install strace", pytrace=False)


class Inject:
    """While open, strace makes the given syscalls of ``pid`` (and its threads) fail with
    ``error``; closing it ends strace, and with it the fault."""

    def __init__(self, pid: int, syscalls: str, error: str) -> None:
        self.strace = subprocess.Popen(
            ["strace", "-f", "-o", "/dev/null", "-p", str(pid), "-e", f"trace={syscalls}",
             "-e", f"inject={syscalls}:error={error}"], stderr=subprocess.PIPE, text=True)
        line = self.strace.stderr.readline()  # "strace: Process N attached": injecting now
        assert "attached" in line, line

    def close(self) -> None:
        if self.strace.poll() is None:
            self.strace.terminate()
        self.strace.wait(SHORT)
        self.strace.stderr.close()

    def __enter__(self) -> Inject:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


WRITES = "pwrite64,write,fdatasync,fsync"


def fill(client: Client, session: str, messages: list[str]) -> None:
    for text in messages:
        client.send_message(session, "user", text)
    client.add_file(session, "/src/a.py")
    client.update_file_index(session, "/src/a.py", {"lines": 3, "lang": "py"})


def snapshot(client: Client, session: str) -> tuple:
    return (contents(client, session), [f.path for f in client.get_active_files(session)],
            client.get_file_index(session))


def template_pid(daemon: DaemonProcess) -> int:
    return wait_until(lambda: next((p for p in children_of(daemon.pid)
                                    if process_name(p) == "jido-template"), None),
                      SHORT, "the template process")


# -- 1. given up, data kept, recovered ----------------------------------------------------------
def test_a_session_given_up_keeps_its_data_is_listed_as_failed_and_is_recovered(daemon_factory):
    daemon = daemon_factory(max_restarts=2)
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        fill(client, session, ["one", "two"])
        before = snapshot(client, session)
        events = watch(watcher, session)
        pid = None
        for n, restarts in enumerate((True, True, False)):
            pid = kill_new_pid(client, session, pid)
            crashed = events.wait_type("session_crashed", session)
            assert subset(crashed.payload, {"reason": 1, "restarts": 1, "will_restart": 1}) == {
                "reason": "killed by SIGKILL", "restarts": n, "will_restart": restarts}
        assert events.wait_type("session_status", session).payload["status"] == "terminating"
        assert events.wait_type("session_status", session).payload["status"] == "terminated"
        events.wait_type("session_terminated", session)
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(session)
        [failed] = [i for i in client.list_failed_sessions() if i.session_id == session]
        assert failed.error == "killed by SIGKILL"
        files = sorted(p.name for p in (daemon.state_dir / "sessions").iterdir() if session in p.name)
        assert files and any(name.endswith(".db") for name in files)
        with pytest.raises(SessionNotFoundError):
            client.recover_session("session_00000000-0000-4000-8000-000000000000")
    daemon.stop()
    daemon = daemon_factory(root=daemon.root, max_restarts=2)
    with daemon.client() as client, daemon.client() as watcher:
        assert [i.session_id for i in client.list_failed_sessions()] == [session]
        watcher.subscribe_to_all_sessions()
        client.recover_session(session)
        events = EventLog(watcher)
        events.wait_type("session_created", session)
        moved = events.wait_type("session_status", session)
        assert subset(moved.payload, {"previous_status": 1, "status": 1}) == {
            "previous_status": "initializing", "status": "active"}
        info = client.get_session_info(session)
        assert (info.status, info.restarts) == ("active", 0)
        assert snapshot(client, session) == before
        assert client.list_failed_sessions() == []
        with pytest.raises(SessionNotFoundError):
            client.recover_session(session)  # live: not a failed one


def test_a_session_without_persistence_given_up_keeps_nothing(daemon_factory):
    daemon = daemon_factory(max_restarts=0)
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session(config={"persistence_enabled": False})
        client.send_message(session, "user", "gone")
        events = watch(watcher, session)
        kill_new_pid(client, session, None)
        assert events.wait_type("session_crashed", session).payload["will_restart"] is False
        events.wait_type("session_terminated", session)
        assert client.list_failed_sessions() == []
        assert traces_of(daemon.state_dir, session) == []


# -- 2. storage failures are not crashes --------------------------------------------------------
def test_a_full_disk_in_a_session_is_a_storage_error_not_a_crash(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        fill(client, session, ["a", "b"])
        events = watch(watcher, session)
        pid = client.get_session_pid(session)
        with Inject(pid, "pwrite64", "ENOSPC"):
            with pytest.raises(StorageError) as caught:
                client.send_message(session, "user", "lost")
            assert caught.value.code == "storage_unavailable"
            assert contents(client, session) == ["a", "b"]
            errors: list = []

            def send(n: int) -> None:
                with daemon.client() as own:
                    try:
                        own.send_message(session, "user", f"lost-{n}")
                        errors.append(f"{n} acknowledged")
                    except StorageError:
                        pass
                    except Exception as exc:  # noqa: BLE001 - reported below
                        errors.append(repr(exc))
            threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(LONG)
            assert errors == []
            assert contents(client, session) == ["a", "b"]
            assert client.get_session_pid(session) == pid
        client.send_message(session, "user", "c")
        assert contents(client, session) == ["a", "b", "c"]
        assert info_of(client, session).restarts == 0
        assert client.get_session_pid(session) == pid
        assert [e for e in events.seen if e.type == "session_crashed"] == []
        after = snapshot(client, session)
    daemon.stop()
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:
        assert snapshot(client, session) == after


# -- 3. registry write failure ------------------------------------------------------------------
def test_a_registry_write_failure_leaves_nothing_and_keeps_the_session(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        kept = client.create_session()
        fill(client, kept, ["x"])
        before = snapshot(client, kept)
        listed = sorted(i.session_id for i in client.list_sessions())
        names = sorted(p.name for p in (daemon.state_dir / "sessions").iterdir())
        with Inject(daemon.pid, "pwrite64", "ENOSPC"):
            with pytest.raises(StorageError):
                client.create_session()
            with pytest.raises(StorageError):
                client.terminate_session(kept)
        assert sorted(i.session_id for i in client.list_sessions()) == listed
        assert sorted(p.name for p in (daemon.state_dir / "sessions").iterdir()) == names
        assert snapshot(client, kept) == before
    daemon.stop()
    daemon = daemon_factory(root=daemon.root)
    with daemon.client() as client:
        assert sorted(i.session_id for i in client.list_sessions()) == listed
        assert snapshot(client, kept) == before
        client.terminate_session(kept)
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(kept)
    daemon.stop()
    assert traces_of(daemon.state_dir, kept) == []


# -- 6. a session that breaks framing -----------------------------------------------------------
def test_a_session_that_breaks_framing_is_killed_and_restarted(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        fill(client, session, ["p", "q"])
        before = snapshot(client, session)
        events = watch(watcher, session)
        pid = client.get_session_pid(session)
        try:
            debug(client, "debug_send_garbage", session)
        except Exception:  # noqa: BLE001 - the call may fail as its process is killed
            pass
        crashed = events.wait_type("session_crashed", session)
        assert subset(crashed.payload, {"reason": 1, "will_restart": 1}) == {
            "reason": "protocol error", "will_restart": True}
        events.wait_type("session_restarted", session)
        wait_until(lambda: client.get_session_pid(session) != pid, SHORT, "a new process")
        assert snapshot(client, session) == before


# -- 8. spawn by fork ---------------------------------------------------------------------------
def test_spawn_by_fork_restarts_with_data_and_has_no_template(daemon_factory):
    daemon = daemon_factory(spawn="fork")
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        fill(client, session, ["f1", "f2"])
        before = snapshot(client, session)
        events = watch(watcher, session)
        kill_new_pid(client, session, None)
        events.wait_type("session_restarted", session)
        assert snapshot(client, session) == before
        assert [p for p in children_of(daemon.pid) if process_name(p) == "jido-template"] == []


# -- 9. the template is clone-safe --------------------------------------------------------------
def test_the_template_has_one_thread_and_no_store_open(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        for n in range(3):
            client.send_message(client.create_session(), "user", f"m{n}")
        pid = template_pid(daemon)
        with open(f"/proc/{pid}/status") as f:
            assert "Threads:\t1" in f.read().splitlines()
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except FileNotFoundError:
                pass
        assert [t for t in targets if t.endswith((".db", "-wal", "-shm"))] == []


# -- 4. process limits --------------------------------------------------------------------------
@pytest.mark.parametrize("spawn", ["clone", "fork"])
def test_a_fork_that_fails_is_a_limit_and_a_restart_that_cannot_fork_is_retried_uncounted(
        daemon_factory, spawn):
    """With spawn=clone the template's clone fails; with spawn=fork, the daemon's own fork."""
    daemon = daemon_factory(max_restarts=1, spare_processes=0, spawn=spawn)
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        fill(client, session, ["k"])
        before = snapshot(client, session)
        events = watch(watcher, session)
        forker = template_pid(daemon) if spawn == "clone" else daemon.pid
        with Inject(forker, "clone,clone3,fork,vfork", "EAGAIN"):
            with pytest.raises(LimitExceededError):
                client.create_session()
            kill_new_pid(client, session, None)
            crashed = events.wait_type("session_crashed", session)
            assert crashed.payload["will_restart"] is True
            # ~3 s of failing forks: three max_restarts windows' worth of retries, none counted
            with pytest.raises(AssertionError):
                events.wait_for(lambda e: e.session_id == session and e.type in (
                    "session_crashed", "session_terminated"), 3.0, "no second crash")
        events.wait_type("session_restarted", session, timeout=LONG)
        wait_until(lambda: info_of(client, session).status == "active", SHORT, "it to serve")
        assert snapshot(client, session) == before
        assert info_of(client, session).restarts == 1
        assert [e for e in events.seen if e.payload.get("will_restart") is False] == []


# -- 7. deadlines (§10) -------------------------------------------------------------------------
def test_a_message_whose_call_timed_out_on_a_hung_session_is_not_applied(daemon_factory):
    daemon = daemon_factory(hang_timeout=2)
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        client.send_message(session, "user", "before")
        events = watch(watcher, session)
        outcome: list = []

        def hang() -> None:
            with daemon.client(timeout=LONG) as own:
                try:
                    debug(own, "debug_hang", session, seconds=5)
                    outcome.append("returned")
                except JidocoderError as exc:
                    outcome.append(exc.code)
        pid = client.get_session_pid(session)
        spent = cpu_seconds(pid)
        hanger = threading.Thread(target=hang)
        hanger.start()
        try:
            # debug_hang busy-loops: its process burning CPU says the hang has begun
            wait_until(lambda: cpu_seconds(pid) > spent + 0.2, SHORT, "the session to hang")
            with daemon.client(timeout=0.5) as impatient:
                with pytest.raises(RequestTimeoutError):
                    impatient.send_message(session, "user", "late")
            crashed = events.wait_type("session_crashed", session, timeout=LONG)
            assert crashed.payload["reason"] == "hung"
            events.wait_type("session_restarted", session, timeout=LONG)
        finally:
            hanger.join(LONG)
        assert outcome != ["returned"]
        wait_until(lambda: info_of(client, session).status == "active", SHORT, "it to serve")
        assert contents(client, session) == ["before"]


def test_a_message_whose_client_closed_while_its_session_hung_is_not_applied(daemon_factory):
    """API.md §10: a call its client gave up on by closing is never applied afterwards. The
    call (sent whole, with no deadline, so that only the closing can stop it) waits in the hung
    process's socket; the hang kill hands it back to the daemon, which finds its client gone."""
    daemon = daemon_factory(hang_timeout=2)
    with daemon.client() as client, daemon.client() as watcher:
        session = client.create_session()
        client.send_message(session, "user", "before")
        events = watch(watcher, session)
        pid = client.get_session_pid(session)
        spent = cpu_seconds(pid)
        hanger = threading.Thread(target=lambda: _call_and_forget(daemon, "debug_hang", session))
        hanger.start()
        try:
            wait_until(lambda: cpu_seconds(pid) > spent + 0.2, SHORT, "the session to hang")
            raw_message(daemon.socket, session, "late").close()
            events.wait_type("session_crashed", session, timeout=LONG)
            events.wait_type("session_restarted", session, timeout=LONG)
        finally:
            hanger.join(LONG)
        wait_until(lambda: info_of(client, session).status == "active", SHORT, "it to serve")
        assert contents(client, session) == ["before"]


def test_a_message_whose_client_closed_while_its_live_session_was_busy_is_not_applied(daemon_factory):
    """API.md §10 on a process that lives on: the call waits, written, in the busy process's
    socket when its client closes; the daemon's ``cancel`` follows it there, and the process
    reads it before it begins the call. A call from a client that stays is served as usual."""
    daemon = daemon_factory(hang_timeout=60)
    with daemon.client() as client:
        session = client.create_session()
        client.send_message(session, "user", "before")
        pid = client.get_session_pid(session)
        send_kept_and_dropped_while_busy(daemon, session, pid)
        assert contents(client, session) == ["before", "kept"]
        assert client.get_session_pid(session) == pid


def _call_and_forget(daemon, op: str, session: str) -> None:
    with daemon.client(timeout=LONG) as own:
        try:
            debug(own, op, session, seconds=5)
        except JidocoderError:
            pass
