"""``make bench``'s summary: metrics found by name, a met/missed status, the 100k storm figure
only for a 100k storm."""

from __future__ import annotations

from bench import all as bench_all


def _metric(module: str, name: str) -> bench_all.Metric:
    metrics = dict(bench_all.HARNESSES_BY_MODULE[module])
    return metrics[name]


def test_rows_are_found_by_what_they_are_not_by_position() -> None:
    report = {"results": [{"positions": 100000, "quote_ns_p50": 7}, {"positions": 1000}]}
    assert bench_all._dig(report, "results.[positions=100000].quote_ns_p50") == 7
    assert bench_all._dig(report, "results.[positions=5].quote_ns_p50") is None
    names = [m.name for _, _, metrics in bench_all.HARNESSES for m in metrics]
    assert not any(name.startswith(("-1.", "0.", "1.")) for name in names)
    paths = [m.path for _, _, metrics in bench_all.HARNESSES for m in metrics]
    assert not any(part.lstrip("-").isdigit() for p in paths for part in p.split("."))


def test_each_target_says_met_or_missed() -> None:
    report = {"results": {"tick_to_close_us": {"p50": 900}, "echo_rtt_us": {"p50": 400}}}
    p50 = _metric("bench.e2e", "tick_to_close p50 (us)")
    assert bench_all.status(p50, 900, report) == "met"  # <= 3x 400
    assert bench_all.status(p50, 1300, report) == "MISSED"
    lost = _metric("bench.e2e", "lost")
    assert bench_all.status(lost, 0, report) == "met"
    assert bench_all.status(lost, 2, report) == "MISSED"
    echo = _metric("bench.e2e", "echo p50 (us)")
    assert bench_all.status(echo, 400, report) == ""  # no target
    assert bench_all.status(p50, None, report) == ""  # nothing to judge


def test_the_100k_storm_figure_is_only_shown_for_a_100k_storm() -> None:
    storm = _metric("bench.engine", "storm_100k_s")
    smaller = _metric("bench.engine", "storm_s (smaller storm)")
    at_20k = {"results": {"storm_positions": 20_000, "storm_100k_s": 0.4}}
    at_100k = {"results": {"storm_positions": 100_000, "storm_100k_s": 1.4}}
    assert storm.only_if is not None and smaller.only_if is not None
    assert not storm.only_if(at_20k) and smaller.only_if(at_20k)
    assert storm.only_if(at_100k) and not smaller.only_if(at_100k)
    assert bench_all.status(storm, 1.4, at_100k) == "MISSED"
