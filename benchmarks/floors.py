"""The physical floors, each a small program with no jidocoder logic in it.

Run as ``python -m benchmarks.floors NAME '{json args}'``; prints one JSON object on stdout
(samples in seconds, memory in MB). Every floor runs in a process of its own, preloaded the way
a session's parent is (msgpack and pydantic imported, ``gc.freeze()`` before forking), so the
driver's threads and its jidocoder Client never colour a floor. Children get PR_SET_PDEATHSIG and
are reaped before the program ends.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable

import msgpack  # noqa: F401 -- the preload: a session's parent has these imported
import pydantic  # noqa: F401

from .common import PAUSE, close_other_fds, reap, rss_mb, set_parent_death_signal, uss_pss_mb

now = time.perf_counter


def grow(megabytes: int) -> bytearray:
    """Touched ballast, so that the parent's page tables really span that much memory."""
    ballast = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    return ballast


def fork_ready_once() -> float:
    """Fork a child that writes one byte on a pipe; the time until the parent reads it."""
    r, w = os.pipe()
    start = now()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"r")
        os._exit(0)
    os.read(r, 1)
    elapsed = now() - start
    os.close(r)
    os.close(w)
    reap(pid)
    return elapsed


def floor_fork_ready(count: int, ballast_mb: int = 0, paused: bool = False) -> dict:
    """Back to back, or (``paused``) each after ``PAUSE`` s idle."""
    ballast = grow(ballast_mb) if ballast_mb else None
    gc.freeze()
    samples = []
    for _ in range(count):
        if paused:
            time.sleep(PAUSE)
        samples.append(fork_ready_once())
    rss = rss_mb(os.getpid())
    del ballast
    return {"samples": samples, "rss": rss}


def floor_fork_burst(workers: int, repeats: int) -> dict:
    """Fork ``workers`` children at once; the time until every one has said ready."""
    gc.freeze()
    totals = []
    for _ in range(repeats):
        r, w = os.pipe()
        pids = []
        start = now()
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                os.write(w, b"r")
                os._exit(0)
            pids.append(pid)
        got = 0
        while got < workers:
            got += len(os.read(r, workers - got))
        totals.append(now() - start)
        os.close(r)
        os.close(w)
        for pid in pids:
            reap(pid)
    return {"samples": totals}


def start_template(serve: Callable[[socket.socket, int], None]) -> tuple[int, socket.socket, int]:
    """Fork a template while this process is small: it runs ``serve(its socket, ready pipe)``
    with SIGCHLD ignored (the kernel reaps its children). Returns (pid, our socket, ready pipe)."""
    gc.freeze()
    ready_r, ready_w = os.pipe()
    ours, theirs = socket.socketpair()
    template = os.fork()
    if template == 0:
        set_parent_death_signal()
        ours.close()
        os.close(ready_r)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        serve(theirs, ready_w)
        os._exit(0)
    theirs.close()
    os.close(ready_w)
    return template, ours, ready_r


def floor_template_fork(count: int, ballast_mb: int) -> dict:
    """A template forked while small serves spawns for a parent grown to ``ballast_mb``: the
    parent writes one byte to the template, whose child writes ready on a pipe the parent reads."""
    def serve(theirs: socket.socket, ready_w: int) -> None:
        while theirs.recv(1):
            if os.fork() == 0:
                os.write(ready_w, b"r")
                os._exit(0)

    template, ours, ready_r = start_template(serve)
    ballast = grow(ballast_mb)
    samples = []
    for _ in range(count):
        start = now()
        ours.send(b"f")
        os.read(ready_r, 1)
        samples.append(now() - start)
    rss = rss_mb(os.getpid())
    ours.close()
    reap(template)
    del ballast
    return {"samples": samples, "rss": rss}


def floor_spare_start(count: int, ballast_mb: int) -> dict:
    """The other way to start a worker for a parent grown to ``ballast_mb``: a template forked
    while small makes a spare ahead of need, holding one end of a socketpair the parent sent it;
    a start is one byte from the parent to the spare, which writes ready on a pipe the parent
    reads. Making the spare is not timed (it is done before it is needed)."""
    def serve(theirs: socket.socket, ready_w: int) -> None:
        while True:
            _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            if not fds:
                return
            if os.fork() == 0:  # the spare: says it is up, waits for its start, says ready
                theirs.close()
                go = socket.socket(fileno=fds[0])
                os.write(ready_w, b"u")
                if go.recv(1):
                    os.write(ready_w, b"r")
                os._exit(0)
            os.close(fds[0])

    template, ours, ready_r = start_template(serve)
    ballast = grow(ballast_mb)
    samples = []
    for _ in range(count):
        start_end, spare_end = socket.socketpair()
        socket.send_fds(ours, [b"s"], [spare_end.fileno()])
        spare_end.close()
        os.read(ready_r, 1)  # the spare is up
        start = now()
        start_end.send(b"s")
        os.read(ready_r, 1)
        samples.append(now() - start)
        start_end.close()
    rss = rss_mb(os.getpid())
    ours.close()
    reap(template)
    del ballast
    return {"samples": samples, "rss": rss}


