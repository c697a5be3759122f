"""The drain: a subscribed ``Client`` reads its events even while none of its threads asks.

With no thread reading, events would pile up in the kernel and in the daemon, which drops a
client that falls ``client_buffer_bytes`` behind. The first subscription starts one thread
(``DRAIN_THREAD_NAME``), the lowest-priority reader of the connection (_sync.py): it waits for
the socket to turn readable without the reader role, and takes the role only when it is free,
for one read. Seeing the role held (read without the lock, a hint) it backs off instead of
asking to be woken, so no call pays a wakeup for it. A client that never subscribes runs no
thread at all.

It holds its connection only through a weak reference, and never while it waits: a Client
dropped without ``close()`` is collected, its finalizer shuts the socket down (POLLHUP wakes
the poll), and the drain closes the fd on its way out.
"""

from __future__ import annotations

import select
import socket
import threading
import weakref
from typing import Protocol


class SyncConnection(Protocol):
    """What the drain uses of its connection (_sync.py)."""

    sock: socket.socket
    stop: threading.Event

    def reading(self) -> bool: ...
    def broken(self) -> bool: ...
    def drain_once(self) -> bool: ...
    def drain_ended(self) -> None: ...

__all__ = ["DRAIN_THREAD_NAME", "start_drain"]

DRAIN_THREAD_NAME = "jidocoder-client-drain"

# How long the drain leaves the socket alone after finding the role held: the holder reads (and
# routes events) meanwhile, so this bounds how often the drain looks, never how soon a frame is
# read. 5 ms of a flood is far less than the kernel and daemon buffers hold.
_BACKOFF = 0.005
# Between two reconnect attempts of its own, when no caller is dialling (the socket is dead, so
# a poll would return at once).
_BROKEN_BACKOFF = 0.05


def start_drain(conn: SyncConnection) -> threading.Thread:
    drain = threading.Thread(target=_drain_loop, args=(weakref.ref(conn), conn.sock, conn.stop),
                             name=DRAIN_THREAD_NAME, daemon=True)
    drain.start()
    return drain


def _drain_loop(ref: weakref.ref[SyncConnection], sock: socket.socket,
                stop: threading.Event) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)  # the fd number stays the client's across reconnects
    try:
        while not stop.is_set():
            conn = ref()
            if conn is None:
                return
            busy, broken = conn.reading(), conn.broken()
            del conn  # not held while waiting
            if broken:
                stop.wait(_BROKEN_BACKOFF)
            elif not busy:
                poller.poll()  # shutdown (close, lost, collected) wakes it with POLLHUP
            conn = ref()
            if conn is None:
                return
            if conn.reading():
                del conn
                stop.wait(_BACKOFF)
                continue
            if not conn.drain_once():
                return
            del conn
    finally:
        conn = ref()
        if conn is not None:
            conn.drain_ended()
        else:  # its connection was collected: nobody else will close the fd
            sock.close()
