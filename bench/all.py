"""``make bench``: every harness at a small size, one summary table.

    python -m bench.all [--json PATH]

Each harness runs in its own process (as an operator would run it) with ``--json``, its output
going to a log file (named as it starts); this reads the files back and prints the headline
numbers by name with their targets and whether each was ``met`` or ``MISSED``. The sizes here
are for a quick look (minutes, not the full runs the README quotes); run a harness directly for
the full workload.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import base_parser, machine, print_table, require_bench_extra, write_json

__all__ = ["HARNESSES", "Metric", "main", "status"]

Check = Callable[[float, dict[str, Any]], bool]
"""Is a value within its target? Gets the value and the harness's whole report."""


class Metric(NamedTuple):
    """One headline figure: where it is in the report, its name, its target."""

    path: str
    """Dotted path in the report; a list step is ``[key=value]``, the row whose ``key`` is
    ``value`` (results are looked up by what they are, never by list position)."""
    name: str
    target: str = ""
    check: Check | None = None
    only_if: Callable[[dict[str, Any]], bool] | None = None
    """The figure is shown only when this holds for the report (e.g. a 100k storm)."""


def _at_most(limit: float) -> Check:
    return lambda value, _report: value <= limit


def _at_least(limit: float) -> Check:
    return lambda value, _report: value >= limit


def _times_echo(times: float) -> Check:
    def check(value: float, report: dict[str, Any]) -> bool:
        echo = _dig(report, "results.echo_rtt_us.p50")
        return echo is not None and value <= times * echo

    return check


def _is_zero(value: float, _report: dict[str, Any]) -> bool:
    return value == 0


# (module, small-size arguments, headline metrics)
HARNESSES: list[tuple[str, list[str], list[Metric]]] = [
    (
        "bench.triggers",
        ["--positions", "1000,100000", "--ticks", "100000"],
        [
            Metric(
                "results.[positions=100000].quote_ns_p50",
                "quote_ns_p50 @100k",
                "<= 5,000",
                _at_most(5000),
            ),
            Metric("results.[positions=100000].quote_ns_p99", "quote_ns_p99 @100k"),
            Metric(
                "results.[positions=100000].bytes_per_position",
                "bytes/position @100k",
                "<= 1,024",
                _at_most(1024),
            ),
        ],
    ),
    (
        "bench.codec",
        ["--number", "2000", "--repeat", "3"],
        [
            Metric("baseline.heartbeat_json_codec_decode_ns", "heartbeat json decode_ns"),
            Metric("baseline.heartbeat_json_bare_msgspec_decode_ns", "bare msgspec decode_ns"),
        ],
    ),
    (
        "bench.engine",
        ["--positions", "20000", "--devices", "200", "--duration", "10", "--storm", "20000"],
        [
            Metric(
                "results.tick_to_outbox_us.first_close_p50",
                "first_close_p50 (us)",
                "<= 150",
                _at_most(150),
            ),
            Metric("results.tick_to_outbox_us.p99", "tick_to_outbox p99 (us)"),
            Metric("results.max_quotes_per_s", "max quotes/s", ">= 50,000", _at_least(50_000)),
            Metric(
                "results.storm_100k_s",
                "storm_100k_s",
                "<= 1",
                _at_most(1),
                only_if=lambda r: _dig(r, "results.storm_positions") == 100_000,
            ),
            Metric(
                "results.storm_100k_s",
                "storm_s (smaller storm)",
                "",
                only_if=lambda r: _dig(r, "results.storm_positions") != 100_000,
            ),
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
            Metric("results.journal_per_s", "journal records/s", ">= 20,000", _at_least(20_000)),
            Metric("results.ack_ms_p99", "ack p99 (ms)", "<= 10", _at_most(10)),
            Metric("results.recovery_s", "recovery (s)", "<= 2 (at 100k + 1M)"),
            Metric("results.snapshot_p99_ratio", "snapshot p99 ratio", "<= 1.2", _at_most(1.2)),
        ],
    ),
    (
        "bench.rest",
        [
            *("--clients", "100", "--users", "50", "--positions", "5000"),
            *("--duration", "5", "--saturation", "3"),
        ],
        [
            Metric("results.overall.p99_ms", "REST p99 (ms)", "<= 10", _at_most(10)),
            Metric("results.baseline_healthz.p99_ms", "healthz p99 (ms)"),
            Metric("results.saturation.req_per_s", "saturation req/s"),
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
            Metric(
                "results.tick_to_close_us.p50",
                "tick_to_close p50 (us)",
                "<= 3x echo p50",
                _times_echo(3),
            ),
            Metric(
                "results.tick_to_close_us.p99",
                "tick_to_close p99 (us)",
                "<= 10x echo p50",
                _times_echo(10),
            ),
            Metric(
                "results.node_to_device_us.p50",
                "node_to_device p50 (us)",
                "<= 3x echo p50",
                _times_echo(3),
            ),
            Metric(
                "results.node_to_device_us.p99",
                "node_to_device p99 (us)",
                "<= 10x echo p50",
                _times_echo(10),
            ),
            Metric(
                "results.burst_last_close_us.p50",
                "burst_last_close p50 (us)",
                "<= 2,000",
                _at_most(2000),
            ),
            Metric(
                "results.burst_last_close_node_us.p50",
                "burst_last_close_node p50 (us)",
                "<= 2,000",
                _at_most(2000),
            ),
            Metric(
                "results.burst_extra_close_us.p50",
                "burst_extra_close p50 (us)",
                "<= 50",
                _at_most(50),
            ),
            Metric("results.first_close_node_us.p50", "first close per firing quote p50 (us)"),
            Metric("results.echo_rtt_us.p50", "echo p50 (us)"),
            Metric("results.lost", "lost", "= 0", _is_zero),
            Metric("results.duplicated", "duplicated", "= 0", _is_zero),
        ],
    ),
    (
        "bench.cluster",
        [
            *("--steps", "100", "--warmup", "3", "--step-s", "10", "--runs", "1"),
            *("--failover-s", "20", "--failover-kill-at", "8"),
        ],
        [
            Metric(
                "cluster_efficiency.median",
                "cluster_efficiency",
                ">= 0.8",
                _at_least(0.8),
            ),
            Metric("capacity_ratio.median", "capacity_ratio (cluster2 / cluster1)"),
            Metric("failover.failover_s", "failover (s)", "<= 3", _at_most(3)),
            Metric("lost", "lost", "= 0", _is_zero),
            Metric("duplicated", "duplicated", "= 0", _is_zero),
        ],
    ),
]


