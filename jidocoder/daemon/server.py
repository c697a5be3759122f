"""The daemon process: claim, restore, serve, stop.

``run_daemon`` reads as its lifecycle: claim the state dir and the socket, open the store,
bring back persisted sessions, serve until asked to stop, stop every session, release.
Signal handlers do nothing but exist: ``set_wakeup_fd`` turns each signal into a byte on a
socket the loop watches, so SIGTERM becomes the same shutdown a client asks for, and SIGCHLD
becomes a call to the reaper, both inside the loop.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any
from collections.abc import Callable

from .._sockdir import peer_credentials
from ..config import Settings
from ..errors import DamagedStoreError, StartError
from . import store
from .api import Api
from .clients import ClientConnection
from .events import EventBus
from .logs import reopen_daemon_log, setup_daemon_logging
from .metrics import METRICS
from .loop import Loop
from .startup import (bind_socket, check_socket_path, lock_socket, lock_state_dir,
                      prepare_state_dir, raise_fd_limit)
from .seqmarks import RegistryMarks
from .reload import apply_log_settings, reloaded
from .restarts import RestartPolicy
from .supervisor import Supervisor
from .systemd import Notifier
from .watchdog import MEMORY_CHECK_INTERVAL, check_interval

log = logging.getLogger("jidocoder.daemon")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1)
PROGRESS_EVERY = 0.2  # seconds between the restore's progress reports to ``daemon start``
ACCEPT_PAUSE = 0.1  # after accept() fails (out of fds): time for connections to close


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.monotonic()
        self.loop = Loop()
        self.bus: EventBus | None = None
        self.clients: set[ClientConnection] = set()
        self.listener: socket.socket | None = None
        self.stopping = False
        self.registry: store.Registry | None = None
        self.supervisor: Supervisor | None = None
        self.api: Api | None = None
        self._lock_fds: list[int] = []
        self.systemd = Notifier()

    # -- lifecycle ----------------------------------------------------------------------------
    def claim(self) -> None:
        """Everything that can refuse to start, before anything is served."""
        settings = self.settings
        state_dir = Path(settings.state_dir)
        check_socket_path(settings.socket)
        prepare_state_dir(state_dir)
        self._lock_fds.append(lock_socket(settings.socket))
        self._lock_fds.append(lock_state_dir(state_dir, settings.socket))
        setup_daemon_logging(state_dir, settings.log_level, settings.log_max_bytes, settings.log_backups)
        raise_fd_limit(min(settings.max_sessions, settings.max_live_sessions) * 2 + 4096)
        self.registry = open_registry(state_dir, settings.durability)
        self.registry.on_commit = METRICS.commit_seconds.observe
        self.listener = bind_socket(settings.socket)

    def serve(self, on_ready: Callable[[], None],
              on_progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        assert self.registry is not None and self.listener is not None, "claim() comes first"
        self.bus = EventBus(self.settings.event_history,
                            RegistryMarks(self.registry, self._persistent))
        self.supervisor = Supervisor(self.settings, self.loop, self.bus, self.registry)
        self.api = Api(self.supervisor, self.bus, max_request_bytes=self.settings.max_request_bytes,
                       debug_ops=self.settings.debug_ops, status=self.status,
                       shutdown=lambda: self.loop.call_later(0, self.begin_shutdown),
                       clients=lambda: len(self.clients))
        self._install_signals()
        self.loop.watch(self.listener, self._accept)
        gc.disable()  # a start makes up to 100,000 long-lived objects: no collection while it does
        try:
            restored = self.supervisor.restore_sessions(throttled(on_progress))
        finally:
            gc.enable()
        log.info("daemon pid %d serving on %s (state dir %s), %d sessions restored",
                 os.getpid(), self.settings.socket, self.settings.state_dir, restored)
        self.loop.every(check_interval(self.settings.hang_timeout), self.supervisor.check_sessions)
        self.loop.every(MEMORY_CHECK_INTERVAL, self.supervisor.check_memory)
        gc.freeze()  # what exists now is shared with every session forked from here on, and
        # the known sessions are never walked by a collection again
        self.supervisor.start_spares()
        on_ready()
        self.systemd.ready(f"serving on {self.settings.socket}, {restored} sessions restored")
        if self.systemd.watchdog_interval is not None:
            self.loop.every(self.systemd.watchdog_interval, self.systemd.pet_watchdog)
        self.loop.run()

    def _persistent(self, session_id: str) -> bool:
        record = self.supervisor.records.get(session_id) if self.supervisor else None
        return record is not None and record.persistent

    def status(self) -> dict[str, Any]:
        """What ``daemon status`` prints."""
        assert self.supervisor is not None, "asked only while serve() runs"
        return {"pid": os.getpid(), "socket": self.settings.socket, "state_dir": self.settings.state_dir,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "sessions": len(self.supervisor.records)}

    def begin_shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        assert self.supervisor is not None, "begun only while serve() runs"
        self.systemd.stopping()
        log.info("stopping: %d sessions", len(self.supervisor.records))
        self._close_listener()
        self.supervisor.stop_all(self.loop.stop)

    def release(self) -> None:
        """After the loop: say goodbye to clients, close the store, let go of the locks."""
        self._close_listener()
        for conn in list(self.clients):
            self._drop_client(conn, flush=True)
        if self.registry is not None:
            self.registry.close()
        if self.supervisor is not None:
            self.supervisor.table.close()
        for fd in self._lock_fds:
            os.close(fd)
        self.loop.close()
        log.info("daemon stopped")

    # -- clients ------------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None, "watched only while it is open"
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the listener stays readable, so pause
                log.error("accept failed: %s; not accepting for %.1f s", exc, ACCEPT_PAUSE)
                self.loop.unwatch(self.listener)  # it or epoll would spin on it at full CPU
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            pid, uid, _gid = peer_credentials(sock)
            if uid != os.getuid():
                log.warning("refused a connection from uid %d (pid %d): not the daemon's user", uid, pid)
                sock.close()
                continue
            self._add_client(sock, pid)

    def _resume_accepting(self) -> None:
        if self.listener is not None and not self.stopping:
            self.loop.watch(self.listener, self._accept)

    def _add_client(self, sock: socket.socket, pid: int) -> None:
        conn = ClientConnection(sock, pid, max_request=self.settings.max_request_bytes,
                                max_buffer=self.settings.client_buffer_bytes,
                                on_interest=self._client_interest,
                                on_closed=self._drop_client, flush_soon=self.loop.flush_soon,
                                pacer=self.supervisor.pacing if self.supervisor else None)
        self.clients.add(conn)
        METRICS.connections += 1
        self.loop.watch(conn, lambda: self._on_client_readable(conn), lambda: self._on_client_writable(conn))

    def _on_client_readable(self, conn: ClientConnection) -> None:
        if conn.closed:
            return
        conn.backlog.extend(conn.read_requests())
        self._dispatch_backlog(conn)
        if conn.closed:
            self._drop_client(conn)

    def _dispatch_backlog(self, conn: ClientConnection) -> None:
        conn.resume_scheduled = False
        assert self.api is not None, "clients are served only while serve() runs"
        for frame in conn.next_calls():
            self.api.dispatch(conn, frame)

    def _on_client_writable(self, conn: ClientConnection) -> None:
        if not conn.closed:
            conn.flush()
        if conn.closed:
            self._drop_client(conn)

    def _client_interest(self, conn: ClientConnection, read: bool, write: bool) -> None:
        if conn not in self.clients:
            return
        self.loop.set_interest(conn, read=read, write=write)
        if conn.backlog and conn.accepting_calls and not conn.resume_scheduled:
            conn.resume_scheduled = True  # later, not from inside the reply that made room
            self.loop.call_later(0, lambda: self._dispatch_backlog(conn))

    def _drop_client(self, conn: ClientConnection, flush: bool = False) -> None:
        if conn not in self.clients:
            return
        self.clients.discard(conn)
        self.loop.unwatch(conn)
        if self.bus is not None:
            self.bus.drop(conn)
        self._cancel_calls_of(conn)
        if flush and not conn.closed:
            flush_before_close(conn)
        conn.closed = True
        conn.sock.close()

    def _cancel_calls_of(self, conn: ClientConnection) -> None:
        """Its calls that session processes have not begun are answered unapplied, never run."""
        for link in list(conn.links):
            if link.cancel(conn):
                self.loop.flush_soon(link)
        conn.links.clear()

    # -- signals ------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _noop_handler)  # handler must not log: the loop does the work
        self.loop.watch(self._wake_r, self._on_signals)

    def _on_signals(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        received = set(data)
        if signal.SIGCHLD in received and self.supervisor is not None:
            self.supervisor.reap_children()
        if signal.SIGHUP in received:
            self.reload_settings()
        if signal.SIGUSR1 in received:
            reopen_daemon_log()
        if received & {signal.SIGTERM, signal.SIGINT}:
            log.info("signal received: stopping")
            self.begin_shutdown()

    def reload_settings(self) -> None:
        """SIGHUP: the reloadable settings take the settings file's values (reload.py)."""
        assert self.supervisor is not None, "signals are watched only while serve() runs"
        self.systemd.notify("RELOADING=1")
        self.settings = self.supervisor.settings = reloaded(self.settings)
        self.supervisor.policy = RestartPolicy(self.settings.max_restarts, self.settings.max_seconds)
        apply_log_settings(self.settings)
        self.systemd.notify("READY=1")

    def _close_listener(self) -> None:
        if self.listener is None:
            return
        self.loop.unwatch(self.listener)
        self.listener.close()
        self.listener = None
        try:
            os.unlink(self.settings.socket)
        except FileNotFoundError:
            pass


