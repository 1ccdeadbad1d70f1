"""Benchmarks: per-operation timings with confidence intervals, regression detection
against a baseline (`horde compare`), and improvement / regression tracking across the
run history (`horde history`).

Ground truth comes from faults injected into the automaton: a fixed 10 ms added to every
tool call is a regression of the tool operations (and of the total), a second run of the
same scenario is not. The bundle comparison runs `benchmark-backend` (the automaton behind
a seeded 20 ms backend): on this 2-core machine the plain automaton's millisecond
latencies move by up to ~15% between identical runs, which the comparison's tests rightly
call significant; the modelled backend keeps run-to-run noise under the 5% minimum effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from horde.coordinator.analysis.compare import compare_bundles
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.cli import cli
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario
from horde.coordinator.workflows.history import History, default_history_path, record_bundle, track
from horde.coordinator.workflows.microbench import (
    automaton_operations,
    compare_results,
    run_microbench,
    text_microbench,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
BENCH_CI = ["workload.stages[0].duration=2s", "workload.stages[1].duration=8s"]
# The candidate: every tool call waits 10 ms more (on top of the modelled backend).
TOOL_FAULT = "target.embedded.faults.endpoints={tool_invoke: {latency: 10ms}}"
TOOL_ENDPOINTS = ("tool-search", "tool-calculator")


@pytest.fixture(scope="module")
def automaton():
    from horde.automaton.launch import start_automaton

    proc = start_automaton()
    yield proc
    proc.stop()


def ms_table(result) -> dict[str, Any]:
    return {
        name: {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in op.items()
            if k in ("n", "errors", "mean_ms", "median_ms", "p95_ms", "p99_ms", "ops_per_s")
        }
        | {
            "mean_ci_ms": [round(op["mean_ci_ms"]["low"], 3), round(op["mean_ci_ms"]["high"], 3)],
            "median_ci_ms": [round(op["median_ci_ms"]["low"], 3), round(op["median_ci_ms"]["high"], 3)],
        }
        for name, op in result.to_dict()["operations"].items()
    }


# -- per-operation microbenchmarks --------------------------------------------------------------


def test_every_operation_has_timings_with_confidence_intervals(automaton, perf_full, report) -> None:
    iterations = 1000 if perf_full else 60
    result = run_microbench(automaton.url, iterations=iterations, warmup=10)
    print(text_microbench(result))
    report(microbench=ms_table(result), iterations=iterations)
    groups = {r.operation.group for r in result.operations.values()}
    assert groups == {"health", "agents", "tools", "workflows", "database"}
    for name, r in result.operations.items():
        s = r.stats
        assert s.n == iterations and s.errors == 0, (name, r.errors_by_class)
        assert r.warmup >= 10
        assert s.mean_ci is not None and s.mean_ci.low < s.mean_ns < s.mean_ci.high, name
        assert s.median_ci is not None and s.median_ci.low <= s.median_ns <= s.median_ci.high, name
        assert s.median_ci.confidence >= 0.95
        assert s.min_ns <= s.median_ns <= s.max_ns
        assert s.p99_ns >= s.p95_ns >= 0.99 * s.median_ns  # histogram figures within 1%
        assert s.ops_per_s and s.ops_per_s > 0
    # A workflow runs an agent and then its tools: it costs clearly more than one tool call.
    triage, search = result.operations["workflows.triage"].stats, result.operations["tools.search"].stats
    assert triage.median_ci.low > search.median_ci.high


def test_duration_bounded_and_concurrent_microbench(automaton, report) -> None:
    ops = [op for op in automaton_operations(["health", "database"]) if op.name in ("health", "database.list")]
    result = run_microbench(automaton.url, ops, iterations=None, duration_s=1.0, warmup_s=0.2, concurrency=4)
    report(concurrent_microbench=ms_table(result))
    for r in result.operations.values():
        assert r.concurrency == 4
        assert 0.9 <= r.wall_s <= 2.5
        assert r.stats.n > 20 and r.errors == 0
        assert r.stats.mean_ci.contains(r.stats.mean_ns)


def test_microbench_comparison_flags_an_injected_tool_latency(automaton, report) -> None:
    ops = automaton_operations(["tools"])
    base = run_microbench(automaton.url, ops, iterations=80, warmup=10)
    automaton.set_faults({"endpoints": {"tool_invoke": {"latency": {"dist": "fixed", "delay_s": 0.010}}}})
    try:
        cand = run_microbench(automaton.url, ops, iterations=80, warmup=10)
    finally:
        automaton.set_faults({})
    c = compare_results(base, cand)
    report(
        microbench_regressions=c["regressions"],
        median_ratio={k: round(v["metrics"]["latency"]["effect"], 2) for k, v in c["operations"].items()},
    )
    for op in ops:
        m = c["operations"][op.name]["metrics"]
        assert m["latency"]["verdict"] == "regression", (op.name, m["latency"])
        assert m["mean"]["verdict"] == "regression", (op.name, m["mean"])
        # ~2 ms -> ~12 ms: the interval of the median ratio is far above 1
        assert m["latency"]["ci"][0] > 2.0, (op.name, m["latency"])


def test_bench_command_reports_every_operation_and_tracks_it_in_the_history(tmp_path, perf_full, report) -> None:
    """`horde bench` twice on the embedded automaton: the figures per operation at the
    default size (200 timed answers: enough for a p95 interval) and two rows in the history."""
    import json

    iterations = 1000 if perf_full else 200
    results = tmp_path / "results"
    docs = []
    for _ in range(2):
        out = CliRunner().invoke(
            cli,
            ["bench", str(SCENARIOS / "smoke.yaml"), "--iterations", str(iterations), "--out", str(results), "--json"],
        )
        assert out.exit_code == 0, out.output
        docs.append(json.loads(out.stdout))
    ops = docs[-1]["operations"]
    report(
        bench_ms={
            name: {k: round(op[k], 3) for k in ("mean_ms", "median_ms", "p95_ms", "p99_ms")}
            | {"median_ci_ms": [round(op["median_ci_ms"]["low"], 3), round(op["median_ci_ms"]["high"], 3)]}
            for name, op in ops.items()
        },
        iterations=iterations,
    )
    for name, op in ops.items():
        assert op["n"] == iterations and op["errors"] == 0, (name, op["errors_by_class"])
        assert op["median_ci_ms"]["low"] <= op["median_ms"] <= op["median_ci_ms"]["high"], name
        assert op["p95_ci_ms"] is not None and op["p95_ci_ms"]["confidence"] >= 0.95, name
        assert op["median_ms"] * 0.99 <= op["p95_ms"] <= op["p99_ms"], name
    with History(default_history_path(results)) as h:
        rows = h.runs("bench:smoke")
        assert [r.outcome for r in rows] == ["bench", "bench"]
        assert len(h.series("bench:smoke", "p50_latency_ms", endpoint="tools.search")) == 2


# -- whole runs: compare and history ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_runs(ray_cluster, tmp_path_factory, perf_full) -> dict[str, Any]:
    """benchmark-backend three times: a baseline, a repeat, and a candidate with the tool
    fault; each bundle recorded in the results directory's history."""
    results = tmp_path_factory.mktemp("bench-results")
    size = [] if perf_full else BENCH_CI
    # A first, unrecorded run: on a 2-core machine the first run after Ray starts shares the
    # CPUs with Ray's own start-up (worker processes, the driver's first imports) and its
    # tail came out ~15% slower than the runs after it, which the p95 comparison noticed.
    warm = load_scenario(
        SCENARIOS / "benchmark-backend.yaml",
        overrides=["workload.stages[0].duration=1s", "workload.stages[1].duration=3s"],
    )
    run_scenario(warm, RunOptions(out_dir=str(tmp_path_factory.mktemp("bench-warm-up")), install_signal_handlers=False))
    runs = {}
    for name, extra in (("base", []), ("repeat", []), ("candidate", [TOOL_FAULT])):
        loaded = load_scenario(SCENARIOS / "benchmark-backend.yaml", overrides=size + extra)
        result = run_scenario(loaded, RunOptions(out_dir=str(results), install_signal_handlers=False))
        assert result.outcome in (Outcome.PASSED, Outcome.THRESHOLDS_FAILED), (name, result.summary["stop_reason"])
        record_bundle(result.bundle)
        runs[name] = result
    runs["results"] = results
    return runs


