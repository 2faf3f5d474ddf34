"""The shape of the import graph, read statically with `ast` (nothing is
imported, so this runs in well under a second and never loads torch).

Every ``import``/``from`` statement of every module under the project's
packages counts, at module level and inside functions alike (a lazy import
still runs when its function does); only those under ``if TYPE_CHECKING:``
are skipped, since they never run. An import is an edge to the deepest
project module it names: ``from serving.grpc_api import server`` is an edge
to ``serving.grpc_api.server``, ``from serving.tensors import Tensor`` one to
``serving.tensors``. Imports of anything outside the project are recorded by
their top-level name (``torch``, ``grpc``) for the install checks.

What it asserts:
- no cycles: modules form a DAG, so each layer can be read, tested and
  imported without the ones above it;
- only the entry points (``__main__`` modules) import ``dlserve.cli``, the
  top of the graph;
- only the command-line layer imports ``dlserve.errors``: libraries raise
  their own errors and the CLI turns them into ``CliError``;
- what the serving install runs needs no training extra: ``dlserve/`` and
  ``serving/`` reach neither torch nor the other ``train`` packages through
  module-level imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dlserve", "serving", "training", "devtools", "benchmarks", "scripts")

#: Modules that may import `dlserve.cli`: `python -m dlserve|serving|training`.
ENTRY_POINTS = {"dlserve.__main__", "serving.__main__", "training.__main__"}
#: The command-line layer: the only modules that raise `CliError`.
CLI_LAYER_PACKAGES = ("dlserve",)
CLI_LAYER_MODULES = {"serving.cli", "training.cli", "training.optimize_cli"}
#: Distributions of the `train` extra (pyproject.toml), by import name.
TRAIN_ONLY = {
    "torch", "onnx", "onnxscript", "matplotlib", "sklearn", "tqdm", "onnxconverter_common"
}  # fmt: skip


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # project modules, anywhere in the file
    top_level: set[str] = field(default_factory=set)  # project modules, at module level
    external_top_level: set[str] = field(default_factory=set)  # e.g. "torch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_statements(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs at import time (module level)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    visit_one(orelse, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append((child, top))
        inner = not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        visit(child, top and inner)

    visit(tree, True)
    return found


@cache
def graph() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[module_name(path)] = Module(module_name(path), path)

    def resolve(name: str) -> str | None:
        """The deepest project module that `name` (dotted) is or lies in."""
        parts = name.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    for mod in modules.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        is_package = mod.path.name == "__init__.py"
        for node, top in _import_statements(tree):
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = resolve(target)
                if found is None:
                    if top and not relative:
                        mod.external_top_level.add(target.split(".")[0])
                    continue
                if found == mod.name:
                    continue  # `from package import name` inside the package's own __init__
                mod.imports.add(found)
                if top:
                    mod.top_level.add(found)
    return modules


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop(0)
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt) and nxt in edges:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(edges[nxt])))
    return None


def test_the_graph_is_read() -> None:
    modules = graph()
    assert {"dlserve.cli", "serving.cli", "training.cli", "training.presets"} <= set(modules)
    assert "training.cli" in modules["dlserve.cli"].imports  # a function-level import
    assert "training.presets" in modules["training.cli"].top_level
    assert "torch" in modules["training.engine"].external_top_level


def test_imports_are_found_in_functions_but_not_under_type_checking() -> None:
    source = (
        "import a\n"
        "if TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "try:\n    import d\nexcept ImportError:\n    pass\n"
        "def f():\n    import e\n"
        "class K:\n    def m(self):\n        from f import g\n"
    )
    found = {
        (alias.name if isinstance(node, ast.Import) else str(node.module), top)
        for node, top in _import_statements(ast.parse(source))
        for alias in node.names
    }
    assert found == {("a", True), ("c", True), ("d", True), ("e", False), ("f", False)}


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    edges = {name: mod.imports for name, mod in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_entry_points_import_the_top_level_cli() -> None:
    importers = {name for name, mod in graph().items() if "dlserve.cli" in mod.imports}
    assert importers <= ENTRY_POINTS, f"{sorted(importers - ENTRY_POINTS)} import dlserve.cli"


def test_only_the_command_line_layer_imports_cli_errors() -> None:
    importers = {name for name, mod in graph().items() if "dlserve.errors" in mod.imports}
    libraries = {
        name
        for name in importers
        if name not in CLI_LAYER_MODULES and name.split(".")[0] not in CLI_LAYER_PACKAGES
    }
    assert not libraries, f"{sorted(libraries)} raise CliError: give them their own errors"


#: Tools that tests, scripts and benchmarks share live in devtools/; these
#: import no test module. The exceptions wait for devtools/serverproc.py to move
#: to devtools/ (it was being edited when devtools/ was made).
TOOL_PACKAGES = ("devtools", "benchmarks", "scripts")
TEST_IMPORTS_PENDING: set[tuple[str, str]] = set()


def test_tools_import_no_test_module() -> None:
    found: set[tuple[str, str]] = set()
    for name, mod in graph().items():
        if name.split(".")[0] not in TOOL_PACKAGES:
            continue
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        for node, _ in _import_statements(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            found |= {(name, t) for t in targets if t == "tests" or t.startswith("tests.")}
    assert found <= TEST_IMPORTS_PENDING, (
        f"import a test module: {sorted(found - TEST_IMPORTS_PENDING)}"
    )


def _reached_at_import(start: str) -> set[str]:
    modules = graph()
    seen, todo = {start}, [start]
    while todo:
        for nxt in modules[todo.pop()].top_level:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


#: What a serving-only install imports: its packages, and the training CLI that
#: `dlserve --help` registers.
SERVING_INSTALL = sorted(
    n
    for n in graph()
    if n.split(".")[0] in ("dlserve", "serving") or n in ("training.cli", "training.optimize_cli")
)


@pytest.mark.parametrize("name", SERVING_INSTALL)
def test_the_serving_install_imports_no_training_extra(name: str) -> None:
    reached = _reached_at_import(name)
    train_only = {
        f"{mod} imports {ext}"
        for mod in reached
        for ext in graph()[mod].external_top_level & TRAIN_ONLY
    }
    assert not train_only, sorted(train_only)
