"""The typed package as a user gets it: the wheel ships ``py.typed`` (PEP 561), and the typing
check (tests/typing/public_api.py, run by mypy in ./scripts/test) states the return type of every
public method of every client class that ``jidocoder`` exports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jidocoder
from tests.support import LONG

ROOT = Path(__file__).resolve().parents[2]
TYPING_CHECK = ROOT / "tests" / "typing" / "public_api.py"


def client_classes() -> dict[str, type]:
    return {name: getattr(jidocoder, name) for name in jidocoder.__all__ if name.endswith("Client")}


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def asserted_calls(tree: ast.Module, classes: set[str]) -> dict[str, set[str]]:
    """Class name → the methods called inside ``assert_type(...)`` on a parameter annotated
    with that class (``client: Client`` → ``assert_type(client.x(...), ...)``, awaited or not)."""
    found: dict[str, set[str]] = {name: set() for name in classes}
    for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        params = {a.arg: a.annotation.id for a in func.args.args
                  if isinstance(a.annotation, ast.Name) and a.annotation.id in classes}
        for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
            if not (isinstance(call.func, ast.Name) and call.func.id == "assert_type" and call.args):
                continue
            checked = call.args[0]
            checked = checked.value if isinstance(checked, ast.Await) else checked
            if (isinstance(checked, ast.Call) and isinstance(checked.func, ast.Attribute)
                    and isinstance(checked.func.value, ast.Name) and checked.func.value.id in params):
                found[params[checked.func.value.id]].add(checked.func.attr)
    return found


def test_the_typing_check_states_what_every_public_client_method_returns():
    classes = client_classes()
    assert "Client" in classes
    asserted = asserted_calls(ast.parse(TYPING_CHECK.read_text()), set(classes))
    missing = {name: sorted(public_methods(cls) - asserted[name]) for name, cls in classes.items()}
    assert missing == {name: [] for name in classes}


def test_the_built_wheel_ships_py_typed(tmp_path):
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "jidocoder", source / "jidocoder",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=LONG)
    (wheel,) = (tmp_path / "dist").glob("jidocoder-*.whl")
    with zipfile.ZipFile(wheel) as built:
        assert "jidocoder/py.typed" in built.namelist()
