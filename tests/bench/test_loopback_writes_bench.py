"""The loopback-write harness runs at a tiny count and writes the documented JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

from bench import loopback_writes


def test_loopback_writes_bench_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    assert loopback_writes.main(["--sockets", "3", "--bursts", "5", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {"cpu", "python", "commit"} <= set(payload["machine"])
    results = payload["results"]
    assert set(results) == {"first_write_us", "other_writes_us"}
    for row in results.values():
        assert set(row) == {"p50", "p90", "p99", "mean"} and row["p50"] > 0
