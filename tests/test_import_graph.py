"""The house is one-way: every module of models/ and analysis/ imports only from its own room or the
rooms before it (at module level and inside functions), and module-level imports form no cycle.

The imports are read with `ast` (nothing is imported), so a violation hidden inside a function is
found too. The same checks run on a small synthetic package, to show that they can fail.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The rooms, lowest first: a module may import from its own room and from earlier ones. An entry
# names a module or a package with everything under it (EXACT ones: only itself); the longest entry
# that covers a module places it. Every module must be placed, so a new one needs a line here.
ROOMS: tuple[tuple[str, ...], ...] = (
    ("models",),
    ("analysis.execution",),  # how a model runs (the execution plan), applied from outside the model
    # shared leaf utilities, below every room that uses them
    (
        "analysis.allocator",
        "analysis.identity",
        "analysis.io",
        "analysis.memory",
        "analysis.stats",
        "analysis.runtime",
        "analysis.options",
        "analysis.command",
    ),
    ("analysis.probe", "analysis"),  # `analysis` itself re-exports the probe room's names
    ("analysis.train",),
    ("analysis.plot",),  # figures over tidy frames, drawn by the experiments and the report
    ("analysis.experiments",),
    ("analysis.report",),
    ("analysis.cli",),  # the `lnscope` command: the top room, imported by nothing
)
EXACT = frozenset({"analysis"})
PACKAGES = ("models", "analysis")

# Imports inside functions that close a cycle (module-level imports alone have none) and that other
# branches remove; the lead empties this set once they are merged. (importer, imported).
KNOWN_PENDING: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    in_function: bool
    line: int

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.importer} -> {self.imported} ({where}, line {self.line})"


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the packages (a package is its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import of one of the packages' modules by another, with whether it sits in a function.
    `from a import b` counts as importing `a.b` when that is a module, else `a`."""
    known = modules(root, packages)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {
            id(node)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(f)
        }
        # `if TYPE_CHECKING:` imports never run: annotations only, so they close no cycle
        type_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block.test)
            for stmt in block.body
            for node in ast.walk(stmt)
        }
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # `import models.config.x` -> models.config
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, id(node) in in_function, node.lineno))
    return found


def room_of(module: str, rooms: tuple[tuple[str, ...], ...] = ROOMS, exact: frozenset[str] = EXACT) -> int:
    """The index of the module's room: that of its longest covering entry."""
    best, best_len = None, -1
    for index, room in enumerate(rooms):
        for entry in room:
            covers = module == entry or (entry not in exact and module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = index, len(entry)
    if best is None:
        raise LookupError(f"module {module} is in no room: add it to ROOMS")
    return best


def later_room_imports(found: list[Import], rooms=ROOMS, exact=EXACT) -> list[Import]:
    """Imports of a module in a later room than the importer's (at any level)."""
    return [i for i in found if room_of(i.imported, rooms, exact) > room_of(i.importer, rooms, exact)]


def cycles(found: list[Import], ignore: frozenset[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """The import cycles among the edges (minus `ignore`): one list of modules per strongly connected
    component with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        if (i.importer, i.imported) not in ignore:
            graph.setdefault(i.importer, set()).add(i.imported)
            graph.setdefault(i.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


# ------------------------------------------------------------------------------------------------
# The house
# ------------------------------------------------------------------------------------------------
FOUND = imports(ROOT)


def test_every_module_has_a_room() -> None:
    unplaced = []
    for module in modules(ROOT):
        try:
            room_of(module)
        except LookupError:
            unplaced.append(module)
    assert not unplaced, f"modules in no room (add them to ROOMS): {unplaced}"


def test_no_module_imports_a_later_room() -> None:
    bad = later_room_imports(FOUND)
    assert not bad, "imports of a later room:\n" + "\n".join(map(str, bad))


def test_no_cycles_at_module_level() -> None:
    found = cycles([i for i in FOUND if not i.in_function])
    assert not found, f"module-level import cycles: {found}"


def test_no_cycles_hidden_inside_functions() -> None:
    """Counting the imports inside functions too, only the KNOWN_PENDING edges close a cycle (and each
    of them still does, so the set shrinks as they are removed)."""
    found = cycles(FOUND, ignore=KNOWN_PENDING)
    assert not found, f"import cycles through imports inside functions: {found}"
    edges = {(i.importer, i.imported) for i in FOUND}
    stale = [e for e in KNOWN_PENDING if e not in edges or not any(set(e) <= set(c) for c in cycles(FOUND))]
    assert not stale, f"KNOWN_PENDING edges that no longer close a cycle (remove them): {stale}"


# ------------------------------------------------------------------------------------------------
# The checks can fail: a synthetic package with the violations the house once had
# ------------------------------------------------------------------------------------------------
SYNTHETIC_ROOMS = (("pkg.low",), ("pkg.mid",), ("pkg.top",))
SYNTHETIC = {
    "pkg/__init__.py": "",
    "pkg/low.py": "import os\n",
    "pkg/mid/__init__.py": "",
    "pkg/mid/a.py": "from pkg.mid import b\nfrom pkg import low\n",
    "pkg/top.py": "from pkg.mid.a import thing\n",
}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


@pytest.mark.parametrize(
    "extra, later, module_cycles, all_cycles",
    [
        ({"pkg/mid/b.py": "X = 1\n"}, [], [], []),  # the clean layering
        # the report and the experiments importing each other, one of them inside a function
        (
            {"pkg/mid/b.py": "def figures():\n    from pkg.top import draw\n"},
            ["pkg.mid.b -> pkg.top"],
            [],
            [["pkg.mid.a", "pkg.mid.b", "pkg.top"]],
        ),
        # a module-level cycle inside one room (no room broken)
        ({"pkg/mid/b.py": "from . import a\n"}, [], [["pkg.mid.a", "pkg.mid.b"]], [["pkg.mid.a", "pkg.mid.b"]]),
        # a low module importing a middle one at module level
        ({"pkg/mid/b.py": "X = 1\n", "pkg/low.py": "import pkg.mid.b\n"}, ["pkg.low -> pkg.mid.b"], [], []),
        # an import for annotations only (`if TYPE_CHECKING:`) never runs: no cycle, no later room
        (
            {
                "pkg/mid/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import T\n"
                "    from . import a\n"
            },
            [],
            [],
            [],
        ),
    ],
)
def test_the_checks_find_violations_in_a_synthetic_package(tmp_path, extra, later, module_cycles, all_cycles) -> None:
    _write(tmp_path, {**SYNTHETIC, **extra})
    found = imports(tmp_path, packages=("pkg",))
    bad = later_room_imports(found, SYNTHETIC_ROOMS, frozenset())
    assert [f"{i.importer} -> {i.imported}" for i in bad] == later
    assert cycles([i for i in found if not i.in_function]) == module_cycles
    assert cycles(found) == all_cycles
