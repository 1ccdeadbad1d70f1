"""Per-operation benchmark statistics: intervals, one operation's figures, comparisons. Pure.

What a microbenchmark (coordinator/workflows/microbench.py) reports per operation:

- mean with Student's t interval (the sample mean is close to normal for the sizes used
  there, even for skewed latency; with heavy tails the interval is optimistic);
- median with the distribution-free order-statistic interval: the number of samples below
  the true median is Binomial(n, 1/2), so [x_(l), x_(u)] covers it with a probability
  known exactly (``quantile_ci_ranks``; no assumption about the shape);
- p95 and p99 from ``horde.coordinator.measure.histogram.Histogram`` (within 1%), with the
  same order-statistic interval when there are enough samples for it (59 for a two-sided
  95% interval of p95, 299 for p99 with these ranks);
- standard deviation, min, max, and operations per second (answers / measuring time).

``compare_operation`` sets two samples of one operation side by side with the statistics
of ``coordinator/analysis/compare.py`` (Mann-Whitney U on the binned distributions with the
ratio of medians, exact-bootstrap quantile ratios, the error-rate test) plus Welch's t test
on the means; the verdicts mean what they mean there: significant at ``alpha`` *and* at
least ``min_effect`` (5%).

``scope_figures`` gives a set of timings the shape of a run summary's scope (the keys the
run history reads), so a benchmark is recorded in the history like a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from horde.coordinator.measure.histogram import Histogram

DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float  # the coverage this interval has (for order statistics: the exact one, >= asked)

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self, scale: float = 1.0) -> dict[str, float]:
        return {"low": self.low * scale, "high": self.high * scale, "confidence": self.confidence}


def mean_ci(
    values: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, Interval | None]:
    """(mean, Student-t interval of the mean); no interval for fewer than 2 values."""
    from scipy import stats as sps

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1)) * sem
    return mean, Interval(mean - half, mean + half, confidence)


def quantile_ci_ranks(n: int, q: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[int, int, float] | None:
    """1-based ranks (l, u) with P(x_(l) <= Q_q <= x_(u)) >= confidence, and that probability.

    The number of samples below the true quantile Q_q is B ~ Binomial(n, q), and the
    interval covers Q_q exactly when l <= B <= u - 1 (continuous distributions). l is the
    smallest rank with P(B <= l - 1) < (1 - confidence) / 2 on the lower side, u likewise
    on the upper, so each tail holds less than half the miss probability. None when n is
    too small for any such pair within 1..n (e.g. n < 6 for a 95% median interval).
    """
    from scipy import stats as sps

    if not 0 < q < 1:
        raise ValueError("q must be in (0, 1)")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if n < 1:
        return None
    tail = (1 - confidence) / 2
    lo = int(sps.binom.ppf(tail, n, q))  # smallest k with P(B <= k) >= tail: P(B <= lo - 1) < tail
    hi = int(sps.binom.ppf(1 - tail, n, q)) + 1  # P(B >= hi) = 1 - P(B <= hi - 1) <= tail
    if lo < 1 or hi > n:
        return None
    coverage = float(sps.binom.cdf(hi - 1, n, q) - sps.binom.cdf(lo - 1, n, q))
    return lo, hi, coverage


def quantile_ci(
    sorted_values: Sequence[float] | np.ndarray, q: float, confidence: float = DEFAULT_CONFIDENCE
) -> Interval | None:
    """Distribution-free interval of quantile q from sorted samples (None if too few)."""
    x = np.asarray(sorted_values)
    ranks = quantile_ci_ranks(len(x), q, confidence)
    if ranks is None:
        return None
    lo, hi, coverage = ranks
    return Interval(float(x[lo - 1]), float(x[hi - 1]), coverage)


@dataclass(frozen=True)
class OperationStats:
    """One operation's figures, in nanoseconds (``to_dict`` gives milliseconds)."""

    n: int  # answers timed (errors included: a failure took time too)
    errors: int
    mean_ns: float
    mean_ci: Interval | None
    stdev_ns: float | None
    median_ns: float
    median_ci: Interval | None
    p95_ns: float
    p95_ci: Interval | None
    p99_ns: float
    p99_ci: Interval | None
    min_ns: float
    max_ns: float
    ops_per_s: float | None
    confidence: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        ms = 1e-6

        def iv(i: Interval | None) -> dict[str, float] | None:
            return None if i is None else i.to_dict(ms)

        return {
            "n": self.n,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "confidence": self.confidence,
            "mean_ms": self.mean_ns * ms,
            "mean_ci_ms": iv(self.mean_ci),
            "stdev_ms": None if self.stdev_ns is None else self.stdev_ns * ms,
            "median_ms": self.median_ns * ms,
            "median_ci_ms": iv(self.median_ci),
            "p95_ms": self.p95_ns * ms,
            "p95_ci_ms": iv(self.p95_ci),
            "p99_ms": self.p99_ns * ms,
            "p99_ci_ms": iv(self.p99_ci),
            "min_ms": self.min_ns * ms,
            "max_ms": self.max_ns * ms,
            "ops_per_s": self.ops_per_s,
        }


