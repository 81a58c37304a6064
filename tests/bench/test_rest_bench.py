"""The REST harness runs at a tiny size (engine, EA and load processes, real sockets) and
writes the JSON it promises: every endpoint answered 200, the paced phases kept their rate."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bench import rest


@pytest.mark.slow
def test_rest_harness_tiny(tmp_path: Path) -> None:
    out, samples = tmp_path / "rest.json", tmp_path / "rest.samples"
    argv = ["--clients", "6", "--users", "3", "--positions", "30", "--rate", "60"]
    argv += ["--duration", "2", "--saturation", "1", "--json", str(out), "--samples", str(samples)]
    assert rest.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "config", "results", "ratios"}
    results = report["results"]
    assert results["errors"] == 0
    stats = ("p50_ms", "p95_ms", "p99_ms", "req_per_s")
    for name in ("baseline_healthz", "overall", "saturation"):
        assert set(results[name]) >= set(stats), name
        assert results[name]["requests"] > 0, name
    assert set(results["endpoints"]) == set(rest.ENDPOINTS)
    for path, numbers in results["endpoints"].items():
        assert numbers["requests"] > 0, path
    # Paced: rate x duration requests (give or take one per client), each at its scheduled time.
    assert 0.8 * 120 <= results["overall"]["requests"] <= 120 + 6
    assert report["ratios"]["p50_over_healthz_p50"] > 0
    phases = msgspec.msgpack.decode(samples.read_bytes())
    assert set(phases) == {"baseline", "reads", "saturation"}
    offsets = sorted(s[2] for s in phases["reads"]["samples"])
    # Sent within the phase, from its start (<=: the ns rounding of a due just before the end).
    assert offsets[0] >= 0 and offsets[-1] <= 2e9


def test_a_summary_of_made_up_samples() -> None:
    ms = 1_000_000
    phases = {
        "baseline": rest.PhaseResult(samples=[(0, 1 * ms, 0)] * 10, errors=[], seconds=1.0),
        "reads": rest.PhaseResult(
            samples=[(0, 2 * ms, 0)] * 5 + [(1, 4 * ms, 0)] * 5, errors=["x: HTTP 500"], seconds=2.0
        ),
        "saturation": rest.PhaseResult(samples=[(2, 8 * ms, 0)] * 4, errors=[], seconds=1.0),
    }
    out = rest.summarise(phases)
    r = out["results"]
    assert r["baseline_healthz"]["p50_ms"] == 1.0 and r["baseline_healthz"]["req_per_s"] == 10
    assert r["endpoints"]["/api/v1/positions"]["p99_ms"] == 2.0
    assert r["endpoints"]["/api/v1/reconciliation"]["p50_ms"] == 4.0
    assert r["endpoints"]["/api/v1/guards"]["requests"] == 0
    assert r["overall"]["req_per_s"] == 5.0 and r["saturation"]["p50_ms"] == 8.0
    assert r["errors"] == 1 and r["error_examples"] == ["x: HTTP 500"]
    assert out["ratios"]["p50_over_healthz_p50"] == 3.0
