"""The relay floor: client → relay process → worker process → back, with no logic on the way.

The relay is what the daemon would be if it did nothing but forward: one selector loop, a Unix
stream socket for clients, one socketpair per worker, and jidocoder's framing (``pack_frame`` /
``FrameDecoder``, used for the framing only) on every hop. Connection *n* is paired with worker
*n mod K*. A second listening socket echoes frames itself: the one-hop round trip.
"""

from __future__ import annotations

import gc
import os
import selectors
import socket
import tempfile
import threading
import time

from jidocoder.wire import FrameDecoder, pack_frame, read_frame

from .common import PAUSE, close_other_fds, reap, set_parent_death_signal

MAX = 1 << 24
READ = 64 * 1024
now = time.perf_counter
REQUEST = {"id": 0, "op": "send_message",
           "args": {"session_id": "session_00000000-0000-4000-8000-000000000000",
                    "role": "user", "content": "hello from the benchmark"}}


def worker(sock: socket.socket) -> None:
    decoder = FrameDecoder(MAX)
    while data := sock.recv(READ):
        for frame in decoder.feed(data):
            sock.sendall(pack_frame(frame, MAX))
    os._exit(0)


def spawn_worker() -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        set_parent_death_signal()
        close_other_fds(theirs.fileno())
        worker(theirs)
    theirs.close()
    return pid, ours


class Relay:
    def __init__(self, directory: str, workers: int, control: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.workers = [spawn_worker() for _ in range(workers)]
        self.peer: dict[socket.socket, socket.socket] = {}
        self.decoders: dict[socket.socket, FrameDecoder] = {}
        self.accepted = 0
        for name, echo in (("relay.sock", False), ("echo.sock", True)):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(os.path.join(directory, name))
            listener.listen(512)
            self.sel.register(listener, selectors.EVENT_READ, ("accept", echo))
        for _, sock in self.workers:
            self.decoders[sock] = FrameDecoder(MAX)
            self.sel.register(sock, selectors.EVENT_READ, ("forward", None))
        self.sel.register(control, selectors.EVENT_READ, ("stop", None))

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select():
                kind, extra = key.data
                if kind == "stop":
                    return
                if kind == "accept":
                    self.accept(key.fileobj, extra)
                else:
                    self.forward(key.fileobj)

    def accept(self, listener: socket.socket, echo: bool) -> None:
        conn, _ = listener.accept()
        self.decoders[conn] = FrameDecoder(MAX)
        if echo:
            self.peer[conn] = conn
        else:
            _, wsock = self.workers[self.accepted % len(self.workers)]
            self.accepted += 1
            self.peer[conn] = wsock
            self.peer[wsock] = conn
        self.sel.register(conn, selectors.EVENT_READ, ("forward", None))

    def forward(self, sock: socket.socket) -> None:
        data = sock.recv(READ)
        if not data:
            self.sel.unregister(sock)
            if self.peer.get(sock) is not sock:
                self.peer.pop(sock, None)
            sock.close()
            return
        target = self.peer.get(sock)
        for frame in self.decoders[sock].feed(data):
            if target is not None:
                target.sendall(pack_frame(frame, MAX))

    def stop(self) -> None:
        for _, sock in self.workers:
            sock.close()
        for pid, _ in self.workers:
            reap(pid)


def start_relay(directory: str, workers: int) -> tuple[int, int]:
    """Fork the relay (which forks its workers); returns its pid and the control fd to close."""
    control_r, control_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        set_parent_death_signal()
        os.close(control_w)
        relay = Relay(directory, workers, control_r)
        ready = os.path.join(directory, "ready")
        open(ready, "w").close()
        try:
            relay.run()
        finally:
            relay.stop()
            os._exit(0)
    os.close(control_r)
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(directory, "ready")):
        if time.monotonic() > deadline:
            raise RuntimeError("relay did not start")
        time.sleep(0.001)
    return pid, control_w


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def round_trips(path: str, count: int, pause: float = 0.0) -> list[float]:
    sock = connect(path)
    frame = pack_frame(REQUEST, MAX)
    samples = []
    for _ in range(count):
        if pause:
            time.sleep(pause)
        start = now()
        sock.sendall(frame)
        read_frame(sock, MAX)
        samples.append(now() - start)
    sock.close()
    return samples


def throughput(path: str, clients: int, in_flight: int, duration: float) -> float:
    """Completed round trips per second, ``clients`` connections with ``in_flight`` each."""
    socks = [connect(path) for _ in range(clients)]
    frame = pack_frame(REQUEST, MAX)
    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def drive(i: int) -> None:
        sock = socks[i]
        barrier.wait()
        sock.sendall(frame * in_flight)
        outstanding = in_flight
        while outstanding:
            read_frame(sock, MAX)
            outstanding -= 1
            if now() < stop_at[0]:
                counts[i] += 1
                sock.sendall(frame)
                outstanding += 1

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = now() + duration
    start = now()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = max(now() - start, duration)
    for sock in socks:
        sock.close()
    return sum(counts) / elapsed


def floor_relay(count: int, duration: float, loads: list[list[int]], paused: int = 0) -> dict:
    """Round trips (two hops, one hop), also ``paused`` of each after ``PAUSE`` s idle, and
    throughput for each ``[clients, in_flight]``."""
    gc.freeze()
    most = max([1] + [c for c, _ in loads])
    with tempfile.TemporaryDirectory(prefix="jdb-", dir="/tmp") as directory:
        pid, control = start_relay(directory, most)
        try:
            two = os.path.join(directory, "relay.sock")
            round_trips(two, min(200, count))  # warm up
            result = {"samples": round_trips(two, count),
                      "one_hop": round_trips(os.path.join(directory, "echo.sock"), count),
                      "paused": round_trips(two, paused, PAUSE),
                      "one_hop_paused": round_trips(os.path.join(directory, "echo.sock"), paused, PAUSE),
                      "throughput": {f"{c}x{k}": throughput(two, c, k, duration) for c, k in loads}}
        finally:
            os.close(control)
            reap(pid)
    return result
