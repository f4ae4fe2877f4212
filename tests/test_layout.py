"""The house's shape, as the project brief keeps it: imports one way (no cycle; runtime below
the data and the tasks; no task importing another), no module over 600 lines, no function over
100. Read from the source (ast), nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import liif_cli

PACKAGE = Path(liif_cli.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, at any depth (a function's imports too); `from
    pkg import sub` is the module sub."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t.startswith("liif_cli") and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_import_cycle():
    graph = _graph()

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        for n in graph.get(a, ()):
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                if reaches(n, b, seen):
                    return True
        return False
    assert [m for m in graph if reaches(m, m, set())] == []


def test_imports_go_one_way():
    """runtime serves every task and knows none (nor the data of training and evaluation); a
    task may use runtime, model, io and data, never another task."""
    graph = _graph()
    upward = ("liif_cli.data", "liif_cli.tasks", "liif_cli.cli", "liif_cli.view")
    assert {m: sorted(d for d in deps if d.startswith(upward))
            for m, deps in graph.items() if m.startswith("liif_cli.runtime")
            and any(d.startswith(upward) for d in deps)} == {}

    def task(m: str) -> str | None:
        parts = m.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "tasks" else None
    crossing = {m: sorted(d for d in deps if task(d) and task(d) != task(m))
                for m, deps in graph.items() if task(m)}
    assert {m: ds for m, ds in crossing.items() if ds} == {}


def test_no_module_over_600_lines_nor_function_over_100():
    long_modules, long_functions = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long_functions.append(f"{name}.{node.name}")
    assert long_modules == [] and long_functions == []
