"""The package's structure, checked: no import cycles among clfkit's modules.

Every ``import clfkit.x`` / ``from clfkit.x import y`` / ``from clfkit import x`` counts as an
edge, at module level or inside a function (a cycle hidden in a function is still a cycle).
Imports under ``if TYPE_CHECKING:`` count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clfkit"



def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The clfkit modules ``name`` imports: ``from pkg import mod`` names the submodule,
    ``from mod import thing`` the module."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                parts = name.split(".")
                anchor = parts[: len(parts) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    edges = set()
    for target in found:
        while target and target not in known:  # clfkit.registry.REGISTRY -> clfkit.registry
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    shown = "\n".join(" <-> ".join(c) for c in found)
    assert not found, f"import cycles among clfkit modules (module-level or in functions):\n{shown}"


# The reading limits issue 12 set: a module a newcomer can hold in their head, a function that
# fits on a screen. A function over the limit is split, not exempted.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80


def test_modules_and_functions_stay_readable():
    too_long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {len(text.splitlines())} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {lines} lines (max {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "clfkit.registry.table" in graph["clfkit.registry"]
    assert "clfkit.train.build" in graph["clfkit.cli"]  # imported inside the command functions


def test_import_linter_contracts_are_kept():
    """ARCHITECTURE.md's import rules (layers; a deployment side without torch) are
    import-linter contracts in pyproject.toml: a back-reference fails here."""
    import shutil
    import subprocess
    import sys

    root = PACKAGE.parent
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency: pip install -e '.[test]'"
    done = subprocess.run([exe, "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