def histogram_of(latencies_ns: Sequence[int] | np.ndarray) -> Histogram:
    h = Histogram()
    values = np.asarray(latencies_ns, dtype=np.int64)
    if len(values):
        h.record_many(values)
    return h


def summarize(
    latencies_ns: Sequence[int] | np.ndarray,
    *,
    errors: int = 0,
    wall_s: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OperationStats:
    """Statistics of one operation's timings (see the module docstring)."""
    x = np.sort(np.asarray(latencies_ns, dtype=np.int64))
    if len(x) == 0:
        raise ValueError("summarize needs at least one timing")
    mean, mci = mean_ci(x, confidence)
    h = histogram_of(x)
    return OperationStats(
        n=int(len(x)),
        errors=int(errors),
        mean_ns=mean,
        mean_ci=mci,
        stdev_ns=float(x.std(ddof=1)) if len(x) > 1 else None,
        median_ns=float(np.median(x)),
        median_ci=quantile_ci(x, 0.5, confidence),
        p95_ns=float(h.value_at_quantile(0.95) or 0),
        p95_ci=quantile_ci(x, 0.95, confidence),
        p99_ns=float(h.value_at_quantile(0.99) or 0),
        p99_ci=quantile_ci(x, 0.99, confidence),
        min_ns=float(x[0]),
        max_ns=float(x[-1]),
        ops_per_s=len(x) / wall_s if wall_s else None,
        confidence=confidence,
    )


def welch_mean_ratio(
    base: Sequence[float] | np.ndarray, cand: Sequence[float] | np.ndarray, *, alpha: float
) -> dict[str, Any]:
    """Welch's t test of two means; effect = ratio of means with a delta-method interval.

    The interval is exp(log r +- t * sqrt(s1^2 / (n1 m1^2) + s2^2 / (n2 m2^2))) with Welch's
    degrees of freedom: the log of a ratio of means is close to normal for these sizes.
    """
    from scipy import stats as sps

    a = np.asarray(base, dtype=float)
    b = np.asarray(cand, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch_mean_ratio needs at least two values a side")
    m1, m2 = float(a.mean()), float(b.mean())
    v1, v2 = float(a.var(ddof=1)) / len(a), float(b.var(ddof=1)) / len(b)
    res = sps.ttest_ind(b, a, equal_var=False)
    p = float(res.pvalue) if math.isfinite(res.pvalue) else (1.0 if m1 == m2 else 0.0)
    if m1 <= 0 or m2 <= 0:
        return {"base": m1, "candidate": m2, "ratio": None, "ci": None, "p_value": p}
    ratio = m2 / m1
    var_log = v1 / m1**2 + v2 / m2**2
    if var_log > 0:
        df = var_log**2 / ((v1 / m1**2) ** 2 / (len(a) - 1) + (v2 / m2**2) ** 2 / (len(b) - 1))
        half = float(sps.t.ppf(1 - alpha / 2, df)) * math.sqrt(var_log)
    else:
        half = 0.0
    return {
        "base": m1,
        "candidate": m2,
        "ratio": ratio,
        "ci": (ratio * math.exp(-half), ratio * math.exp(half)),
        "p_value": p,
    }


def compare_operation(
    base_ns: Sequence[int] | np.ndarray,
    cand_ns: Sequence[int] | np.ndarray,
    *,
    base_errors: int = 0,
    cand_errors: int = 0,
    alpha: float | None = None,
    min_effect: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One operation, baseline against candidate: horde.coordinator.analysis.compare's latency, tail and
    error-rate metrics on the two histograms, plus ``mean`` (Welch). JSON-ready."""
    from horde.coordinator.analysis.compare import (
        DEFAULT_ALPHA,
        DEFAULT_MIN_EFFECT,
        IMPROVEMENT,
        INSUFFICIENT,
        NO_CHANGE,
        REGRESSION,
        Comparison,
        MetricComparison,
        compare_stats,
    )
    from horde.coordinator.measure.aggregate import Stats

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    min_effect = DEFAULT_MIN_EFFECT if min_effect is None else min_effect

    def stats(values: Sequence[int] | np.ndarray, errors: int) -> Stats:
        s = Stats()
        s.latency = histogram_of(values)
        s.requests = len(values)
        s.errors = int(errors)
        return s

    comp = compare_stats(
        stats(base_ns, base_errors), stats(cand_ns, cand_errors), alpha=alpha, min_effect=min_effect, seed=seed
    )
    metrics = {k: m for k, m in comp.metrics.items() if k != "throughput"}
    test = "welch t (ratio of means)"
    if len(base_ns) >= 2 and len(cand_ns) >= 2:
        w = welch_mean_ratio(base_ns, cand_ns, alpha=alpha)
        ratio = w["ratio"]
        if ratio is None:
            verdict = INSUFFICIENT
        elif w["p_value"] < alpha and abs(ratio - 1) >= min_effect:  # the rule of coordinator/analysis/compare.py
            verdict = REGRESSION if ratio > 1 else IMPROVEMENT
        else:
            verdict = NO_CHANGE
        metrics["mean"] = MetricComparison(
            "mean",
            w["base"] / 1e6,
            w["candidate"] / 1e6,
            ratio,
            "ratio",
            w["ci"],
            w["p_value"],
            verdict,
            test,
            {"n_base": len(base_ns), "n_candidate": len(cand_ns)},
        )
    else:
        metrics["mean"] = MetricComparison(
            "mean",
            None,
            None,
            None,
            "ratio",
            None,
            None,
            INSUFFICIENT,
            test,
            {"reason": "fewer than 2 samples on a side"},
        )
    return Comparison(metrics).to_dict()


# -- the history's shape ---------------------------------------------------------------------

_MS_PER_NS = 1e-6


def _latency_ms(p50_ns: float, p95_ns: float, p99_ns: float, max_ns: float, mean_ns: float) -> dict[str, float]:
    return {
        "p50": p50_ns * _MS_PER_NS,
        "p95": p95_ns * _MS_PER_NS,
        "p99": p99_ns * _MS_PER_NS,
        "max": max_ns * _MS_PER_NS,
        "mean": mean_ns * _MS_PER_NS,
    }


def scope_figures(stats: OperationStats) -> dict[str, Any]:
    """One operation's figures with the keys of a run summary's scope (``Stats.to_dict()``),
    which the run history reads. In a closed loop a request is sent when it is due, so its
    latency is also its service time."""
    latency = _latency_ms(stats.median_ns, stats.p95_ns, stats.p99_ns, stats.max_ns, stats.mean_ns)
    return {
        "requests": stats.n,
        "errors": stats.errors,
        "error_rate": stats.error_rate,
        "rps": stats.ops_per_s,
        "latency_ms": latency,
        "service_time_ms": dict(latency),
    }


def pooled_figures(histograms: Sequence[Histogram], *, errors: int, wall_s: float | None) -> dict[str, Any]:
    """Every operation's timings taken together, in the same shape as ``scope_figures``
    (a benchmark's headline row in the history). ``wall_s``: the measuring time of all
    operations together (they run one after another)."""
    total = Histogram()
    for h in histograms:
        total.merge(h)
    if total.count == 0:
        raise ValueError("pooled_figures needs at least one timing")
    q = total.quantiles((0.5, 0.95, 0.99))
    latency = _latency_ms(
        float(q[0.5] or 0),
        float(q[0.95] or 0),
        float(q[0.99] or 0),
        float(total.max_ns or 0),
        float(total.mean_ns() or 0),
    )
    return {
        "requests": total.count,
        "errors": int(errors),
        "error_rate": errors / total.count,
        "rps": total.count / wall_s if wall_s else None,
        "latency_ms": latency,
        "service_time_ms": dict(latency),
    }
