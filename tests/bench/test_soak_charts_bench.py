"""The soak and chart harnesses run at a tiny size (engine, clients and flood processes, real
sockets) and write the JSON they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import charts, soak_clients


@pytest.mark.slow
def test_soak_harness_tiny(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--clients", "20", "--users", "2", "--hold", "1", "--settle", "1", "--json", str(out)]
    assert soak_clients.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert results["opened"] == [20, 20] and results["failed"] == results["dropped"] == 0
    assert results["engine_saw"]["after_hold"] == 20
    assert set(results["healthz"]) == set(soak_clients.PHASES)
    assert results["healthz"]["baseline"]["n"] > 0 and results["rss_mib"]["hold"] > 0


@pytest.mark.slow
def test_charts_harness_tiny(tmp_path: Path) -> None:
    out = tmp_path / "charts.json"
    argv = ["--flood", "12", "--flooders", "2", "--victims", "4", "--trades", "20"]
    argv += ["--duration", "4", "--interval", "0.5", "--json", str(out)]
    assert charts.main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert results["idle"]["n"] == 2 and results["flood"]["n"] == 2  # every victim answered
    assert results["flood_answers"].get("429", 0) > 0  # 12 in flight from 2 users: refused


def test_a_summary_of_made_up_latencies() -> None:
    out = charts.summarise([100.0, 200.0, 300.0], [400.0, 600.0])
    assert out["idle"] == {"p50_ms": 200.0, "max_ms": 300.0, "n": 3}
    assert out["flood"]["p50_ms"] == 500.0 and out["p50_ratio"] == 2.5
