"""docs/api.md §1 through the real ``jidocoder`` command: ``daemon start|stop|status``, ``sessions``.

Every command runs as ``python -m jidocoder.cli`` in a subprocess with a timeout, its socket and
state dir in a short temporary directory. A background daemon is not our child: its pid comes
from ``daemon status --json`` (or, as a safety net, from the environment every process started
for a test inherits), and the ``cli`` fixture SIGKILLs whatever is left and waits for every
session process to be gone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jidocoder import Client, DaemonUnavailableError, InvalidArgumentError, LimitExceededError
from jidocoder.config import Settings, flag_name
from tests.support import LONG, SHORT, children_of, process_alive, remove_tree, short_tempdir, wait_until

STATUS_KEYS = {"pid", "socket", "state_dir", "uptime_s", "sessions"}
SETTING_FLAGS = ("--max-restarts", "--max-seconds", "--max-request-bytes", "--max-sessions",
                 "--hang-timeout")
EXIT_NOT_RUNNING = 3
NOBODY = 65534


class Cli:
    """Runs ``jidocoder`` against one temporary socket and state dir; remembers daemon pids."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = str(root / "d.sock")
        self.state_dir = str(root / "state")
        self.daemon_pids: set[int] = set()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOCODER_")}
        env.update(JIDOCODER_SOCKET=self.socket, JIDOCODER_STATE_DIR=self.state_dir, **extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "jidocoder.cli", *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = LONG) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=env or self.env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = self.run("daemon", "start", *flags, env=env)
        assert result.returncode == 0, result.stderr
        return result

    def status(self, *flags: str) -> dict:
        result = self.run("daemon", "status", "--json", *flags)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        self.daemon_pids.add(status["pid"])
        return status

    def started(self, *flags: str, env: dict[str, str] | None = None) -> int:
        """``daemon start`` then its pid from ``daemon status --json`` (same --socket)."""
        self.start(*flags, env=env)
        socket_flags = list(flags[flags.index("--socket"):][:2]) if "--socket" in flags else []
        return self.status(*socket_flags)["pid"]

    def end_everything(self) -> None:
        """SIGKILL every daemon still alive; its session processes must then exit by themselves."""
        pids = self.daemon_pids | set(processes_started_under(self.root))
        sessions = {child for pid in pids for child in children_of(pid)}
        for pid in pids - sessions:
            if process_alive(pid):
                kill(pid)
        everything = pids | sessions
        wait_until(lambda: not any(process_alive(p) for p in everything), SHORT,
                   "every daemon and session process of the test to be gone")


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_started_under(root: Path) -> list[int]:
    """Live processes whose environment names a JIDOCODER_ path under ``root``: every process a
    test started (the CLI, the daemon it spawned, the sessions forked from that daemon)."""
    needle = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                variables = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if any(v.startswith(b"JIDOCODER_") and needle in v for v in variables) and process_alive(int(entry)):
            found.append(int(entry))
    return found


def top_level(pids: list[int]) -> list[int]:
    """The pids whose parent is not among ``pids`` (daemons, not their sessions)."""
    children = {child for pid in pids for child in children_of(pid)}
    return sorted(set(pids) - children)


def session_pids(socket_path: str) -> list[int]:
    with Client(socket_path, timeout=LONG) as client:
        return [client.get_session_pid(s.session_id) for s in client.list_sessions()]


