"""The package's shape: small functions, imports only down the layers, no cycles, nothing imports app.

Read from the source with `ast`, so imports inside functions count as much as those at the top
of a module (a function-level import hides a dependency; it does not remove it). The package
root is the public facade: it imports lazily from every layer (its table `_EXPORTS` counts as
its imports), and no module of the package imports a facade name from it, only its constants.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cifake_lib

PACKAGE = Path(__file__).resolve().parent.parent / "cifake_lib"
# Imports go only down this list (a module may import its own layer and those before it).
LAYERS = ("core", "data", "clip", "evaluation", "viz", "methods", "analysis", "app")
MAX_FUNCTION_LINES = 100
# Known exceptions, each to be removed by the work that fixes it: {("path/in/package.py", "function")}.
LONG_FUNCTIONS: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []  # none: an entry here is a debt, named with its reason


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The package module an imported dotted name lives in (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported package module, line) for every import statement of a module, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("cifake_lib") else None
            if target is not None and target != module:
                out.append((target, node.lineno))
    return out


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}
FACADE = "cifake_lib"  # the package root: constants, plus the lazily imported public API
FACADE_NAMES = frozenset(cifake_lib._EXPORTS)
IMPORTS[FACADE] = IMPORTS[FACADE] + [(module, 0) for module, _ in cifake_lib._EXPORTS.values()]


def layer(module: str) -> str | None:
    """A module's layer; None for the package root (its constants are for everyone; the facade may
    import every layer)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] == "__main__":
        return "app"
    return parts[1] if parts[1] in LAYERS else None


def test_every_subpackage_is_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS) - {"__main__"})
    assert not unknown, f"modules outside the layer list {LAYERS}: {unknown}"


def test_imports_only_go_down_the_layers():
    bad = []
    for module, imports in IMPORTS.items():
        here = layer(module)
        for target, line in imports:
            there = layer(target)
            if here is None or there is None:
                continue
            if LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{MODULES[module].relative_to(PACKAGE)}:{line} ({here}) imports {target} ({there})")
    assert not bad, "imports that go up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_nothing_imports_app():
    # The facade may: it is the package's public face (notebook_context, the runners of app/stages).
    bad = [f"{MODULES[m].relative_to(PACKAGE)}:{line} imports {t}"
           for m, imports in IMPORTS.items() if layer(m) != "app" and m != FACADE
           for t, line in imports if layer(t) == "app"]
    assert not bad, "only app (and `python -m cifake_lib`) may import app:\n" + "\n".join(bad)


def _facade_uses(path: Path) -> list[tuple[str, int]]:
    """(public name, line) a module takes from the facade: `from cifake_lib import NAME` or
    `cifake_lib.NAME` (constants such as LABEL_NAMES are not facade names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == FACADE and not node.level:
            out += [(a.name, node.lineno) for a in node.names if a.name in FACADE_NAMES or a.name == "*"]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == FACADE
              and node.attr in FACADE_NAMES):
            out.append((node.attr, node.lineno))
    return out


def test_nothing_in_the_package_uses_the_facade():
    """A module imports what it needs from its module, never through the root (a cycle in disguise)."""
    bad = [f"{path.relative_to(PACKAGE)}:{line} takes {name} from the package root"
           for m, path in MODULES.items() if m != FACADE for name, line in _facade_uses(path)]
    assert not bad, "import from the defining module instead:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, found", [
    ("from cifake_lib import LABEL_NAMES, load_cifake\n", [("load_cifake", 1)]),
    ("import cifake_lib\ndef f():\n    return cifake_lib.predict, cifake_lib.__version__\n", [("predict", 3)]),
    ("from cifake_lib import CIFAR_CLASSES\n", []),
])
def test_facade_uses_are_found(tmp_path, source, found):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _facade_uses(path) == found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    # The package root only holds constants: importing it is no dependency on anything else.
    graph = {m: {t for t, _ in imports if t != "cifake_lib"} for m, imports in IMPORTS.items()}
    cycles = [c for c in _cycles(graph) if c not in KNOWN_CYCLES]
    stale = [c for c in KNOWN_CYCLES if c not in _cycles(graph)]
    assert not stale, f"known cycles that are gone (remove them from KNOWN_CYCLES): {stale}"
    assert not cycles, "import cycles (module-level and function-level imports):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_detector_finds_cycles():
    """The check above can fail: a three-module loop and a self-contained chain."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_over_100_lines():
    long, stale = [], set(LONG_FUNCTIONS)
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line, length in _functions(path):
            if length <= MAX_FUNCTION_LINES:
                continue
            if (rel, name) in LONG_FUNCTIONS:
                stale.discard((rel, name))
                continue
            long.append(f"{rel}:{line} {name}: {length} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
    assert not stale, f"known exceptions that are no longer over {MAX_FUNCTION_LINES} lines (remove them): {stale}"


@pytest.mark.parametrize("source, expected", [
    ("from cifake_lib.analysis import explain\n", ["cifake_lib.analysis.explain"]),
    ("def f():\n    from cifake_lib.viz.gallery import upsample_nearest\n", ["cifake_lib.viz.gallery"]),
    ("import cifake_lib.clip.head as h\n", ["cifake_lib.clip.head"]),
])
def test_imports_are_found_at_any_depth(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [t for t, _ in _imports("cifake_lib.core.m", path)] == expected
