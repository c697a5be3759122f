"""A client connection in the daemon: events fit an empty backlog; falling behind is told."""

from __future__ import annotations

import socket

from jidocoder import wire
from jidocoder.daemon.clients import ClientConnection


def connection(max_buffer: int) -> tuple[ClientConnection, socket.socket, list]:
    ours, theirs = socket.socketpair()
    closed: list = []
    conn = ClientConnection(ours, 1, max_request=1024, max_buffer=max_buffer,
                            on_interest=lambda conn, read, write: None,
                            on_closed=closed.append, flush_soon=lambda conn: None)
    return conn, theirs, closed


def frames_until_eof(sock: socket.socket) -> list:
    frames = []
    while (frame := wire.read_frame(sock, wire.MAX_FRAME)) is not None:
        frames.append(frame)
    return frames


def test_an_event_larger_than_the_buffer_goes_to_a_client_with_nothing_queued():
    conn, peer, closed = connection(max_buffer=64 * 1024)
    with peer:
        conn.send_event({"seq": 1, "content": "x" * 200_000})
        assert conn.closing is None and conn.pending_bytes > 64 * 1024
        peer.settimeout(5)
        while conn.pending_bytes:
            conn.flush()
            assert wire.read_frame(peer, wire.MAX_FRAME)["event"]["seq"] == 1
        assert closed == []
        conn.sock.close()


def test_a_client_that_falls_behind_gets_what_was_queued_then_the_reason_then_eof():
    conn, peer, closed = connection(max_buffer=64 * 1024)
    with peer:
        conn.send_event({"seq": 1, "content": "x" * 40_000})
        conn.send_event({"seq": 2, "content": "x" * 40_000})  # 80 KB behind: cut off
        conn.send_event({"seq": 3})  # no more events
        conn.reply(5, {"result": None})  # nor replies
        assert conn.closing is not None and not conn.accepting_calls
        peer.settimeout(5)
        received = []
        while not closed:
            conn.flush()
            received.append(wire.read_frame(peer, wire.MAX_FRAME))
        conn.sock.close()  # what the daemon's on_closed does
        received += frames_until_eof(peer)
    assert [frame.get("event", {}).get("seq") for frame in received] == [1, None]
    closing = received[-1]["closing"]
    assert closing["code"] == "fell_behind"
    assert "behind (client_buffer_bytes=65536)" in closing["message"]
    assert closed == [conn]
