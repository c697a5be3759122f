"""Logging: one ``daemon.log`` in the state dir, rotated by size, one line per record.

Session processes do not share any log channel. multiprocessing-logging's
``install_mp_handler`` gives every forked child one shared ``multiprocessing.Queue``: a child
SIGKILLed while it holds that queue's write lock silences every other process for good, and
after a bare ``os.fork()`` its after-fork reset never runs, so records vanish. We keep the part
of the package that is sound, ``MultiProcessingHandler``'s record flattening (args and
exception text turned into one string, so nothing unpicklable or huge crosses), and replace its
transport: ``PipeLogHandler`` sends each record as one frame over the session's *own* socket
to the daemon, which writes it to the file tagged with the session id and pid. A session killed
mid-record can only truncate a frame on its own socket, which the daemon drops with that
session's EOF; nobody else is affected.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any, Callable

from multiprocessing_logging import MultiProcessingHandler

LOG_NAME = "daemon.log"
MAX_MESSAGE_CHARS = 256 * 1024  # a record larger than this is cut: the log is for people


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


class PipeLogHandler(MultiProcessingHandler):
    """MultiProcessingHandler whose transport is the session's own socket, not a shared queue."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        logging.Handler.__init__(self)  # no queue, no receiving thread: see the module docstring
        self._send_frame = send
        self._is_closed = False
        self.sub_handler = logging.NullHandler()

    def _send(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        self._send_frame({"log": {"name": record.name, "levelno": record.levelno,
                                  "msg": message[:MAX_MESSAGE_CHARS], "created": record.created}})

    def close(self) -> None:
        self._is_closed = True
        logging.Handler.close(self)


_INHERITED_HANDLERS: list[logging.Handler] = []


def install_session_logging(send: Callable[[dict[str, Any]], None], level: int) -> None:
    """In a freshly forked session: drop the daemon's file handler (never write its file from
    two processes) and send every record to the daemon instead."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        # Kept alive, never closed: its fd was already closed under it, and if it were collected
        # its file object would close that fd number again, by then maybe another file's.
        _INHERITED_HANDLERS.append(old)
    root.addHandler(PipeLogHandler(send))
    root.setLevel(level)
