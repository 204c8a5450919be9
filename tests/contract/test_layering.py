"""Imports flow one way: no library package imports the shell (``carpulse``), and the imports
between library modules form no circle.

Every ``import``/``from ... import`` is read with :mod:`ast`, also those inside functions and under
``TYPE_CHECKING`` (a lazy import still ties two modules together). ``python -m pytest
tests/contract/test_layering.py`` prints each offending import with its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("core", "firmware_bridge", "edge", "models", "stream", "crm", "dashboards")
SHELL = "carpulse"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _library_modules() -> dict[str, Path]:
    found = {}
    for pkg in LIBRARIES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _imports(path: Path, name: str) -> Iterator[tuple[str, list[str], int]]:
    """``(module, names taken from it, line)`` for every import of ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node.lineno


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the library modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names, _ in _imports(path, name):
            hits = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
            if len(hits) < len(names) or not names:
                # a name that is not a submodule comes from the module itself (or its parents')
                probe = target
                while probe and probe not in modules:
                    probe = probe.rpartition(".")[0]
                if probe:
                    hits.add(probe)
            graph[name] |= hits - {name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        scc.append(top)
                        if top == node:
                            break
                    if len(scc) > 1:
                        out.append(sorted(scc))
    return out


def test_no_library_module_imports_the_shell() -> None:
    modules = _library_modules()
    assert len(modules) > 100, "the library packages were not found"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in modules.items()
        for target, _, line in _imports(path, name)
        if target.split(".")[0] == SHELL
    ]
    assert not bad, "libraries must not import the shell:\n" + "\n".join(bad)


def test_library_imports_have_no_circle() -> None:
    circles = _circles(_edges(_library_modules()))
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_circle_finder_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    mod = pkg / "m.py"
    mod.write_text("from . import a\nfrom .b import c\nfrom ..top import x\n")
    got = [(t, n) for t, n, _ in _imports(mod, "pkg.m")]
    assert got == [("pkg", ["a"]), ("pkg.b", ["c"]), ("top", ["x"])]
