"""Logging: one ``daemon.log`` in the state dir, rotated by size, one line per record.

Only the daemon writes the file. A session process sends each record as one frame over its
*own* socket to the daemon (``SocketLogHandler``, a plain ``logging.Handler``), and the daemon
writes it tagged with the session id and pid. A session killed mid-record can only truncate a
frame on its own socket, which the daemon drops with that session's EOF; nobody else is affected.

Why not multiprocessing-logging (a dependency until issue 12): its one public piece,
``MultiProcessingHandler``, gives every process forked after it one shared
``multiprocessing.Queue`` (one pipe, one lock): a child SIGKILLed while holding that lock, or
halfway through a write, silences or corrupts every other process's logging. And its
constructor starts a receiving thread in the process that creates it, which here would be the
template that must stay single-threaded to clone spares safely. Created instead in each session
after the clone, it would only move records from a queue to a thread of the same process, which
still has to send them to the daemon. The sound part of it, flattening a record (arguments and
exception text into one string, so nothing unpicklable or huge crosses), is the few lines of
``SocketLogHandler.emit``; the package is no longer needed.

The daemon runs with umask 077 (``cli.daemon_cmds.start_foreground``), so ``daemon.log`` and every rotated
file are born 0600; ``setup_daemon_logging`` creates the first one 0600 whatever the umask.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any
from collections.abc import Callable

LOG_NAME = "daemon.log"
MAX_MESSAGE_CHARS = 256 * 1024  # a record larger than this is cut: the log is for people
_FORMATTER = logging.Formatter()  # only its exception and stack text: the daemon formats the line


class OneLineFormatter(logging.Formatter):
    """Every record on one line (newlines escaped), so each line of the log parses alone."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "session"):
            record.session = "daemon"
        text = super().format(record)
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


# Until setup_daemon_logging runs, records go nowhere rather than to stderr (logging.lastResort).
logging.getLogger("jidocoder").addHandler(logging.NullHandler())

FORMAT = "%(asctime)s %(levelname)s [%(session)s pid=%(process)d] %(name)s: %(message)s"


def setup_daemon_logging(state_dir: Path, level: str, max_bytes: int, backups: int) -> logging.Handler:
    os.close(os.open(state_dir / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    handler = logging.handlers.RotatingFileHandler(state_dir / LOG_NAME, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def write_session_record(data: dict[str, Any], session_id: str, pid: int) -> None:
    """Log a record that a session process sent over its socket, tagged with who sent it."""
    try:
        record = logging.makeLogRecord({
            "name": str(data.get("name", "session")), "levelno": int(data.get("levelno", 20)),
            "levelname": logging.getLevelName(int(data.get("levelno", 20))),
            "msg": str(data.get("msg", ""))[:MAX_MESSAGE_CHARS], "created": float(data["created"]),
            "process": pid, "session": session_id,
        })
    except (KeyError, TypeError, ValueError):
        logging.getLogger("jidocoder.daemon").warning("malformed log record from %s", session_id)
        return
    logging.getLogger(record.name).handle(record)


class SocketLogHandler(logging.Handler):
    """Sends each record, flattened to one string, through ``send`` (the session's own socket).

    No queue and no thread: ``send`` writes the frame before ``emit`` returns."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._send_frame = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            if record.stack_info:
                message = f"{message}\n{_FORMATTER.formatStack(record.stack_info)}"
            self._send_frame({"log": {"name": record.name, "levelno": record.levelno,
                                      "msg": message[:MAX_MESSAGE_CHARS], "created": record.created}})
        except RecursionError:  # as logging.StreamHandler.emit does
            raise
        except Exception:  # noqa: BLE001 - as logging.Handler.emit does: handleError reports it
            self.handleError(record)


_INHERITED_HANDLERS: list[logging.Handler] = []


def install_session_logging(send: Callable[[dict[str, Any]], None], level: int) -> None:
    """In a process forked from the daemon (the template, so every spare inherits it): drop the
    daemon's file handler (never write its file from two processes) and send every record to
    the daemon instead. Starts no thread."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        # Kept alive, never closed: its fd was already closed under it, and if it were collected
        # its file object would close that fd number again, by then maybe another file's.
        _INHERITED_HANDLERS.append(old)
    root.addHandler(SocketLogHandler(send))
    root.setLevel(level)


def reopen_daemon_log() -> None:
    """SIGUSR1 (logrotate moved the file away): write to a new daemon.log at the same path. The
    handler's stream is swapped under its lock (``setStream``); the new file is born 0600 (the
    daemon's umask, ``cli.daemon_cmds.start_foreground``)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.handlers.RotatingFileHandler):
            fresh = open(handler.baseFilename, "a", encoding="utf-8")
            old = handler.setStream(fresh)
            if old is not None:
                old.close()
            logging.getLogger("jidocoder.daemon").info("SIGUSR1: daemon.log reopened")