def idle_child(sock: socket.socket | None = None) -> tuple[int, socket.socket]:
    """A forked worker that says ready on its socket, then blocks in recv until EOF or a signal."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        set_parent_death_signal()
        close_other_fds(theirs.fileno())
        theirs.send(b"r")
        theirs.recv(1)
        os._exit(0)
    theirs.close()
    ours.recv(1)
    return pid, ours


def floor_exit_reap(count: int) -> dict:
    """SIGTERM an idle worker until ``waitpid`` has its status."""
    gc.freeze()
    samples = []
    for _ in range(count):
        pid, sock = idle_child()
        start = now()
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        samples.append(now() - start)
        sock.close()
    return {"samples": samples}


def floor_crash_eof(count: int, paused: bool = False) -> dict:
    """SIGKILL an idle worker until its parent, waiting in a selector, reads EOF on its socket
    (``paused``: each kill after ``PAUSE`` s idle)."""
    import selectors
    gc.freeze()
    samples = []
    with selectors.DefaultSelector() as selector:
        for _ in range(count):
            pid, sock = idle_child()
            selector.register(sock, selectors.EVENT_READ)
            if paused:
                time.sleep(PAUSE)
            start = now()
            os.kill(pid, signal.SIGKILL)
            while not selector.select(1.0):
                pass
            assert sock.recv(1) == b""
            samples.append(now() - start)
            selector.unregister(sock)
            sock.close()
            reap(pid)
    return {"samples": samples}


def floor_idle_memory(count: int, settle: float = 0.3) -> dict:
    """USS and PSS of ``count`` idle workers forked from a gc-frozen preloaded parent."""
    gc.freeze()
    children = [idle_child() for _ in range(count)]
    time.sleep(settle)
    readings = [uss_pss_mb(pid) for pid, _ in children]
    parent = uss_pss_mb(os.getpid())
    for pid, sock in children:
        sock.close()
        reap(pid)
    return {"uss": [u for u, _ in readings], "pss": [p for _, p in readings],
            "parent_pss": parent[1]}


def floor_sqlite_commit(count: int, mode: str, directory: str) -> dict:
    """One INSERT + COMMIT in WAL mode at synchronous=NORMAL or FULL (the store's two modes)."""
    path = os.path.join(directory, f"floor-{mode}-{os.getpid()}.db")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={mode.upper()}")
        db.execute("CREATE TABLE m (seq INTEGER PRIMARY KEY, role TEXT, content TEXT, ts TEXT)")
        samples = []
        for i in range(count):
            start = now()
            db.execute("BEGIN")
            db.execute("INSERT INTO m (role, content, ts) VALUES (?, ?, ?)",
                       ("user", f"message {i}", "2025-01-01T00:00:00+00:00"))
            db.execute("COMMIT")
            samples.append(now() - start)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
    return {"samples": samples}


PRELOAD = "import msgpack, pydantic, sqlite3, selectors, socket"


def floor_interpreter(count: int) -> dict:
    """A fresh interpreter that imports the preload and writes one byte: start time and PSS."""
    import subprocess
    starts, pss = [], []
    code = PRELOAD + "; import sys; sys.stdout.write('r'); sys.stdout.flush(); sys.stdin.read(1)"
    for _ in range(count):
        start = now()
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        try:
            proc.stdout.read(1)
            starts.append(now() - start)
            time.sleep(0.1)
            pss.append(uss_pss_mb(proc.pid)[1])
        finally:
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()
    return {"samples": starts, "pss": pss}


FLOORS = {name[len("floor_"):]: fn for name, fn in dict(globals()).items() if name.startswith("floor_")}


def main() -> None:
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if name == "relay":
        from .relay import floor_relay as run
    else:
        run = FLOORS[name]
    result = run(**args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
