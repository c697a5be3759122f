"""``AioSocket``: one connected Unix stream socket on the running event loop, for ``AsyncClient``.

Why not asyncio's streams: a ``StreamReader``'s transport reads with ``recv``, and the kernel
discards the fds that come with those bytes (SCM_RIGHTS), so an ``open_channel`` reply would
arrive without its channel; no documented transport or ``loop.sock_*`` call gives ``recvmsg``.
So the socket is read here with ``socket.recvmsg_into`` from a reader callback
(``loop.add_reader``), and written with ``send`` (the rest buffered, flushed from a writer
callback): the two things a selector transport does, with the ancillary data kept. Still one
connection to the daemon and no thread; and no task or future per frame either (a reader
callback, as asyncio's own transports have), so it costs what the streams did.

Channels to sessions (_adirect.py) use the same class, not streams: one way of moving bytes in
the async shell, and a write here is what a call's safety rests on, wherever it goes:

- ``write`` takes the whole frame at once, synchronously: sent now, or what is left kept and
  flushed in order. No await comes between a frame's first byte and its last, so a task
  cancelled at any await has either not written its frame or written all of it (docs/api.md
  §11: applied once or not at all). It returns where the frame ends in the stream, and
  ``flushed`` counts what the kernel took, so a call knows whether its frame went whole, in
  part (giving up, it closes the socket: the half frame before the EOF is never applied) or
  not at all (it can go on another socket).
- What arrives goes to the owner's ``received(data, fds)`` and the end to ``ended(error)``.
  The owner is held weakly: the loop holds this object (its callbacks), not the AsyncClient
  above it, so a client dropped without ``close()`` is collected and its finalizer closes this.
"""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from typing import Any, Protocol

from . import wire

__all__ = ["AioSocket", "Owner"]

# MSG_NOSIGNAL: a peer gone is EPIPE, never SIGPIPE.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class Owner(Protocol):
    def received(self, data: memoryview, fds: list[int]) -> None: ...
    def ended(self, error: OSError | None) -> None: ...


class AioSocket:
    """``sock`` (connected) read and written on the running loop until ``close()``; with
    ``fd_space`` > 0, the fds that come with the bytes are taken too (up to that much room)."""

    __slots__ = ("sock", "fd", "loop", "owner", "fd_space", "closed", "accepted", "flushed", "_out",
                 "_buffer")

    def __init__(self, sock: socket.socket, owner: Owner, fd_space: int = 0) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.owner = weakref.ref(owner)
        self.fd_space = fd_space
        self.closed = False
        self.accepted = 0  # bytes given to write(), ever
        self.flushed = 0  # of those, taken by the kernel
        self._out = bytearray()  # written, not yet taken by the kernel
        self._buffer = memoryview(bytearray(wire.RECV_CHUNK))
        self.loop.add_reader(self.fd, self._readable)

    # -- out ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        """All of ``data``, now or as soon as the peer reads: see the module docstring. Where
        it ends in the stream (compare ``flushed``). On a socket whose peer is gone it is
        dropped; the reader sees that end."""
        self.accepted += len(data)
        if self.closed:
            return self.accepted
        if not self._out:
            try:
                sent = self.sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError:
                return self.accepted  # EPIPE, a reset: the read side ends it
            self.flushed += sent
            if sent == len(data):
                return self.accepted
            self.loop.add_writer(self.fd, self._writable)
            data = data[sent:]
        self._out += data
        return self.accepted

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self._out, _SEND_FLAGS)
        except BlockingIOError:
            return
        except OSError:  # the peer is gone: nothing more will be taken
            self._out.clear()
            self.loop.remove_writer(self.fd)
            return
        self.flushed += sent
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self.fd)

    # -- in ----------------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            if self.fd_space:
                count, ancillary, _flags, _ = self.sock.recvmsg_into([self._buffer], self.fd_space)
            else:
                count, ancillary = self.sock.recv_into(self._buffer), []
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # a reset: the peer went away, as at EOF
            self._end(e)
            return
        fds = wire.received_fds(ancillary) if ancillary else []
        owner = self.owner()
        if owner is None:
            _close_fds(fds)
            self.close()
        elif count == 0:
            self._end(None)
        else:
            owner.received(self._buffer[:count], fds)

    def _end(self, error: OSError | None) -> None:
        self.close()
        owner = self.owner()
        if owner is not None:
            owner.ended(error)

    def close(self) -> None:
        """Idempotent. The callbacks go before the fd does: its number may be reused at once."""
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self.loop.remove_reader(self.fd)  # a closed loop has nothing to remove: no error
        self.loop.remove_writer(self.fd)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected
        self.sock.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def close_quietly(io: Any) -> None:
    """For finalizers: close ``io`` whatever state the loop is in."""
    try:
        io.close()
    except Exception:  # noqa: BLE001 - a loop already gone has nothing to undo
        io.sock.close()
