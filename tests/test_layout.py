"""The package layout holds: no import cycles inside ghetl, and the pipeline never loads the notebook layer."""

from __future__ import annotations

import ast
from pathlib import Path

import ghetl

ROOT = Path(ghetl.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}


def load_time_imports(path: Path) -> set[str]:
    """The ghetl modules a module imports when it is loaded: its body's imports, not those inside
    functions (imported on first use) or under TYPE_CHECKING. A module's own packages are loaded
    before it anyway, so importing from them is no edge."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    body = ast.parse(path.read_text()).body
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for stmt in ast.walk(node) if isinstance(node, ast.Try | ast.If) else [node]:
            if isinstance(stmt, ast.Import):
                found |= {alias.name for alias in stmt.names}
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - stmt.level + 1], base]).strip(".")
                found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in stmt.names}
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): load_time_imports(p) for p in ROOT.rglob("*.py") if "migrations" not in p.parts}


def test_no_module_of_ghetl_imports_itself_back():
    edges = graph()
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start not in done:
            visit(start, [start], done)
    assert cycles == []


def test_the_pipeline_never_loads_the_notebook_or_terminal_layer():
    edges = graph()
    reach: set[str] = set()
    todo = [m for m in edges if m.startswith(("ghetl.pipeline", "ghetl.queue", "ghetl.store", "ghetl.steps"))]
    while todo:
        module = todo.pop()
        if module not in reach:
            reach.add(module)
            todo.extend(edges.get(module, ()))
    assert sorted(m for m in reach if m.startswith(("ghetl.workbench", "ghetl.progress", "ghetl.cli"))) == []