def headline(result) -> dict[str, Any]:
    t = result.summary["total"]
    return {
        "requests": t["requests"],
        "p50_ms": t["latency_ms"]["p50"],
        "p95_ms": t["latency_ms"]["p95"],
        "error_rate": t["error_rate"],
    }


def test_compare_flags_the_injected_regression(bench_runs, report) -> None:
    base, cand = read_bundle(bench_runs["base"].bundle), read_bundle(bench_runs["candidate"].bundle)
    c = compare_bundles(base, cand)  # defaults: alpha 0.01, minimum effect 5%
    scopes = {s["label"]: s for s in c["scopes"]}
    report(
        base=headline(bench_runs["base"]),
        candidate=headline(bench_runs["candidate"]),
        regressions=c["regressions"],
        settings=c["settings"],
        tool_search_latency=scopes["endpoint tool-search"]["metrics"]["latency"],
    )
    assert c["settings"]["alpha"] == 0.01 and c["settings"]["min_effect"] == 0.05
    assert c["regressed"]
    assert "total: latency" in c["regressions"]
    for endpoint in TOOL_ENDPOINTS:
        m = scopes[f"endpoint {endpoint}"]["metrics"]["latency"]
        assert m["verdict"] == "regression", m
        # ~24 ms -> ~34 ms: the median ratio and its interval say by how much
        assert m["ci"][0] > 1.2 and m["ci"][1] < 2.0, m
    # The same pair read the other way round is an improvement, with the same evidence.
    back = compare_bundles(cand, base)
    assert "endpoint tool-search: latency" in back["improvements"] and not back["regressed"]


