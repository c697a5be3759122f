"""``jidocoder top``: a live table of the sessions, read straight from the daemon's shared memory.

Every refresh (once a second, or at a key) reads the slots from the read-only mapping the daemon
handed over (``tableview``): no request reaches the daemon, so a hundred ``top``s cost it
nothing. What it shows is what the supervisor acts on: status, pid and restarts as the daemon
wrote them, CPU % and RSS from its watchdog, and each session's own heartbeat and counters.

Keys: ``q`` quit, ``s`` next sort column, ``/`` filter (a substring of the id or status; empty
clears it). If the daemon stops, the screen says so and ``top`` waits for one to come back on
the socket. Not on a terminal (or with ``--once``), one table is printed and ``top`` exits;
``--json`` prints that table as a JSON array.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Callable, Iterable

from ..daemon.table import Slot
from ..errors import DaemonUnavailableError, ProtocolError
from ..states import SessionStatus
from .common import EXIT_OK, add_command, ago, mebibytes, print_json, socket_of
from .tableview import SharedTable

REFRESH = 1.0
STATUS_BY_CODE = {status.code: status.value for status in SessionStatus}
SORTS = ("cpu", "rss", "calls", "restarts", "beat", "messages", "id", "status")
COLUMNS = (("ID", 44, "<"), ("STATUS", 12, "<"), ("PID", 7, ">"), ("CPU%", 6, ">"), ("RSS", 8, ">"),
           ("RESTARTS", 8, ">"), ("BEAT", 6, ">"), ("CALLS/S", 8, ">"), ("MSGS", 6, ">"),
           ("FILES", 5, ">"), ("IDLE", 7, ">"))


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = add_command(commands, "top", cmd_top, "a live table of the sessions: status, pid, CPU, RSS, restarts, "
                      "heartbeat, calls/s", "A live table of the sessions, like top: status, pid, CPU %, "
                      "RSS, restarts, heartbeat age, calls/s, messages. Keys: q quit, s sort, / filter. "
                      "Read from the daemon's shared memory: it costs the daemon nothing.",
                      json_output="the table once, as a JSON array")
    top.add_argument("--sort", choices=SORTS, default="cpu", help="the column sorted on, largest first (default cpu)")
    top.add_argument("--filter", default="", metavar="TEXT", help="only sessions whose id or status holds TEXT")
    top.add_argument("--once", action="store_true", help="print the table once and exit (the default when "
                     "stdout is not a terminal)")


@dataclass
class Row:
    session_id: str
    status: str
    pid: int | None
    cpu_percent: float
    rss: int
    restarts: int
    heartbeat_age_s: float | None
    calls_per_s: float
    messages: int
    files: int
    idle_s: float | None


class Rates:
    """calls/s per session, from the difference between two readings of its counter; a new
    process of the session (its ``incarnation``) counts from 0 again."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}  # id -> (when, incarnation, calls)

    def rate(self, slot: Slot, now: float) -> float:
        before = self._last.get(slot.session_id)
        self._last[slot.session_id] = (now, slot.incarnation, slot.calls)
        if before is None or before[1] != slot.incarnation or slot.calls < before[2] or now <= before[0]:
            return 0.0  # first reading, or a new process whose counter started again
        return (slot.calls - before[2]) / (now - before[0])


def rows_of(slots: Iterable[Slot], rates: Rates, now: float) -> list[Row]:
    return [Row(s.session_id, _status(s), s.pid or None, round(s.cpu_percent, 1), s.rss, s.restarts,
                round(now - s.heartbeat, 3) if s.heartbeat else None, round(rates.rate(s, now), 1),
                s.message_count, s.file_count, round(now - s.last_activity, 3) if s.last_activity else None)
            for s in slots]


def _status(slot: Slot) -> str:
    status = STATUS_BY_CODE.get(slot.status_code, "?")
    return f"{status}*" if not slot.pid and status in ("active", "idle") else status  # * no process


SORT_KEYS: dict[str, Callable[[Row], Any]] = {
    "cpu": lambda r: -r.cpu_percent, "rss": lambda r: -r.rss, "calls": lambda r: -r.calls_per_s,
    "restarts": lambda r: -r.restarts, "beat": lambda r: -(r.heartbeat_age_s or 0),
    "messages": lambda r: -r.messages, "id": lambda r: r.session_id, "status": lambda r: r.status,
}


def arrange(rows: list[Row], sort: str, text: str) -> list[Row]:
    chosen = [r for r in rows if text in r.session_id or text in r.status] if text else rows
    return sorted(chosen, key=lambda r: (SORT_KEYS[sort](r), r.session_id))


