"""Significance tests on what a bundle keeps: binned histograms, error counts, request counts.

No sample is ever expanded to raw values, so a test costs the same for a thousand requests
or a billion (compare.py applies them scope by scope; docs/statistics.md gives the reasoning
and the references).

Quantile bootstrap without resampling: resampling a histogram's counts with a multinomial
and reading quantile q gives bucket j or below exactly when the resampled cumulative count
at j reaches the rank r = ceil(q n), and that count is Binomial(n, F_j). So the bootstrap
distribution of a quantile is known exactly, P(Q* <= v_j) = P(Binomial(n, F_j) >= r), and
the ratio of two independent histograms' quantiles is drawn from those two distributions:
the multinomial bootstrap's answer, with no Monte-Carlo error in either marginal and no
cost that grows with the counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from horde.coordinator.analysis.lazy_scipy import sps
from horde.coordinator.measure.histogram import COUNTS_LEN, HIGHEST_TRACKABLE_NS, Histogram, highest_equivalent_value

DEFAULT_ALPHA = 0.01
DEFAULT_BOOTSTRAP = 10_000  # bootstrap draws of a quantile ratio

_UPPER = highest_equivalent_value(np.arange(COUNTS_LEN)).astype(np.float64)  # a bucket's reported value


# -- binned distributions --------------------------------------------------------------


def _dense(h: Histogram) -> np.ndarray:
    """Counts with the overflow as one more bucket at the end (float64: products get large)."""
    return np.append(h.counts.astype(np.float64), float(h.overflow))


def mann_whitney_binned(base: Histogram, cand: Histogram) -> dict[str, float]:
    """Mann-Whitney U of cand against base from bucket counts, values in one bucket tied.

    Returns u (candidate's U: pairs where the candidate is larger, ties counting one half),
    common_language (u / (n1 n2) = P(cand > base) + P(tie) / 2), cliffs_delta
    (2 CL - 1, > 0 when the candidate is slower), z and a two-sided p_value (normal
    approximation with the tie-corrected variance and a continuity correction).
    """
    a, c = _dense(base), _dense(cand)
    n1, n2 = float(a.sum()), float(c.sum())
    if n1 == 0 or n2 == 0:
        raise ValueError("both histograms need samples")
    below = np.cumsum(a) - a
    u = float(np.dot(c, below + 0.5 * a))
    mean = n1 * n2 / 2.0
    n = n1 + n2
    t = a + c
    t = t[t > 1]
    tie = float(np.sum(t**3 - t)) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie)
    cl = u / (n1 * n2)
    if var <= 0:
        z, p = 0.0, 1.0
    else:
        d = u - mean
        d = math.copysign(max(abs(d) - 0.5, 0.0), d)
        z = d / math.sqrt(var)
        p = float(2 * sps.norm.sf(abs(z)))
    return {
        "u": u,
        "common_language": cl,
        "cliffs_delta": 2 * cl - 1,
        "z": z,
        "p_value": min(1.0, p),
        "n_base": int(n1),
        "n_candidate": int(n2),
    }


def _quantile_bootstrap_cdf(h: Histogram, q: float) -> tuple[np.ndarray, np.ndarray]:
    """(values, cdf) of the exact multinomial-bootstrap distribution of quantile q.

    Values are the buckets' reported values (HdrHistogram's highest equivalent, the
    overflow at max_ns), clamped to [min, max] as ``value_at_quantile`` does.
    """
    counts = _dense(h)
    n = int(h.count)
    nz = np.flatnonzero(counts)
    upper = np.append(_UPPER, float(h.max_ns or HIGHEST_TRACKABLE_NS))[nz]
    values = np.clip(upper, float(h.min_ns or 0), float(h.max_ns or HIGHEST_TRACKABLE_NS))  # set: h has samples
    cum = np.cumsum(counts[nz]) / n
    rank = max(1, math.ceil(q * n))
    cdf = sps.binom.sf(rank - 1, n, np.minimum(cum, 1.0))
    cdf[-1] = 1.0
    return values, np.maximum.accumulate(cdf)


def _draw(values: np.ndarray, cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return values[np.minimum(np.searchsorted(cdf, u, side="left"), len(values) - 1)]


def quantile_ratio(
    base: Histogram,
    cand: Histogram,
    q: float,
    *,
    alpha: float = DEFAULT_ALPHA,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Ratio cand / base of quantile q: point estimate, (1 - alpha) percentile interval
    and a two-sided bootstrap p-value for "ratio = 1" (floored at 1 / (n_boot + 1))."""
    b_q, c_q = base.value_at_quantile(q), cand.value_at_quantile(q)
    if not base.count or not cand.count or not b_q or c_q is None:
        raise ValueError("both histograms need samples and a positive base quantile")
    rng = np.random.default_rng(seed)
    bv, bc = _quantile_bootstrap_cdf(base, q)
    cv, cc = _quantile_bootstrap_cdf(cand, q)
    rb = _draw(bv, bc, rng.random(n_boot))
    rc = _draw(cv, cc, rng.random(n_boot))
    ratio = rc / np.maximum(rb, 1.0)
    lo, hi = np.quantile(ratio, [alpha / 2, 1 - alpha / 2])
    below = int(np.count_nonzero(ratio <= 1.0))
    above = int(np.count_nonzero(ratio >= 1.0))
    p = min(1.0, 2 * (min(below, above) + 1) / (n_boot + 1))
    return {
        "base_ns": float(b_q),
        "candidate_ns": float(c_q),
        "ratio": float(c_q) / float(b_q),
        "ci": (float(lo), float(hi)),
        "p_value": p,
    }


