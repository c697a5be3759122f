"""The store under real faults, injected from outside the code: a full disk (strace making a
live process's pwrite64 fail with ENOSPC), a file size limit (RLIMIT_FSIZE), another process
holding a session's lock. Each test ends by reading back exactly what was acknowledged."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jidocoder.daemon import store as store_module
from jidocoder.daemon.store import Registry, SessionStore
from jidocoder.errors import StoreBusyError
from tests.support import SHORT

from .test_store import SID, message

# A process that holds one store and obeys one JSON command per line on stdin, answering each
# with one line: {"ok": result} or {"error": code}. It runs the real store in its own process,
# so that faults can be injected into it from outside.
HELPER = textwrap.dedent("""
    import json, resource, signal, sys
    from datetime import datetime, timedelta, timezone
    from jidocoder.daemon.store import Registry, SessionStore
    from jidocoder.errors import JidocoderError
    from jidocoder.models import ActiveFile, Message, SessionState

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: EFBIG, not death
    T0 = datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=timezone.utc)
    kind, state_dir, sid = sys.argv[1:4]
    try:
        db = (Registry(state_dir) if kind == "registry" else SessionStore(state_dir, sid))
    except JidocoderError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}), flush=True)
        sys.exit(0)

    def message(n, size):
        return Message(role="user", content=f"message {n}".ljust(size, "."),
                       timestamp=T0 + timedelta(microseconds=n))

    def run(op, *args):
        if op == "append":
            db.append_message(message(args[0], args[1]), keep=10_000)
        elif op == "group":  # one message and one file, in one write group
            db.begin_group()
            try:
                db.append_message(message(args[0], 0), keep=10_000)
                db.add_file(ActiveFile(path=f"/f{args[0]}", added_at=T0))
            finally:
                db.end_group()
        elif op == "put":
            db.put(SessionState.new(args[0]).update(metadata={"n": args[1]}))
        elif op == "fsize":
            resource.setrlimit(resource.RLIMIT_FSIZE, (args[0], resource.RLIM_INFINITY))

    print(json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        try:
            run(*json.loads(line))
            reply = {"ok": None}
        except JidocoderError as exc:
            reply = {"error": exc.code, "message": exc.message}
        print(json.dumps(reply), flush=True)
    db.close()
""")


@pytest.fixture
def helper_for(tmp_path):
    """Start helpers (``helper_for(kind)``); any still running at the end is killed."""
    started: list[Helper] = []

    def start(kind: str, wrap: tuple[str, ...] = ()) -> Helper:
        started.append(Helper(kind, tmp_path, wrap))
        return started[-1]

    yield start
    for helper in started:
        helper.kill()


class Helper:
    """The helper process: ``call`` sends one command and returns its reply."""

    def __init__(self, kind: str, state_dir: Path, wrap: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [*wrap, sys.executable, "-c", HELPER, kind, str(state_dir), SID],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).parents[2])
        self.opened = self.reply()

    def call(self, *command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def reply(self) -> dict:
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(SHORT) == 0
        self.process.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(SHORT)
        for pipe in (self.process.stdin, self.process.stdout):
            if not pipe.closed:
                pipe.close()


class FullDisk:
    """While open, every pwrite64 of the process fails with ENOSPC (strace -e inject): SQLite
    sees exactly what a full disk does. Closing it ends strace, and with it the fault."""

    def __init__(self, pid: int) -> None:
        self.strace = subprocess.Popen(
            ["strace", "-f", "-o", "/dev/null", "-p", str(pid), "-e", "trace=pwrite64",
             "-e", "inject=pwrite64:error=ENOSPC"], stderr=subprocess.PIPE, text=True)
        line = self.strace.stderr.readline()  # "strace: Process N attached": injecting now
        assert "attached" in line, line

    def close(self) -> None:
        self.strace.terminate()
        self.strace.wait(SHORT)
        self.strace.stderr.close()


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


@needs_strace
def test_a_full_disk_is_a_storage_error_and_the_same_store_writes_once_it_is_gone(tmp_path, helper_for):
    helper = helper_for("session")
    assert helper.opened == {"ok": "ready"}
    assert helper.call("append", 1, 0) == {"ok": None}
    disk = FullDisk(helper.process.pid)
    try:
        failed = helper.call("append", 2, 0)
        failed_group = helper.call("group", 3)
    finally:
        disk.close()
    assert failed["error"] == failed_group["error"] == "storage_unavailable"
    assert "database or disk is full" in failed["message"] and SID in failed["message"]
    assert helper.call("append", 4, 0) == {"ok": None}
    assert helper.call("group", 5) == {"ok": None}
    helper.close()
    with SessionStore(tmp_path, SID) as db:
        messages, files, _ = db.load()
    assert messages == [message(1), message(4), message(5)]
    assert [f.path for f in files] == ["/f5"]


@needs_strace
def test_a_registry_put_on_a_full_disk_is_a_storage_error_and_leaves_the_row_as_it_was(tmp_path, helper_for):
    helper = helper_for("registry")
    assert helper.call("put", SID, 1) == {"ok": None}
    disk = FullDisk(helper.process.pid)
    try:
        assert helper.call("put", SID, 2)["error"] == "storage_unavailable"
    finally:
        disk.close()
    with Registry(tmp_path) as registry:  # the helper still holds its connection: read beside it
        assert [s.metadata for s in registry.load_all()[0]] == [{"n": 1}]
    assert helper.call("put", SID, 3) == {"ok": None}
    helper.close()
    with Registry(tmp_path) as registry:
        assert [s.metadata for s in registry.load_all()[0]] == [{"n": 3}]


def test_a_file_size_limit_is_a_storage_error_and_nothing_of_the_write_stays(tmp_path, helper_for):
    helper = helper_for("session")
    assert helper.call("append", 0, 0) == {"ok": None}
    wal = tmp_path / "sessions" / f"{SID}.db-wal"
    assert helper.call("fsize", wal.stat().st_size + 4096) == {"ok": None}
    acknowledged = [0]
    for n in range(1, 100):  # 2 KB each: the WAL passes the limit within a few
        reply = helper.call("append", n, 2000)
        if "error" in reply:
            break
        acknowledged.append(n)
    assert reply["error"] == "storage_unavailable", reply
    assert helper.call("fsize", resource.RLIM_INFINITY) == {"ok": None}
    assert helper.call("append", 1000, 2000) == {"ok": None}
    helper.close()
    with SessionStore(tmp_path, SID) as db:
        contents = [m.content for m in db.load()[0]]
    assert contents == ["message 0"] + [
        f"message {n}".ljust(2000, ".") for n in (*acknowledged[1:], 1000)]


def test_a_session_store_held_by_another_process_is_busy_not_damaged(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.05)
    helper = Helper("session", tmp_path)
    assert helper.call("append", 1, 0) == {"ok": None}
    with pytest.raises(StoreBusyError) as caught:
        SessionStore(tmp_path, SID)
    assert caught.value.code == "store_busy" and SID in caught.value.message
    helper.close()
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1)]


def read_only(directory: Path) -> tuple[str, ...]:
    """A command prefix: run in a mount namespace of its own where ``directory`` is read-only
    (a read-only bind mount; nothing changes outside that process)."""
    d = str(directory)
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}" "{d}" && exec "$0" "$@"')


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_read_only_state_dir_is_a_storage_error_on_open_and_changes_nothing(tmp_path,
                                                                                helper_for):
    with SessionStore(tmp_path, SID) as db:
        db.append_message(message(1), keep=10)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for kind in ("session", "registry"):
        helper = helper_for(kind, read_only(tmp_path))
        if helper.opened == {"ok": "ready"}:  # sqlite opened it: the first write must fail
            helper.opened = helper.call("append", 2, 0)
        assert helper.opened["error"] == "storage_unavailable", helper.opened
        assert str(tmp_path) in helper.opened["message"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    with SessionStore(tmp_path, SID) as db:
        assert db.load()[0] == [message(1)]
