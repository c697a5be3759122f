"""The rules of the layout that a reader relies on: who imports what, the public surface, the README."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import jidocoder
from jidocoder.config import settings_table
from tests.support import LONG

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jidocoder"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    return names


def test_only_wire_imports_msgpack():
    users = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")
                   if any(name.split(".")[0] == "msgpack" for name in imported_modules(p)))
    assert users == ["jidocoder/wire.py"]


def test_client_never_imports_the_daemon():
    for name in ("client.py", "_connection.py", "_reader.py", "__init__.py", "models.py", "errors.py", "wire.py"):
        assert not any("daemon" in module for module in imported_modules(PACKAGE / name)), name


def test_public_surface_is_exactly_the_api():
    assert sorted(jidocoder.__all__) == sorted([
        "Client", "SessionStatus", "SessionConfig", "SessionState", "SessionInfo", "Message",
        "ActiveFile", "CachedFile", "Event", "JidocoderError", "SessionNotFoundError",
        "InvalidTransitionError", "InvalidArgumentError", "LimitExceededError",
        "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError", "SessionCrashedError"])


def test_readme_settings_table_is_generated_from_the_settings_model():
    assert settings_table() in (ROOT / "README.md").read_text()


def test_transition_table_is_written_only_in_states():
    writers = [p.name for p in PACKAGE.rglob("*.py") if "TRANSITIONS: dict" in p.read_text()]
    assert writers == ["states.py"]


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=LONG)
    return set(ast.literal_eval(out.stdout))


def test_the_daemon_command_loads_no_client_and_turns_pydantic_plugins_off():
    loaded = modules_after("import jidocoder.cli, jidocoder.daemon.server")
    assert {"jidocoder.client", "jidocoder._connection", "jidocoder._reader"} & loaded == set()
    out = subprocess.run([sys.executable, "-c", "import os, jidocoder.cli; "
                          "print(os.environ.get('PYDANTIC_DISABLE_PLUGINS'))"],
                         capture_output=True, text=True, check=True, timeout=LONG,
                         env={k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"})
    assert out.stdout.strip() == "__all__"


def test_the_library_leaves_pydantic_plugins_alone():
    loaded = modules_after("import jidocoder; from jidocoder import Client, SessionState; "
                           "SessionState.new('s')")
    assert "jidocoder.client" in loaded
    assert "jidocoder._no_plugins" not in loaded  # pydantic's own plugin loader, not ours
