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