def cells(row: Row) -> list[str]:
    return [row.session_id, row.status, str(row.pid or "-"), f"{row.cpu_percent:.1f}", mebibytes(row.rss),
            str(row.restarts), f"{row.heartbeat_age_s:.1f}s" if row.heartbeat_age_s is not None else "-",
            f"{row.calls_per_s:.1f}", str(row.messages), str(row.files), ago(row.idle_s)]


def format_line(values: list[str], width: int) -> str:
    """One line of the table fitted to ``width``: the id shrinks first, then columns drop."""
    widths = [w for _, w, _ in COLUMNS]
    fixed = sum(widths[1:]) + len(widths) - 1
    widths[0] = max(16, min(widths[0], width - fixed))
    parts = [f"{v[:w]:{align}{w}}" for v, w, (_, _, align) in zip(values, widths, COLUMNS, strict=True)]
    return " ".join(parts)[:width]


def table_lines(rows: list[Row], width: int) -> list[str]:
    return [format_line([name for name, _, _ in COLUMNS], width)] + [format_line(cells(r), width) for r in rows]


# -- the command ---------------------------------------------------------------------------------
def cmd_top(args: argparse.Namespace) -> int:
    socket_path = socket_of(args)
    if args.once or args.json or not sys.stdout.isatty():
        return print_once(SharedTable(socket_path), args)
    import curses
    return curses.wrapper(lambda screen: Screen(screen, socket_path, args).run())


def print_once(table: SharedTable, args: argparse.Namespace) -> int:
    try:
        rows = arrange(rows_of(table.slots(), Rates(), time.monotonic()), args.sort, args.filter)
    finally:
        table.close()
    if args.json:
        print_json([asdict(r) for r in rows])
    else:
        print("\n".join(table_lines(rows, 200)))
    return EXIT_OK


class Screen:
    """The interactive view: a header, the table, and a prompt line for ``/``."""

    def __init__(self, screen: Any, socket_path: str, args: argparse.Namespace) -> None:
        self.screen = screen
        self.socket_path = socket_path
        self.sort = args.sort
        self.filter = args.filter
        self.rates = Rates()
        self.table: SharedTable | None = None
        self.note = ""

    def run(self) -> int:
        import curses
        curses.curs_set(0)
        self.screen.timeout(int(REFRESH * 1000))  # getch waits at most a refresh period
        try:
            while True:
                self.draw()
                key = self.screen.getch()
                if key in (ord("q"), ord("Q")):
                    return EXIT_OK
                if key == ord("s"):
                    self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
                elif key == ord("/"):
                    self.filter = self.prompt("filter: ")
        finally:
            if self.table is not None:
                self.table.close()

    def attach(self) -> bool:
        """The table, if a daemon hands it over; after a daemon stopped, wait for the next."""
        if self.table is not None and self.table.daemon_gone():
            self.table.close()
            self.table = None
            self.note = f"the daemon stopped; waiting for one on {self.socket_path} (q quits)"
        if self.table is None:
            try:
                self.table = SharedTable(self.socket_path)
                self.note = ""
            except (DaemonUnavailableError, ProtocolError, OSError) as exc:
                self.note = self.note or f"no daemon: {exc}; waiting for one (q quits)"
        return self.table is not None

    def draw(self) -> None:
        height, width = self.screen.getmaxyx()
        self.screen.erase()
        rows: list[Row] = []
        if self.attach() and self.table is not None:
            rows = arrange(rows_of(self.table.slots(), self.rates, time.monotonic()), self.sort, self.filter)
        shown = f" filter: {self.filter}" if self.filter else ""
        header = [f"jidocoder top  {time.strftime('%H:%M:%S')}  {len(rows)} sessions  sort: {self.sort}{shown}"
                  "   q quit  s sort  / filter", self.note]
        for y, line in enumerate((header + table_lines(rows, width - 1))[:height]):
            self.screen.addnstr(y, 0, line, width - 1)
        self.screen.refresh()

    def prompt(self, label: str) -> str:
        import curses
        height, width = self.screen.getmaxyx()
        self.screen.timeout(-1)
        curses.echo()
        curses.curs_set(1)
        try:
            self.screen.addnstr(height - 1, 0, label, width - 1)
            self.screen.clrtoeol()
            text = self.screen.getstr(height - 1, len(label), max(1, width - len(label) - 1))
        finally:
            curses.noecho()
            curses.curs_set(0)
            self.screen.timeout(int(REFRESH * 1000))
        return str(text.decode(errors="replace")).strip()
