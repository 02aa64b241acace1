"""The package's shape, kept by tests: imports point one way down the layers, no import cycle, small modules,
a short top level, and the README's command table equal to the CLI's commands.

Every import statement counts, the lazy ones inside functions too. Imports under `if TYPE_CHECKING:` never run,
so they are held to the layer order but not counted as cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmtune"

# Lowest first. A module may import from its own layer or any below it, never from a layer above.
LAYERS: list[tuple[str, ...]] = [
    ("llmtune", "llmtune.errors", "llmtune.console", "llmtune.schema", "llmtune.recipe", "llmtune.outdir"),
    ("llmtune.hub", "llmtune.report"),
    ("llmtune.data", "llmtune.tokenizers"),
    ("llmtune.modeling",),
    ("llmtune.infer",),
    ("llmtune.stages",),
    ("llmtune.training",),
    ("llmtune.eval", "llmtune.plan", "llmtune.jobs", "llmtune.docgen"),
    ("llmtune.cli",),
    ("llmtune.__main__",),
]
MAX_LINES = 300
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The layer of a module: that of the longest prefix named in LAYERS ('llmtune' alone is the core)."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or (name != "llmtune" and module.startswith(name + "."))) and len(name) > best:
                best, rank = len(name), i
    assert rank is not None, f"{module} is in no layer; add its package to LAYERS"
    return rank


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported llmtune module, runs at all, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            type_only.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        runs = id(node) not in type_only
        if isinstance(node, ast.Import):
            found += [(a.name, runs, node.lineno) for a in node.names if a.name.split(".")[0] == "llmtune"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "llmtune":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, runs, node.lineno))
    return found


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_every_import_names_a_module_of_the_package() -> None:
    missing = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() for t, _, line in edges if t not in MODULES]
    assert not missing, missing


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{m}:{line} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, edges in GRAPH.items()
        for t, _, line in edges
        if t in MODULES and layer(t) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def find_cycle() -> list[str] | None:
    """A cycle of runtime imports between modules (DFS with colours), or None."""
    edges = {m: sorted({t for t, runs, _ in e if runs and t in MODULES and t != m}) for m, e in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in edges:
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    """The checks above can fail: a cycle planted in a copy of the graph is found."""
    saved = dict(GRAPH)
    try:
        GRAPH["llmtune.errors"] = [*GRAPH["llmtune.errors"], ("llmtune.console", True, 1)]
        GRAPH["llmtune.console"] = [*GRAPH["llmtune.console"], ("llmtune.errors", True, 1)]
        assert find_cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_modules_are_small_and_the_top_level_is_short() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def readme_commands() -> set[str]:
    """The commands named in the first column of the README's command table (`llmtune X ...` cells)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| command | what |", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines()[2:]:
        cell = row.split("|")[1]
        names.update(re.findall(r"`llmtune ([a-z][a-z-]*)", cell))
        names.update(re.findall(r"/\s*`(?!llmtune )([a-z][a-z-]*)(?: |`)", cell))
    return names


def cli_commands() -> set[str]:
    from typer.main import get_command

    from llmtune.cli import app

    return set(get_command(app).commands)


def test_the_readme_command_table_equals_the_cli() -> None:
    assert readme_commands() == cli_commands()


@pytest.mark.parametrize("command", sorted(cli_commands()))
def test_architecture_doc_maps_every_command(command: str) -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert f"`{command}`" in doc, f"docs/architecture.md does not map the command {command!r}"
