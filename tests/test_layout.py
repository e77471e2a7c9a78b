"""The package's layers: jobs at the top, shared infrastructure at the bottom, and every import pointing down.

Read with the standard library's `ast` from the source files, so the test sees every import (top-level and inside
functions) without importing anything.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import from its own layer's package and from any lower layer, never from a higher one;
# two packages on one floor do not import each other.
LAYERS = [
    ["pipeline.infra"],
    ["pipeline.qalign"],
    ["schemas"],
    ["pipeline.corpora", "pipeline.models"],
    ["pipeline.methods", "pipeline.registry"],
    ["pipeline.scorers", "pipeline.samples"],
    ["pipeline.scoring", "pipeline.training"],
    ["pipeline.curation"],
    ["pipeline.cli"],
    ["jobs"],
]
FLOOR = {package: i for i, floor in enumerate(LAYERS) for package in floor}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in FLOOR:
            return ".".join(parts[:n])
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse(path: Path) -> ast.Module:
    # CPython 3.11's ast.parse can fail with "AST constructor recursion depth mismatch" when the garbage collector runs
    # a finalizer (another test's objects) while it builds the tree (python/cpython#106905): no collection meanwhile.
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        gc.enable()


def imports(path: Path) -> set[str]:
    """The project modules `path` imports (`from pipeline import x` counts as pipeline.x)."""
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in ("pipeline", "schemas", "jobs")}


def graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("schemas/*.py"), *ROOT.glob("jobs/*.py")]
    modules = {module_name(f): f for f in files}
    # an imported name that is not a module (a function, a class) stands for the module that defines it
    return {
        name: {m if m in modules else m.rsplit(".", 1)[0] for m in imports(path)} - {name}
        for name, path in modules.items()
    }


def test_every_module_belongs_to_a_layer_and_every_import_resolves():
    edges = graph()
    assert not [m for m in edges if package_of(m) is None and m != "pipeline"]
    assert not [f"{m} imports {d}" for m, deps in edges.items() for d in deps if d not in edges]


def test_imports_point_down_the_layers():
    upward = []
    for module, deps in graph().items():
        here = package_of(module)
        for dep in deps:
            there = package_of(dep)
            if there is None or there == here:
                continue
            if FLOOR[there] >= FLOOR[here]:
                upward.append(f"{module} imports {dep} ({there} is not below {here})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges.get(module, ())):
            if dep not in edges:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]) if dep in path else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_library_imports_nothing_from_jobs_or_tests():
    for f in ROOT.glob("pipeline/**/*.py"):
        tree = parse(f)
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m.split(".")[0] for m in names} & {"jobs", "tests", "conftest"}, f
