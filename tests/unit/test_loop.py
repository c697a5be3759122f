"""The daemon's loop: timers in order, cancellation, and a failing callback that costs only itself."""

from __future__ import annotations

import socket

from jidocoder.daemon.loop import Loop


def test_timers_run_in_deadline_order_and_cancelled_ones_never_run():
    loop, ran = Loop(), []
    loop.call_later(0.02, lambda: ran.append("late"))
    loop.call_later(0.0, lambda: ran.append("first"))
    loop.call_later(0.01, lambda: ran.append("cancelled")).cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    loop.close()
    assert ran == ["first", "late"]


def test_an_exception_in_a_callback_is_logged_and_the_loop_carries_on(caplog):
    loop, ran = Loop(), []
    loop.call_later(0.0, lambda: 1 / 0)
    loop.call_later(0.01, lambda: ran.append("after"))
    loop.call_later(0.02, loop.stop)
    loop.run()
    loop.close()
    assert ran == ["after"]
    assert "carries on" in caplog.text


def test_a_readable_socket_calls_its_reader():
    loop, got = Loop(), []
    a, b = socket.socketpair()

    def on_read() -> None:
        got.append(a.recv(10))
        loop.stop()

    loop.watch(a, on_read)
    b.send(b"ping")
    loop.run()
    loop.close()
    a.close()
    b.close()
    assert got == [b"ping"]
