"""The ``jidocoder`` command: one module per command group, each adding its own subcommands.

- ``daemon_cmds``: ``daemon start|stop|status`` (docs/api.md §1)
- ``session_cmds``: ``session create|list|show|send|history|terminate|recover|failed``, ``sessions``
- ``watch``: follow events; ``top``: a live table over the shared-memory session table;
  ``logs``: daemon.log; ``metrics``: OpenMetrics text (docs/api.md §12, docs/operations.md)

Exit codes are in ``common``. Each subcommand sets ``run``; ``main`` calls it and turns a
``JidocoderError`` into its one-line message and exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import _no_plugins  # noqa: F401  first, before any model is built (see its docstring)
from ..errors import DaemonUnavailableError, JidocoderError
from . import daemon_cmds, logs, metrics, session_cmds, top, watch
from .common import EXIT_OK

GROUPS = (daemon_cmds, session_cmds, watch, top, logs, metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jidocoder", description="Run and operate the jidocoder session supervisor.",
        epilog="Exit status: 0 done, 1 error, 2 bad usage, 3 no daemon runs, 4 no such session.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except KeyboardInterrupt:  # ^C ends watch, top and logs -f: that is how they are left
        return EXIT_OK
    except BrokenPipeError:  # `jidocoder watch | head`: the reader left
        sys.stderr.close()
        return EXIT_OK
    except JidocoderError as exc:
        print(f"jidocoder: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code


def one_line(exc: JidocoderError) -> str:
    message = " ".join(str(exc.message).split())
    if isinstance(exc, DaemonUnavailableError) and "daemon start" not in message:
        message += " (start one with: jidocoder daemon start)"
    return message
