"""What every ``jidocoder`` command shares: where the daemon is, exit codes, output, progress.

Exit codes (docs/api.md §12): 0 done, 1 error (one line on stderr), 2 bad usage, 3 no daemon
runs, 4 no such session. A ``JidocoderError`` that ends a command exits with its ``exit_code``
(errors.py); argparse's own usage errors exit 2.

Nothing here imports the Client at module level: ``import jidocoder.cli`` (the daemon's own
command) must not load it (tests/unit/test_layout.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from datetime import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from ..config import Settings
from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..client import Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_NO_SESSION = 0, 1, 2, 3, 4
CALL_TIMEOUT = 30.0  # a command's calls: longer than a Client's default, a person is waiting


def add_location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", help="the daemon's Unix socket (default: $JIDOCODER_SOCKET, "
                        "else $XDG_RUNTIME_DIR/jidocoder/daemon.sock, else /tmp/jidocoder-<uid>/daemon.sock)")
    parser.add_argument("--state-dir", dest="state_dir", help="the daemon's state dir (default: "
                        "$JIDOCODER_STATE_DIR, else $XDG_STATE_HOME/jidocoder, else ~/.local/state/jidocoder)")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                run: Callable[[argparse.Namespace], int], summary: str, description: str, *,
                json_output: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with ``--help`` text, the location flags, ``--json`` if it prints data."""
    parser = commands.add_parser(name, help=summary, description=description)
    add_location_flags(parser)
    if json_output is not None:
        add_json_flag(parser, json_output)
    parser.set_defaults(run=run)
    return parser


def add_json_flag(parser: argparse.ArgumentParser, what: str = "one JSON document") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} instead of text")


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    return Settings.load(flags)


def socket_of(args: argparse.Namespace) -> str:
    return load_settings(args).socket


def connect(args: argparse.Namespace, timeout: float = CALL_TIMEOUT) -> Client:
    """A Client of the daemon on ``--socket``; DaemonUnavailableError (exit 3) if none runs."""
    from ..client import Client
    return Client(socket_of(args), timeout=timeout)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, ensure_ascii=False, default=_jsonable), file=stream or sys.stdout, flush=True)


def _jsonable(value: Any) -> Any:
    """What JSON has no type for, as the models' JSON mode writes it (ISO 8601, base64 bytes)."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def parse_json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    """``--metadata '{"a": 1}'`` and the like: a JSON object, or a usage error naming the flag."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{flag} is not valid JSON ({exc.msg} at character {exc.pos}): "
                                   f"{text!r}", code="invalid_json", field=flag) from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{flag} must be a JSON object like '{{\"key\": \"value\"}}', "
                                   f"not {text!r}", code="invalid_json", field=flag)
    return value


def ago(seconds: float | None) -> str:
    """A duration as a person reads it: 42s, 7m03s, 3h12m, 2d04h."""
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def mebibytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f}M" if count else "-"


class Progress:
    """``label done/total`` on one line of stderr, rewritten in place: only on a terminal, and
    only for work that lasts (nothing is drawn before ``DELAY``), so pipes and logs stay clean."""

    DELAY = 0.3
    EVERY = 0.1

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.began = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.began < self.DELAY or now - self._drawn_at < self.EVERY:
            return
        self._drawn_at = now
        self._drawn = True
        self.stream.write(f"\r{self.label} {done}/{self.total}\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
