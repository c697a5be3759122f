"""``jidocoder logs [-f] [--session ID]``: daemon.log, optionally followed, optionally one session's.

Reads the file; needs no daemon. The state dir is ``--state-dir``, else ``$JIDOCODER_STATE_DIR``,
else the one the daemon on ``--socket`` reports (it may have been started with another), else
the default. Following survives rotation (by size, or logrotate with SIGUSR1): a file that was
replaced or truncated is reopened from its start, as ``tail -F`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO
from collections.abc import Callable, Iterable

from ..errors import JidocoderError
from .common import EXIT_OK, add_command, load_settings

LOG_NAME = "daemon.log"
FOLLOW_POLL = 0.2  # what `tail -f` does without inotify: a read every fraction of a second


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = add_command(commands, "logs", cmd_logs, "print daemon.log, optionally following it, optionally one "
                       "session's lines", "Print the daemon's log (daemon.log in its state dir). Each line: "
                       "time, level, [session pid=PID], logger: message. Needs no daemon.")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing lines as they are written, until ^C")
    logs.add_argument("--session", metavar="ID", help="only lines that name this session")
    logs.add_argument("-n", "--lines", type=int, metavar="N", help="start with the last N lines only")


def cmd_logs(args: argparse.Namespace) -> int:
    path = log_path(args)
    if not path.exists():
        raise JidocoderError(f"no {LOG_NAME} in {path.parent} (has a daemon run with this state dir? "
                             "give it with --state-dir)", code="not_found")
    session: str | None = args.session

    def wanted(line: str) -> bool:
        return session is None or session in line

    with open(path, "rb") as f:
        lines = (text for line in f if wanted(text := line.decode("utf-8", "replace")))
        write(deque(lines, maxlen=args.lines) if args.lines is not None else lines)
        if args.follow:
            follow(path, f, wanted)
    return EXIT_OK


def log_path(args: argparse.Namespace) -> Path:
    if args.state_dir or os.environ.get("JIDOCODER_STATE_DIR"):
        return Path(load_settings(args).state_dir) / LOG_NAME
    from .daemon_cmds import probe
    status = probe(load_settings(args).socket)
    state_dir = status["state_dir"] if status else load_settings(args).state_dir
    return Path(state_dir) / LOG_NAME


def write(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line)
    sys.stdout.flush()


def follow(path: Path, f: IO[bytes], wanted: Callable[[str], bool]) -> None:
    """Print what is appended, until ^C; reopen when the file is replaced or truncated."""
    identity = os.fstat(f.fileno()).st_ino
    partial = b""  # half a line: the rest comes with the next write
    while True:
        chunk = f.readline()
        if chunk:
            partial += chunk
            if partial.endswith(b"\n"):
                line, partial = partial.decode("utf-8", "replace"), b""
                write([line] if wanted(line) else [])
            continue
        if _replaced(path, identity) or os.fstat(f.fileno()).st_size < f.tell():
            f.close()
            f = _reopen(path)
            identity = os.fstat(f.fileno()).st_ino
            continue
        time.sleep(FOLLOW_POLL)  # no event to wait on for a plain file without inotify


def _replaced(path: Path, identity: int) -> bool:
    try:
        return path.stat().st_ino != identity
    except FileNotFoundError:
        return False  # between a rename and the new file: keep reading the old one


def _reopen(path: Path) -> IO[bytes]:
    while True:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            time.sleep(FOLLOW_POLL)
