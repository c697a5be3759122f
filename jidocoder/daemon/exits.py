"""How a session process ends: the only words it says on its way out.

An exit code tells the daemon what the exit means (``restarts`` decides what it does about it);
``StopServing`` is how code deep in the session's loop asks to leave with one, after a last
frame to the daemon (why its store could not be used).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0                  # asked to stop (SIGTERM), the daemon is gone, or no longer needed
EXIT_BOOT_ERROR = 70         # could not start serving (a bug or a bad spec)
EXIT_STORE_DAMAGED = 71      # its database is not usable: the daemon moves it to damaged/
EXIT_STORE_UNAVAILABLE = 72  # its database cannot be opened or read now (locked, disk, I/O)
EXIT_PROTOCOL = 73           # the daemon sent bytes that are not frames: the link is unusable
EXIT_STORE_VERSION = 74      # its database was written by a newer jidocoder: kept as it is

NAMES = {
    EXIT_BOOT_ERROR: "boot error",
    EXIT_STORE_DAMAGED: "store damaged",
    EXIT_STORE_UNAVAILABLE: "store unavailable",
    EXIT_PROTOCOL: "protocol error",
    EXIT_STORE_VERSION: "store written by a newer jidocoder",
}


class StopServing(Exception):
    """Leave the session's loop with ``exit_code``; ``last_word`` goes to the daemon first."""

    def __init__(self, exit_code: int, last_word: dict[str, Any] | None = None) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code
        self.last_word = last_word
