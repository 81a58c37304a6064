"""The layers hold: engine/ and protocol/ stay sans-I/O (no networking, no trio, no database,
no wall clock), and the edge reaches actors only through their requests and views."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "trio",
    "trio_websocket",
    "asyncio",
    "asyncpg",
    "redis",
    "socket",
    "ssl",
    "selectors",
    "quart",
    "quart_trio",
    "quart_schema",
    "hypercorn",
    "http",
    "urllib",
    "time",
    "threading",
    "subprocess",
    "structlog",
    "logging",
}
OURS_ABOVE = {
    "engine": {"actors", "gateway", "persistence", "bench"},
    "protocol": {"engine", "actors", "gateway", "persistence", "bench"},
}
WALL_CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", ["engine", "protocol"])
def test_core_imports_no_io(package: str) -> None:
    offenders = []
    for path in _modules(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN or top in OURS_ABOVE[package]:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "the sans-I/O core imports I/O or a higher layer:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize("package", ["engine", "protocol"])
def test_core_never_reads_the_clock(package: str) -> None:
    offenders = []
    for path in _modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in WALL_CLOCK_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"datetime", "date", "time", "dt"}
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "the core reads the wall clock:\n" + "\n".join(offenders)


def test_importing_the_core_loads_no_io_module() -> None:
    """The same property at run time, transitive imports included (numpy, msgspec, ...)."""
    code = (
        "import sys, engine, protocol\n"
        "import engine.analytics, engine.guards, engine.triggers, engine.trailing\n"
        "bad = sorted(m for m in ('trio', 'asyncpg', 'redis', 'quart', 'hypercorn',"
        " 'trio_websocket') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


# -- the actors' boundary: the edge talks to actors through requests and views only ----------

EDGE = ("gateway", "persistence", "bench", "sim")
"""Packages above the actors (a missing one has no modules to check)."""

ACTOR_LOOKUPS = {"node", "users", "user", "devices", "device", "symbols", "symbol", "actor"}
"""Names through which code reaches an actor (``node.user(...)``, ``node.users[...]``...)."""


def _edge_trees() -> list[tuple[Path, ast.AST]]:
    return [
        (path, ast.parse(path.read_text(), filename=str(path)))
        for package in EDGE
        for path in _modules(package)
    ]


def _names_in(node: ast.AST) -> set[str]:
    """Every name and attribute name an expression is made of."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
    return names


def test_the_edge_never_reads_an_actors_core() -> None:
    """An actor's core is its private state: the edge reads a view the actor offers."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _edge_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "core"
    ]
    assert not offenders, "reads an actor's core outside actors/:\n" + "\n".join(offenders)


def test_the_edge_never_runs_code_inside_an_actor() -> None:
    """No ``call(fn)``: the edge sends a named request (``actors.messages``), and an actor
    offers no method that runs a caller's function on its state."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _edge_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "call"
        and _names_in(node.func.value) & ACTOR_LOOKUPS
    ]
    for path in _modules("actors"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Actor"):
                offenders += [
                    f"{path.relative_to(ROOT)}:{item.lineno} {node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and item.name == "call"
                ]
    assert not offenders, "runs a function inside an actor:\n" + "\n".join(offenders)


MAILBOX_TYPES = {"Mailbox", "QuoteInbox", "StreamBuffer", "deque"}
INPUTS = {"deliver", "control", "inbound", "note", "put_control", "put_nowait", "offer"}
"""The methods through which messages enter an actor."""


def test_actor_mailboxes_are_typed() -> None:
    """A mailbox, and a method that fills one, names the messages it takes: never ``Any`` or
    ``object`` (a stream's coalescing ``key`` is no message)."""
    offenders = []
    for path in _modules("actors"):
        for node in ast.walk(ast.parse(path.read_text())):
            annotations: list[ast.expr] = []
            if isinstance(node, ast.AnnAssign) and _names_in(node.annotation) & MAILBOX_TYPES:
                annotations.append(node.annotation)
            elif isinstance(node, ast.FunctionDef) and node.name in INPUTS:
                annotations += [
                    a.annotation for a in node.args.args if a.annotation and a.arg != "key"
                ]
            offenders += [
                f"{path.relative_to(ROOT)}:{a.lineno}"
                for a in annotations
                if {"Any", "object"} & _names_in(a)
            ]
    assert not offenders, "an actor's mailbox takes anything:\n" + "\n".join(offenders)


def _actor_imports(module: str) -> set[str]:
    """The ``actors`` modules ``module`` imports, type-checking imports included."""
    path = ROOT / (module.replace(".", "/") + ".py")
    return {name for name in _imports(path) if name.startswith("actors.")}


def test_actor_modules_do_not_import_the_node() -> None:
    """The node imports the actors; they see it through ``actors.ports``: no import circle."""
    offenders = []
    for start in sorted(_actor_imports("actors.node")):
        seen, todo = {start}, [start]
        while todo:
            for name in _actor_imports(todo.pop()):
                if name == "actors.node":
                    offenders.append(start)
                elif name not in seen:
                    seen.add(name)
                    todo.append(name)
    assert not offenders, "imports actors.node back (a circle):\n" + "\n".join(offenders)
