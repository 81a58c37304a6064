"""engine/ and protocol/ stay sans-I/O: no networking, no trio, no database, no wall clock."""

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
