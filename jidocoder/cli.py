"""The ``jidocoder`` command: ``daemon start|stop|status`` and ``sessions``.

Exit codes: 0 done (or already running, for ``start``), 1 could not do it, 2 bad usage,
3 no daemon runs (``stop``, ``status``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from collections.abc import Sequence

from . import _no_plugins  # noqa: F401  first, before any model is built (see its docstring)
from .config import Settings, flag_name
from .errors import DaemonUnavailableError, JidocoderError

EXIT_FAILED, EXIT_NOT_RUNNING = 1, 3  # 2, bad usage, is argparse's own
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jidocoder", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    daemon = commands.add_parser("daemon", help="start, stop or inspect the background daemon")
    actions = daemon.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start the daemon (returns once it accepts connections)")
    start.add_argument("--foreground", action="store_true", help="stay attached (systemd, containers)")
    start.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    for name, info in Settings.model_fields.items():
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if info.annotation is bool else {}  # --debug-ops
        start.add_argument(flag_name(name), dest=name, metavar=name.upper(), help=info.description,
                           **switch)
    for action in ("stop", "status"):
        sub = actions.add_parser(action, help=f"{action} the daemon")
        add_location_flags(sub)
    actions.choices["status"].add_argument("--json", action="store_true", help="one JSON object")
    sessions = commands.add_parser("sessions", help="list the daemon's sessions")
    add_location_flags(sessions)
    sessions.add_argument("--json", action="store_true", help="a JSON array")
    return parser


def add_location_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", help="the daemon's Unix socket")
    parser.add_argument("--state-dir", dest="state_dir", help="the daemon's state dir")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sessions":
            return cmd_sessions(args)
        return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.action](args)
    except JidocoderError as exc:
        print(f"jidocoder: {exc.message}", file=sys.stderr)
        return exc.exit_code


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    return Settings.load(flags)


# -- daemon start ---------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from .daemon.startup import check_socket_path
    check_socket_path(settings.socket)
    if args.foreground:
        return start_foreground(settings, args.ready_fd)
    running = probe(settings.socket)
    if running is not None:
        print(f"jidocoder daemon already running (pid {running['pid']}) on {settings.socket}")
        return 0
    return start_background(settings)


def start_background(settings: Settings) -> int:
    """Start a detached daemon and wait for its word over a pipe: ready, or why not."""
    import subprocess
    read_end, write_end = os.pipe()
    env = {**os.environ, **settings.to_env()}
    command = [sys.executable, "-m", "jidocoder.cli", "daemon", "start", "--foreground",
               "--ready-fd", str(write_end), *settings.to_flags()]
    subprocess.Popen(command, env=env, pass_fds=(write_end,), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(write_end)
    word = read_word(read_end, START_TIMEOUT)
    kind, _, rest = word.partition(" ")
    if kind == "ready":
        print(f"jidocoder daemon started (pid {rest})\n  socket:    {settings.socket}\n"
              f"  state dir: {settings.state_dir}")
        return 0
    if kind == "error":
        code, _, message = rest.partition(" ")
        print(f"jidocoder: {message}", file=sys.stderr)
        return int(code)
    print(f"jidocoder: the daemon exited while starting; see {settings.state_dir}/daemon.log",
          file=sys.stderr)
    return EXIT_FAILED


def read_word(fd: int, timeout: float) -> str:
    import selectors
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                data = os.read(fd, 4096)
                if not data:
                    break
                chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


def start_foreground(settings: Settings, ready_fd: int | None) -> int:
    from .daemon.process import set_process_name
    from .daemon.server import run_daemon
    # Every file and directory the daemon makes is private whatever the caller's umask (docs/api.md
    # §8): the store, daemon.log and its rotations, sessions/, the socket dir. Set before any.
    os.umask(0o077)
    set_process_name("jidocoder-daemon")

    def on_ready() -> None:
        say(ready_fd, f"ready {os.getpid()}")
        if ready_fd is None:
            print(f"jidocoder daemon (pid {os.getpid()}) serving on {settings.socket}", flush=True)
        else:
            os.close(ready_fd)

    try:
        return run_daemon(settings, on_ready)
    except JidocoderError as exc:
        code = exc.exit_code
        if ready_fd is not None:
            say(ready_fd, f"error {code} {exc.message}")
        else:
            print(("jidocoder: " if code else "") + exc.message, file=sys.stderr if code else sys.stdout)
        return code


def say(fd: int | None, word: str) -> None:
    if fd is not None:
        try:
            os.write(fd, word.encode() + b"\n")
        except OSError:
            pass


# -- daemon stop / status -------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from .client import Client
    try:
        client = Client(settings.socket, timeout=STOP_TIMEOUT)
    except DaemonUnavailableError:
        print(f"no jidocoder daemon runs on {settings.socket}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    with client:
        pid = client.daemon_pid
        client.shutdown()
    if pid is not None and not wait_gone(pid, STOP_TIMEOUT):  # hello always tells the pid
        print(f"jidocoder: the daemon (pid {pid}) is still running {STOP_TIMEOUT:.0f} s after it was "
              "asked to stop", file=sys.stderr)
        return EXIT_FAILED
    print(f"jidocoder daemon (pid {pid}) stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    settings = load_settings(args)
    status = probe(settings.socket)
    if status is None:
        if args.json:
            print(json.dumps({"running": False, "socket": settings.socket}))
        else:
            print(f"no jidocoder daemon runs on {settings.socket}")
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(status))
    else:
        print(f"jidocoder daemon running\n  pid:       {status['pid']}\n  socket:    {status['socket']}\n"
              f"  state dir: {status['state_dir']}\n  uptime:    {status['uptime_s']:.1f} s\n"
              f"  sessions:  {status['sessions']}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    import json
    settings = load_settings(args)
    from .client import Client
    try:
        client = Client(settings.socket)
    except DaemonUnavailableError as exc:
        print(f"jidocoder: {exc.message}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    with client:
        sessions = client.list_sessions()
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in sessions]))
    else:
        for s in sessions:
            print(f"{s.session_id}  {s.status.value:<12} pid={s.pid} restarts={s.restarts} "
                  f"messages={s.conversation_count}")
    return 0


def probe(socket_path: str) -> dict[str, Any] | None:
    """The running daemon's status, or None if nothing answers on the socket."""
    from .client import Client
    try:
        with Client(socket_path, timeout=5.0) as client:
            return client.daemon_status()
    except (DaemonUnavailableError, JidocoderError):
        return None


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.01)  # polling a pid we cannot wait on (not our child): no event to wait for
    return not process_alive(pid)


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


if __name__ == "__main__":
    sys.exit(main())
