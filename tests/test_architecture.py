"""The house's floors: imports run one way (modality_lens -> hooks -> interp), no module imports
itself back through any path, interp loads no model library, and no module outgrows its room."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "hooks", "modality_lens")
FLOOR = {"interp": 0, "hooks": 1, "modality_lens": 2}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """Project modules that `name` imports anywhere in its file: module level, inside functions,
    under TYPE_CHECKING, relative or absolute; `from pkg import sub` counts as importing pkg.sub."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` imports a, a.b and a.b.c; count the deepest project module named
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _package_of(name: str) -> str:
    return name.split(".")[0]


def test_the_import_parser_sees_every_kind_of_import():
    """The parser itself: a module-level, a function-level, a TYPE_CHECKING and a relative import."""
    assert "hooks.loading" in GRAPH["hooks.tl_backend"]          # under TYPE_CHECKING
    assert "modality_lens.bench" in GRAPH["modality_lens.cli"]   # inside a function
    assert "interp.errors" in GRAPH["hooks.adapters"]            # module level
    assert all(_package_of(m) in PACKAGES for deps in GRAPH.values() for m in deps)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    """interp imports neither hooks nor modality_lens; hooks does not import modality_lens."""
    upward = sorted(m for m in GRAPH[name] if FLOOR[_package_of(m)] > FLOOR[_package_of(name)])
    assert not upward, f"{name} imports a higher floor: {upward}"


def _cycle() -> list[str] | None:
    """A cycle of the import graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_two_modules_import_each_other_through_any_path():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    saved = dict(GRAPH)
    try:
        GRAPH["interp.errors"] = {"interp.following"}  # following -> errors already holds
        assert _cycle() == ["interp.errors", "interp.following", "interp.errors"]
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_interp_module_loads_a_model_library():
    """Every interp module, imported in a fresh interpreter, leaves transformers and nnsight unloaded."""
    interp_modules = sorted(m for m in MODULES if _package_of(m) == "interp")
    code = (
        "import importlib, json, sys\n"
        f"for name in {interp_modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('transformers', 'nnsight', 'hooks', 'modality_lens') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert len(interp_modules) > 20  # the list is the real one, not empty


def _function_lengths(source: str) -> list[tuple[str, int]]:
    """(name, lines of code) of every function in `source`: its body without the docstring, blank
    lines and comment-only lines."""
    text = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            span = text[body[0].lineno - 1:body[-1].end_lineno] if body else []
            out.append((node.name, sum(1 for ln in span if ln.strip() and not ln.strip().startswith("#"))))
    return out


def test_function_lengths_count_code_only():
    source = 'def f():\n    """Doc\n    string."""\n    x = 1\n\n    # why\n    return (x +\n            1)\n'
    assert _function_lengths(source) == [("f", 3)]


SOURCES = sorted([*MODULES.values(), *(ROOT / "experiments").glob("*.py"), *(ROOT / "tests").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outgrows_its_room(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [(name, n) for name, n in _function_lengths(path.read_text()) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_the_wheel_lists_every_package():
    """pyproject.toml names its packages one by one: a new subpackage left off would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert listed == on_disk | {"modality_lens_data"}