# -- proportions and rates -------------------------------------------------------------


def _wilson(x: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def error_rate_test(e1: int, n1: int, e2: int, n2: int, *, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Difference p2 - p1 of two error rates: Newcombe hybrid-score interval (1 - alpha),
    Fisher's exact p when an expected cell is under 5, the pooled z-test otherwise."""
    p1, p2 = e1 / n1, e2 / n2
    z = float(sps.norm.isf(alpha / 2))
    l1, u1 = _wilson(e1, n1, z)
    l2, u2 = _wilson(e2, n2, z)
    d = p2 - p1
    lo = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    pooled = (e1 + e2) / (n1 + n2)
    expected = min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled))
    if e1 + e2 == 0 or e1 + e2 == n1 + n2:
        test, p = "no errors on either side" if e1 + e2 == 0 else "all errors on both sides", 1.0
    elif expected < 5:
        test = "fisher exact"
        p = float(sps.fisher_exact([[e1, n1 - e1], [e2, n2 - e2]]).pvalue)
    else:
        test = "two-proportion z"
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p = float(2 * sps.norm.sf(abs(d) / se)) if se > 0 else 1.0
    return {"base": p1, "candidate": p2, "difference": d, "ci": (lo, hi), "p_value": min(1.0, p), "test": test}


def rate_test(k1: int, t1: float, k2: int, t2: float, *, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Ratio (k2 / t2) / (k1 / t1) of two Poisson rates: conditional binomial test
    (k2 | k1 + k2 ~ Binomial(k1 + k2, t2 / (t1 + t2)) under equal rates) and the exact
    (Clopper-Pearson) interval of that proportion mapped to a rate ratio."""
    r1, r2 = k1 / t1, k2 / t2
    n = k1 + k2
    if n == 0:
        return {"base": r1, "candidate": r2, "ratio": None, "ci": None, "p_value": 1.0}
    res = sps.binomtest(k2, n, t2 / (t1 + t2))
    ci = res.proportion_ci(confidence_level=1 - alpha, method="exact")

    def to_ratio(pi: float) -> float:
        return math.inf if pi >= 1 else pi / (1 - pi) * t1 / t2

    ratio = r2 / r1 if r1 > 0 else (math.inf if r2 > 0 else 1.0)
    return {
        "base": r1,
        "candidate": r2,
        "ratio": ratio,
        "ci": (to_ratio(ci.low), to_ratio(ci.high)),
        "p_value": float(res.pvalue),
    }
