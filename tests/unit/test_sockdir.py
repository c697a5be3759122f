"""jidocoder._sockdir: which default socket directories the daemon and the Client trust."""

from __future__ import annotations

import os

from jidocoder._sockdir import check_socket_dir, default_socket_dir, is_default_socket_dir
from jidocoder.config import default_socket_path


def test_the_default_dir_follows_xdg_runtime_dir_else_tmp_with_the_uid():
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == "/run/user/7/jidocoder"
    assert default_socket_dir({}) == f"/tmp/jidocoder-{os.getuid()}"
    assert default_socket_path({}) == f"/tmp/jidocoder-{os.getuid()}/daemon.sock"


def test_a_socket_is_in_the_default_dir_however_it_was_named():
    env = {"XDG_RUNTIME_DIR": "/run/user/7", "JIDOCODER_SOCKET": "/elsewhere/d.sock"}
    assert is_default_socket_dir("/run/user/7/jidocoder/daemon.sock", env)
    assert is_default_socket_dir("/run/user/7/jidocoder/../jidocoder/other.sock", env)
    assert not is_default_socket_dir("/elsewhere/d.sock", env)
    assert not is_default_socket_dir("/run/user/7/daemon.sock", env)


def test_a_missing_dir_or_a_private_one_of_ours_is_trusted(tmp_path):
    assert check_socket_dir(str(tmp_path / "absent")) is None
    (tmp_path / "ours").mkdir(mode=0o700)
    assert check_socket_dir(str(tmp_path / "ours")) is None
    os.chmod(tmp_path / "ours", 0o755)  # readable by others is fine: only writing is a threat
    assert check_socket_dir(str(tmp_path / "ours")) is None


def test_a_symlink_a_file_or_a_dir_others_may_write_is_refused_saying_why(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o1777)
    reasons = {name: check_socket_dir(str(tmp_path / name)) for name in ("link", "file", "shared")}
    assert "symbolic link" in reasons["link"]
    assert "not a directory" in reasons["file"]
    assert "writable by other users" in reasons["shared"] and "mode 1777" in reasons["shared"]
    assert all(str(tmp_path) in reason and f"owner uid {os.getuid()}" in reason
               and "\n" not in reason for reason in reasons.values())
