"""systemd's notify protocol (sd_notify(3)), for ``Type=notify`` units with ``WatchdogSec=``.

``READY=1`` once the daemon accepts connections, ``STOPPING=1`` when it begins to stop, and
``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` from the daemon's one loop, so a daemon whose loop
is stuck stops petting the watchdog and systemd restarts it. Each message is one datagram on
the Unix socket named by ``NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace): a dozen
lines, so no library. Outside systemd (no ``NOTIFY_SOCKET``) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("jidocoder.daemon")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)

    def notify(self, message: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:  # systemd gone or the socket wrong: the daemon serves on
            log.warning("could not notify systemd at %r (%s): %s", self.address, message, exc)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def pet_watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000
