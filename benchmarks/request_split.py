"""The daemon's cost per session call for reading a client's request and writing the session's:
decoding it whole and encoding it again (before) against splitting it and framing the session's
request around the args bytes (``wire.split_request`` + ``wire.request_buffers``).

usage: python -m benchmarks.request_split
"""

from __future__ import annotations

import time

from jidocoder import wire

LIMIT = wire.request_limit(16 * 1024 * 1024)
REQUESTS = {
    "get_file (60 B)": {"id": 12, "op": "get_file", "deadline": 1234.5,
                        "args": {"session_id": "0123456789abcdef0123456789abcdef", "path": "/a"}},
    "send_message 1 KiB": {"id": 12, "op": "send_message", "deadline": 1234.5,
                           "args": {"session_id": "0123456789abcdef0123456789abcdef",
                                    "role": "user", "content": "x" * 1024}},
    "update_file_index 50 keys": {"id": 12, "op": "update_file_index", "deadline": 1234.5,
                                  "args": {"session_id": "0123456789abcdef0123456789abcdef",
                                           "path": "/a", "metadata": {f"k{i}": i for i in range(50)}}},
}


def decode_and_encode(body: memoryview) -> bytes:
    frame = wire.decode_bounded(body)
    args = frame["args"]
    args.get("session_id")
    out = {"id": 99, "op": frame["op"], "args": args}
    if type(frame.get("deadline")) in (int, float):
        out["deadline"] = float(frame["deadline"])
    return wire.pack_frame(out, LIMIT)


def split_and_splice(body: memoryview) -> list[bytes]:
    request = wire.split_request(body)
    return wire.request_buffers(99, request.op, request.args, request.deadline, LIMIT)


def per_call_us(fn, body: memoryview, rounds: int = 5, count: int = 20_000) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            fn(body)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def main() -> None:
    for name, request in REQUESTS.items():
        body = memoryview(wire.encode(request))
        before, after = per_call_us(decode_and_encode, body), per_call_us(split_and_splice, body)
        print(f"{name:28} {len(body):5} B  decode+encode {before:5.2f} us   "
              f"split+splice {after:5.2f} us   ({after - before:+.2f} us)")


if __name__ == "__main__":
    main()
