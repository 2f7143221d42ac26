"""The package's shape, read from its source (issue 26): no import circles, no private names across modules.

Why a test: both come back silently. A circle works until someone moves an
import to module level; a private name imported elsewhere means two modules
share one fact without saying so, and a change to it breaks the other one
with no warning. Every import counts, at module level or inside a function
(a lazy import is still a dependency); only imports under `TYPE_CHECKING`,
which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "activations", "sae", "explain", "causal", "report", "pipeline")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import that can run, absolute or relative."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name.removesuffix(".__init__")
    out: list[tuple[str, list[str]]] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                walk_else(child)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, []) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                out.append((base, [a.name for a in child.names]))
            walk(child)

    def walk_else(node: ast.If) -> None:
        for child in node.orelse:
            walk(ast.Module(body=[child], type_ignores=[]))

    walk(ast.parse(path.read_text(encoding="utf-8")))
    return out


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports (the package's __init__ aside)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        top = module.split(".")[0]
        for target, names in _imports(path):
            for candidate in [target] + [f"{target}.{n}" for n in names]:
                if candidate in MODULES and candidate != module and candidate.split(".")[0] == top \
                        and candidate not in PACKAGES:
                    graph[module].add(candidate)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_circle_and_a_lazy_import():
    """The checks below could pass by reading nothing: this one fails if the walker misses imports."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = _edges()
    assert "sae.registry" in graph["sae.io"]  # a module-level import
    assert any(m.startswith("explain.llm.") for m in graph["explain.llm.backends"])  # imports inside functions


def test_no_import_circles_inside_a_package():
    assert _cycles(_edges()) == []


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for module, path in MODULES.items():
        for target, names in _imports(path):
            if target in MODULES and target != module:
                offenders += [f"{module} imports {target}.{n}" for n in names if n.startswith("_")]
            private_module = [p for p in target.split(".") if p.startswith("_") and p != "__future__"]
            if target.split(".")[0] in PACKAGES and private_module:
                offenders.append(f"{module} imports private module {target}")
    assert offenders == []


@pytest.mark.parametrize("package", [p for p in PACKAGES if (ROOT / p).is_dir()])
def test_every_package_is_installed(package):
    """A package the code imports but setup.cfg does not list works from a checkout and fails once installed."""
    listed = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert f"    {package}*" in listed
