"""horde.coordinator.analysis.compare: baseline vs candidate verdicts from histograms and counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from horde.agents.samples import SAMPLE_DTYPE, ErrorClass
from horde.coordinator.analysis.compare import (
    IMPROVEMENT,
    INSUFFICIENT,
    NO_CHANGE,
    REGRESSION,
    compare_bundles,
    compare_stats,
    error_rate_test,
    mann_whitney_binned,
    quantile_ratio,
    rate_test,
    text_comparison,
)
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.measure.histogram import Histogram

MS = 1_000_000
MEDIAN_NS = 20 * MS


def lognormal_ns(seed: int, n: int, scale: float = 1.0, sigma: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(MEDIAN_NS * scale), sigma, n)


def stats_of(latency_ns: np.ndarray, errors: int = 0, duration_s: float = 100.0, requests: int | None = None) -> Stats:
    """Stats whose samples have these latencies (sent on time) and the first `errors` failed."""
    n = len(latency_ns)
    rows = np.zeros(n, SAMPLE_DTYPE)
    rows["end_ns"] = np.asarray(latency_ns).astype(np.int64)
    rows["status"] = 200
    rows["error"][:errors] = ErrorClass.HTTP_5XX
    s = Stats(duration_s)
    s.add_samples(rows)
    return s


# -- the verdicts the issue asks for ---------------------------------------------------


def test_two_samples_of_one_distribution_are_no_change() -> None:
    c = compare_stats(stats_of(lognormal_ns(1, 20_000)), stats_of(lognormal_ns(2, 20_000)))
    assert c.verdict == NO_CHANGE, c.to_dict()
    lat = c.metrics["latency"]
    assert lat.ci[0] <= 1.0 <= lat.ci[1]
    assert abs(lat.details["cliffs_delta"]) < 0.05


def test_twenty_percent_slower_is_a_regression_with_its_effect() -> None:
    c = compare_stats(stats_of(lognormal_ns(3, 20_000)), stats_of(lognormal_ns(4, 20_000, scale=1.2)))
    assert c.verdict == REGRESSION and c.regressed
    lat = c.metrics["latency"]
    assert lat.verdict == REGRESSION
    assert lat.effect == pytest.approx(1.2, abs=0.03)
    assert lat.ci[0] <= 1.2 <= lat.ci[1]
    assert lat.details["common_language"] > 0.6 and lat.details["cliffs_delta"] > 0.2
    p99 = c.metrics["latency_p99"]
    assert p99.verdict == REGRESSION and p99.ci[0] <= 1.2 <= p99.ci[1]
    assert c.metrics["error_rate"].verdict == NO_CHANGE
    assert c.metrics["throughput"].verdict == NO_CHANGE


def test_twenty_percent_faster_is_an_improvement() -> None:
    c = compare_stats(stats_of(lognormal_ns(5, 20_000)), stats_of(lognormal_ns(6, 20_000, scale=0.8)))
    assert c.verdict == IMPROVEMENT and not c.regressed
    assert c.metrics["latency"].verdict == IMPROVEMENT
    assert c.metrics["latency"].effect == pytest.approx(0.8, abs=0.03)


def test_one_percent_slower_with_a_million_samples_is_significant_but_no_change() -> None:
    base = stats_of(lognormal_ns(7, 1_000_000))
    cand = stats_of(lognormal_ns(8, 1_000_000, scale=1.01))
    c = compare_stats(base, cand)
    lat = c.metrics["latency"]
    assert lat.p_value < 0.01  # a real difference ...
    assert lat.verdict == NO_CHANGE  # ... too small to matter
    assert c.verdict == NO_CHANGE


def test_error_rate_one_percent_against_five_percent_is_a_regression() -> None:
    lat = lognormal_ns(9, 10_000)
    c = compare_stats(stats_of(lat, errors=100), stats_of(lat, errors=500))
    e = c.metrics["error_rate"]
    assert e.verdict == REGRESSION and c.verdict == REGRESSION
    assert e.effect == pytest.approx(0.04)
    assert e.ci[0] < 0.04 < e.ci[1] and e.ci[0] > 0
    assert c.metrics["latency"].verdict == NO_CHANGE
    # and the other way round
    assert (
        compare_stats(stats_of(lat, errors=500), stats_of(lat, errors=100)).metrics["error_rate"].verdict == IMPROVEMENT
    )


def test_small_samples_with_a_ten_percent_shift_are_no_change() -> None:
    # 20 against 20 cannot see a 10% shift in a spread this wide (power ~5% at alpha 0.01).
    verdicts = [
        compare_stats(stats_of(lognormal_ns(1000 + i, 20)), stats_of(lognormal_ns(2000 + i, 20, scale=1.1))).verdict
        for i in range(20)
    ]
    assert verdicts.count(NO_CHANGE) >= 18, verdicts


def test_throughput_drop_is_a_regression() -> None:
    lat = lognormal_ns(12, 20_000)
    c = compare_stats(stats_of(lat, duration_s=100.0), stats_of(lat[:16_000], duration_s=100.0))
    t = c.metrics["throughput"]
    assert t.verdict == REGRESSION
    assert t.effect == pytest.approx(0.8) and t.ci[0] < 0.8 < t.ci[1]


def test_an_empty_side_is_insufficient_data() -> None:
    c = compare_stats(stats_of(lognormal_ns(13, 100)), Stats(10.0))
    assert {m.verdict for m in c.metrics.values()} == {INSUFFICIENT}
    assert c.verdict == INSUFFICIENT and not c.regressed


# -- the statistics against references -------------------------------------------------


def test_binned_mann_whitney_matches_scipy_on_exact_values() -> None:
    # Values on bucket boundaries below 256 ns are exact buckets: the binned test is exact.
    rng = np.random.default_rng(14)
    x = rng.integers(1, 200, 300)
    y = rng.integers(10, 210, 250)
    hx, hy = Histogram(), Histogram()
    hx.record_many(x)
    hy.record_many(y)
    mw = mann_whitney_binned(hx, hy)
    ref = sps.mannwhitneyu(y, x, alternative="two-sided", method="asymptotic")
    assert mw["u"] == pytest.approx(ref.statistic)
    assert mw["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)


def test_quantile_bootstrap_interval_covers_the_truth() -> None:
    hits = 0
    for seed in range(40):
        b, c = Histogram(), Histogram()
        b.record_many(lognormal_ns(100 + seed, 3000).astype(np.int64))
        c.record_many(lognormal_ns(200 + seed, 3000, scale=1.3).astype(np.int64))
        r = quantile_ratio(b, c, 0.5, alpha=0.05, seed=seed)
        hits += r["ci"][0] <= 1.3 <= r["ci"][1]
    assert hits >= 34  # 95% nominal; 40 trials


def test_error_rate_test_uses_fisher_for_rare_errors() -> None:
    r = error_rate_test(0, 1000, 3, 1000)
    assert r["test"] == "fisher exact" and r["p_value"] > 0.05
    assert r["ci"][0] < 0 < r["ci"][1] or r["ci"][0] < 0.003
    assert error_rate_test(0, 1000, 0, 1000)["p_value"] == 1.0


def test_rate_test_for_equal_and_different_rates() -> None:
    assert rate_test(1000, 10.0, 2000, 20.0)["p_value"] == pytest.approx(1.0, abs=0.05)
    r = rate_test(1000, 10.0, 1500, 10.0)
    assert r["ratio"] == pytest.approx(1.5) and r["p_value"] < 1e-6
    assert r["ci"][0] < 1.5 < r["ci"][1]


# -- bundles ---------------------------------------------------------------------------


class FakeBundle:
    """What compare_bundles reads of a bundle."""

    def __init__(self, path: str, scopes: dict, saturated: bool = False) -> None:
        self.path = path
        self.manifest = {
            "scenario": {"name": "bench"},
            "started": "2026-01-01T00:00:00+00:00",
            "outcome": "passed",
            "complete": True,
        }
        self.summary = {"duration_s": 100.0, "generator": {"saturated": saturated}}
        self.complete = True
        self._scopes = scopes

    def histograms(self) -> list[dict]:
        return [{"endpoint": e, "stage": s, "stats": st.to_sparse()} for (e, s), st in self._scopes.items()]

    def window_histograms(self):
        return iter(())


def test_compare_bundles_flags_the_endpoint_that_regressed_and_renders_a_table() -> None:
    fast_a, fast_b = lognormal_ns(20, 5000), lognormal_ns(21, 5000)
    slow_a, slow_b = lognormal_ns(22, 5000), lognormal_ns(23, 5000, scale=1.5)

    def bundle(path: str, health: np.ndarray, api: np.ndarray, **kw) -> FakeBundle:
        total = stats_of(health).merge(stats_of(api))
        return FakeBundle(
            path,
            {
                (None, None): total,
                ("health", None): stats_of(health),
                ("api", None): stats_of(api),
                ("api", "hold"): stats_of(api),
            },
            **kw,
        )

    result = compare_bundles(bundle("/r/a", fast_a, slow_a), bundle("/r/b", fast_b, slow_b, saturated=True))
    json.dumps(result)  # JSON-ready
    by_label = {s["label"]: s for s in result["scopes"]}
    assert by_label["endpoint api"]["verdict"] == REGRESSION
    assert by_label["endpoint health"]["verdict"] == NO_CHANGE
    assert by_label["total"]["verdict"] == REGRESSION
    assert result["regressed"] is True
    assert "endpoint api: latency" in result["regressions"]
    assert any("saturated" in w for w in result["warnings"])
    assert next(s["label"] for s in result["scopes"]) == "total"
    text = text_comparison(result)
    assert "REGRESSED" in text and "endpoint api" in text and "REGRESSION" in text
    assert "api @ hold" in text  # a detailed scope that changed is shown

    same = compare_bundles(bundle("/r/a", fast_a, slow_a), bundle("/r/c", fast_b, lognormal_ns(24, 5000)))
    assert same["regressed"] is False
    assert "no regression" in text_comparison(same)
