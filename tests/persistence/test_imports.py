"""persistence/ stays a driver layer: it may import engine and protocol, nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE = {"actors", "gateway", "bench", "tests"}


def test_persistence_imports_no_higher_layer() -> None:
    offenders = []
    for path in sorted((ROOT / "persistence").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            where = path.relative_to(ROOT)
            offenders += [f"{where}: {n}" for n in names if n.split(".")[0] in ABOVE]
    assert not offenders, "persistence imports a higher layer:\n" + "\n".join(offenders)


def test_the_engine_starts_without_importing_redis() -> None:
    """redis-py's import takes a quarter of a second of every start, a restart after a crash
    included: it is imported when a Redis link is opened (persistence.redis_link)."""
    import subprocess
    import sys

    probe = (
        "import sys, gateway.cli, gateway.runtime, persistence, bench.recovery;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
