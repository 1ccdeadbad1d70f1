"""Per-operation benchmarks, the pure parts: intervals, per-operation statistics, comparisons
(horde.coordinator.analysis.microbench), the operations and the history's shape of a result.

The running part (closed loop against the automaton) is in tests/performance/test_benchmarks.py
and, through `horde bench`, tests/coordinator/workflows/test_bench_cli.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from horde.coordinator.analysis.microbench import (
    Interval,
    compare_operation,
    histogram_of,
    mean_ci,
    pooled_figures,
    quantile_ci,
    quantile_ci_ranks,
    scope_figures,
    summarize,
    welch_mean_ratio,
)
from horde.coordinator.workflows.microbench import (
    GROUPS,
    MicrobenchResult,
    OperationResult,
    automaton_operations,
    compare_results,
    scenario_operations,
    text_microbench,
)

MS = 1_000_000


def lognormal_ns(seed: int, n: int, median_ms: float = 5.0, sigma: float = 0.4) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median_ms * MS), sigma, n).astype(np.int64)


# -- the mean's t interval -------------------------------------------------------------------


def test_mean_interval_is_students_t() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    mean, ci = mean_ci(x, 0.95)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert mean == pytest.approx(4.0)
    assert ci is not None and ci.confidence == 0.95
    assert (ci.low, ci.high) == (pytest.approx(lo), pytest.approx(hi))
    assert ci.contains(mean)


def test_mean_interval_needs_two_values() -> None:
    assert mean_ci([7.0]) == (7.0, None)
    with pytest.raises(ValueError):
        mean_ci([])


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(11)
    hits = sum(mean_ci(rng.normal(10.0, 2.0, 30))[1].contains(10.0) for _ in range(1000))
    assert 0.93 <= hits / 1000 <= 0.97


# -- order-statistic intervals of quantiles ---------------------------------------------------


@pytest.mark.parametrize(
    ("n", "q", "expected"),
    [
        (5, 0.5, None),  # 2 x (1/2)^5 = 6.25% > 5%: no 95% median interval from 5 samples
        (6, 0.5, (1, 6)),  # [min, max] of 6 covers the median with 1 - 2/64 = 96.9%
        (10, 0.5, (2, 9)),  # the textbook pair for n = 10 (coverage 97.9%)
        (100, 0.5, (40, 61)),  # ~ n/2 -+ 1.96 sqrt(n)/2
        (58, 0.95, None),  # p95 needs a sample above it often enough: P(B = n) = 0.95^58 > 2.5%
        (200, 0.99, None),  # p99 likewise: 0.99^200 = 13%
        (1000, 0.99, (983, 997)),  # P(B <= 982) = 1.4%, P(B >= 997) = 1.0%
    ],
)
def test_quantile_interval_ranks(n, q, expected) -> None:
    got = quantile_ci_ranks(n, q, 0.95)
    assert (None if got is None else got[:2]) == expected


@pytest.mark.parametrize("n", [6, 7, 10, 31, 100, 1001])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_quantile_interval_coverage_is_exact_and_at_least_asked(n, q) -> None:
    got = quantile_ci_ranks(n, q, 0.95)
    if got is None:
        return
    lo, hi, coverage = got
    assert 1 <= lo < hi <= n
    assert coverage >= 0.95
    # The coverage is P(lo <= B <= hi - 1) for B ~ Binomial(n, q), each tail under 2.5%.
    assert coverage == pytest.approx(sps.binom.cdf(hi - 1, n, q) - sps.binom.cdf(lo - 1, n, q))
    assert sps.binom.cdf(lo - 1, n, q) < 0.025
    assert sps.binom.sf(hi - 1, n, q) <= 0.025


def test_median_interval_covers_the_true_median_of_a_skewed_distribution() -> None:
    # Exponential(1): median ln 2. Distribution-free: the coverage holds whatever the shape.
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(1000):
        ci = quantile_ci(np.sort(rng.exponential(1.0, 41)), 0.5)
        hits += ci.contains(np.log(2))
    assert hits / 1000 >= 0.94


def test_quantile_interval_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        quantile_ci_ranks(10, 1.0)
    with pytest.raises(ValueError):
        quantile_ci_ranks(10, 0.5, confidence=1.0)
    assert quantile_ci_ranks(0, 0.5) is None


# -- one operation's statistics ------------------------------------------------------------------


def test_summarize_figures_and_intervals() -> None:
    x = lognormal_ns(1, 2000)
    s = summarize(x, errors=3, wall_s=4.0)
    assert s.n == 2000 and s.errors == 3 and s.error_rate == pytest.approx(0.0015)
    assert s.mean_ns == pytest.approx(x.mean())
    assert s.median_ns == pytest.approx(np.median(x))
    assert s.mean_ci.contains(s.mean_ns) and s.median_ci.contains(s.median_ns)
    # p95 / p99 from the HdrHistogram-layout histogram: within its 1% of the exact figure.
    assert s.p95_ns == pytest.approx(np.quantile(x, 0.95), rel=0.01)
    assert s.p99_ns == pytest.approx(np.quantile(x, 0.99), rel=0.01)
    assert s.p95_ci.low <= np.quantile(x, 0.95) <= s.p95_ci.high
    assert s.p99_ci is not None  # 2000 samples are enough for p99's interval
    assert s.min_ns == x.min() and s.max_ns == x.max()
    assert s.ops_per_s == pytest.approx(500.0)
    d = s.to_dict()
    assert d["median_ms"] == pytest.approx(np.median(x) / 1e6)
    assert d["mean_ci_ms"]["low"] <= d["mean_ms"] <= d["mean_ci_ms"]["high"]
    json.dumps(d)


def test_summarize_few_samples_leaves_out_what_it_cannot_know() -> None:
    s = summarize([5 * MS, 6 * MS, 7 * MS])
    assert s.median_ci is None and s.p95_ci is None and s.p99_ci is None
    assert s.mean_ci is not None and s.ops_per_s is None
    one = summarize([5 * MS])
    assert one.mean_ci is None and one.stdev_ns is None
    with pytest.raises(ValueError):
        summarize([])


# -- comparisons ---------------------------------------------------------------------------------


def test_welch_ratio_of_means() -> None:
    a, b = lognormal_ns(2, 500), lognormal_ns(3, 500, median_ms=6.0)
    w = welch_mean_ratio(a, b, alpha=0.01)
    assert w["ratio"] == pytest.approx(b.mean() / a.mean())
    assert w["ci"][0] < w["ratio"] < w["ci"][1]
    assert w["p_value"] == pytest.approx(sps.ttest_ind(b, a, equal_var=False).pvalue)
    assert w["ci"][0] > 1.1  # 20% slower: the interval excludes 1 by far


@pytest.mark.parametrize(
    ("median_ms", "n", "verdict"),
    [
        (5.0, 400, "no change"),  # the same distribution, another sample
        (6.0, 400, "regression"),  # 20% slower
        (4.0, 400, "improvement"),  # 20% faster
        (5.1, 50_000, "no change"),  # 2% slower: significant with this many, but below the 5% floor
    ],
)
def test_compare_operation_verdicts(median_ms, n, verdict) -> None:
    c = compare_operation(lognormal_ns(7, n), lognormal_ns(8, n, median_ms=median_ms))
    assert c["verdict"] == verdict, c
    assert set(c["metrics"]) == {"latency", "latency_p95", "latency_p99", "error_rate", "mean"}
    if verdict != "no change":
        assert c["metrics"]["latency"]["verdict"] == verdict
        assert c["metrics"]["mean"]["verdict"] == verdict
    json.dumps(c)


def test_compare_operation_sees_errors() -> None:
    x = lognormal_ns(9, 1000)
    c = compare_operation(x, x, base_errors=0, cand_errors=200)
    assert c["metrics"]["error_rate"]["verdict"] == "regression"
    assert c["metrics"]["latency"]["verdict"] == "no change"


def _result(latencies: dict[str, np.ndarray]) -> MicrobenchResult:
    ops = {op.name: op for op in automaton_operations()}
    return MicrobenchResult(
        target_url="http://127.0.0.1:1",
        operations={
            name: OperationResult(ops[name], x, 0, {"ok": len(x)}, 1.0, 1, 10) for name, x in latencies.items()
        },
        settings={"concurrency": 1},
    )


def test_compare_results_names_what_regressed() -> None:
    base = _result({"tools.search": lognormal_ns(1, 300), "health": lognormal_ns(2, 300, 0.5)})
    cand = _result({"tools.search": lognormal_ns(3, 300, 7.5), "health": lognormal_ns(4, 300, 0.5)})
    c = compare_results(base, cand)
    assert c["regressed"]
    assert "tools.search: latency" in c["regressions"]
    assert not any(r.startswith("health") for r in c["regressions"])
    table = text_microbench(cand)
    assert "tools.search" in table and "health" in table
    json.dumps(cand.to_dict())


# -- the operations ---------------------------------------------------------------------------------


def test_automaton_operations_cover_every_group() -> None:
    ops = automaton_operations()
    assert {op.group for op in ops} == set(GROUPS)
    assert len({op.name for op in ops}) == len(ops)
    assert {op.name for op in automaton_operations(["tools"])} == {
        "tools.search",
        "tools.calculator",
        "tools.summarize",
    }
    t = next(op for op in ops if op.name == "workflows.triage").template("http://h:1/")
    assert t.url == "http://h:1/api/workflows/triage/run" and t.method == "POST"
    assert json.loads(t.body) == {"input": "benchmark"} and t.expect == frozenset({200, 201})
    with pytest.raises(ValueError):
        automaton_operations(["nope"])


def test_interval_dict_scales() -> None:
    assert Interval(1e6, 2e6, 0.95).to_dict(1e-6) == {"low": 1.0, "high": 2.0, "confidence": 0.95}


# -- a scenario's requests as operations ---------------------------------------------------------

SCENARIO_YAML = """
name: own-service
target: http://127.0.0.1:9/
requests:
  - {name: items, path: /items, headers: {X-Bench: "yes"}}
  - {name: create, method: post, path: /items, json: {a: 1}, expect: [201]}
  - {name: raw, method: PUT, path: /raw, body: "text", headers: {Content-Type: text/plain}}
  - name: checkout
    flow:
      - {name: cart, method: POST, path: /cart, capture: {id: id}}
      - {name: pay, method: POST, path: "/cart/${id}/pay"}
