"""House rules of the ``sorting`` package, read from its source with ``ast`` (nothing is imported):

- no import cycle between its modules (every import counts: module level, inside functions, TYPE_CHECKING);
- the rooms import downhill (:data:`FORBIDDEN`): models never imports training, serving or the applications;
  serving never imports training or the applications; nothing below the CLI imports it;
- no function longer than 80 lines, argument-parser set-up excepted.

``python tests/test_code_health.py`` prints the cycles, the uphill imports and the long functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sorting"
MAX_FUNCTION_LINES = 80

# A room must not import the rooms listed for it.
FORBIDDEN = {
    "sorting.models": ("sorting.training", "sorting.serving", "sorting.apps", "sorting.cli"),
    "sorting.serving": ("sorting.training", "sorting.apps", "sorting.cli"),
    "sorting.training": ("sorting.serving", "sorting.apps", "sorting.cli"),
    "sorting.datasets": ("sorting.models", "sorting.training", "sorting.serving", "sorting.apps", "sorting.cli"),
    "sorting.apps": ("sorting.cli",),
}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their ``__init__``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> Iterator[str]:
    """The package modules an import statement names (the most specific module of each name)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            found = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)
            if found:
                yield found
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                yield f"{base}.{alias.name}"
            elif base in known:
                yield base


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    known = module_files(package)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            graph[module].update(t for t in _imported(node, module, path.name == "__init__.py", known) if t != module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def uphill_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, t) for m, targets in graph.items() for t in targets
            for room, banned in FORBIDDEN.items() if m.startswith(room + ".") and t.startswith(banned)}


def _is_parser_setup(node: ast.AST) -> bool:
    """A function that mostly declares command-line arguments (``add_argument`` / ``add_parser`` calls)."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    declared = sum(c.func.attr in ("add_argument", "add_parser", "add_command", "set_defaults") for c in calls)
    return declared >= 10


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``module.[Class.]function`` -> lines, for every function longer than ``limit`` (parser set-up excepted)."""
    out = {}
    for module, path in module_files(package).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes: list[tuple[str, ast.AST]] = [(module, tree)]
        while scopes:
            prefix, scope = scopes.pop()
            for node in ast.iter_child_nodes(scope):
                if isinstance(node, ast.ClassDef):
                    scopes.append((f"{prefix}.{node.name}", node))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > limit and not _is_parser_setup(node):
                        out[f"{prefix}.{node.name}"] = lines
                    scopes.append((f"{prefix}.{node.name}", node))
    return out


def test_no_import_cycle_between_modules() -> None:
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles: {found}"


def test_rooms_import_downhill() -> None:
    uphill = uphill_imports(import_graph())
    assert not uphill, f"imports against the rooms' order: {sorted(uphill)}"


def test_no_function_longer_than_80_lines() -> None:
    long = long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_module_imports() -> None:
    """A name that moved in one branch and is still imported by another breaks only at import time."""
    import importlib
    import pkgutil

    import sorting

    broken = {}
    for info in pkgutil.walk_packages(sorting.__path__, "sorting."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            broken[info.name] = repr(exc)
    assert not broken, broken


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """A planted cycle (through a relative and a function-level import), an uphill import and a long function
    are found; a long parser set-up is not."""
    pkg = tmp_path / "sorting"
    (pkg / "models").mkdir(parents=True)
    (pkg / "training").mkdir()
    for init in (pkg / "__init__.py", pkg / "models" / "__init__.py", pkg / "training" / "__init__.py"):
        init.write_text("")
    (pkg / "models" / "a.py").write_text("from . import b\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from sorting.models.a import x\n    import sorting.training.t\n")
    body = "".join(f"        x{i} = {i}\n" for i in range(81))
    parser = "".join(f"    p.add_argument('--a{i}')\n" for i in range(81))
    (pkg / "training" / "t.py").write_text(f"class C:\n    def long(self):\n{body}\ndef register(p):\n{parser}")
    graph = import_graph(pkg)
    assert cycles(graph) == [frozenset({"sorting.models.a", "sorting.models.b"})]
    assert uphill_imports(graph) == {("sorting.models.b", "sorting.training.t")}
    assert long_functions(pkg) == {"sorting.training.t.C.long": 82}


if __name__ == "__main__":
    graph = import_graph()
    print("import cycles:", *sorted(sorted(c) for c in cycles(graph)), sep="\n  ")
    print("uphill imports:", *sorted(uphill_imports(graph)), sep="\n  ")
    print(f"functions over {MAX_FUNCTION_LINES} lines:", *(f"{n} {name}" for name, n in sorted(long_functions().items())),
          sep="\n  ")
