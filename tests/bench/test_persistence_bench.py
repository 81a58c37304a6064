"""The persistence harness runs end to end at a tiny size and writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

from bench import persistence
from tests.fixtures.postgres import PgServer


def test_harness_runs_and_writes_json(pg_server: PgServer, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["--dsn", pg_server.admin_dsn, "--json", str(out), "--records", "3000"]
    argv += ["--seconds", "0.3", "--ackers", "4", "--background-rate", "500"]
    argv += ["--heavy-ack-rate", "50"]
    argv += ["--baseline-records", "30"]
    argv += ["--positions", "400", "--journal-records", "3000", "--snapshot-records", "400"]
    argv += ["--users", "8", "--tick-rate", "200", "--tick-seconds", "0.5"]
    assert persistence.main(argv) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    for key in ("journal_per_s", "journal_projected_per_s", "ack_ms_p50", "ack_ms_p99"):
        assert results[key] > 0, key
    assert results["ack_per_s"] == 4 * 25 and results["heavy_ack_per_s"] == 4 * 50
    assert results["heavy_ack_ms_p99"] > 0 and results["baseline_per_s"] > 0
    assert results["recovery_s"] > 0 and results["recovery_replayed"] == 3000
    assert results["recovery_positions"] == 400
    assert results["recovery_process_s"] >= results["recovery_s"]  # launch, imports, connect
    assert results["tick_p99_us"] > 0 and results["snapshot_p99_ratio"] > 0
    assert report["machine"]["cores"] >= 1
    assert report["config"]["postgres"] == "dsn"
