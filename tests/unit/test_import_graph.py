"""The import graph of ``onceflow`` has no cycle and keeps its layers (docs/architecture.md,
*Layers*).

Every ``import`` statement counts — at module level, inside functions and under
``TYPE_CHECKING`` — so a cycle cannot hide behind a lazy import. Modules are found from the
repository's folders with pyproject.toml's ``package-dir`` mapping, the way the wheel lays them
out.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the ``onceflow`` distribution."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = config["package-dir"]
    modules: dict[str, Path] = {}
    for package in config["packages"]:
        parent = max(
            (p for p in package_dir if package == p or package.startswith(p + ".")), key=len
        )
        folder = REPO / package_dir[parent] / package[len(parent) :].lstrip(".").replace(".", "/")
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """The onceflow modules ``name`` imports: ``from P import x`` counts as importing module
    ``P.x`` when there is one, else ``P`` (the parent package, which Python initializes for any
    submodule import, is not counted as such)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # the deepest onceflow module named by the target
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: sorted(set(_imported(name, path))) for name, path in MODULES.items()}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_package_of_the_distribution_has_modules() -> None:
    for package in ("onceflow", "onceflow.runtime", "onceflow.state", "onceflow.state.sqlite"):
        assert package in MODULES
    assert len(MODULES) > 40


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def _edges_from(prefix: str) -> Iterator[tuple[str, str]]:
    for name, targets in GRAPH.items():
        if name == prefix or name.startswith(prefix + "."):
            for target in targets:
                yield name, target


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_state_imports_nothing_of_onceflow_but_the_errors_module() -> None:
    bad = [
        (a, b)
        for a, b in _edges_from("onceflow.state")
        if not _inside(b, "onceflow.state") and b != "onceflow.errors"
    ]
    assert bad == []


@pytest.mark.parametrize("layer", ["onceflow.http", "onceflow.testing", "onceflow.cli"])
def test_the_api_layers_import_the_runtime_only_through_its_package(layer: str) -> None:
    bad = [
        (a, b)
        for a, b in _edges_from(layer)
        if _inside(b, "onceflow.runtime") and b != "onceflow.runtime"
    ]
    assert bad == []


def test_the_declaration_layer_does_not_import_the_runtime_or_the_apis() -> None:
    declaration = [
        n
        for n, path in MODULES.items()
        if path.parent == REPO / "app" and n not in {"onceflow.cli", "onceflow.__main__"}
    ]
    bad = [
        (a, b)
        for a in declaration
        for b in GRAPH[a]
        if any(_inside(b, p) for p in ("onceflow.runtime", "onceflow.http", "onceflow.testing"))
    ]
    assert bad == []


def test_the_runtime_does_not_import_the_apis() -> None:
    bad = [
        (a, b)
        for a, b in _edges_from("onceflow.runtime")
        if _inside(b, "onceflow.http") or _inside(b, "onceflow.testing") or b == "onceflow.cli"
    ]
    assert bad == []
