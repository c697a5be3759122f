"""``jidocoder daemon start|stop|status``: the daemon's own lifecycle (docs/api.md §1).

``start`` runs the daemon in this process (``--foreground``) or in a detached one it waits for:
the child says ``ready PID``, ``error CODE MESSAGE`` or, while it restores many sessions,
``progress DONE TOTAL`` over a pipe (``--ready-fd``), shown as a progress line on a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..config import Settings, flag_name
from ..errors import DaemonUnavailableError, JidocoderError
from .common import EXIT_FAILED, EXIT_NOT_RUNNING, Progress, add_command, load_settings

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    daemon = commands.add_parser("daemon", help="start, stop or inspect the background daemon",
                                 description="Start, stop or inspect the background daemon.")
    actions = daemon.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start the daemon (returns once it accepts connections)",
                               description="Start the daemon in the background and return once it "
                               "accepts connections (exit 0; also when one already runs on the socket).")
    start.add_argument("--foreground", action="store_true",
                       help="stay attached (systemd Type=notify, containers, debugging); "
                       "SIGTERM/SIGINT stop it, SIGHUP reloads settings_file, SIGUSR1 reopens daemon.log")
    start.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    for name, info in Settings.model_fields.items():
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if info.annotation is bool else {}  # --debug-ops
        start.add_argument(flag_name(name), dest=name, metavar=name.upper(), help=info.description,
                           **switch)
    start.set_defaults(run=cmd_start)
    add_command(actions, "stop", cmd_stop, "stop the daemon gracefully (exit 3 if none runs)",
                "Stop the daemon: every session persisted, every session process ended, the socket "
                "removed. Returns when done.")
    add_command(actions, "status", cmd_status, "pid, socket, state dir, uptime, sessions (exit 3 if none runs)",
                "Print the daemon's pid, socket, state dir, uptime and session count; exit 0 if it "
                "runs, 3 if not.", json_output="one JSON object: pid, socket, state_dir, uptime_s, sessions")


# -- daemon start ---------------------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    from ..daemon.backends import RAY_EXTRA, ray_installed
    if settings.backend == "ray" and not ray_installed():  # said here, before any daemon starts
        print(f"jidocoder: --backend ray runs sessions as Ray actors and needs Ray: {RAY_EXTRA}",
              file=sys.stderr)
        return EXIT_FAILED
    from ..daemon.startup import check_socket_path
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
    word = read_word(read_end, START_TIMEOUT, Progress("restoring sessions", 0))
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


def read_word(fd: int, timeout: float, progress: Progress) -> str:
    """The child's last word (``ready``/``error``); its ``progress`` lines drawn meanwhile. The
    deadline moves with each progress line: a start restoring many sessions is not stuck."""
    import selectors
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                data = os.read(fd, 4096)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer and buffer.startswith(b"progress "):
                    line, buffer = buffer.split(b"\n", 1)
                    done, _, total = line[len(b"progress "):].decode().partition(" ")
                    progress.total = int(total)
                    progress.update(int(done))
                    deadline = time.monotonic() + timeout
    os.close(fd)
    progress.done()
    return buffer.decode(errors="replace").strip()


def start_foreground(settings: Settings, ready_fd: int | None) -> int:
    from ..daemon.process import set_process_name
    from ..daemon.server import run_daemon
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

    def on_progress(done: int, total: int) -> None:
        say(ready_fd, f"progress {done} {total}")

    try:
        return run_daemon(settings, on_ready, on_progress)
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
    from ..client import Client
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


def probe(socket_path: str) -> dict[str, Any] | None:
    """The running daemon's status, or None if nothing answers on the socket."""
    from ..client import Client
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


