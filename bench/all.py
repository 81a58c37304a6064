"""``make bench``: every harness at a small size, one summary table.

    python -m bench.all [--json PATH]

Each harness runs in its own process (as an operator would run it) with ``--json``; this reads
the files back and prints the headline numbers with their targets. The sizes here are for a
quick look (minutes, not the full runs the README quotes); run a harness directly for the full
workload.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import base_parser, machine, print_table, write_json

__all__ = ["HARNESSES", "main"]

# (module, small-size arguments, [(metric path, target)])
HARNESSES: list[tuple[str, list[str], list[tuple[str, str]]]] = [
    (
        "bench.triggers",
        ["--positions", "1000,100000", "--ticks", "100000"],
        [
            ("results.-1.quote_ns_p50", "<= 5,000"),
            ("results.-1.quote_ns_p99", ""),
            ("results.-1.bytes_per_position", "<= 1,024"),
        ],
    ),
    (
        "bench.codec",
        ["--number", "2000", "--repeat", "3"],
        [("results.0.decode_ns", ""), ("results.1.decode_ns", "")],
    ),
    (
        "bench.engine",
        ["--positions", "20000", "--devices", "200", "--duration", "10", "--storm", "20000"],
        [
            ("results.tick_to_outbox_us.p50", "<= 50"),
            ("results.tick_to_outbox_us.p99", "<= 500"),
            ("results.max_quotes_per_s", ">= 50,000"),
            ("results.storm_100k_s", "<= 1 (at 100k)"),
        ],
    ),
    (
        "bench.persistence",
        [
            "--records",
            "50000",
            "--seconds",
            "2",
            "--heavy-ack-rate",
            "0",
            "--positions",
            "20000",
            "--journal-records",
            "200000",
            "--snapshot-records",
            "20000",
            "--tick-seconds",
            "3",
        ],
        [
            ("results.journal_per_s", ">= 20,000"),
            ("results.ack_ms_p99", "<= 10"),
            ("results.recovery_s", "<= 2 (at 100k + 1M)"),
            ("results.snapshot_p99_ratio", "<= 1.2"),
        ],
    ),
    (
        "bench.rest",
        [
            *("--clients", "100", "--users", "50", "--positions", "5000"),
            *("--duration", "5", "--saturation", "3"),
        ],
        [
            ("results.overall.p99_ms", "<= 10"),
            ("results.baseline_healthz.p99_ms", ""),
            ("results.saturation.req_per_s", ""),
        ],
    ),
    (
        "bench.e2e",
        [
            "--devices",
            "50",
            "--positions",
            "5000",
            "--clients",
            "10",
            "--rate",
            "500",
            "--duration",
            "10",
        ],
        [
            ("results.tick_to_close_us.p50", "<= 1.5x echo"),
            ("results.echo_rtt_us.p50", ""),
            ("results.lost", "= 0"),
            ("results.duplicated", "= 0"),
        ],
    ),
]


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list):
            data = data[int(part)]
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated harness modules to run")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else None
    folder = Path(tempfile.mkdtemp(prefix="tripwire-bench-"))
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    failed = 0
    for module, small, metrics in HARNESSES:
        if chosen and module not in chosen:
            continue
        out = folder / f"{module}.json"
        print(f"\n=== {module} {' '.join(small)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", module, *small, "--json", str(out)], check=False
        )
        seconds = round(time.perf_counter() - started, 1)
        if done.returncode != 0 or not out.exists():
            failed += 1
            rows.append(
                {
                    "harness": module,
                    "metric": "(failed)",
                    "value": done.returncode,
                    "target": "",
                    "seconds": seconds,
                }
            )
            continue
        report = json.loads(out.read_text())
        reports[module] = report
        for path, target in metrics:
            rows.append(
                {
                    "harness": module,
                    "metric": path.split(".", 1)[1],
                    "value": _dig(report, path),
                    "target": target,
                    "seconds": seconds,
                }
            )
    print_table(
        "make bench (small sizes; full sizes: see README)",
        rows,
        ["harness", "metric", "value", "target", "seconds"],
    )
    write_json(args.json, {"machine": machine(), "reports": reports})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
