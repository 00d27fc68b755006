"""The package's import graph: no cycles, arrows only pointing down, no private names.

Every module of ``omejdn_pg`` is parsed with :mod:`ast` (no import runs), and
every import at any depth counts — inside functions too, since a lazy import
is still a dependency — except those under ``if TYPE_CHECKING:``, which exist
for the type checker alone. The layers, top to bottom:

1. ``omejdn_pg`` (``__init__``, the public surface) and ``omejdn_pg.__main__``
2. ``omejdn_pg.cli.*``
3. ``omejdn_pg.service.*``, the Host and the operations that compose the host and
   the backend, and ``omejdn_pg.bridge.*``, the storage service of the Ruby Omejdn
4. ``omejdn_pg.bootstrap``, the composition root: a loader with the backend wired
5. ``omejdn_pg.host.loader``, reading the static configuration and loading plugins
6. ``omejdn_pg.postgres.*`` and ``omejdn_pg.host.files.*``, which may not import each other
7. ``omejdn_pg.host.events`` (and the ``omejdn_pg.host`` package itself)
8. the vocabulary: every other top-level module (errors, entities, settings, ...)

A module may import its own layer or any layer below it. Two arrows the order
would allow may still not exist, not even for the type checker (:data:`NEVER`):
``omejdn_pg.host`` imports nothing of ``omejdn_pg.postgres`` (the composition
root above both wires them), and ``omejdn_pg.cli`` nothing of
``omejdn_pg.postgres.repositories``. These tests need no database.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "omejdn_pg"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


# --- layers -------------------------------------------------------------------------

BACKENDS = {"postgres": f"{PACKAGE}.postgres", "files": f"{PACKAGE}.host.files"}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer(name: str) -> int:
    """0 is the top; a module may import modules of its own layer or a greater number."""
    if name in (PACKAGE, f"{PACKAGE}.__main__"):
        return 0
    if within(name, f"{PACKAGE}.cli"):
        return 1
    if within(name, f"{PACKAGE}.service") or within(name, f"{PACKAGE}.bridge"):
        return 2
    if name == f"{PACKAGE}.bootstrap":
        return 3
    if name == f"{PACKAGE}.host.loader":
        return 4
    if any(within(name, prefix) for prefix in BACKENDS.values()):
        return 5
    if within(name, f"{PACKAGE}.host"):
        return 6
    return 7


def backend(name: str) -> str | None:
    return next((key for key, prefix in BACKENDS.items() if within(name, prefix)), None)


# --- what each module imports ---------------------------------------------------------


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    private_name: str | None = None
    """A ``_name`` taken from ``target`` (``from target import _name``, ``target._name``)."""


def resolve(source: str, module: str | None, level: int) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` in ``source``."""
    if level == 0:
        return module
    base = source.split(".")
    if not is_package(source):
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def known(name: str) -> str | None:
    """``name`` if it is a module of the package, else its nearest enclosing package module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST, *, typing: bool = False) -> Iterator[ast.AST]:
    """Every node, at any depth, except (unless ``typing``) the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not typing and isinstance(child, ast.If) and is_type_checking(child.test):
                stack.extend(child.orelse)
                stack.append(child.test)
            else:
                stack.append(child)