HARNESSES_BY_MODULE = {module: [(m.name, m) for m in metrics] for module, _, metrics in HARNESSES}


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list) and part.startswith("[") and part.endswith("]"):
            key, _, want = part[1:-1].partition("=")
            data = next((row for row in data if str(row.get(key)) == want), None)
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def status(metric: Metric, value: Any, report: dict[str, Any]) -> str:
    """``met``, ``MISSED``, or empty (no target, or no value to judge)."""
    if metric.check is None or not isinstance(value, int | float):
        return ""
    return "met" if metric.check(float(value), report) else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated harness modules to run")
    args = parser.parse_args(argv)
    # Before minutes of other harnesses, not in one's log at the end.
    require_bench_extra("bench.all")
    chosen = set(args.only.split(",")) if args.only else None
    folder = Path(tempfile.mkdtemp(prefix="tripwire-bench-"))
    rows: list[dict[str, Any]] = []
    reports: dict[str, Any] = {}
    failed = 0
    for module, small, metrics in HARNESSES:
        if chosen and module not in chosen:
            continue
        out = folder / f"{module}.json"
        log = folder / f"{module}.log"
        print(f"=== {module} {' '.join(small)}  (output: {log})", flush=True)
        started = time.perf_counter()
        # Each harness's own output (its tables, the engine's logs) goes to its log file: the
        # summary below is what this command is for, and it must not be buried.
        with log.open("wb") as sink:
            done = subprocess.run(
                [sys.executable, "-m", module, *small, "--json", str(out)],
                check=False,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        seconds = round(time.perf_counter() - started, 1)
        if done.returncode != 0 or not out.exists():
            failed += 1
            rows.append(
                {
                    "harness": module,
                    "metric": f"(failed, exit {done.returncode}: see {log})",
                    "value": "",
                    "target": "",
                    "status": "MISSED",
                    "seconds": seconds,
                }
            )
            continue
        report = json.loads(out.read_text())
        reports[module] = report
        for metric in metrics:
            if metric.only_if is not None and not metric.only_if(report):
                continue
            value = _dig(report, metric.path)
            rows.append(
                {
                    "harness": module,
                    "metric": metric.name,
                    "value": value,
                    "target": metric.target,
                    "status": status(metric, value, report),
                    "seconds": seconds,
                }
            )
    print_table(
        "make bench (small sizes; full sizes: see README)",
        rows,
        ["harness", "metric", "value", "target", "status", "seconds"],
    )
    write_json(args.json, {"machine": machine(), "reports": reports})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
