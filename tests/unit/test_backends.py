"""Which backend runs the sessions (daemon/backends.py): the setting, and a missing extra."""

from __future__ import annotations

from jidocoder.cli import main
from jidocoder.config import Settings
from jidocoder.daemon import backends


def test_backend_is_local_unless_set_and_ray_takes_an_address():
    assert Settings.load(env={}).backend == "local"
    settings = Settings.load({"backend": "ray", "ray_address": "127.0.0.1:6379"}, env={})
    assert (settings.backend, settings.ray_address) == ("ray", "127.0.0.1:6379")


def test_daemon_start_with_backend_ray_without_the_extra_exits_1_naming_the_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "ray_installed", lambda: False)
    code = main(["daemon", "start", "--backend", "ray", "--socket", str(tmp_path / "d.sock"),
                 "--state-dir", str(tmp_path / "state")])
    assert code == 1
    assert "pip install 'jidocoder[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "d.sock").exists() and not (tmp_path / "state").exists()
