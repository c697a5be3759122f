"""Hostile connections to a daemon's socket, for ``scripts/soak``.

Each connection is one case, drawn at random: random bytes; a valid length header with a garbage
body; a huge declared length; a truncated frame; half a header; connect and close; valid msgpack
of the wrong shape (``{"op": 5}``, nested empty maps, deep arrays, arguments of the wrong type,
also aimed at the soak's real sessions); many frames pipelined and never read; a subscription
or a large reply abandoned. Every so often a burst holds many connections open at once, each
with half a frame sent. Concurrency is bounded by a pool of threads.

Nothing sent here may change what a session holds: no case creates, terminates or shuts down
anything real, and the ones that reach a real session have an argument the contract refuses.
A message of this module found in a history (content starting ``fuzz``) is a violation the soak
reports as foreign.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024  # jidocoder.wire.DEFAULT_MAX_FRAME at the default limit
REPLY_WAIT = 0.5      # how long a case that expects an answer (or EOF) waits for it
BURST_EVERY = 10_000  # one burst of held connections per this many cases
BURST_SIZE = 200
HARMLESS_OPS = ["hello", "list_sessions", "get_session_info", "get_session_pid", "daemon_status",
                "get_file", "build_context", "get_conversation_history", "terminate_session",
                "subscribe_to_session", "subscribe_to_all_sessions", "nonexistent", "", "dispatch",
                "__init__", "handle_hello", "debug_crash"]


def frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def raw_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def request(op: object, args: object = None, rid: object = 1) -> bytes:
    return frame({"id": rid, "op": op, "args": {} if args is None else args})


def fake_id() -> str:
    return f"session_{uuid.uuid4()}"


# -- the cases: each returns (bytes to send, wait for an answer?) -------------------------------
Case = Callable[[random.Random, list[str]], tuple[bytes, bool]]


def random_bytes(rng, sessions):
    return rng.randbytes(rng.randint(1, 4096)), rng.random() < 0.5


def garbage_body(rng, sessions):
    body = rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 65536]))
    return raw_frame(body), True


def huge_length(rng, sessions):
    length = rng.choice([MAX_FRAME + 1, 2**31, 2**32 - 1, rng.randint(MAX_FRAME + 1, 2**32 - 1)])
    return HEADER.pack(length) + rng.randbytes(rng.randint(0, 64)), True


def truncated(rng, sessions):
    whole = request("list_sessions") if rng.random() < 0.5 else raw_frame(rng.randbytes(500))
    return whole[:rng.randint(HEADER.size, len(whole) - 1)], False


def half_header(rng, sessions):
    return HEADER.pack(rng.randint(1, 1000))[:rng.randint(1, 3)], False


def connect_close(rng, sessions):
    return b"", False


def wrong_shape(rng, sessions):
    sid = rng.choice(sessions)
    shapes = [
        {"op": 5}, {}, [], None, 5, "list_sessions", b"\x00", [{"op": "hello"}],
        {"op": "list_sessions", "args": []}, {"op": "list_sessions", "args": {"x": {}}},
        {"op": {}, "args": {}}, {"id": {}, "op": "hello"}, {"op": None, "args": None},
        {"op": "get_session_info", "args": {"session_id": rng.choice([{}, [1, 2], None, 7, ""])}},
        {"op": "get_session_info", "args": {"session_id": fake_id()}},
        # aimed at a real session, each with an argument the contract refuses
        {"id": 2, "op": "send_message", "args": {"session_id": sid, "role": 5, "content": "fuzz-1"}},
        {"id": 3, "op": "send_message", "args": {"session_id": sid, "role": "", "content": "fuzz-2"}},
        {"id": 4, "op": "send_message", "args": {"session_id": sid, "role": "user", "content": {"fuzz": 3}}},
        {"id": 5, "op": "send_message", "args": {"session_id": sid, "role": "user"}},
        {"id": 6, "op": "send_message", "args": {"session_id": sid, "role": "user", "content": 4}},
        {"id": 7, "op": "send_message", "args": [sid, "user", "fuzz-5"]},
        {"id": 8, "op": "build_context", "args": {"session_id": sid, "include": {"x": 1}}},
        {"id": 9, "op": "get_file", "args": {"session_id": sid, "path": []}},
    ]
    if rng.random() < 0.3:
        return frame(random_object(rng, 4)), True
    return frame(rng.choice(shapes)), True


def random_object(rng: random.Random, depth: int) -> object:
    """A random request-like object: a map with an op and args of any shape, or anything."""
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([None, True, -1, 2**63, 1.5, "", "x" * rng.randint(1, 50),
                           rng.randbytes(8), rng.choice(HARMLESS_OPS), fake_id()])
    if rng.random() < 0.5:
        return {"id": random_object(rng, depth - 1), "op": rng.choice(HARMLESS_OPS),
                "args": {rng.choice(["session_id", "path", "include", "x", ""]):
                         random_object(rng, depth - 1) for _ in range(rng.randint(0, 3))}}
    return [random_object(rng, depth - 1) for _ in range(rng.randint(0, 4))]


def nested_maps(rng, sessions):
    """Many small containers in one frame: 1 MB of empty maps once became 69 MiB of RSS."""
    count = rng.choice([1_000, 100_000, 1_000_000])
    empty = b"\x80" if rng.random() < 0.5 else b"\x90"
    return raw_frame(b"\xdd" + struct.pack(">I", count) + empty * count), True


def deep_arrays(rng, sessions):
    depth = rng.choice([100, 1_000, 100_000])
    return raw_frame(b"\x91" * depth + b"\xc0"), True


def pipelined(rng, sessions):
    """Many requests in one write, the replies never read."""
    return b"".join(request(rng.choice(["hello", "list_sessions", "nonexistent"]), rid=i)
                    for i in range(rng.randint(10, 300))), False


def abandoned(rng, sessions):
    """A subscription or a large reply, and the connection closed before it is read."""
    sid = rng.choice(sessions)
    return rng.choice([request("subscribe_to_all_sessions"),
                       request("subscribe_to_session", {"session_id": sid}),
                       request("get_conversation_history", {"session_id": sid})]), False


CASES: list[Case] = [random_bytes, garbage_body, huge_length, truncated, half_header,
                     connect_close, wrong_shape, wrong_shape, nested_maps, deep_arrays, pipelined,
                     abandoned]


# -- one request at a time: each must be answered (an error frame or a close) ---------------------
PROBE_WAIT = 5.0
PROBES = {
    "nil body": frame(None),
    "nil body, then hello": frame(None) + request("hello"),
    "empty body": raw_frame(b""),
    "false body": frame(False),
    "empty map": frame({}),
    '{"op": 5}': frame({"op": 5}),
    "unknown op": request("nonexistent"),
    "array of 1,000,000 empty maps": raw_frame(b"\xdd" + struct.pack(">I", 1_000_000) + b"\x80" * 1_000_000),
    "100,000 nested arrays": raw_frame(b"\x91" * 100_000 + b"\xc0"),
    "declared length 2**32-1": HEADER.pack(2**32 - 1) + b"\x80",
}


def unanswered_probes(socket_path: str) -> list[str]:
    """The names of the PROBES to which the daemon, otherwise idle, sent nothing and which it
    did not close within PROBE_WAIT s: such a connection is wedged."""
    silent = []
    for name, payload in PROBES.items():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_WAIT)
            sock.connect(socket_path)
            try:
                sock.sendall(payload)
                sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except TimeoutError:
                silent.append(name)
    return silent


# -- running them -------------------------------------------------------------------------------
def one_connection(socket_path: str, payload: bytes, wait: bool) -> str:
    """Send ``payload`` and close; returns what the daemon did: ``answered`` (a frame or EOF
    came back), ``silent`` (nothing within REPLY_WAIT), ``reset`` (it closed while we wrote),
    ``refused`` (no connection)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        try:
            sock.connect(socket_path)
        except OSError:
            return "refused"
        try:
            if payload:
                sock.sendall(payload)
            if not wait:
                return "sent"
            sock.settimeout(REPLY_WAIT)
            sock.recv(65536)
            return "answered"
        except (BrokenPipeError, ConnectionResetError):
            return "reset"
        except TimeoutError:
            return "silent"
    finally:
        sock.close()