def test_compare_does_not_flag_a_repeat_of_the_baseline(bench_runs, report) -> None:
    c = compare_bundles(read_bundle(bench_runs["base"].bundle), read_bundle(bench_runs["repeat"].bundle))
    total = c["scopes"][0]["metrics"]
    report(
        base=headline(bench_runs["base"]),
        repeat=headline(bench_runs["repeat"]),
        repeat_latency_ratio=total["latency"]["effect"],
        repeat_p_value=total["latency"]["p_value"],
    )
    assert not c["regressed"], c["regressions"]
    assert not c["improved"], c["improvements"]


def test_compare_cli_exit_code_says_whether_anything_regressed(bench_runs) -> None:
    runner = CliRunner()
    base, repeat, cand = (str(bench_runs[k].bundle) for k in ("base", "repeat", "candidate"))
    regressed = runner.invoke(cli, ["compare", base, cand])
    assert regressed.exit_code == 4, regressed.output
    assert "REGRESSION" in regressed.output
    same = runner.invoke(cli, ["compare", base, repeat])
    assert same.exit_code == 0, same.output


def test_history_records_the_runs_and_tracks_them(bench_runs, report) -> None:
    path = default_history_path(bench_runs["results"])
    with History(path) as h:
        rows = h.runs("benchmark-backend")
        assert len(rows) == 3
        p50 = {r.bundle_path: r.p50_latency_ms for r in rows}
        assert set(h.scenarios()) == {"benchmark-backend"}
        # Three runs: one short of the default baseline (3 runs before the last).
        default = track(h, "benchmark-backend", "p50_latency_ms")
        assert default["runs"] == 3 and default["verdict"] == "insufficient history"
        assert default["last"]["value"] == pytest.approx(bench_runs["candidate"].summary["total"]["latency_ms"]["p50"])
        # With the two earlier runs as the baseline, the last one stands out as a regression.
        tracked = track(h, "benchmark-backend", "p50_latency_ms", min_baseline=2)
        by_endpoint = track(h, "benchmark-backend", "p50_latency_ms", endpoint="tool-search", min_baseline=2)
    report(
        history_p50_ms=list(p50.values()),
        track_verdict=tracked["verdict"],
        robust_z=tracked["robust_z"],
        change=tracked["change"],
        tool_search_verdict=by_endpoint["verdict"],
    )
    assert tracked["verdict"] == "regression", tracked
    assert tracked["change"] > 0.05
    assert by_endpoint["verdict"] == "regression", by_endpoint
    out = CliRunner().invoke(
        cli,
        [
            "history",
            "--results",
            str(bench_runs["results"]),
            "--scenario",
            "benchmark-backend",
            "--metric",
            "p50_latency_ms",
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.output.count("benchmark-backen") >= 4  # three rows (names cut at 16 characters) + tracking
    assert "over 3 run(s)" in out.output
