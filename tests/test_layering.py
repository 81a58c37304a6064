"""The layers hold: engine/ and protocol/ stay sans-I/O (no networking, no trio, no database,
no wall clock); the edge reaches actors only through their requests and views; and sim/ (the
simulated outside world) is used only from the edge, the harnesses and the tests."""

from __future__ import annotations

import ast
import re
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
    "engine": {"actors", "gateway", "persistence", "sim", "bench"},
    "protocol": {"engine", "actors", "gateway", "persistence", "sim", "bench"},
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _engine_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Each engine module -> the engine modules it imports, with the names taken from each.

    Every import counts, ``TYPE_CHECKING`` ones included: a circle of annotations is still a
    circle to read. ``from engine.user import core`` imports the module ``engine.user.core``.
    """
    modules = {_module_name(path): path for path in _modules("engine")}
    graph: dict[str, list[tuple[str, list[str]]]] = {}
    for module, path in modules.items():
        edges: list[tuple[str, list[str]]] = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges += [(alias.name, []) for alias in node.names if alias.name in modules]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [alias.name for alias in node.names]
                submodules = [
                    f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules
                ]
                edges += [(submodule, []) for submodule in submodules]
                if node.module in modules and len(submodules) < len(names):
                    edges.append((node.module, names))
        graph[module] = edges
    return graph


def _circle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import circle in ``graph`` (module -> the modules it imports), or None."""
    done: set[str] = set()
    for root, imported in graph.items():
        if root in done:
            continue
        path, stack = [root], [iter(imported)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done.add(path.pop())
            elif child in path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                path.append(child)
                stack.append(iter(graph.get(child, ())))
    return None


def test_the_circle_check_finds_a_circle() -> None:
    assert _circle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert _circle({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["d"]}) == ["d", "d"]
    assert _circle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_engine_modules_import_each_other_in_no_circle() -> None:
    graph = {module: [target for target, _ in edges] for module, edges in _engine_imports().items()}
    circle = _circle(graph)
    assert circle is None, "engine modules import each other in a circle: " + " -> ".join(circle)


def test_engine_modules_take_no_private_name_from_another() -> None:
    offenders = [
        f"{module} imports {name} from {target}"
        for module, edges in _engine_imports().items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, "private names used across engine modules:\n" + "\n".join(offenders)


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def test_engine_modules_touch_no_private_attribute_of_another() -> None:
    """``x._name`` only on ``self``/``cls`` or a class of the same module: a part of the core
    (the user core's book, tracker, schedule, ...) is used through its methods, not its
    insides."""
    offenders = []
    for path in _modules("engine"):
        tree = ast.parse(path.read_text(), filename=str(path))
        own = {"self", "cls"} | {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        offenders += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMEDTUPLE_API
            and not (isinstance(node.value, ast.Name) and node.value.id in own)
        ]
    assert not offenders, "private attributes reached from outside:\n" + "\n".join(offenders)


# sim/ stands in for the outside world (a terminal, an EA, a market): what the engine drives may
# not depend on it, and it may use the engine and the actors but not the edge or the harnesses.
NEVER_IMPORTS = {
    "engine": {"sim"},
    "protocol": {"sim"},
    "actors": {"sim"},
    "persistence": {"sim"},
    "sim": {"gateway", "persistence", "bench", "tests", "tripwire_ea"},
    # The bridge ships to traders' machines: it speaks the protocol and nothing of the server.
    "tripwire_ea": {"engine", "actors", "persistence", "gateway", "sim", "bench", "tests"},
}


@pytest.mark.parametrize("package", sorted(NEVER_IMPORTS))
def test_sim_sits_beside_the_engine_not_under_it(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in NEVER_IMPORTS[package]
    ]
    assert not offenders, f"{package}/ imports what it must not:\n" + "\n".join(offenders)


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


# -- the composition root: typed, and configured only by its Settings ---------------------------

COMPOSITION_ROOT = ("gateway/composition.py", "gateway/runtime.py")


def _root_violations(source: str) -> list[str]:
    """What makes a module no typed composition root: writing or reading ``os.environ`` (or
    ``putenv``), and ``Any`` anywhere (signatures, fields, casts)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "putenv", "getenv"}:
            found.append(f"{line}: os.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{line}: from os import {a.name}" for a in node.names]
        if (isinstance(node, ast.Name) and node.id == "Any") or (
            isinstance(node, ast.Attribute) and node.attr == "Any"
        ):
            found.append(f"{line}: Any")
    return found


def test_the_violations_are_found() -> None:
    bad = "import os\nfrom typing import Any\ndef f(x: Any) -> None:\n    os.environ['K'] = 'v'\n"
    assert _root_violations(bad) == ["3: Any", "4: os.environ"]


@pytest.mark.parametrize("path", COMPOSITION_ROOT)
def test_the_composition_root_is_typed_and_reads_no_environment(path: str) -> None:
    assert _root_violations((ROOT / path).read_text()) == []


# -- SQL lives in persistence/: the gateway calls its typed reads and writes -------------------

SQL_START = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s*\()",
    re.IGNORECASE,
)
QUERY_METHODS = {
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "run_in_transaction",
    "run_with_connection",
}
""":class:`persistence.db.Database`'s (and an asyncpg connection's) ways to run a query."""


def _sql_in(source: str) -> list[str]:
    """Where ``source`` holds a query: a string that starts like one (an f-string's parts are
    strings too), or a call of a method that runs one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL_START.match(node.value)
        ):
            found.append(f"{line}: {node.value.split()[0].upper()}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in QUERY_METHODS
        ):
            found.append(f"{line}: .{node.func.attr}()")
    return sorted(found, key=lambda where: int(where.split(":")[0]))


def test_the_sql_check_finds_sql() -> None:
    bad = (
        'Q = "select id from users"\n'
        "async def f(db, t):\n"
        '    await db.fetch(f"DELETE FROM {t} WHERE id = $1", 1)\n'
        "    await db.run_in_transaction(g)\n"
        'METHODS = {"DELETE", "UPDATE"}\n'
        '"""Update the cache, then select the next user."""\n'
    )
    assert _sql_in(bad) == ["1: SELECT", "3: .fetch()", "3: DELETE", "4: .run_in_transaction()"]
    assert _sql_in('db.fetch_quote()\nx = "WITH care"\n') == []


def test_the_gateway_holds_no_sql() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{found}"
        for path in _modules("gateway")
        for found in _sql_in(path.read_text())
    ]
    assert not offenders, "SQL in gateway/ (it belongs in persistence/):\n" + "\n".join(offenders)
