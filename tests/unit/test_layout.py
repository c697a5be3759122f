"""The rules of the layout that a reader relies on: who imports what, the public surface, the README."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import jidocoder
from jidocoder import states
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


CLIENT_MODULES = ["client.py", "async_client.py", "_protocol.py", "_lifecycle.py", "_api.py", "_sync.py",
                  "_async.py", "_drain.py", "_dial.py", "_channel.py", "_direct.py", "_adirect.py",
                  "_aiosock.py"]


def test_client_never_imports_the_daemon():
    for name in (CLIENT_MODULES + ["__init__.py", "models.py", "errors.py", "wire.py",
                 "_sockdir.py"]):
        assert not any("daemon" in module for module in imported_modules(PACKAGE / name)), name


def test_public_surface_is_exactly_the_api():
    assert sorted(jidocoder.__all__) == sorted([
        "Client", "AsyncClient", "SessionStatus", "SessionConfig", "SessionState", "SessionInfo", "Message",
        "ActiveFile", "CachedFile", "Event", "JidocoderError", "SessionNotFoundError",
        "InvalidTransitionError", "InvalidArgumentError", "LimitExceededError",
        "DaemonUnavailableError", "ProtocolError", "RequestTimeoutError", "SessionCrashedError",
        "StorageError"])


def test_readme_settings_table_is_generated_from_the_settings_model():
    assert settings_table() in (ROOT / "README.md").read_text()


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=LONG)
    return set(ast.literal_eval(out.stdout))


def test_the_daemon_command_loads_no_client_and_turns_pydantic_plugins_off():
    loaded = modules_after("import jidocoder.cli, jidocoder.daemon.server")
    client_modules = {"jidocoder." + name[:-len(".py")] for name in CLIENT_MODULES}
    assert client_modules & loaded == set()
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


# -- the transition table, one writer ----------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_transition_table_is_the_states_module_s_and_covers_every_status():
    assert isinstance(states.TRANSITIONS, dict)
    assert set(states.TRANSITIONS) == set(states.SessionStatus)
    assert all(isinstance(targets, frozenset) for targets in states.TRANSITIONS.values())


def status_keyed_dicts(tree: ast.Module) -> int:
    """Dict literals keyed by SessionStatus members: a table of statuses written out."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Dict) and len(node.keys) > 1
               and all(isinstance(k, ast.Attribute) and isinstance(k.value, ast.Name)
                       and k.value.id == "SessionStatus" for k in node.keys))


def test_no_other_module_writes_a_table_of_statuses():
    writers = [name for name, tree in package_modules().items() if status_keyed_dicts(tree)]
    assert writers == ["jidocoder.states"]


def test_statuses_change_only_through_the_models_and_the_supervisor():
    callers = sorted({name for name, tree in package_modules().items() for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "transition"})
    assert set(callers) <= {"jidocoder.models", "jidocoder.daemon.supervisor"}, callers


# -- dependencies through their public names only (issue 12) -----------------------------------
def is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def third_party(dotted: str) -> bool:
    top = dotted.split(".")[0]
    return top not in sys.stdlib_module_names and top not in ("jidocoder", "__future__")


def private_uses(tree: ast.Module) -> list[str]:
    """Imports of a dependency's private module or name, and ``dep._name`` attribute uses."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if third_party(alias.name):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
                    if is_private(alias.name):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and third_party(node.module or ""):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [f"from {node.module} import {n.rsplit('.', 1)[1]}" for n in names if is_private(n)]
            aliases.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("__pydantic"):
            found.append(node.attr)  # pydantic's internal dunders (the public ones are methods)
    return found


def test_no_module_uses_a_private_name_of_a_dependency():
    uses = {name: found for name, tree in package_modules().items() if (found := private_uses(tree))}
    assert uses == {}


def test_the_private_name_check_sees_what_it_should():
    tree = ast.parse("import pydantic.plugin._loader\nfrom pydantic._internal import x\n"
                     "from msgpack import _cmsgpack\nimport multiprocessing_logging as m\n"
                     "m.Handler._send(1)\nm._q\nf.__pydantic_base_init__ = True\nimport os\nos._exit(0)\n")
    assert private_uses(tree) == ["import pydantic.plugin._loader", "from pydantic._internal import x",
                                  "from msgpack import _cmsgpack", "multiprocessing_logging._q",
                                  "__pydantic_base_init__"]


# -- no import cycle inside jidocoder ----------------------------------------------------------
KNOWN_CYCLES: set[frozenset[str]] = set()


def imports_of(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The jidocoder modules ``name`` imports, anywhere: at module level, inside a function (an
    import moved into a function to dodge a cycle is still the cycle) or under
    ``if TYPE_CHECKING:`` (a module that names another's classes in its annotations depends on
    it as much)."""
    is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # a submodule if there is one by that name, else the module's
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def import_graph() -> dict[str, set[str]]:
    trees = package_modules()
    return {name: imports_of(name, tree, set(trees)) for name, tree in trees.items()}


def test_no_import_cycle_inside_the_package():
    cycles = [group for group in strongly_connected(import_graph()) if len(group) > 1]
    assert {frozenset(group) for group in cycles} <= KNOWN_CYCLES, cycles


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [group for group in strongly_connected(graph) if len(group) > 1] == [{"a", "b", "c"}]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import client\n"
                     "def f():\n    from .daemon import server\nfrom . import __version__\n")
    modules = {"jidocoder", "jidocoder.client", "jidocoder.daemon", "jidocoder.daemon.server"}
    assert imports_of("jidocoder.x", tree, modules) == {"jidocoder.client", "jidocoder.daemon.server",
                                                        "jidocoder"}
    assert imports_of("jidocoder.daemon.x", ast.parse("from .. import __version__"), modules) == {
        "jidocoder"}
