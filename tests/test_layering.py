"""engine/ and protocol/ stay sans-I/O: no networking, no trio, no database, no wall clock; and
sim/ (the simulated outside world) is used only from the edge, the harnesses and the tests."""

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
