"""The package's structure, checked: no import cycles among clfkit's modules, a layout read
from the folder listing, functions called with keywords past a handful, a trainer whose
state is set in one place, exceptions in one module, and the formatter's style.

Every ``import clfkit.x`` / ``from clfkit.x import y`` / ``from clfkit import x`` counts as an
edge, at module level or inside a function (a cycle hidden in a function is still a cycle).
Imports under ``if TYPE_CHECKING:`` count too, and so do string imports
(``importlib.import_module("clfkit.x")``, ``__import__("clfkit.x")``): the registry finds the
built-in components that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
        elif isinstance(node, ast.Call) and _string_import(node):
            found.add(node.args[0].value)
    edges = set()
    for target in found:
        while target and target not in known:  # clfkit.registry.REGISTRY -> clfkit.registry
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def _string_import(node: ast.Call) -> bool:
    """``importlib.import_module("clfkit.x")``, ``import_module("clfkit.x")`` or
    ``__import__("clfkit.x", ...)`` with a literal clfkit module name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and node.args[0].value.split(".")[0] == "clfkit"
    )


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
    # importlib.import_module("clfkit.components"): the registry loads the built-ins by name
    assert "clfkit.components" in graph["clfkit.registry.table"]


def test_import_linter_contracts_are_kept():
    """ARCHITECTURE.md's import rules (layers; a deployment side without torch) are
    import-linter contracts in pyproject.toml: a back-reference fails here."""
    import shutil
    import subprocess
    import sys

    root = PACKAGE.parent
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency: pip install -e '.[test]'"
    done = subprocess.run(
        [exe, "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


# ---------------------------------------------------------------------------- the layout (issue 23)
MAX_TOP_LEVEL = 12  # entries of clfkit/ a newcomer reads, besides __init__.py and __main__.py


def test_top_level_is_a_short_list():
    entries = sorted(
        p.name
        for p in PACKAGE.iterdir()
        if p.name not in ("__init__.py", "__main__.py", "__pycache__") and not p.name.startswith(".")
    )
    assert len(entries) <= MAX_TOP_LEVEL, (
        f"{len(entries)} entries at the top of clfkit/ (max {MAX_TOP_LEVEL}): {entries}"
    )


MAX_POSITIONAL = 6  # past that, parameters are keyword-only: a call reads without the signature


def positional_parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[str]:
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    return names[1:] if in_class and names and not is_static else names


def functions(tree: ast.AST):
    """(function node, whether it is a method) for every function in ``tree``."""
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child, isinstance(parent, ast.ClassDef)


def test_no_function_takes_more_than_six_positional_parameters():
    found = []
    for name, path in modules().items():
        for node, method in functions(ast.parse(path.read_text(encoding="utf-8"))):
            params = positional_parameters(node, method)
            if len(params) > MAX_POSITIONAL:
                found.append(f"{name}.{node.name}: {len(params)} positional ({', '.join(params)})")
    assert not found, (
        f"more than {MAX_POSITIONAL} positional parameters (make the rest keyword-only):\n" + "\n".join(found)
    )


def _self_attributes(node: ast.AST) -> set[str]:
    """Attributes of ``self`` assigned anywhere in ``node`` (=, +=, annotated, ``with ... as``, for)."""
    targets: list[ast.AST] = []
    for n in ast.walk(node):
        if isinstance(n, ast.Assign):
            targets += n.targets
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign, ast.For)):
            targets.append(n.target)
        elif isinstance(n, ast.withitem) and n.optional_vars is not None:
            targets.append(n.optional_vars)
        elif isinstance(n, ast.NamedExpr):
            targets.append(n.target)
    found = set()
    for target in targets:
        for t in ast.walk(target):
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                found.add(t.attr)
    return found


CONSTRUCTION = ("__init__", "__post_init__")  # a dataclass's __post_init__ is part of its __init__


def late_attributes(tree: ast.AST) -> list[str]:
    """``Class.attr`` for every attribute of ``self`` first assigned outside ``__init__`` (class
    attributes and dataclass fields count as assigned up front)."""
    late = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        body = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        known = {
            t.id
            for n in cls.body
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
            for t in ast.walk(target)
            if isinstance(t, ast.Name)
        }
        known |= {a for f in body if f.name in CONSTRUCTION for a in _self_attributes(f)}
        for f in body:
            if f.name not in CONSTRUCTION:
                late += [
                    f"{cls.name}.{a} (first set in {f.name})" for a in sorted(_self_attributes(f) - known)
                ]
    return late


TRAINER_CODE = ("clfkit.train",)


def test_trainer_state_is_set_in_init():
    """Trainer code sets every attribute in ``__init__``: steps pass explicit values, so the
    order they run in is no invisible contract."""
    found = [
        f"{name}: {a}"
        for name, path in modules().items()
        if name.startswith(TRAINER_CODE)
        for a in late_attributes(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, "attributes first assigned outside __init__:\n" + "\n".join(found)


def test_late_attribute_check_sees_them():
    tree = ast.parse(
        "class T:\n    x = 0\n    def __init__(self):\n        self.a = 1\n"
        "    def step(self):\n        self.a, self.b = 2, 3\n        self.x = 4\n"
        "        with open('f') as self.c:\n            pass\n"
    )
    assert late_attributes(tree) == ["T.b (first set in step)", "T.c (first set in step)"]


def _class_bases(tree: ast.AST):
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        yield (
            cls,
            {
                b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                for b in cls.bases
            },
        )


def test_exceptions_and_warnings_live_in_errors():
    """clfkit's errors (ClfkitError and its kin) and its warnings are defined in errors.py: one
    place to read what can go wrong. A module may keep a private exception it raises and
    catches itself (a name starting with _)."""
    errors_tree = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    ours = {c.name for c, _ in _class_bases(errors_tree)} | {
        "Exception",
        "Warning",
        "UserWarning",
        "ValueError",
    }
    found = []
    for name, path in modules().items():
        if name == "clfkit.errors":
            continue
        for cls, bases in _class_bases(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                bases & ours
                and not cls.name.startswith("_")
                and (bases & ({c.name for c, _ in _class_bases(errors_tree)} | {"Warning", "UserWarning"}))
            ):
                found.append(f"{name}.{cls.name}")
    assert not found, "define these in clfkit/errors.py:\n" + "\n".join(found)


ROOT = PACKAGE.parent


def test_code_is_formatted():
    """ruff format (pyproject [tool.ruff]) leaves the tree as it is."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is a test dependency: pip install -e '.[test]'"
    done = subprocess.run(
        [exe, "format", "--check", "--no-cache", "clfkit", "tests", "plugins", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