def mode_of(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def cli():
    root = short_tempdir()
    helper = Cli(root)
    try:
        yield helper
    finally:
        helper.end_everything()
        remove_tree(root)


# -- daemon start ------------------------------------------------------------------------------

def test_start_returns_once_the_daemon_accepts_connections_and_prints_its_pid_and_socket(cli):
    result = cli.start()
    with Client(cli.socket, timeout=SHORT) as client:  # right after, no waiting
        pid = client.daemon_pid
    cli.daemon_pids.add(pid)
    assert f"pid {pid}" in result.stdout
    assert cli.socket in result.stdout
    assert cli.status()["pid"] == pid
    assert os.getsid(pid) != os.getsid(0)  # its own session: detached from our terminal


def test_start_in_a_command_substitution_returns_because_the_daemon_detached_its_streams(cli):
    command = " ".join(shlex.quote(part) for part in cli.command("daemon", "start"))
    script = f'out=$({command} 2>&1); echo "exit=$?"; echo "$out"; echo done'
    result = subprocess.run(["bash", "-c", script], env=cli.env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=LONG)
    pid = cli.status()["pid"]
    assert result.stdout.splitlines()[0] == "exit=0"
    assert f"pid {pid}" in result.stdout
    assert result.stdout.splitlines()[-1] == "done"


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_second_start_on_the_same_socket_says_so_exits_0_and_leaves_one_daemon(cli, foreground):
    pid = cli.started()
    again = cli.run("daemon", "start", *(["--foreground"] if foreground else []))
    assert again.returncode == 0, again.stderr
    assert "already run" in again.stdout + again.stderr
    assert cli.socket in again.stdout + again.stderr
    assert "Traceback" not in again.stderr
    assert cli.status()["pid"] == pid
    assert top_level(processes_started_under(cli.root)) == [pid]


def test_start_on_a_state_dir_held_by_a_daemon_on_another_socket_exits_1_naming_that_daemon(cli):
    pid = cli.started()
    other_socket = str(cli.root / "other.sock")
    result = cli.run("daemon", "start", "--socket", other_socket)
    assert result.returncode == 1
    assert str(pid) in result.stderr
    assert cli.socket in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(other_socket)
    wait_until(lambda: top_level(processes_started_under(cli.root)) == [pid], SHORT,
               "the refused daemon to exit, leaving only the first")


def test_a_socket_file_left_by_a_sigkilled_daemon_is_reused(cli):
    first = cli.started()
    kill(first)
    wait_until(lambda: not process_alive(first), SHORT, "the SIGKILLed daemon to die")
    assert stat.S_ISSOCK(os.lstat(cli.socket).st_mode)  # left behind, stale
    second = cli.started()
    assert second != first
    with Client(cli.socket, timeout=SHORT) as client:
        assert client.daemon_pid == second


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_regular_file_at_the_socket_path_is_refused_and_left_untouched(cli, foreground):
    Path(cli.socket).write_bytes(b"not a socket\n")
    result = cli.run("daemon", "start", *(["--foreground"] if foreground else []))
    assert result.returncode != 0
    assert cli.socket in result.stderr
    assert "not a socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_ISREG(os.lstat(cli.socket).st_mode)
    assert Path(cli.socket).read_bytes() == b"not a socket\n"
    wait_until(lambda: not processes_started_under(cli.root), SHORT, "the refused daemon to exit")


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_socket_path_longer_than_107_bytes_gets_a_clear_error_not_a_traceback(cli, foreground):
    long_socket = str(cli.root / ("s" * 110))
    assert len(os.fsencode(long_socket)) > 107
    result = cli.run("daemon", "start", "--socket", long_socket, *(["--foreground"] if foreground else []))
    assert result.returncode != 0
    assert "too long" in result.stderr
    assert "Traceback" not in result.stderr
    wait_until(lambda: not processes_started_under(cli.root), SHORT, "nothing to be left running")


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_state_dir_that_cannot_be_written_gets_a_clear_error(cli, foreground):
    regular_file = cli.root / "file"
    regular_file.write_text("")
    state_dir = str(regular_file / "state")  # chmod does not stop root; a file in the path does
    result = cli.run("daemon", "start", "--state-dir", state_dir, *(["--foreground"] if foreground else []))
    assert result.returncode != 0
    assert state_dir in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(cli.socket)
    wait_until(lambda: not processes_started_under(cli.root), SHORT, "the refused daemon to exit")


# -- socket and directory modes ----------------------------------------------------------------

def test_the_socket_is_0600_and_a_directory_created_for_it_is_0700(cli):
    socket_dir = cli.root / "run"
    socket_path = str(socket_dir / "d.sock")
    cli.started("--socket", socket_path)
    assert stat.S_ISSOCK(os.lstat(socket_path).st_mode)
    assert mode_of(socket_path) == 0o600
    assert mode_of(socket_dir) == 0o700


def test_a_directory_given_with_socket_is_left_as_it_was(cli):
    socket_dir = cli.root / "pub"
    socket_dir.mkdir()
    os.chmod(socket_dir, 0o755)
    socket_path = str(socket_dir / "d.sock")
    cli.started("--socket", socket_path)
    assert mode_of(socket_path) == 0o600
    assert mode_of(socket_dir) == 0o755


def test_a_connection_from_another_uid_is_refused(cli):
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid")
    cli.started()
    child = (
        "import os, socket, sys\n"
        "from jidocoder import Client, DaemonUnavailableError\n"
        f"os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "probe = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    probe.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    sys.exit(10)  # refused by the socket's mode\n"
        "probe.close()\n"
        "try:\n"
        "    Client(sys.argv[1], timeout=5).close()\n"
        "except DaemonUnavailableError as e:\n"
        "    print(e)\n"
        "    sys.exit(11)  # the kernel let us in; the daemon hung up\n"
        "sys.exit(12)  # served\n")

    def connect_as_nobody() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", child, cli.socket], env=cli.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=LONG)

    os.chmod(cli.root, 0o711)  # another user may reach the socket: only its own mode stops them
    by_mode = connect_as_nobody()
    assert by_mode.returncode == 10, by_mode.stdout + by_mode.stderr  # the 0600 mode refuses
    os.chmod(cli.socket, 0o666)  # let the kernel through: the peer's credentials must still refuse
    by_credentials = connect_as_nobody()
    assert by_credentials.returncode == 11, by_credentials.stdout + by_credentials.stderr
    with Client(cli.socket, timeout=SHORT) as client:  # the owner is still served
        assert client.list_sessions() == []


# -- who may connect (docs/api.md §8) ---------------------------------------------------------------
# The default socket dir is exercised through $XDG_RUNTIME_DIR pointing into the test's own
# directory, never through the real /tmp/jidocoder-<uid>.

def default_dir_env(cli: Cli) -> tuple[dict[str, str], Path]:
    """An environment whose default socket dir is <root>/xdg/jidocoder (no JIDOCODER_SOCKET)."""
    env = cli.env(XDG_RUNTIME_DIR=str(cli.root / "xdg"))
    del env["JIDOCODER_SOCKET"]
    (cli.root / "xdg").mkdir(exist_ok=True)
    return env, cli.root / "xdg" / "jidocoder"


def start_flags(foreground: bool) -> list[str]:
    return ["--foreground"] if foreground else []


def refused_start(cli: Cli, env: dict[str, str], foreground: bool) -> str:
    """``daemon start`` must exit 1 with one line on stderr, having created nothing; that line."""
    result = cli.run("daemon", "start", *start_flags(foreground), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert not Path(cli.state_dir).exists()
    return result.stderr


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_default_socket_dir_owned_by_another_user_is_refused_naming_owner_and_mode(cli, foreground):
    if os.getuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    env, socket_dir = default_dir_env(cli)
    socket_dir.mkdir(mode=0o700)
    os.chown(socket_dir, NOBODY, NOBODY)
    message = refused_start(cli, env, foreground)
    assert str(socket_dir) in message and f"owner uid {NOBODY}" in message and "mode 0700" in message
    assert "--socket" in message  # what to do about it
    assert os.listdir(socket_dir) == []


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_symlink_in_place_of_the_default_socket_dir_is_refused(cli, foreground):
    env, socket_dir = default_dir_env(cli)
    target = cli.root / "elsewhere"
    target.mkdir(mode=0o700)
    socket_dir.symlink_to(target)
    message = refused_start(cli, env, foreground)
    assert str(socket_dir) in message and "symbolic link" in message
    assert os.listdir(target) == []


@pytest.mark.parametrize("mode", [0o770, 0o703], ids=["group-writable", "other-writable"])
def test_a_default_socket_dir_writable_by_others_is_refused(cli, mode):
    env, socket_dir = default_dir_env(cli)
    socket_dir.mkdir()
    os.chmod(socket_dir, mode)
    message = refused_start(cli, env, foreground=False)
    assert str(socket_dir) in message and f"mode {mode:04o}" in message and "chmod 700" in message
    assert os.listdir(socket_dir) == []


def test_a_private_default_socket_dir_is_used_and_a_missing_one_is_made_0700(cli):
    env, socket_dir = default_dir_env(cli)
    assert cli.run("daemon", "start", env=env).returncode == 0
    status = json.loads(cli.run("daemon", "status", "--json", env=env).stdout)
    cli.daemon_pids.add(status["pid"])
    assert status["socket"] == str(socket_dir / "daemon.sock")
    assert mode_of(socket_dir) == 0o700
    assert cli.run("daemon", "stop", env=env).returncode == 0
    assert cli.run("daemon", "start", env=env).returncode == 0  # the directory exists now: ours
    cli.daemon_pids.add(json.loads(cli.run("daemon", "status", "--json", env=env).stdout)["pid"])


def test_files_and_dirs_the_daemon_makes_are_private_whatever_the_callers_umask(cli):
    old = os.umask(0o022)  # inherited by the command and the daemon it starts
    try:
        cli.started("--socket", str(cli.root / "run" / "d.sock"))
    finally:
        os.umask(old)
    with Client(str(cli.root / "run" / "d.sock"), timeout=LONG) as client:
        session = client.create_session()
        client.send_message(session, "user", "hello")  # the session's own store exists now
    state = Path(cli.state_dir)
    made = [state, *state.rglob("*"), cli.root / "run"]
    assert {"registry.db", "daemon.log", "sessions"} <= {p.name for p in made}
    assert any(p.parent.name == "sessions" for p in made), sorted(map(str, made))
    wrong = {str(p): oct(mode_of(p)) for p in made
             if mode_of(p) != (0o700 if p.is_dir() else 0o600) and not stat.S_ISSOCK(os.lstat(p).st_mode)}
    assert wrong == {}


def debug_pid_of_a_new_session(socket_path: str) -> int:
    with Client(socket_path, timeout=LONG) as client:
        session = client.create_session()
        return client._call("debug_pid", {"session_id": session})


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_debug_ops_are_served_only_with_the_flag_never_from_the_environment(cli, foreground):
    inherited = cli.env(JIDOCODER_DEBUG_OPS="1")
    if foreground:
        proc = subprocess.Popen(cli.command("daemon", "start", "--foreground"), env=inherited,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        cli.daemon_pids.add(proc.pid)
        wait_until(lambda: foreground_serves(proc, cli.socket), LONG, "the daemon to serve")
    else:
        cli.started(env=inherited)
    with pytest.raises(InvalidArgumentError) as refused:
        debug_pid_of_a_new_session(cli.socket)
    assert refused.value.code == "unknown_op"
    assert cli.run("daemon", "stop").returncode == 0
    if foreground:
        assert proc.wait(LONG) == 0
        proc.stderr.close()
    cli.started("--debug-ops", env=cli.env(JIDOCODER_DEBUG_OPS="0"))
    assert debug_pid_of_a_new_session(cli.socket) > 0


# -- daemon status -----------------------------------------------------------------------------

def test_status_json_has_exactly_the_contract_keys_and_counts_sessions_not_terminated(cli):
    pid = cli.started()
    with Client(cli.socket, timeout=LONG) as client:
        first = client.create_session()
        client.create_session()
        client.terminate_session(first)
    status = cli.status()
    assert set(status) == STATUS_KEYS
    assert status["pid"] == pid and type(status["pid"]) is int
    assert status["socket"] == cli.socket
    assert status["state_dir"] == cli.state_dir
    assert type(status["uptime_s"]) in (int, float) and status["uptime_s"] >= 0
    assert status["sessions"] == 1 and type(status["sessions"]) is int


def test_status_prints_pid_socket_state_dir_uptime_and_session_count(cli):
    pid = cli.started()
    with Client(cli.socket, timeout=LONG) as client:
        client.create_session()
    result = cli.run("daemon", "status")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"\bpid\b.*\b{pid}\b", result.stdout)
    assert cli.socket in result.stdout
    assert cli.state_dir in result.stdout
    assert "uptime" in result.stdout
    assert re.search(r"sessions\D*\b1\b", result.stdout)


@pytest.mark.parametrize("command", [["daemon", "status"], ["daemon", "status", "--json"],
                                     ["daemon", "stop"]], ids=["status", "status-json", "stop"])
def test_status_and_stop_exit_3_when_no_daemon_runs(cli, command):
    result = cli.run(*command)
    assert result.returncode == EXIT_NOT_RUNNING
    assert "Traceback" not in result.stderr


# -- daemon stop -------------------------------------------------------------------------------

def test_stop_returns_once_daemon_and_sessions_are_gone_and_the_socket_is_removed(cli):
    pid = cli.started()
    with Client(cli.socket, timeout=LONG) as client:
        ids = [client.create_session(metadata={"n": n}) for n in range(2)]
    sessions = session_pids(cli.socket)
    assert len(sessions) == 2
    result = cli.run("daemon", "stop")
    assert result.returncode == 0, result.stderr
    assert not process_alive(pid)
    assert [p for p in sessions if process_alive(p)] == []
    assert not os.path.exists(cli.socket)

    cli.started()
    with Client(cli.socket, timeout=LONG) as client:
        assert [s.session_id for s in client.list_sessions()] == ids
    assert cli.run("daemon", "stop").returncode == 0


# -- daemon start --foreground -----------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_foreground_daemon_serves_and_stops_gracefully_with_exit_0_on(cli, signum):
    proc = subprocess.Popen(cli.command("daemon", "start", "--foreground"), env=cli.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    cli.daemon_pids.add(proc.pid)
    try:
        wait_until(lambda: foreground_serves(proc, cli.socket), LONG, "the foreground daemon to serve")
        with Client(cli.socket, timeout=LONG) as client:
            assert client.daemon_pid == proc.pid
            session = client.get_session_pid(client.create_session())
        proc.send_signal(signum)
        assert proc.wait(LONG) == 0
        assert "Traceback" not in proc.stderr.read().decode()
        assert not process_alive(session)
        assert not os.path.exists(cli.socket)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(SHORT)
        proc.stderr.close()


def foreground_serves(proc: subprocess.Popen, socket_path: str) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the daemon exited with {proc.returncode}: {proc.stderr.read().decode()}")
    try:
        Client(socket_path, timeout=SHORT).close()
    except DaemonUnavailableError:
        return False
    return True


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["flag", "env"])
def test_max_sessions_set_by_flag_or_environment_takes_effect(cli, how):
    if how == "flag":
        cli.started("--max-sessions", "2")
    else:
        cli.started(env=cli.env(JIDOCODER_MAX_SESSIONS="2"))
    with Client(cli.socket, timeout=LONG) as client:
        client.create_session()
        client.create_session()
        with pytest.raises(LimitExceededError):
            client.create_session()
        assert len(client.list_sessions()) == 2


def test_start_help_lists_every_setting_flag(cli):
    result = cli.run("daemon", "start", "--help")
    assert result.returncode == 0, result.stderr
    for flag in (*SETTING_FLAGS, *(flag_name(name) for name in Settings.model_fields)):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_setting_value_gets_a_clear_error_not_a_traceback(cli, how):
    if how == "flag":
        result = cli.run("daemon", "start", "--max-sessions", "abc")
    else:
        result = cli.run("daemon", "start", env=cli.env(JIDOCODER_MAX_SESSIONS="abc"))
    assert result.returncode != 0
    assert re.search(r"max[_-]sessions", result.stderr)
    assert "Traceback" not in result.stderr
    assert not os.path.exists(cli.socket)
    wait_until(lambda: not processes_started_under(cli.root), SHORT, "nothing to be left running")


# -- jidocoder sessions ------------------------------------------------------------------------

def test_sessions_json_lists_the_sessions_oldest_first(cli):
    cli.started()
    with Client(cli.socket, timeout=LONG) as client:
        ids = [client.create_session(metadata={"n": n}) for n in range(2)]
        pids = [client.get_session_pid(i) for i in ids]
    result = cli.run("sessions", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [s["session_id"] for s in listed] == ids
    assert [s["metadata"] for s in listed] == [{"n": 0}, {"n": 1}]
    assert [s["status"] for s in listed] == ["active", "active"]
    assert [s["pid"] for s in listed] == pids