def imports_of(source: str, *, typing: bool = False) -> list[Import]:
    """What ``source`` imports at run time (with ``typing``, for the type checker too)."""
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"), str(MODULES[source]))
    found: list[Import] = []
    aliases: dict[str, str] = {}
    for node in runtime_nodes(tree, typing=typing):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = known(alias.name) if within(alias.name, PACKAGE) else None
                if target is not None:
                    found.append(Import(source, target, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(source, node.module, node.level)
            if base is None or not within(base, PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append(Import(source, submodule, node.lineno))
                    aliases[alias.asname or alias.name] = submodule
                    private = alias.name if alias.name.startswith("_") else None
                    if private is not None:
                        found.append(Import(source, known(base) or base, node.lineno, private))
                    continue
                target = known(base)
                if target is None:
                    continue
                private = alias.name if alias.name.startswith("_") else None
                found.append(Import(source, target, node.lineno, private))
    for node in runtime_nodes(tree, typing=typing):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            target = aliases[node.value.id]
            found.append(Import(source, target, node.lineno, node.attr))
    return found


GRAPH: dict[str, list[Import]] = {name: imports_of(name) for name in MODULES}


def where(edge: Import) -> str:
    return f"{MODULES[edge.source].relative_to(ROOT.parent)}:{edge.line}"


# --- the rules ------------------------------------------------------------------------


def test_the_package_is_found() -> None:
    assert f"{PACKAGE}.cli.app" in MODULES
    assert f"{PACKAGE}.service.host" in MODULES
    assert sum(len(edges) for edges in GRAPH.values()) > 50


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = {
        name: {e.target for e in edges if e.private_name is None and e.target != name}
        for name, edges in GRAPH.items()
    }
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycles_are_detected() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def upward(edge: Import) -> str | None:
    """Why ``edge`` points the wrong way, or None if it is allowed."""
    source, target = edge.source, edge.target
    if target == source or (within(source, target) and is_package(target) and target != PACKAGE):
        return None
    if layer(target) < layer(source):
        return f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
    mine, theirs = backend(source), backend(target)
    if mine is not None and theirs is not None and mine != theirs:
        return f"{source} imports {target}: the postgres and file backends are separate"
    return None


def test_imports_point_down() -> None:
    problems = [
        f"{where(edge)}: {reason}"
        for edges in GRAPH.values()
        for edge in edges
        if edge.private_name is None and (reason := upward(edge)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_no_private_names_of_other_modules() -> None:
    problems = [
        f"{where(edge)}: {edge.source} uses {edge.target}.{edge.private_name}"
        for edges in GRAPH.values()
        for edge in edges
        if edge.private_name is not None and edge.target != edge.source
    ]
    assert not problems, "\n".join(problems)


NEVER: list[tuple[str, str, str]] = [
    (
        f"{PACKAGE}.host",
        f"{PACKAGE}.postgres",
        "Omejdn's side of the contract knows nothing of the backend; "
        "omejdn_pg.bootstrap wires the two",
    ),
    (
        f"{PACKAGE}.cli",
        f"{PACKAGE}.postgres.repositories",
        "the CLI parses, calls omejdn_pg.service (or omejdn_pg.postgres.admin) and prints",
    ),
]
"""``(importer, imported, why)``: arrows the layers would allow, or that only the type
checker follows, and that still may not exist."""


def never(edge: Import) -> str | None:
    """Why ``edge`` may not exist at all, or None."""
    for importer, imported, why in NEVER:
        if within(edge.source, importer) and within(edge.target, imported):
            return f"{edge.source} imports {edge.target}: {why}"
    return None


def test_no_forbidden_imports_even_for_the_type_checker() -> None:
    problems = [
        f"{where(edge)}: {reason}"
        for name in MODULES
        for edge in imports_of(name, typing=True)
        if (reason := never(edge)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "target", "forbidden"),
    [
        ("omejdn_pg.host.loader", "omejdn_pg.postgres.plugin", True),
        ("omejdn_pg.host.files.store", "omejdn_pg.postgres", True),
        ("omejdn_pg.cli.users", "omejdn_pg.postgres.repositories.listing", True),
        ("omejdn_pg.cli.users", "omejdn_pg.postgres.repositories", True),
        ("omejdn_pg.cli.keys", "omejdn_pg.postgres.admin", False),
        ("omejdn_pg.service.host", "omejdn_pg.postgres.repositories.keys", False),
        ("omejdn_pg.bootstrap", "omejdn_pg.postgres.plugin", False),
    ],
)
def test_the_never_rule(source: str, target: str, forbidden: bool) -> None:
    assert (never(Import(source, target, 1)) is not None) is forbidden


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("omejdn_pg.cli.users", "omejdn_pg.service.host", True),
        ("omejdn_pg.service.host", "omejdn_pg.cli.users", False),
        ("omejdn_pg.postgres.plugin", "omejdn_pg.host.events", True),
        ("omejdn_pg.host.events", "omejdn_pg.postgres.plugin", False),
        ("omejdn_pg.host.files.store", "omejdn_pg.postgres.schema", False),
        ("omejdn_pg.postgres.plugin", "omejdn_pg.host.files.store", False),
        ("omejdn_pg.entities", "omejdn_pg.errors", True),
        ("omejdn_pg.errors", "omejdn_pg.host.events", False),
        ("omejdn_pg.host.loader", "omejdn_pg.host.files.plugins", True),
        ("omejdn_pg.host.loader", "omejdn_pg.service.host", False),
        ("omejdn_pg.__main__", "omejdn_pg.cli.app", True),
        ("omejdn_pg.cli.backup", "omejdn_pg.service.backup", True),
        ("omejdn_pg.service.backup", "omejdn_pg.postgres.database", True),
        ("omejdn_pg.service.backup", "omejdn_pg.cli.output", False),
        ("omejdn_pg.cli.transfer_commands", "omejdn_pg.service.transfer", True),
        ("omejdn_pg.service.transfer.plan", "omejdn_pg.cli.diff", False),
        ("omejdn_pg.service.listing", "omejdn_pg.postgres.repositories.listing", True),
        ("omejdn_pg.postgres.admin", "omejdn_pg.service.host", False),
        ("omejdn_pg.service.keys", "omejdn_pg.postgres.admin", True),
    ],
)
def test_the_layer_rule(source: str, target: str, allowed: bool) -> None:
    assert (upward(Import(source, target, 1)) is None) is allowed