workload: {model: open, stages: [{duration: 1s, target: 1}]}
"""


def _scenario(text: str = SCENARIO_YAML):
    from horde.coordinator.scenario.load import parse_scenario

    return parse_scenario(text).scenario


def test_scenario_requests_become_operations_with_their_headers_and_bodies() -> None:
    ops, flows = scenario_operations(_scenario().requests)
    assert flows == ("checkout",)
    by_name = {op.name: op for op in ops}
    assert set(by_name) == {"requests.items", "requests.create", "requests.raw"}
    items = by_name["requests.items"].template("http://h:1/")
    assert (items.method, items.url, items.headers, items.body) == (
        "GET",
        "http://h:1/items",
        (("X-Bench", "yes"),),
        None,
    )
    assert items.expect == frozenset()  # the scenario's `expect: []`: any 2xx/3xx
    create = by_name["requests.create"].template("http://h:1")
    assert create.method == "POST" and json.loads(create.body) == {"a": 1} and create.expect == frozenset({201})
    assert ("Content-Type", "application/json") in create.headers
    raw = by_name["requests.raw"].template("http://h:1")
    assert raw.body == b"text" and raw.headers == (("Content-Type", "text/plain"),)


def test_choose_operations_by_target_and_group() -> None:
    from horde.coordinator.workflows.bench import ALL_GROUPS, BenchError, choose_operations

    url = _scenario()
    ops, skipped = choose_operations(url)
    assert {op.group for op in ops} == {"requests"} and skipped == ("checkout",)
    tools, _ = choose_operations(url, ["tools"])  # an automaton served at a URL, by group
    assert {op.name for op in tools} == {"tools.search", "tools.calculator", "tools.summarize"}
    embedded = _scenario(SCENARIO_YAML.replace("target: http://127.0.0.1:9/", "target: embedded"))
    assert {op.group for op in choose_operations(embedded)[0]} == set(GROUPS)
    assert len(choose_operations(embedded, ["database", "requests"])[0]) == 2 + 3
    with pytest.raises(BenchError, match="unknown operation group"):
        choose_operations(url, ["nope"])
    flow = SCENARIO_YAML.index("  - name: checkout")
    flows_only = _scenario(SCENARIO_YAML[: SCENARIO_YAML.index("  - {name: items")] + SCENARIO_YAML[flow:])
    with pytest.raises(BenchError, match="all flows"):
        choose_operations(flows_only)
    from horde.coordinator.cli import BENCH_GROUPS

    assert BENCH_GROUPS == ALL_GROUPS  # the command's choices are the workflow's groups


# -- the history's shape ------------------------------------------------------------------------


def test_scope_figures_are_the_operations_figures_in_milliseconds() -> None:
    x = lognormal_ns(12, 500)
    s = summarize(x, errors=5, wall_s=2.0)
    f = scope_figures(s)
    assert f["requests"] == 500 and f["errors"] == 5 and f["error_rate"] == pytest.approx(0.01)
    assert f["rps"] == pytest.approx(250.0)
    assert f["latency_ms"]["p50"] == pytest.approx(np.median(x) / MS)
    assert f["latency_ms"]["p99"] == pytest.approx(s.p99_ns / MS) and f["latency_ms"]["max"] == x.max() / MS
    assert f["service_time_ms"] == f["latency_ms"]


def test_pooled_figures_take_every_operation_together() -> None:
    fast, slow = lognormal_ns(13, 300, 1.0), lognormal_ns(14, 100, 10.0)
    f = pooled_figures([histogram_of(fast), histogram_of(slow)], errors=3, wall_s=4.0)
    both = np.concatenate([fast, slow])
    assert f["requests"] == 400 and f["errors"] == 3 and f["rps"] == pytest.approx(100.0)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert f["latency_ms"][key] == pytest.approx(np.quantile(both, q) / MS, rel=0.02)
    assert f["latency_ms"]["p50"] <= f["latency_ms"]["p95"] <= f["latency_ms"]["p99"] <= f["latency_ms"]["max"]
    with pytest.raises(ValueError):
        pooled_figures([histogram_of([])], errors=0, wall_s=1.0)


def test_a_benchmark_is_one_history_run_with_an_endpoint_per_operation(tmp_path) -> None:
    from datetime import datetime, timedelta, timezone

    from horde.coordinator.workflows.bench import BenchRun, record_bench
    from horde.coordinator.workflows.history import History, default_history_path

    result = _result({"tools.search": lognormal_ns(15, 40), "health": lognormal_ns(16, 40, 0.5)})
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    run = BenchRun(
        scenario="api",
        target="http://127.0.0.1:1",
        started=started,
        ended=started + timedelta(seconds=2),
        result=result,
    )
    record_bench(run, tmp_path)
    again = BenchRun(
        scenario="api",
        target="http://127.0.0.1:1",
        started=started,
        ended=started + timedelta(seconds=2),
        result=result,
    )
    record_bench(again, tmp_path)  # the same second: a file of its own, a row of its own
    assert run.path != again.path and run.history_id != again.history_id
    saved = json.loads(run.path.read_text())
    assert saved["history"] == {"path": str(default_history_path(tmp_path)), "run_id": run.history_id}
    assert set(saved["operations"]) == {"tools.search", "health"}
    with History(default_history_path(tmp_path)) as h:
        row = h.run(run.history_id)
        series = h.series("bench:api", "p50_latency_ms", endpoint="tools.search")
    assert row.scenario == "bench:api" and row.outcome == "bench" and row.complete
    assert row.requests == 80 and row.errors == 0 and row.bundle_path == str(run.path)
    assert set(row.endpoints) == {"tools.search", "health"}
    assert row.endpoints["tools.search"]["p50_latency_ms"] == pytest.approx(np.median(lognormal_ns(15, 40)) / MS)
    assert len(series) == 2
