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


# sim/ stands in for the outside world (a terminal, an EA, a market): what the engine drives may
# not depend on it, and it may use the engine and the actors but not the edge or the harnesses.
NEVER_IMPORTS = {
    "engine": {"sim"},
    "protocol": {"sim"},
    "actors": {"sim"},
    "persistence": {"sim"},
    "sim": {"gateway", "persistence", "bench", "tests"},
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
