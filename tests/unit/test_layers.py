"""The layers, read from the imports (by ast, every import, inside functions too): `core` imports
nothing else of meterline; the components (`schemas`, `streams`, `sinks`, `reconciler`) never
import the composition root (`meterline`); and no module imports itself through others.

Everything is imported under the one installed name: `core/x.py` is `meterline.core.x` (the
symbolic links in meterline/, the README's "One import name"). Here a module is named by its
folder, `core.x`, so that the layers read as the folders do."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "schemas", "streams", "sinks", "reconciler", "meterline")
COMPONENTS = ("schemas", "streams", "sinks", "reconciler")
LINKED = ("core", *COMPONENTS)
"""The folders installed inside `meterline` (meterline/core -> ../core, ...)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def by_folder(name: str) -> str:
    """`meterline.core.x` as the module of core/x.py is named here: `core.x`."""
    inside = name.removeprefix("meterline.")
    return inside if inside.split(".")[0] in LINKED else name


def imports(path: Path, known: set[str]) -> Iterator[str]:
    """The project modules `path` imports (`from a import b` counts as a.b when a.b is a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [by_folder(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = by_folder(node.module)
            names = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            names = names or [module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                yield name


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: set(imports(path, known)) - {name} for name, path in modules.items()}


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            below = target.split(".")[0]
            if top == "core" and below != "core":
                found.append(f"{module} -> {target}: core imports nothing else of meterline")
            if top in COMPONENTS and below == "meterline":
                found.append(f"{module} -> {target}: a component imports the composition root")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def bare_imports(source: str) -> list[str]:
    """What `source` imports by a folder's own name (`core.x`) rather than the installed one
    (`meterline.core.x`): under both, a module would be loaded twice, its classes and metrics two."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name.split(".")[0] in LINKED]


def test_everything_is_imported_under_the_one_installed_name() -> None:
    """Issue 36, item 9: a product service that installs meterline gets one top-level name."""
    assert bare_imports("from core.config import Config\nimport meterline.core.kafka\n") == ["core.config"]
    sources = [
        path
        for folder in (*PACKAGES, "tests", "bench", "examples")
        for path in (ROOT / folder).rglob("*.py")  # not through the links: each file once
    ]
    found = {
        str(path.relative_to(ROOT)): names for path in sources if (names := bare_imports(path.read_text()))
    }
    assert found == {}


def test_the_installed_name_reaches_each_folder() -> None:
    for folder in LINKED:
        link = ROOT / "meterline" / folder
        assert link.is_symlink() and link.resolve() == ROOT / folder


def test_core_stands_alone_and_components_never_import_the_composition_root() -> None:
    assert layer_violations(graph()) == []


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(graph()) == []


def test_the_checks_catch_a_planted_back_import_and_circle() -> None:
    """The checks themselves: a planted back-import and a planted circle are both found."""
    edges = graph()
    edges["sinks.stripe.sink"] = edges["sinks.stripe.sink"] | {"meterline.devstack"}
    edges["core.errors"] = {"schemas.errors"}
    assert any("sinks.stripe.sink -> meterline.devstack" in v for v in layer_violations(edges))
    assert any("core.errors -> schemas.errors" in v for v in layer_violations(edges))
    assert ["core.errors", "schemas.errors"] in cycles(edges)


MODE_CHOSEN_IN = {
    "sinks.stripe.modes",
    "sinks.stripe.totals",
    "sinks.stripe.catalog.sync",
    "meterline.config",
}
"""Where `stripe.mode` is read: the sink's reporting mode, the reader of Stripe's totals, the
catalog sync (a legacy account's prices carry no meter), and the configuration's check of the rate
card against the mode (a `last` meter's level falls, which usage records cannot bill). Everything
else asks the object chosen."""


STRIPE_MODES = {"meter_events", "meter_event_stream", "usage_records"}


def mode_tests(source: str) -> list[int]:
    """Lines that compare something to a Stripe reporting mode's name."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Constant) and side.value in STRIPE_MODES
            for side in [node.left, *node.comparators]
        )
    ]


def test_the_stripe_mode_is_chosen_in_one_place() -> None:
    """Issue 36, item 1: one object per reporting mode, picked once (sinks.stripe.modes,
    sinks.stripe.totals), instead of `stripe.mode` tested wherever a mode differs."""
    assert mode_tests('if config.stripe.mode != "usage_records":\n    pass\n') == [1]  # the rule bites
    tested = {
        name: lines
        for name, path in project_modules().items()
        if name not in MODE_CHOSEN_IN and (lines := mode_tests(path.read_text()))
    }
    assert tested == {}


PURE = (
    "streams.windows",
    "sinks.stripe.report",
    "sinks.stripe.catalog.prices",
    "reconciler.billing.pricing",
    "reconciler.alerts.rules",
    "reconciler.notices.compose",
    "reconciler.review.figures",
)
"""Modules of math and rules, tested without I/O: each beside its I/O twin in its package."""
IO_CLIENTS = {"clickhouse_connect", "chdb", "confluent_kafka", "faust", "rocksdict", "stripe"}


def third_party(path: Path) -> set[str]:
    """The top-level names of what `path` imports from outside the project (inside functions too;
    not for type checking alone)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks hold names for the type checker only
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(PACKAGES)


def io_reached(module: str, edges: dict[str, set[str]], modules: dict[str, Path]) -> set[str]:
    """The I/O clients `module` imports, itself or through the project modules it imports."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += edges.get(current, set())
    return {client for name in seen for client in third_party(modules[name]) & IO_CLIENTS}


def test_the_pure_modules_reach_no_io_client() -> None:
    """Issue 36: the pure module and its I/O twin named apart, and the pure one kept pure."""
    modules, edges = project_modules(), graph()
    assert io_reached("sinks.stripe.directory", edges, modules) >= {"stripe"}  # the rule bites
    assert {m: io_reached(m, edges, modules) for m in PURE} == {m: set() for m in PURE}
