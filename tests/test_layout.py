"""The source layout: layers import one way down, no import cycles, small modules.

Derived from the code itself (its import statements, read with ``ast``), so a
new module or an upward import fails here rather than in a reviewer's head.
Imports under ``if TYPE_CHECKING:`` do not count (they never run); imports
inside functions do (they run, only later).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "msgcluster"

# Bottom to top (see DESIGN.md, "Layers"). A module may import modules of its
# own layer or of layers below it, never above. Keys are the first name under
# ``msgcluster`` (a subpackage or a top-level module).
LAYERS: list[set[str]] = [
    # foundations: errors, schemas, codecs, AWS client building, settings
    {
        "_errors",
        "_redaction",
        "_schemas",
        "_itemcodec",
        "_clusterkeys",
        "_batching",
        "_aws_errors",
        "_aws",
        "_settings",
        "_dynamo",
        "_results",
        "_trace_context",
        "_provision",
    },
    {"queues"},  # drivers and the portable queue layer (payload offloading)
    {"_context"},  # a Client's shared state: its AWS clients and open queues
    {"read"},  # the read pipeline
    {"messages"},  # tracked messages
    {"clusters"},  # fan-out, fan-in, globals
    {"runtime", "_dead_letters"},  # completion over batches, safe_process_batch
    {"_client", "_client_clusters"},  # the Client facade
    {"worker"},
    {"integrations"},
    {"cli", "demo", "__init__"},
]
# The embedded local AWS: it may use the foundations only, and only the
# programs that start it (CLI, demo) import it.
LOCAL = "local"
LOCAL_MAY_IMPORT = LAYERS[0]
LOCAL_IMPORTED_BY = {"cli", "demo", LOCAL}

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def group(module: str) -> str:
    """The layer key of a module: ``msgcluster.queues._sqs`` -> ``queues``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported msgcluster module, at module level?) for every runtime import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    top = {id(n) for n in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "msgcluster":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.append((full if full in MODULES else target, id(node) in top))
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name, id(node) in top)
                for alias in node.names
                if alias.name.split(".")[0] == "msgcluster"
            )
    return found


def layer_of(module: str) -> int:
    key = group(module)
    for index, members in enumerate(LAYERS):
        if key in members:
            return index
    raise AssertionError(f"{module}: its layer is not declared in tests/test_layout.py")


def is_entry_point(module: str) -> bool:
    # ``python -m ...`` programs: nothing imports them.
    return module.endswith("__main__")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        if group(module) != LOCAL:
            layer_of(module)


def test_imports_go_one_way_down() -> None:
    upward = []
    for module in MODULES:
        if is_entry_point(module):
            continue
        for target, _ in imports(module):
            if group(target) == LOCAL or group(module) == LOCAL:
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_local_aws_is_apart() -> None:
    wrong = []
    for module in MODULES:
        for target, _ in imports(module):
            if group(module) == LOCAL and group(target) not in LOCAL_MAY_IMPORT | {LOCAL}:
                wrong.append(f"{module} imports {target}")
            importer_may = group(module) in LOCAL_IMPORTED_BY or is_entry_point(module)
            if group(target) == LOCAL and not importer_may:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """No cycle among modules, counting every runtime import (a lazy import in a
    cycle is a cycle put off, not removed)."""
    graph = {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    # A package's __init__ re-exports its modules: importing the package is
    # importing them, not a cycle back into it.
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_functions_are_small(module: str) -> None:
    source = MODULES[module].read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
