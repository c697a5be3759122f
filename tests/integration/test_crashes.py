"""Crashes (issue 6; docs/api.md §2 "calls during a restart", §4 "Crashes"): a killed, failing, hung
or bloated session process is detected, reported, restarted from its stored state, and no other
session notices. Real daemon, real Client, real signals.
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import resource
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from jidocoder import Client, Event, SessionStatus
from jidocoder.errors import JidocoderError, SessionCrashedError, SessionNotFoundError
from tests.support import (LONG, SHORT, DaemonProcess, children_of, contents, debug, process_alive, process_state,
                           wait_until, zombies_among_children)

PR_SET_CHILD_SUBREAPER = 36

# daemon/logs.py: FORMAT = "%(asctime)s %(levelname)s [%(session)s pid=%(process)d] %(name)s: %(message)s"
# with the default asctime ("YYYY-MM-DD HH:MM:SS,mmm"), "daemon" or a session id as the tag,
# and newlines escaped by OneLineFormatter, so one record is one line.
LOG_LINE = re.compile(
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"\[(?P<tag>daemon|session_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}) "
    r"pid=(?P<pid>\d+)\] (?P<name>[A-Za-z0-9_.]+): (?P<message>.*)")


# -- helpers ------------------------------------------------------------------------------------
class EventLog:
    """Every event one subscribed client has received, and a deadline wait for the next match."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[Event] = []
        self._taken: set[int] = set()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = SHORT,
                 message: str = "an event") -> Event:
        """The first not yet returned event matching ``predicate``, reading more until the deadline."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for index in range(checked, len(self.seen)):
                if index not in self._taken and predicate(self.seen[index]):
                    self._taken.add(index)
                    return self.seen[index]
            checked = len(self.seen)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}; "
                                     f"seen: {[(e.type, e.payload) for e in self.seen]}")
            event = self.client.next_event(remaining)
            if event is not None:
                self.seen.append(event)

    def wait_type(self, type_: str, session_id: str, timeout: float = SHORT) -> Event:
        return self.wait_for(lambda e: e.type == type_ and e.session_id == session_id, timeout,
                             f"{type_} of {session_id}")

    def of(self, session_id: str) -> list[Event]:
        return [e for e in self.seen if e.session_id == session_id]


def watch(watcher: Client, session_id: str) -> EventLog:
    """Subscribe ``watcher`` to one session and log what it receives."""
    watcher.subscribe_to_session(session_id)
    return EventLog(watcher)


def subset(payload: dict, expected: dict) -> dict:
    """The keys docs/api.md §4 lists for an event, taken from its payload (more keys may be added)."""
    return {key: payload.get(key) for key in expected}


def expect_first_crash_and_restart(events: EventLog, session: str, reason: str,
                                   timeout: float = SHORT) -> Event:
    """``session_crashed`` (``reason``, restarts 0, will restart), then ``session_restarted``,
    which is returned."""
    crashed = events.wait_type("session_crashed", session, timeout=timeout)
    assert subset(crashed.payload, {"reason": 1, "restarts": 1, "will_restart": 1}) == {
        "reason": reason, "restarts": 0, "will_restart": True}
    return events.wait_type("session_restarted", session)


def assert_no_zombies(daemon: DaemonProcess) -> None:
    assert zombies_among_children(daemon.pid) == []


def kill_new_pid(client: Client, session_id: str, old_pid: int | None, signum: int = signal.SIGKILL) -> int:
    """Signal the process serving the session now, once it is not ``old_pid`` (a process killed
    a moment ago may still be listed until the daemon has reaped it)."""
    pid = wait_until(lambda: (p := client.get_session_pid(session_id)) != old_pid and p, SHORT,
                     f"a new process for {session_id}")
    os.kill(pid, signum)
    return pid


class Sender(threading.Thread):
    """Sends numbered messages ("<label>-<n>") round-robin to ``targets`` until stopped; records
    which were acknowledged, which raised SessionCrashedError, and anything else that failed."""

    def __init__(self, client: Client, label: str, targets: list[str], stop: threading.Event) -> None:
        super().__init__(name=f"sender-{label}", daemon=True)
        self.client = client
        self.label = label
        self.targets = targets
        self.stop = stop
        self.acked: dict[str, list[str]] = defaultdict(list)
        self.crashed: dict[str, list[str]] = defaultdict(list)
        self.errors: list[str] = []
        self.calls = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            session_id = self.targets[n % len(self.targets)]
            content = f"{self.label}-{n}"
            try:
                self.client.send_message(session_id, "user", content)
                self.acked[session_id].append(content)
            except SessionCrashedError:
                self.crashed[session_id].append(content)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not by the thread
                self.errors.append(f"{session_id} {content}: {exc!r}")
                return
            n += 1
            self.calls = n


def run_senders(senders: list[Sender]) -> None:
    for sender in senders:
        sender.start()
    wait_until(lambda: all(s.calls >= 3 or s.errors for s in senders), SHORT, "the senders to run")


def join_senders(senders: list[Sender], stop: threading.Event) -> None:
    stop.set()
    for sender in senders:
        sender.join(LONG)
        assert not sender.is_alive()


@contextmanager
def child_subreaper() -> Iterator[None]:
    """Orphans of our descendants become our children (not init's, which does not reap here), so
    a test can see them die and reap them itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# -- SIGKILL ------------------------------------------------------------------------------------
def test_sigkill_of_one_of_ten_sessions_restarts_it_from_its_store_while_the_others_keep_serving(daemon):
    with daemon.client() as c, daemon.client() as watcher:
        sessions = [c.create_session() for _ in range(10)]
        victim, others = sessions[0], sessions[1:]
        for n in range(3):
            c.send_message(victim, "user", f"kept-{n}")
        old_pid = c.get_session_pid(victim)
        watcher.subscribe_to_all_sessions()
        events = EventLog(watcher)
        stop = threading.Event()
        senders = [Sender(c, label, others, stop) for label in ("a", "b")]
        try:
            run_senders(senders)
            os.kill(old_pid, signal.SIGKILL)
            crashed = events.wait_type("session_crashed", victim)
            restarted = events.wait_type("session_restarted", victim)
            calls = [s.calls for s in senders]
            wait_until(lambda: all(s.calls >= n + 3 or s.errors for s, n in zip(senders, calls, strict=True)),
                       SHORT, "more calls after the restart")
        finally:
            join_senders(senders, stop)

        assert [s.errors for s in senders] == [[], []]
        assert [dict(s.crashed) for s in senders] == [{}, {}]
        new_pid = c.get_session_pid(victim)
        assert new_pid != old_pid
        assert subset(crashed.payload, {"session_id": 1, "reason": 1, "restarts": 1, "will_restart": 1}) == {
            "session_id": victim, "reason": "killed by SIGKILL", "restarts": 0, "will_restart": True}
        assert subset(restarted.payload, {"session_id": 1, "pid": 1, "restarts": 1}) == {
            "session_id": victim, "pid": new_pid, "restarts": 1}
        # the status stayed as it was: no session_status event for the victim, still active
        assert [e.type for e in events.of(victim)] == ["session_crashed", "session_restarted"]
        info = c.get_session_info(victim)
        assert (info.status, info.restarts, info.pid) == (SessionStatus.ACTIVE, 1, new_pid)
        assert contents(c, victim) == ["kept-0", "kept-1", "kept-2"]
        for other in others:
            acked = sorted(m for s in senders for m in s.acked[other])
            assert sorted(contents(c, other)) == acked
            assert c.get_session_info(other).restarts == 0
        wait_until(lambda: process_state(old_pid) is None, SHORT, "the killed process to be reaped")
    assert_no_zombies(daemon)


def test_session_with_persistence_disabled_restarts_empty(daemon):
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session(config={"persistence_enabled": False})
        c.send_message(session, "user", "forgotten")
        c.add_file(session, "/tmp/forgotten.py")
        events = watch(watcher, session)
        os.kill(c.get_session_pid(session), signal.SIGKILL)
        events.wait_type("session_crashed", session)
        events.wait_type("session_restarted", session)
        assert contents(c, session) == []
        assert c.get_active_files(session) == []
        info = c.get_session_info(session)
        assert (info.status, info.restarts, info.conversation_count) == (SessionStatus.ACTIVE, 1, 0)
    assert_no_zombies(daemon)


def test_five_sessions_killed_at_once_are_all_restarted_and_serve(daemon):
    with daemon.client() as c, daemon.client() as watcher:
        sessions = [c.create_session() for _ in range(6)]
        victims, bystander = sessions[:5], sessions[5]
        for session in victims:
            c.send_message(session, "user", f"before {session}")
        old_pids = [c.get_session_pid(s) for s in victims]
        watcher.subscribe_to_all_sessions()
        events = EventLog(watcher)
        for pid in old_pids:
            os.kill(pid, signal.SIGKILL)
        for session in victims:
            restarted = expect_first_crash_and_restart(events, session, "killed by SIGKILL")
            assert restarted.payload["restarts"] == 1
        for session in victims:
            assert c.get_session_pid(session) not in old_pids
            c.send_message(session, "user", "after")
            assert contents(c, session) == [f"before {session}", "after"]
            info = c.get_session_info(session)
            assert (info.status, info.restarts) == (SessionStatus.ACTIVE, 1)
        assert c.get_session_info(bystander).restarts == 0
        assert events.of(bystander) == []
        wait_until(lambda: all(process_state(p) is None for p in old_pids), SHORT, "the reaping")
    assert_no_zombies(daemon)


def test_sigsegv_is_reported_as_killed_by_sigsegv_and_the_session_restarts(daemon):
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        c.send_message(session, "user", "hello")
        events = watch(watcher, session)
        pid = c.get_session_pid(session)
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # no core file left behind
        os.kill(pid, signal.SIGSEGV)
        expect_first_crash_and_restart(events, session, "killed by SIGSEGV")
        assert contents(c, session) == ["hello"]
    assert_no_zombies(daemon)


def test_exit_code_is_reported_and_the_call_inside_the_process_raises_session_crashed(daemon):
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        c.send_message(session, "user", "hello")
        events = watch(watcher, session)
        with pytest.raises(SessionCrashedError) as raised:
            debug(c, "debug_exit", session, code=3)
        assert raised.value.code == "session_crashed"
        restarted = expect_first_crash_and_restart(events, session, "exit code 3")
        assert restarted.payload["pid"] == c.get_session_pid(session)
        assert contents(c, session) == ["hello"]
        assert c.get_session_info(session).restarts == 1
    assert_no_zombies(daemon)


# -- hangs ----------------------------------------------------------------------------------------
def test_stopped_session_is_killed_as_hung_and_restarted(daemon_factory):
    daemon = daemon_factory(hang_timeout=1)
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        c.send_message(session, "user", "hello")
        events = watch(watcher, session)
        old_pid = c.get_session_pid(session)
        os.kill(old_pid, signal.SIGSTOP)
        restarted = expect_first_crash_and_restart(events, session, "hung")
        assert restarted.payload["pid"] != old_pid
        wait_until(lambda: process_state(old_pid) is None, SHORT, "the stopped process to be gone")
        assert contents(c, session) == ["hello"]
        assert c.get_session_info(session).status is SessionStatus.ACTIVE
    assert_no_zombies(daemon)


def test_busy_session_is_killed_as_hung_after_its_stack_is_written_to_the_log(daemon_factory):
    daemon = daemon_factory(hang_timeout=1)
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        bystander = c.create_session()
        watcher.subscribe_to_all_sessions()
        events = EventLog(watcher)
        with pytest.raises(SessionCrashedError):
            debug(c, "debug_hang", session, seconds=60)
        expect_first_crash_and_restart(events, session, "hung")
        c.send_message(session, "user", "serving again")
        assert contents(c, session) == ["serving again"]
        assert events.of(bystander) == []
        log = daemon.log_text()
        crash_line = log.index(f"session {session} crashed: hung")
        dump = log[:crash_line]  # faulthandler wrote the stack before the process was killed
        assert re.search(r"^(Current thread|Thread) 0x[0-9a-f]+", dump, re.MULTILINE), log[-3000:]
        assert re.search(r'^  File ".*ops\.py", line \d+ in debug_hang$', dump, re.MULTILINE), log[-3000:]
    assert_no_zombies(daemon)


# -- the restart limit -------------------------------------------------------------------------
def test_session_past_the_restart_limit_is_terminated_and_the_others_carry_on(daemon_factory):
    daemon = daemon_factory(max_restarts=2, max_seconds=60)
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        other = c.create_session()
        events = watch(watcher, session)
        os.kill(c.get_session_pid(session), signal.SIGKILL)
        for _ in range(2):
            events.wait_type("session_crashed", session)
            restarted = events.wait_type("session_restarted", session)
            os.kill(restarted.payload["pid"], signal.SIGKILL)
        events.wait_type("session_terminated", session)

        seen = events.of(session)
        assert [e.seq for e in seen] == list(range(seen[0].seq, seen[0].seq + len(seen)))
        summary = []
        for e in seen:
            if e.type == "session_crashed":
                p = e.payload
                summary.append((e.type, p["reason"], p["restarts"], p["will_restart"]))
            elif e.type == "session_restarted":
                summary.append((e.type, e.payload["restarts"]))
            elif e.type == "session_status":
                summary.append((e.type, e.payload["previous_status"], e.payload["status"]))
            else:
                summary.append((e.type, e.payload["reason"]))
        assert summary == [
            ("session_crashed", "killed by SIGKILL", 0, True),
            ("session_restarted", 1),
            ("session_crashed", "killed by SIGKILL", 1, True),
            ("session_restarted", 2),
            ("session_crashed", "killed by SIGKILL", 2, False),
            ("session_status", "active", "terminating"),
            ("session_status", "terminating", "terminated"),
            ("session_terminated", "killed by SIGKILL"),
        ]
        with pytest.raises(SessionNotFoundError):
            c.get_session_info(session)
        with pytest.raises(SessionNotFoundError):
            c.send_message(session, "user", "too late")
        assert [info.session_id for info in c.list_sessions()] == [other]
        c.send_message(other, "user", "still here")
        assert contents(c, other) == ["still here"]
        fresh = c.create_session()
        c.send_message(fresh, "user", "new")
        assert contents(c, fresh) == ["new"]
    assert_no_zombies(daemon)


# -- memory --------------------------------------------------------------------------------------
def test_session_past_the_memory_limit_is_killed_and_restarted(daemon_factory):
    daemon = daemon_factory(memory_limit_mb=64)
    with daemon.client() as c, daemon.client() as watcher:
        session = c.create_session()
        c.send_message(session, "user", "hello")
        events = watch(watcher, session)
        old_pid = c.get_session_pid(session)
        try:
            debug(c, "debug_allocate", session, megabytes=100)
        except SessionCrashedError:
            pass  # killed while allocating: the call was inside the process
        expect_first_crash_and_restart(events, session, "memory limit")
        assert c.get_session_pid(session) != old_pid
        c.send_message(session, "user", "lean again")
        assert contents(c, session) == ["hello", "lean again"]
    assert_no_zombies(daemon)


# -- calls during a restart ----------------------------------------------------------------------
def test_call_right_after_a_sigkill_waits_for_the_new_process(daemon):
    with daemon.client() as c:
        session = c.create_session()
        pid = None
        for n in range(5):
            c.send_message(session, "user", f"m{n}")
            pid = kill_new_pid(c, session, pid)
            assert contents(c, session) == [f"m{i}" for i in range(n + 1)]
        assert c.get_session_info(session).restarts == 5
    assert_no_zombies(daemon)


# -- a kill storm --------------------------------------------------------------------------------
def test_acknowledged_messages_survive_fifty_random_sigkills_in_order_without_duplicates(daemon_factory):
    # A short max_seconds keeps the restart backoff (which grows with the restarts inside the
    # window, up to 2 s) near zero, so fifty kills fit in the time budget; max_restarts is never hit.
    daemon = daemon_factory(max_restarts=1000, max_seconds=0.2)
    rng = random.Random(20240601)
    with daemon.client(timeout=LONG) as c:
        sessions = [c.create_session(config={"max_history": 100_000}) for _ in range(3)]
        stop = threading.Event()
        senders = [Sender(c, label, sessions, stop) for label in ("a", "b")]
        killed: dict[str, int | None] = dict.fromkeys(sessions)
        try:
            run_senders(senders)
            for _ in range(50):
                target = sum(s.calls for s in senders) + rng.randint(1, 6)
                wait_until(lambda target=target: (sum(s.calls for s in senders) >= target
                                                  or any(s.errors for s in senders)),
                           SHORT, "the senders to make progress")
                session = rng.choice(sessions)
                killed[session] = kill_new_pid(c, session, killed[session])
        finally:
            join_senders(senders, stop)

        assert [s.errors for s in senders] == [[], []]
        for session in sessions:  # every last kill noticed and its session served again
            wait_until(lambda s=session: c.get_session_pid(s) != killed[s], SHORT, "the last restarts")
        histories = {session: contents(c, session) for session in sessions}
        assert sum(c.get_session_info(s).restarts for s in sessions) == 50
        for session, history in histories.items():
            assert len(history) == len(set(history)), "a message is stored twice"
            for sender in senders:
                mine = [m for m in history if m.startswith(f"{sender.label}-")]
                numbers = [int(m.split("-")[1]) for m in mine]
                assert numbers == sorted(numbers), f"{sender.label}'s messages out of order"
                assert set(sender.acked[session]) <= set(mine), "an acknowledged message is lost"
                assert set(mine) - set(sender.acked[session]) <= set(sender.crashed[session])
    assert_no_zombies(daemon)


# -- the daemon dies -----------------------------------------------------------------------------
def test_sigkill_of_the_daemon_ends_every_session_process_within_a_second(daemon):
    with daemon.client() as c:
        for _ in range(5):
            c.create_session()
    assert len(daemon.session_pids()) == 5
    pids = children_of(daemon.pid)  # the sessions, the template and the spares
    with child_subreaper():
        try:
            os.kill(daemon.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: not any(process_alive(p) for p in pids),
                       max(0.0, killed_at + 1.5 - time.monotonic()), "the daemon's children to exit")
        finally:
            for pid in pids:  # reparented to us: reap them (and end any survivor) ourselves
                if process_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
    daemon.proc.wait(SHORT)
    assert [process_state(p) for p in pids] == [None] * len(pids)  # nothing left, not even a zombie


# -- logging under kills -------------------------------------------------------------------------
RECORD_SIZE = 16 * 1024
RECORDS_PER_CALL = 64  # 1 MiB per debug_log call


def test_sessions_killed_while_logging_leave_the_log_parseable_and_the_others_logging(daemon):
    with daemon.client(timeout=LONG) as c:
        noisy = [c.create_session() for _ in range(20)]
        quiet = [c.create_session() for _ in range(3)]
        stop = threading.Event()
        in_call = [threading.Event() for _ in noisy]
        logged = [0] * len(noisy)
        errors: list[str] = []

        def shout(i: int) -> None:
            while not stop.is_set() or logged[i] == 0:
                in_call[i].set()
                try:
                    debug(c, "debug_log", noisy[i], marker=f"noise{i}", count=RECORDS_PER_CALL,
                          size=RECORD_SIZE)
                    logged[i] += 1
                except SessionCrashedError:
                    pass
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    errors.append(f"noise{i}: {exc!r}")
                    return

        threads = [threading.Thread(target=shout, args=(i,), daemon=True) for i in range(len(noisy))]
        for thread in threads:
            thread.start()
        try:
            pids: dict[str, int | None] = dict.fromkeys(noisy)
            for _ in range(2):
                for i, session in enumerate(noisy):
                    wait_until(in_call[i].is_set, SHORT, f"noise{i} to log")
                    in_call[i].clear()
                    pids[session] = kill_new_pid(c, session, pids[session])
        finally:
            stop.set()
            for thread in threads:
                thread.join(LONG)
        assert errors == []
        assert all(n >= 1 for n in logged)

        for session in quiet:
            marker = f"quiet-marker-{session}"
            debug(c, "debug_log", session, marker=marker, count=1, size=10)
            wait_until(lambda m=marker: f"jidocoder.session: {m} 0 xxxxxxxxxx" in daemon.log_text(), 2.0,
                       f"{marker} in daemon.log")
        assert all(c.get_session_info(s).restarts >= 2 for s in noisy)

    for path in sorted(Path(daemon.state_dir).glob("daemon.log*")):
        text = path.read_bytes().decode("utf-8")
        assert text.endswith("\n")
        for line in text[:-1].split("\n"):
            match = LOG_LINE.fullmatch(line)
            assert match, f"{path.name}: unparseable line {line[:200]!r}"
            if match["message"].startswith("noise"):  # a record arrives whole or not at all
                marker, number, payload = match["message"].split(" ")
                assert payload == "x" * RECORD_SIZE and int(number) < RECORDS_PER_CALL
    assert_no_zombies(daemon)


# -- errors inside a session ----------------------------------------------------------------------
def test_a_bug_in_a_handler_is_answered_and_the_process_keeps_serving(daemon):
    with daemon.client() as c:
        session = c.create_session()
        c.send_message(session, "user", "before")
        pid = c.get_session_pid(session)
        with pytest.raises(JidocoderError) as caught:
            debug(c, "debug_raise", session, message="boom")
        assert (type(caught.value), caught.value.code) == (JidocoderError, "internal_error")
        assert "RuntimeError: boom" in caught.value.message
        c.send_message(session, "user", "after")
        assert contents(c, session) == ["before", "after"]
        assert (c.get_session_pid(session), c.get_session_info(session).restarts) == (pid, 0)
    assert "RuntimeError: boom" in daemon.log_text()  # the traceback reached the log, for a person
    assert_no_zombies(daemon)