def burst(socket_path: str, rng: random.Random, size: int) -> Counter:
    """``size`` connections open at once, each with half a frame sent, then all closed."""
    outcome: Counter[str] = Counter()
    held = []
    try:
        for _ in range(size):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5.0)
            held.append(sock)
            try:
                sock.connect(socket_path)
                sock.sendall(request("list_sessions")[:rng.randint(1, 6)])
                outcome["held"] += 1
            except OSError:
                outcome["refused"] += 1
    finally:
        for sock in held:
            sock.close()
    return outcome


def fuzz(socket_path: str, sessions: list[str], count: int, seed: int, concurrency: int = 16,
         on_progress: Callable[[int], None] | None = None) -> Counter:
    """``count`` hostile connections (bursts included); returns outcomes by case and result."""
    outcome: Counter[str] = Counter()
    lock = threading.Lock()
    done = 0

    def run(index: int) -> None:
        nonlocal done
        rng = random.Random(seed * 1_000_003 + index)
        case = rng.choice(CASES)
        payload, wait = case(rng, sessions)
        result = one_connection(socket_path, payload, wait)
        with lock:
            outcome[f"{case.__name__}:{result}"] += 1
            done += 1

    index = 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="soak-fuzz") as pool:
        while index < count:
            chunk = min(BURST_EVERY, count - index)
            list(pool.map(run, range(index, index + chunk)))  # re-raises a case's bug here
            index += chunk
            outcome.update({f"burst:{k}": v for k, v in
                            burst(socket_path, random.Random(seed + index), BURST_SIZE).items()})
            index += BURST_SIZE
            if on_progress is not None:
                on_progress(index)
    return outcome
