"""The floors of ``exchange/``: each module imports only from its own floor or the floors below,
and no modules import each other in a loop.

:data:`FLOORS` is where the floors are written down; the README's table of
floors follows it. Every ``import`` counts, at the top of a module or inside
a function (an import put off until a call is still a dependency), and the
imports only a type checker reads (``if TYPE_CHECKING:``) count too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "exchange"

# Floor by floor from the ground up. A name is a module or a package (every
# module under it); the most specific name decides.
FLOORS: dict[int, tuple[str, ...]] = {
    # the package's own version
    0: ("exchange",),
    # the domain and the process's basics: codes, statuses, reasons, settings,
    # metrics, logs, the shipped files, the event loop
    1: (
        "exchange.agency",
        "exchange.status",
        "exchange.reasons",
        "exchange.settings",
        "exchange.metrics",
        "exchange.logs",
        "exchange.installation",
        "exchange.event_loop",
    ),
    # the formats and the adapters: edXML, certificates, RabbitMQ, PostgreSQL
    2: ("exchange.edxml", "exchange.pki", "exchange.broker", "exchange.store", "exchange.seals"),
    # the checks, the set-up, the failure table, the directory cache, the
    # command plumbing
    3: (
        "exchange.checks",
        "exchange.registry",
        "exchange.failures",
        "exchange.directory",
        "exchange.commands",
        "exchange.operator_log",
    ),
    # the decision on one message (pure), receipts, the agencies' client
    4: ("exchange.pipeline", "exchange.receipts", "exchange.client"),
    # the ledger; the gateway
    5: ("exchange.ledger", "exchange.gateway"),
    # the worker's shell
    6: ("exchange.worker",),
    # the operator tools and the demo
    7: (
        "exchange.replay",
        "exchange.report",
        "exchange.audit",
        "exchange.retention",
        "exchange.benchmark",
        "exchange.demo",
    ),
    # the command line, which offers them all; no tool imports it
    8: ("exchange.cli", "exchange.__main__"),
}


def module_names() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` is, or the one it is in (``exchange.x.Thing`` is in ``exchange.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(
    module: str, source: str, modules: dict[str, Path], *, is_package: bool = False
) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` of every import of the package's modules in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from exchange.broker import headers`` imports the module
            # exchange.broker.headers; ``from exchange.x import f``, exchange.x.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "exchange" or name.startswith("exchange."):
                owner = _owner(name, modules)
                if owner is not None and owner != module:
                    yield owner, node.lineno


def floor_of(module: str) -> int:
    """The floor of ``module``: that of the most specific name of :data:`FLOORS` that holds it."""
    best: tuple[int, int] | None = None  # (length of the name, floor)
    for floor, names in FLOORS.items():
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > best[0]
            ):
                best = (len(name), floor)
    if best is None:
        raise LookupError(f"{module} is on no floor: add it to FLOORS (and the README's table)")
    return best[1]


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the whole package."""
    modules = module_names()
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for module, path in modules.items():
        graph.setdefault(module, {})
        source = path.read_text("utf-8")
        is_package = path.name == "__init__.py"
        for imported, line in imports_of(module, source, modules, is_package=is_package):
            graph[module].setdefault(imported, line)
    return graph


def upward_edges(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each import of a module from a higher floor, as ``a (floor) -> b (floor), line N``."""
    found = []
    for module, imported in sorted(graph.items()):
        for target, line in sorted(imported.items()):
            if floor_of(target) > floor_of(module):
                found.append(
                    f"{module} (floor {floor_of(module)}) imports {target} "
                    f"(floor {floor_of(target)}), line {line}"
                )
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_module_is_on_a_floor() -> None:
    unplaced = []
    for module in module_names():
        try:
            floor_of(module)
        except LookupError as error:
            unplaced.append(str(error))
    assert unplaced == []


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    assert upward_edges(import_graph()) == []


def test_no_modules_import_each_other_in_a_loop() -> None:
    assert cycles(import_graph()) == []


def test_the_walk_sees_imports_inside_functions_and_relative_ones() -> None:
    # The checks themselves must be able to fail: a function-level import
    # from above and a loop, in a made-up graph and in made-up source.
    source = (
        "def late():\n"
        "    from exchange.worker import run_workers\n"
        "from . import settings\n"
        "from exchange.broker import headers as header\n"
    )
    found = {name for name, _ in imports_of("exchange.store.queries", source, module_names())}
    assert found == {"exchange.worker", "exchange.store", "exchange.broker.headers"}
    graph = {"exchange.store.queries": {"exchange.worker": 2}, "exchange.worker": {}}
    assert upward_edges(graph) == [
        "exchange.store.queries (floor 2) imports exchange.worker (floor 6), line 2"
    ]
    assert cycles({"exchange.a": {"exchange.b": 1}, "exchange.b": {"exchange.a": 1}}) == [
        ["exchange.a", "exchange.b"]
    ]


@pytest.mark.parametrize("module", ["exchange.benchmark.harness", "exchange.gateway.app"])
def test_a_module_inside_a_package_takes_the_package_floor(module: str) -> None:
    assert floor_of(module) == floor_of(module.rsplit(".", 1)[0])
