"""The daemon's session table, mapped read-only in this process (``jidocoder top``, ``session list``).

One request on a connection of its own, ``share_table``, whose reply carries a read-only fd of
the table (SCM_RIGHTS, daemon/table.py). From then on every refresh reads the slots from shared
memory: it costs the daemon nothing, however many readers there are. The connection is kept
open only to notice the daemon going away (EOF), since the mapping itself stays readable after
the daemon has gone (it would show the last values forever).

The public Client reads with ``recv``, which would drop the fd, so this is the one place that
speaks the wire itself, with ``wire``'s framing and the Client's peer check.
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from .. import wire
from .._sockdir import peer_credentials
from ..daemon.table import SLOT_SIZE, Slot, TableView
from ..errors import DaemonUnavailableError, ProtocolError

CONNECT_TIMEOUT = 5.0


class SharedTable:
    """A live, read-only view of the daemon's table and the connection that tells if it went."""

    def __init__(self, socket_path: str) -> None:
        self.sock, fd = _ask_for_table(socket_path)
        # Non-blocking from here: with a timeout set, Python would wait for readability (up to
        # the timeout) before each peek in ``daemon_gone``.
        self.sock.setblocking(False)
        try:
            self.view = TableView(fd)
        finally:
            os.close(fd)

    def slots(self) -> list[Slot]:
        return list(self.view.slots())

    def daemon_gone(self) -> bool:
        """True once the daemon closed the connection (it stopped or died)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.view.close()
        self.sock.close()


def read_table(socket_path: str) -> list[Slot]:
    """The slots now, or [] if the daemon cannot hand its table over."""
    try:
        table = SharedTable(socket_path)
    except (OSError, DaemonUnavailableError, ProtocolError):
        return []
    try:
        return table.slots()
    finally:
        table.close()


def _ask_for_table(socket_path: str) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise DaemonUnavailableError(f"no jidocoder daemon answers on {socket_path}: "
                                         f"{exc.strerror or exc}") from None
        _, uid, _ = peer_credentials(sock)
        if uid != os.getuid():
            raise DaemonUnavailableError(f"the socket {socket_path} is served by uid {uid}, not by you")
        sock.sendall(wire.pack_frame({"id": 1, "op": "share_table", "args": {}}, wire.MAX_FRAME))
        reply, fd = _read_reply_with_fd(sock)
        if fd is None:
            error = reply.get("error") if isinstance(reply, dict) else None
            raise ProtocolError(f"the daemon sent no session table: {error or reply!r}")
        result = reply.get("result") or {}
        if result.get("slot_size") != SLOT_SIZE:
            os.close(fd)
            raise ProtocolError(f"the daemon's session table has {result.get('slot_size')}-byte slots, "
                                f"this jidocoder reads {SLOT_SIZE}: run the same version as the daemon")
        return sock, fd
    except BaseException:
        sock.close()
        raise


def _read_reply_with_fd(sock: socket.socket) -> tuple[dict[str, Any], int | None]:
    decoder = wire.FrameDecoder(wire.CONTROL_FRAME_BYTES)
    fds = array.array("i")
    while True:
        data, ancillary, _flags, _ = sock.recvmsg(wire.RECV_CHUNK, socket.CMSG_SPACE(fds.itemsize))
        fds.extend(wire.received_fds(ancillary))
        if not data:
            raise DaemonUnavailableError("the daemon closed the connection before handing over its table")
        frames = decoder.feed(data)
        if frames:
            for extra in fds[1:]:
                os.close(extra)
            reply = frames[0]
            if not isinstance(reply, dict):
                raise ProtocolError(f"the daemon answered share_table with {reply!r}")
            return reply, (fds[0] if fds else None)
