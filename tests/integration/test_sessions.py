"""Sessions through the real daemon and the real Client (docs/api.md §2): creation under concurrency,
listing, isolation, limits, termination, bad input, descriptors, and hung sessions."""

from __future__ import annotations

import os
import re
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from jidocoder import (InvalidArgumentError, LimitExceededError, SessionNotFoundError,
                       SessionStatus, wire)
from tests.support import (LONG, SHORT, children_of, contents, cpu_seconds, session_processes, fd_count, process_alive,
                           rss_kib, take_events, wait_until)

SESSION_ID = re.compile(r"session_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
UNKNOWN_ID = "session_00000000-0000-4000-8000-000000000000"
PROMPT = 1.0  # seconds within which a call that waits on no session's process must return


def run_together(calls):
    """Run every call in its own thread, released at once by a barrier; their results, in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(SHORT)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=SHORT * 2) for future in futures]


def session_calls(session_id):
    """Every Client call that names a session (unsubscribe_from_session aside), by name."""
    return {
        "get_session_info": lambda c: c.get_session_info(session_id),
        "get_session_pid": lambda c: c.get_session_pid(session_id),
        "send_message": lambda c: c.send_message(session_id, "user", "hi"),
        "get_conversation_history": lambda c: c.get_conversation_history(session_id),
        "clear_conversation": lambda c: c.clear_conversation(session_id),
        "add_file": lambda c: c.add_file(session_id, "/tmp/a.py"),
        "remove_file": lambda c: c.remove_file(session_id, "/tmp/a.py"),
        "get_active_files": lambda c: c.get_active_files(session_id),
        "update_file_index": lambda c: c.update_file_index(session_id, "/tmp/a.py", {"k": 1}),
        "get_file_index": lambda c: c.get_file_index(session_id),
        "build_context": lambda c: c.build_context(session_id),
        "cache_file": lambda c: c.cache_file(session_id, "/tmp/a.py", "x"),
        "get_file": lambda c: c.get_file(session_id, "/tmp/a.py"),
        "invalidate_file": lambda c: c.invalidate_file(session_id, "/tmp/a.py"),
        "clear_session_cache": lambda c: c.clear_session_cache(session_id),
        "subscribe_to_session": lambda c: c.subscribe_to_session(session_id),
        "terminate_session": lambda c: c.terminate_session(session_id),
    }


def failures_of(client, calls, expected_error, code=None):
    """Names of the calls that did not raise ``expected_error`` (with ``code``, if given)."""
    wrong = []
    for name, call in calls.items():
        try:
            call(client)
        except expected_error as exc:
            if code is not None and exc.code != code:
                wrong.append(f"{name}: code {exc.code}")
        except Exception as exc:  # noqa: BLE001 -- reported with its name below
            wrong.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"{name}: no error")
    return wrong


# -- creating and listing ----------------------------------------------------------------------

def test_ten_sessions_created_at_once_from_ten_clients_get_distinct_ids_and_own_metadata(daemon):
    clients = [daemon.client() for _ in range(10)]
    try:
        ids = run_together([lambda c=c, i=i: c.create_session(metadata={"n": i})
                            for i, c in enumerate(clients)])
    finally:
        for c in clients:
            c.close()
    assert len(set(ids)) == 10
    assert all(SESSION_ID.fullmatch(i) for i in ids), ids
    with daemon.client() as client:
        for n, session_id in enumerate(ids):
            info = client.get_session_info(session_id)
            assert info.metadata == {"n": n}
            assert info.status is SessionStatus.ACTIVE
        assert {info.session_id for info in client.list_sessions()} == set(ids)


def test_twenty_threads_creating_through_one_shared_client_all_succeed(client):
    ids = run_together([lambda i=i: client.create_session(metadata={"thread": i}) for i in range(20)])
    assert len(set(ids)) == 20
    assert all(SESSION_ID.fullmatch(i) for i in ids), ids
    assert [client.get_session_info(i).metadata for i in ids] == [{"thread": n} for n in range(20)]
    assert len(client.list_sessions()) == 20


def test_list_sessions_returns_active_sessions_oldest_first_with_live_pids(daemon, client):
    ids = [client.create_session(metadata={"n": n}) for n in range(3)]
    listed = client.list_sessions()
    assert [info.session_id for info in listed] == ids
    assert [info.metadata for info in listed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [info.created_at for info in listed] == sorted(info.created_at for info in listed)
    children = children_of(daemon.pid)
    for info in listed:
        assert info.status is SessionStatus.ACTIVE
        assert info.restarts == 0
        assert info.conversation_count == 0
        assert info.created_at.tzinfo is not None and info.updated_at.tzinfo is not None
        assert info.pid in children and process_alive(info.pid)
    assert len({info.pid for info in listed}) == 3


def test_get_session_info_and_pid_name_a_live_child_process_of_the_daemon(daemon, client):
    session_id = client.create_session(metadata={"project": "x"}, llm_config={"model": "m"},
                                       config={"max_history": 7})
    info = client.get_session_info(session_id)
    pid = client.get_session_pid(session_id)
    assert info.session_id == session_id
    assert info.status is SessionStatus.ACTIVE
    assert info.metadata == {"project": "x"}
    assert info.llm_config == {"model": "m"}
    assert info.config.max_history == 7
    assert info.pid == pid
    assert info.restarts == 0
    assert info.error is None
    assert pid in children_of(daemon.pid)
    assert process_alive(pid)
    assert client._call("debug_pid", {"session_id": session_id}) == pid


# -- isolation and limits -----------------------------------------------------------------------

def test_two_sessions_share_no_history_files_index_or_cache(client, tmp_path):
    a = client.create_session()
    b = client.create_session()
    path = str(tmp_path / "a.py")
    client.send_message(a, "user", "only in a")
    client.add_file(a, path)
    client.update_file_index(a, path, {"lang": "python"})
    client.cache_file(a, path, "print('a')")

    assert client.get_conversation_history(b) == []
    assert client.get_active_files(b) == []
    assert client.get_file_index(b) == {}
    assert client.get_file(b, path) is None
    assert client.get_session_info(b).conversation_count == 0

    client.cache_file(b, path, "print('b')")
    client.send_message(b, "user", "only in b")
    assert client.get_file(a, path).content == "print('a')"
    assert client.get_file(b, path).content == "print('b')"
    assert contents(client, a) == ["only in a"]
    assert contents(client, b) == ["only in b"]
    assert [f.path for f in client.get_active_files(a)] == [path]
    assert list(client.get_file_index(a)) == [path]


def test_max_history_keeps_the_newest_messages_in_order(client):
    session_id = client.create_session(config={"max_history": 5})
    for n in range(1, 11):
        client.send_message(session_id, "user" if n % 2 else "assistant", f"message {n}")
    history = client.get_conversation_history(session_id)
    assert [m.content for m in history] == [f"message {n}" for n in range(6, 11)]
    assert [m.role for m in history] == ["assistant", "user", "assistant", "user", "assistant"]
    assert all(m.timestamp.tzinfo is not None for m in history)
    assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)
    assert client.get_session_info(session_id).conversation_count == 5


def test_max_files_drops_the_oldest_file_with_its_index_entry_and_says_so(client):
    session_id = client.create_session(config={"max_files": 2})
    client.subscribe_to_session(session_id)
    for path in ("/p/a.py", "/p/b.py"):
        client.add_file(session_id, path)
        client.update_file_index(session_id, path, {"size": 1})
    take_events(client, 4)
    client.add_file(session_id, "/p/c.py")
    assert [f.path for f in client.get_active_files(session_id)] == ["/p/b.py", "/p/c.py"]
    assert list(client.get_file_index(session_id)) == ["/p/b.py"]
    events = take_events(client, 2)
    assert [(e.type, e.payload) for e in events] == [
        ("file_added", {"session_id": session_id, "file_path": "/p/c.py"}),
        ("file_removed", {"session_id": session_id, "file_path": "/p/a.py"}),
    ]


def test_build_context_returns_the_last_max_messages_and_refuses_unknown_parts(client):
    session_id = client.create_session()
    for n in range(1, 11):
        client.send_message(session_id, "user", f"message {n}")
    client.add_file(session_id, "/p/a.py")
    context = client.build_context(session_id, include=("conversation",), max_messages=3)
    assert set(context) == {"session_id", "metadata", "conversation"}
    assert context["session_id"] == session_id
    assert [m.content for m in context["conversation"]] == ["message 8", "message 9", "message 10"]
    assert context["metadata"]["conversation_count"] == 10
    assert context["metadata"]["active_file_count"] == 1
    assert context["metadata"]["timestamp"].tzinfo is not None
    with pytest.raises(InvalidArgumentError):
        client.build_context(session_id, include=("conversation", "weather"))


BAD_ROLES = ["", "User", "moderator", " user", "user "]


def test_send_message_with_a_bad_role_is_refused_and_stores_nothing(client):
    session_id = client.create_session()
    codes = {}
    for role in BAD_ROLES:
        with pytest.raises(InvalidArgumentError) as raised:
            client.send_message(session_id, role, "hello")
        codes[role] = (raised.value.code, raised.value.field)
    assert codes == {role: ("invalid_role", "role") for role in BAD_ROLES}
    assert client.get_conversation_history(session_id) == []
    assert client.get_session_info(session_id).conversation_count == 0


def test_every_role_of_the_contract_is_accepted(client):
    session_id = client.create_session()
    for role in ("user", "assistant", "system", "tool"):
        client.send_message(session_id, role, f"as {role}")
    assert [m.role for m in client.get_conversation_history(session_id)] == [
        "user", "assistant", "system", "tool"]


# -- unknown and terminated sessions -------------------------------------------------------------

def test_every_call_on_an_unknown_session_raises_session_not_found(client):
    client.create_session()  # a session exists, just not these
    for session_id in (UNKNOWN_ID, "nonexistent", ""):
        assert failures_of(client, session_calls(session_id), SessionNotFoundError, "not_found") == []


def test_every_call_with_a_non_string_session_id_raises_invalid_argument(client):
    for session_id in (42, None, b"session_x", ["session_x"]):
        assert failures_of(client, session_calls(session_id), InvalidArgumentError,
                           "invalid_session_id") == [], session_id


def test_unsubscribe_from_an_unknown_session_is_a_no_op(client):
    assert client.unsubscribe_from_session(UNKNOWN_ID) is None
    assert client.unsubscribe_from_session("nonexistent") is None
    assert client.list_sessions() == []


def test_terminate_returns_once_the_process_is_gone_and_the_session_is_unknown_after(daemon, client):
    session_id = client.create_session()
    other = client.create_session()
    pid = client.get_session_pid(session_id)
    assert client.terminate_session(session_id) is None
    assert not process_alive(pid)
    assert pid not in children_of(daemon.pid)  # reaped, not a zombie
    assert [info.session_id for info in client.list_sessions()] == [other]
    assert failures_of(client, session_calls(session_id), SessionNotFoundError, "not_found") == []
    with pytest.raises(SessionNotFoundError):
        client.terminate_session(session_id)
    assert client.unsubscribe_from_session(session_id) is None
    assert process_alive(client.get_session_pid(other))


def test_ten_concurrent_terminates_all_succeed(daemon, client):
    ids = [client.create_session() for _ in range(10)]
    pids = [client.get_session_pid(i) for i in ids]
    assert run_together([lambda i=i: client.terminate_session(i) for i in ids]) == [None] * 10
    assert client.list_sessions() == []
    assert [pid for pid in pids if process_alive(pid)] == []
    assert session_processes(daemon.pid) == []


def test_six_concurrent_messages_to_three_sessions_leave_exactly_two_each(client):
    ids = [client.create_session() for _ in range(3)]
    run_together([lambda n=n: client.send_message(ids[n % 3], "user", f"message {n}")
                  for n in range(6)])
    for k, session_id in enumerate(ids):
        assert sorted(contents(client, session_id)) == [f"message {k}", f"message {k + 3}"]
        assert client.get_session_info(session_id).conversation_count == 2


def test_concurrent_creates_sends_and_terminates_do_not_disturb_one_another(daemon, client):
    doomed = [client.create_session() for _ in range(4)]
    doomed_pids = [client.get_session_pid(i) for i in doomed]
    kept = [client.create_session() for _ in range(2)]
    creates = [lambda n=n: client.create_session(metadata={"new": n}) for n in range(4)]
    sends = [lambda n=n: client.send_message(kept[n % 2], "user", f"message {n}") for n in range(4)]
    terminates = [lambda i=i: client.terminate_session(i) for i in doomed]
    results = run_together(creates + sends + terminates)
    created = results[:4]
    assert results[4:] == [None] * 8
    assert all(SESSION_ID.fullmatch(i) for i in created)
    listed = [info.session_id for info in client.list_sessions()]
    assert listed[:2] == kept  # oldest first; the four created at once in any order after them
    assert sorted(listed[2:]) == sorted(created)
    assert [client.get_session_info(i).metadata for i in created] == [{"new": n} for n in range(4)]
    assert sorted(contents(client, kept[0])) == ["message 0", "message 2"]
    assert sorted(contents(client, kept[1])) == ["message 1", "message 3"]
    assert [pid for pid in doomed_pids if process_alive(pid)] == []
    for session_id in doomed:
        with pytest.raises(SessionNotFoundError):
            client.get_session_info(session_id)


# -- the file cache -----------------------------------------------------------------------------

def test_cached_str_and_bytes_come_back_identical_with_byte_size_and_mtime(client, tmp_path):
    session_id = client.create_session()
    real = tmp_path / "real.txt"
    real.write_text("on disk")
    text = "héllo wörld ✓\n"
    data = bytes(range(256))
    missing = str(tmp_path / "missing.bin")
    client.cache_file(session_id, str(real), text, {"encoding": "utf-8"})
    client.cache_file(session_id, missing, data)

    got_text = client.get_file(session_id, str(real))
    assert type(got_text.content) is str and got_text.content == text
    assert got_text.size == len(text.encode("utf-8"))
    assert got_text.mtime == os.stat(real).st_mtime
    assert got_text.metadata == {"encoding": "utf-8"}
    assert got_text.path == str(real)

    got_data = client.get_file(session_id, missing)
    assert type(got_data.content) is bytes and got_data.content == data
    assert got_data.size == 256
    assert got_data.mtime is None
    assert got_data.metadata == {}

    client.invalidate_file(session_id, missing)
    assert client.get_file(session_id, missing) is None
    client.clear_session_cache(session_id)
    assert client.get_file(session_id, str(real)) is None


# -- limits and bad input ------------------------------------------------------------------------

def test_a_request_over_max_request_bytes_is_refused_and_the_client_stays_usable(daemon_factory):
    daemon = daemon_factory(max_request_bytes=65536)
    with daemon.client() as client:
        assert client.max_request_bytes == 65536
        session_id = client.create_session()
        with pytest.raises(LimitExceededError) as raised:
            client.send_message(session_id, "user", "x" * 100_000)
        assert raised.value.code == "limit_exceeded"
        assert client.get_conversation_history(session_id) == []
        client.send_message(session_id, "user", "small")
        assert contents(client, session_id) == ["small"]


BAD_REQUESTS = [
    # (op, args, expected code); "<sid>" is replaced by a live session's id
    ("send_message", {"session_id": "<sid>", "role": 5, "content": "x"}, "invalid_role"),
    ("send_message", {"session_id": "<sid>", "role": "user", "content": 5}, None),
    ("send_message", {"session_id": "<sid>", "role": "user", "content": b"x"}, None),
    ("send_message", {"session_id": "<sid>"}, None),
    ("send_message", {"session_id": "<sid>", "role": "user", "content": "x", "extra": 1}, None),
    ("add_file", {"session_id": "<sid>", "path": 123}, None),
    ("add_file", {"session_id": "<sid>", "path": ""}, "empty_field"),
    ("update_file_index", {"session_id": "<sid>", "path": "/a", "metadata": [1]}, None),
    ("build_context", {"session_id": "<sid>", "include": "files"}, None),
    ("build_context", {"session_id": "<sid>", "max_messages": -1}, None),
    ("build_context", {"session_id": "<sid>", "max_messages": "3"}, None),
    ("cache_file", {"session_id": "<sid>", "path": "/x", "content": 12}, None),
    ("cache_file", {"session_id": "<sid>", "path": "/x", "content": "x", "metadata": "m"}, None),
    ("get_file", {"session_id": "<sid>", "path": None}, None),
    ("create_session", {"metadata": "not a dict"}, None),
    ("create_session", {"config": "not a dict"}, None),
    ("create_session", {"config": {"max_history": -1}}, None),
    ("create_session", {"bogus": 1}, None),
    ("list_sessions", {"extra": 1}, None),
    ("get_session_info", {"session_id": ["x"]}, "invalid_session_id"),
    ("get_session_info", {}, "invalid_session_id"),
    ("no_such_op", {}, None),
    ("", {}, None),
    ("_call", {}, None),
    ("__init__", {}, None),
]


def test_bad_input_gets_invalid_argument_and_never_disturbs_the_daemon(daemon, client):
    session_id = client.create_session()
    session_pid = client.get_session_pid(session_id)
    wrong = []
    for op, args, code in BAD_REQUESTS:
        args = {k: session_id if v == "<sid>" else v for k, v in args.items()}
        try:
            client._call(op, args)
        except InvalidArgumentError as exc:
            if code is not None and exc.code != code or exc.code in ("", "internal_error"):
                wrong.append(f"{op} {args}: code {exc.code!r}")
        except Exception as exc:  # noqa: BLE001 -- reported below
            wrong.append(f"{op} {args}: {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"{op} {args}: no error")
    assert wrong == []
    assert daemon.proc.poll() is None
    assert client.daemon_status()["pid"] == daemon.pid
    assert client.get_session_pid(session_id) == session_pid
    assert client.get_session_info(session_id).restarts == 0
    assert [info.session_id for info in client.list_sessions()] == [session_id]
    client.send_message(session_id, "user", "still here")
    assert contents(client, session_id) == ["still here"]


def test_a_connection_sending_garbage_is_dropped_and_the_daemon_serves_on(daemon, client):
    session_id = client.create_session()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(SHORT)
        raw.connect(daemon.socket)
        raw.sendall(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        received = b""
        while chunk := raw.recv(65536):  # the daemon closes the connection: EOF ends this
            received += chunk
    assert daemon.proc.poll() is None
    client.send_message(session_id, "user", "after garbage")
    assert contents(client, session_id) == ["after garbage"]
    with daemon.client() as fresh:
        assert [info.session_id for info in fresh.list_sessions()] == [session_id]


def test_two_hundred_create_terminate_cycles_leak_no_daemon_descriptor(daemon, client):
    # Half the sessions persisted (registry row, session database), half in memory only.
    configs = [None, {"persistence_enabled": False}]
    for config in configs:  # warm-up: whatever the daemon opens once and keeps
        client.terminate_session(client.create_session(config=config))
    before = fd_count(daemon.pid)
    for n in range(200):
        client.terminate_session(client.create_session(config=configs[n % 2]))
    assert fd_count(daemon.pid) == before
    assert client.list_sessions() == []
    assert session_processes(daemon.pid) == []


def test_max_sessions_refuses_one_more_until_a_session_is_terminated(daemon_factory):
    daemon = daemon_factory(max_sessions=3)
    with daemon.client() as client:
        ids = [client.create_session() for _ in range(3)]
        with pytest.raises(LimitExceededError) as raised:
            client.create_session()
        assert raised.value.code == "limit_exceeded"
        assert [info.session_id for info in client.list_sessions()] == ids
        assert len(session_processes(daemon.pid)) == 3
        client.terminate_session(ids[0])
        fourth = client.create_session()
        assert [info.session_id for info in client.list_sessions()] == ids[1:] + [fourth]


def test_a_hung_session_blocks_no_call_about_other_sessions(daemon_factory):
    daemon = daemon_factory(hang_timeout=60)
    with daemon.client() as first, daemon.client() as second:
        hung = first.create_session()
        other = first.create_session()
        hung_pid = first.get_session_pid(hung)
        outcome = {}

        def hang():
            outcome["result"] = first._call("debug_hang", {"session_id": hung, "seconds": 5})

        idle_cpu = cpu_seconds(hung_pid)
        thread = threading.Thread(target=hang)
        thread.start()
        try:
            wait_until(lambda: cpu_seconds(hung_pid) - idle_cpu >= 0.2, SHORT, "the session to spin")
            timings = {}
            for name, call in {
                "list_sessions": second.list_sessions,
                "get_session_info(hung)": lambda: second.get_session_info(hung),
                "get_session_info(other)": lambda: second.get_session_info(other),
                "get_session_pid(other)": lambda: second.get_session_pid(other),
                "create_session": second.create_session,
                "send_message(other)": lambda: second.send_message(other, "user", "hi"),
                "get_conversation_history(other)": lambda: second.get_conversation_history(other),
            }.items():
                started = time.monotonic()
                call()
                timings[name] = time.monotonic() - started
            assert thread.is_alive(), "the hang ended before the calls were made"
            assert {name: t for name, t in timings.items() if t > PROMPT} == {}
            assert len(second.list_sessions()) == 3
            assert contents(second, other) == ["hi"]
        finally:
            thread.join(SHORT * 2)
        assert not thread.is_alive()
        assert outcome == {"result": None}
        assert first.get_session_info(hung).restarts == 0
        assert first.get_session_pid(hung) == hung_pid



def test_running_out_of_descriptors_pauses_accepting_without_spinning_and_recovers(daemon):
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (fd_count(daemon.pid) + 4, hard))
    pending = []
    try:
        for _ in range(8):  # the kernel queues them all; the daemon can accept only a few
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(daemon.socket)
            pending.append(sock)
        wait_until(lambda: "not accepting" in daemon.log_text(), SHORT, "the daemon to pause accepting")
        assert cpu_used_over(daemon.pid, 0.5) < 0.25  # paused, not spinning on a readable listener
    finally:
        for sock in pending:
            sock.close()
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
    with wait_until(lambda: try_client(daemon), LONG, "a new connection to be served") as client:
        assert client.list_sessions() == []


def cpu_used_over(pid: int, seconds: float) -> float:
    """CPU seconds ``pid`` uses during a window of ``seconds`` (a measurement, not a wait)."""
    before, end = cpu_seconds(pid), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return cpu_seconds(pid) - before


def try_client(daemon):
    try:
        return daemon.client(timeout=SHORT)
    except Exception:  # noqa: BLE001 - any failure to connect is the None the caller checks
        return None


def test_a_client_that_sends_but_does_not_read_is_throttled_and_gets_every_reply(daemon_factory):
    daemon = daemon_factory(client_buffer_bytes=1024 * 1024)
    count, entry = 1500, {"blob": "x" * 100_000}  # each reply ~100 KB: 150 MB if nothing held back
    with daemon.client() as c, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        session = c.create_session(config={"persistence_enabled": False})
        c.update_file_index(session, "/big", entry)
        raw.connect(daemon.socket)
        rss_before = rss_kib(daemon.pid)
        frames = b"".join(wire.pack_frame({"id": i, "op": "get_file_index", "args": {"session_id": session}},
                                          1 << 20) for i in range(1, count + 1))
        sender = threading.Thread(target=raw.sendall, args=(frames,))
        sender.start()
        sender.join(3.0)  # all of it fits in the kernel's buffer: the daemon decides what it reads
        # Another client's call to the same session is served in order behind what the daemon
        # took from the raw client: once it returns, whatever the daemon holds is in memory.
        assert c.get_file_index(session)["/big"]["blob"] == entry["blob"]
        assert rss_kib(daemon.pid) - rss_before < 40 * 1024
        ids = [wire.read_frame(raw, 1 << 24)["id"] for _ in range(count)]
        sender.join(SHORT)
        assert ids == list(range(1, count + 1))


def test_a_request_that_is_msgpack_nil_is_answered_and_the_connection_goes_on(daemon):
    """Found by the soak's fuzz: a nil request once stopped its connection's dispatch for good."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(SHORT)
        raw.connect(daemon.socket)
        raw.sendall(b"\x00\x00\x00\x01\xc0")
        wire.write_frame(raw, {"id": 7, "op": "hello", "args": {}}, 1 << 20)
        refused = wire.read_frame(raw, 1 << 20)
        assert refused["id"] is None and refused["error"]["code"] == "invalid_request"
        hello = wire.read_frame(raw, 1 << 20)
        assert hello["id"] == 7 and hello["result"]["pid"] == daemon.pid


def test_session_args_the_daemon_forwarded_but_that_cannot_be_decoded_are_answered(daemon, client):
    # The daemon never looks inside a session call's args: the session finds the bad str, answers
    # invalid_request, and both go on (the session process is the same one).
    from jidocoder import wire
    session_id = client.create_session()
    pid = client.get_session_pid(session_id)
    args = (b"\x83\xaasession_id" + wire.encode(session_id) + b"\xa4role\xa4user"
            + b"\xa7content\xa2\xff\xfe")  # not UTF-8
    body = b"\x83\xa2id\x05\xa2op\xacsend_message\xa4args" + args
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(SHORT)
        raw.connect(daemon.socket)
        raw.sendall(len(body).to_bytes(4, "big") + body)
        reply = wire.read_frame(raw, wire.MAX_FRAME)
    assert reply["id"] == 5 and reply["error"]["code"] == "invalid_request"
    assert reply["error"]["field"] == "args"
    client.send_message(session_id, "user", "after")
    assert contents(client, session_id) == ["after"]
    assert client.get_session_pid(session_id) == pid
