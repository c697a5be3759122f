"""Whom the Client trusts (docs/api.md §8): only a daemon of its own user, in a socket directory
that is its user's alone. Faults are real: another uid's process (root can setuid), a directory
chowned to another uid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jidocoder import Client, DaemonUnavailableError
from tests.support import SHORT, remove_tree, short_tempdir, wait_until

OTHER_UID = 65534  # nobody

# A fake daemon: listens, accepts one connection, and writes how many bytes it was sent.
FAKE_DAEMON = """
import os, socket, sys
path, report = sys.argv[1], sys.argv[2]
os.setuid(int(sys.argv[3]))  # after the imports: the interpreter's files may be root's alone
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)
open(report + ".ready", "w").close()
conn, _ = server.accept()
conn.settimeout(2.0)
got = b""
try:
    while chunk := conn.recv(65536):
        got += chunk
except OSError:
    pass
with open(report, "w") as f:
    f.write(str(len(got)))
"""

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="making another uid's process needs root")


@pytest.fixture
def shared_dir():
    root = short_tempdir()
    os.chmod(root, 0o777)  # the other uid must be able to make its socket here
    yield Path(root)
    remove_tree(root)


@needs_root
def test_a_socket_served_by_another_uid_is_refused_and_nothing_is_sent(shared_dir):
    path, report = str(shared_dir / "d.sock"), str(shared_dir / "sent")
    fake = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, path, report, str(OTHER_UID)])
    try:
        wait_until(lambda: os.path.exists(report + ".ready"), SHORT, "the fake daemon to listen")
        with pytest.raises(DaemonUnavailableError, match=f"uid {OTHER_UID}") as caught:
            Client(path, timeout=SHORT)
        assert caught.value.details["peer_uid"] == OTHER_UID
        assert fake.wait(timeout=SHORT) == 0
        assert Path(report).read_text() == "0"  # not one byte reached it
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()


@needs_root
def test_a_default_socket_directory_owned_by_another_uid_is_refused(shared_dir, monkeypatch):
    runtime = shared_dir / "run"
    runtime.mkdir(mode=0o700)
    planted = runtime / "jidocoder"
    planted.mkdir(mode=0o700)
    os.chown(planted, OTHER_UID, OTHER_UID)
    monkeypatch.delenv("JIDOCODER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(DaemonUnavailableError, match="belongs to another user") as caught:
        Client(timeout=SHORT)
    assert str(planted) in str(caught.value)
    assert os.listdir(planted) == []  # nothing was made in it


def test_a_group_writable_default_socket_directory_is_refused(shared_dir, monkeypatch):
    runtime = shared_dir / "run"
    runtime.mkdir(mode=0o700)
    loose = runtime / "jidocoder"
    loose.mkdir()
    os.chmod(loose, 0o770)
    monkeypatch.delenv("JIDOCODER_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(DaemonUnavailableError, match="writable by other users"):
        Client(timeout=SHORT)
