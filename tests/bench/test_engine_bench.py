"""The engine harness runs at a small size, writes the documented JSON shape, and its split
of each latency sample adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import engine as bench_engine


def test_engine_bench_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    argv = ["--positions", "3000", "--devices", "30", "--rate", "2000", "--duration", "3"]
    assert bench_engine.main([*argv, "--storm", "3000", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {"cpu", "python", "commit"} <= set(payload["machine"])
    results = payload["results"]
    lat = results["tick_to_outbox_us"]
    assert lat["quotes"] == 6000
    assert lat["commands"] >= lat["samples"]
    if lat["samples"]:
        # Each sample's late part is a part of it: so is every percentile of it.
        assert 0 <= lat["offered_late_p50"] <= lat["p50"]
        assert 0 < lat["first_close_p50"] <= lat["first_close_p99"]
        assert 0 < lat["firing_quotes"] <= lat["samples"]
        assert lat["offered_late_p99"] <= lat["p99"]
        assert lat["p50"] <= lat["p99"] <= lat["p999"]
    assert results["max_quotes_per_s"] > 0
    assert results["storm_positions"] == 3000
    assert results["storm_100k_s"] > 0
    # (the storm's seconds are rounded to 3 digits, the first frame's ms to 1)
    assert 0 <= results["storm_first_frame_ms"] <= results["storm_100k_s"] * 1000 + 0.5
    assert results["hop_us"] > 0
    assert "tick_to_outbox_us p99" in capsys.readouterr().out