def _noop_handler(signum: int, frame: FrameType | None) -> None:
    pass


def flush_before_close(conn: ClientConnection, timeout: float = 1.0) -> None:
    """Last replies (a shutdown's) get a moment to leave before the connection closes."""
    conn.sock.settimeout(timeout)  # blocking, but never for long
    try:
        while conn.pending_bytes and not conn.closed:
            conn.flush()
    except OSError:
        pass


def open_registry(state_dir: Path, durability: str) -> store.Registry:
    """The registry; a damaged one is moved aside (never deleted) and a new one started. The
    session databases stay where they are: with no row, each is kept as a failed session."""
    try:
        return store.Registry(state_dir, durability)
    except DamagedStoreError as exc:
        moved = store.quarantine(state_dir, state_dir / store.REGISTRY_FILE, str(exc))
        log.error("the session registry is damaged (%s): moved to %s; starting with a new one, "
                  "the sessions it named are kept as failed sessions", exc, moved)
        return store.Registry(state_dir, durability)


def throttled(report: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """``report`` at most every PROGRESS_EVERY seconds, and always for the last step."""
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            report(done, total)
    return progress


def run_daemon(settings: Settings, on_ready: Callable[[], None],
               on_progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Run until stopped; StartError propagates before anything is served."""
    daemon = Daemon(settings)
    try:
        daemon.claim()
        daemon.serve(on_ready, on_progress)
    except StartError:
        raise  # a refusal, not a failure: the command prints its message
    except Exception:
        log.exception("the daemon failed")
        raise
    finally:
        daemon.release()
    return 0
