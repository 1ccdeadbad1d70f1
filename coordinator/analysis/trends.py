"""Is something changing over time? Robust trend statistics and the memory-leak verdict.

Pure: values in, verdicts out; no clock, no I/O. docs/statistics.md explains each choice.

- ``theil_sen``: Theil-Sen slope (median of pairwise slopes) with Sen's confidence
  interval, via ``scipy.stats.theilslopes``. Robust to outliers (breakdown point ~29%)
  and to the non-normal noise of latency and memory series.
- ``mann_kendall``: the Mann-Kendall trend test, computed as Kendall's tau-b of the values
  against time with ``scipy.stats.kendalltau``. Times are distinct, so tau-b's variance is
  exactly Mann-Kendall's variance with the tie correction for equal values; the p-value
  is exact for small series without ties and asymptotic (normal, no continuity
  correction) otherwise.
- ``trend``: rising / falling / flat / inconclusive for any series, with a practical floor
  so that a statistically significant but negligible drift reads as flat.
- ``leak_verdict``: leak / no leak / inconclusive for a resident-memory series, in
  simulated time for compressed soaks.

Series longer than ``MAX_POINTS`` are reduced to the medians of ``MAX_POINTS`` equal time
bins first: Theil-Sen looks at every pair of points (O(n^2) memory), and a 12-hour series
of one-second windows has 43,200 of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from horde.coordinator.analysis.lazy_scipy import sps

MAX_POINTS = 2000

# Seconds per unit of ``per``. "run" / "point" mean: t is already in the unit (run index).
PER_SECONDS: dict[str, float] = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "run": 1.0,
    "point": 1.0,
}

MB = 1024 * 1024
# A leak must grow faster than both of these per simulated hour (see leak_verdict).
LEAK_MIN_BYTES_PER_HOUR = 1.0 * MB
LEAK_MIN_FRACTION_PER_HOUR = 0.02
LEAK_WARMUP_FRACTION = 0.15
LEAK_MIN_POINTS = 12


# -- the two statistics ----------------------------------------------------------------


def _clean(t: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite pairs, sorted by time (stable for equal times)."""
    ta = np.asarray(list(t) if not isinstance(t, np.ndarray) else t, dtype=float).ravel()
    ya = np.asarray(list(y) if not isinstance(y, np.ndarray) else y, dtype=float).ravel()
    if len(ta) != len(ya):
        raise ValueError(f"t and y differ in length ({len(ta)} != {len(ya)})")
    keep = np.isfinite(ta) & np.isfinite(ya)
    ta, ya = ta[keep], ya[keep]
    order = np.argsort(ta, kind="stable")
    return ta[order], ya[order]


def _reduce(t: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: medians of equal-width time bins (empty bins dropped)."""
    if len(t) <= max_points:
        return t, y
    edges = np.linspace(t[0], t[-1], max_points + 1)
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, max_points - 1)
    bounds = np.searchsorted(b, np.arange(max_points + 1))  # t is sorted, so b is too
    tt, yy = [], []
    for i in range(max_points):
        lo, hi = bounds[i], bounds[i + 1]
        if hi > lo:
            tt.append(float(np.median(t[lo:hi])))
            yy.append(float(np.median(y[lo:hi])))
    return np.asarray(tt), np.asarray(yy)


def theil_sen(
    t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """(slope, intercept, slope_ci_low, slope_ci_high), slope in y units per t unit.

    Sen's interval (``confidence``, two-sided) assumes independent residuals; serially
    correlated noise makes it too narrow (docs/statistics.md).
    """
    ta, ya = _reduce(*_clean(t, y))
    if len(ta) < 2 or ta[-1] == ta[0]:
        raise ValueError("theil_sen needs at least two points at distinct times")
    res = sps.theilslopes(ya, ta, alpha=confidence)
    return float(res.slope), float(res.intercept), float(res.low_slope), float(res.high_slope)


def mann_kendall(
    y: Sequence[float] | np.ndarray, t: Sequence[float] | np.ndarray | None = None
) -> tuple[float, float, float]:
    """(tau, two-sided p_value, z) of the Mann-Kendall test for a monotonic trend.

    Kendall's tau-b of y against time (``t``, default the point order), see the module
    docstring. z is the normal score with the p-value's sign: positive for rising.
    """
    ya = np.asarray(y, dtype=float).ravel()
    ta = np.arange(len(ya), dtype=float) if t is None else np.asarray(t, dtype=float).ravel()
    ta, ya = _clean(ta, ya)
    if len(ya) < 3:
        return 0.0, 1.0, 0.0
    if np.all(ya == ya[0]):
        return 0.0, 1.0, 0.0  # no ordering information at all
    res = sps.kendalltau(ta, ya)
    tau = float(res.statistic)
    p = float(res.pvalue)
    if not math.isfinite(tau) or not math.isfinite(p):
        return 0.0, 1.0, 0.0
    z = float(sps.norm.isf(p / 2)) * (1.0 if tau > 0 else -1.0 if tau < 0 else 0.0)
    return tau, p, z


# -- a general trend -------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    verdict: str  # "rising" | "falling" | "flat" | "inconclusive"
    slope_per_hour: float | None  # y units per `per` (named for the default per="hour")
    ci: tuple[float, float] | None  # confidence interval of that slope
    p_value: float | None  # Mann-Kendall, two-sided
    n: int
    relative_change: float | None  # slope x span / |median y|: the change over the series, as a fraction
    unit: str = ""
    per: str = "hour"
    reason: str = ""

    @property
    def slope(self) -> float | None:
        return self.slope_per_hour

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        d["slope"] = d.pop("slope_per_hour")  # in unit per `per`
        return d


def _per_seconds(per: str | float) -> float:
    if isinstance(per, (int, float)):
        if per <= 0:
            raise ValueError("per must be positive")
        return float(per)
    try:
        return PER_SECONDS[per]
    except KeyError:
        raise ValueError(f"unknown per {per!r}; one of {sorted(PER_SECONDS)} or seconds as a number") from None


def trend(
    t_s: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    unit: str = "",
    per: str | float = "hour",
    alpha: float = 0.05,
    min_points: int = 8,
    noise_floor: float = 0.0,
    min_relative_change: float = 0.05,
    time_scale: float = 1.0,
) -> Trend:
    """Trend of ``y`` over ``t_s`` (seconds; run indices with per="run").

    rising / falling: Mann-Kendall p < alpha, Sen's (1 - alpha) interval excludes 0 on the
    same side, and the slope is practically relevant: |slope| >= ``noise_floor`` (y units
    per ``per``) and the change over the series is at least ``min_relative_change`` of the
    median level (skipped when the median is 0). flat: no significant trend, or a
    significant one below those floors. inconclusive: fewer than ``min_points`` points, no
    time span, or a slope above the floors that is not significant (too noisy to tell).
    ``time_scale`` is simulated seconds per real second (slopes in simulated time).
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    per_name = per if isinstance(per, str) else f"{per:g}s"
    ta, ya = _clean(t_s, y)
    n = len(ta)

    def verdict(v: str, reason: str, **kw: Any) -> Trend:
        kw.setdefault("slope_per_hour", None)
        kw.setdefault("ci", None)
        kw.setdefault("p_value", None)
        kw.setdefault("relative_change", None)
        return Trend(verdict=v, n=n, unit=unit, per=per_name, reason=reason, **kw)

    if n < max(min_points, 3):
        return verdict("inconclusive", f"{n} point(s), at least {max(min_points, 3)} needed")
    scale = time_scale / _per_seconds(per)  # t seconds -> `per` units
    tp = (ta - ta[0]) * scale
    span = float(tp[-1])
    if span <= 0:
        return verdict("inconclusive", "all points at the same time")
    level = float(np.median(ya))
    if np.all(ya == ya[0]):
        return verdict(
            "flat",
            "constant series",
            slope_per_hour=0.0,
            ci=(0.0, 0.0),
            p_value=1.0,
            relative_change=0.0 if level else None,
        )
    slope, _, lo, hi = theil_sen(tp, ya, confidence=1 - alpha)
    _, p, _ = mann_kendall(ya, tp)
    rel = slope * span / abs(level) if level else None
    kw = dict(slope_per_hour=slope, ci=(lo, hi), p_value=p, relative_change=rel)
    big = abs(slope) >= noise_floor and (rel is None or abs(rel) >= min_relative_change)
    significant = p < alpha and (lo > 0 or hi < 0)
    if significant and big:
        return verdict("rising" if slope > 0 else "falling", "significant and above the practical floor", **kw)
    if significant:
        return verdict("flat", "significant but below the practical floor", **kw)
    if big and slope != 0:
        return verdict("inconclusive", "a large slope that is not significant (noisy or short)", **kw)
    return verdict("flat", "no significant trend", **kw)


# -- memory leaks ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeakVerdict:
    verdict: str  # "leak" | "no leak" | "inconclusive"
    slope_bytes_per_simulated_hour: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    reason: str
    n: int = 0  # points used (after the warm-up)
    threshold_bytes_per_hour: float | None = None  # the practical threshold that applied
    last_half_slope: float | None = None  # bytes per simulated hour over the last half
    time_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d


def _step_fit_wins(tp: np.ndarray, y: np.ndarray, slope: float, intercept: float) -> tuple[bool, int]:
    """Does one level shift (two medians) explain y much better than the line?

    Compares mean absolute residuals; the step must cut them to below half the line's.
    Returns (wins, index where the second level begins).
    """
    n = len(y)
    line = float(np.mean(np.abs(y - (intercept + slope * tp))))
    best, best_k = math.inf, 0
    # Candidate change points on a grid: enough to place a step, cheap for long series.
    for k in np.unique(np.linspace(max(2, n // 10), n - max(2, n // 10), num=min(n, 60)).astype(int)):
        a, b = y[:k], y[k:]
        if len(a) < 2 or len(b) < 2:
            continue
        r = (np.abs(a - np.median(a)).sum() + np.abs(b - np.median(b)).sum()) / n
        if r < best:
            best, best_k = float(r), int(k)
    return (best < 0.5 * line), best_k


def _weak_growth(rising: bool, slope: float, hi: float, threshold: float) -> tuple[str, str]:
    """(verdict, reason) when growth is not significant, or significant but below the threshold."""
    mb = threshold / MB
    if rising:
        return "no leak", f"significant growth below the practical threshold ({mb:.3g} MiB/h)"
    if hi < threshold:
        return "no leak", "no significant growth"
    if slope < threshold:
        return "no leak", f"no significant growth (slope below {mb:.3g} MiB/h)"
    return "inconclusive", "growth above the threshold but not significant (noisy or short)"


def _last_half_slope(th: np.ndarray, ya: np.ndarray, *, alpha: float, min_points: int) -> float | None:
    """Theil-Sen slope over the last half of the span, or None when it holds too few points."""
    half = th >= th[0] + 0.5 * (th[-1] - th[0])
    if int(half.sum()) >= max(4, min_points // 2) and th[half][-1] > th[half][0]:
        return theil_sen(th[half], ya[half], confidence=1 - alpha)[0]
    return None


def _one_step_explains(
    th: np.ndarray, ya: np.ndarray, slope: float, intercept: float, threshold: float, *, alpha: float
) -> bool:
    """One level shift fits far better than the line, and the growth after it does not clear
    the threshold on its own (only such growth keeps this a leak candidate)."""
    stepped, k = _step_fit_wins(th, ya, slope, intercept)
    if not stepped:
        return False
    after = slice(k, None)
    return bool(
        len(th[after]) >= 4
        and th[after][-1] > th[after][0]
        and theil_sen(th[after], ya[after], confidence=1 - alpha)[2] < threshold
    )


def leak_verdict(
    t_s: Sequence[float] | np.ndarray,
    rss_bytes: Sequence[float] | np.ndarray,
    *,
    time_scale: float = 1.0,
    threshold_bytes_per_hour: float = LEAK_MIN_BYTES_PER_HOUR,
    threshold_fraction_per_hour: float = LEAK_MIN_FRACTION_PER_HOUR,
    warmup_fraction: float = LEAK_WARMUP_FRACTION,
    alpha: float = 0.05,
    min_points: int = LEAK_MIN_POINTS,
) -> LeakVerdict:
    """Leak, no leak or inconclusive for a resident-memory series (bytes over seconds).

    1. Warm-up: points in the first ``warmup_fraction`` (15%) of the time span are dropped
       (imports, caches, pools and JIT-like first allocations are not leaks).
    2. Slope: Theil-Sen in bytes per *simulated* hour (t x ``time_scale`` / 3600) with
       Sen's (1 - alpha) interval, and the Mann-Kendall test.
    3. Practical threshold: the larger of ``threshold_bytes_per_hour`` (1 MiB) and
       ``threshold_fraction_per_hour`` (2%) of the mean level, per simulated hour.
    4. A leak needs: Mann-Kendall p < alpha with a rising tau, the interval's *lower* bound
       above the threshold, growth still going on in the last half (its own Theil-Sen slope
       at least half the threshold), and no better explanation as one level shift (an
       allocation step, then a plateau: not a leak; a step explains the series when its
       residuals are under half the line's and the growth after it does not clear the
       threshold on its own).
    No leak: no significant growth whose interval reaches the threshold, a plateau in the
    last half, or a step. Inconclusive: too few points, or growth that is significant or
    large but not clear enough for either verdict (the reason says which).
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    if not 0 <= warmup_fraction < 1:
        raise ValueError("warmup_fraction must be in [0, 1)")
    ta, ya = _clean(t_s, rss_bytes)

    def out(v: str, reason: str, n: int, **kw: Any) -> LeakVerdict:
        kw.setdefault("slope_bytes_per_simulated_hour", None)
        kw.setdefault("ci", None)
        kw.setdefault("p_value", None)
        return LeakVerdict(verdict=v, reason=reason, n=n, time_scale=time_scale, **kw)

    if len(ta) == 0:
        return out("inconclusive", "no memory readings", 0)
    cut = ta[0] + warmup_fraction * (ta[-1] - ta[0])
    keep = ta >= cut
    ta, ya = ta[keep], ya[keep]
    n = len(ta)
    if n < min_points:
        return out("inconclusive", f"{n} reading(s) after the warm-up, at least {min_points} needed", n)
    th = (ta - ta[0]) * time_scale / 3600.0  # simulated hours
    if th[-1] <= 0:
        return out("inconclusive", "all readings at the same time", n)
    threshold = max(threshold_bytes_per_hour, threshold_fraction_per_hour * abs(float(np.mean(ya))))
    if np.all(ya == ya[0]):
        return out(
            "no leak",
            "memory constant",
            n,
            slope_bytes_per_simulated_hour=0.0,
            ci=(0.0, 0.0),
            p_value=1.0,
            threshold_bytes_per_hour=threshold,
        )
    slope, intercept, lo, hi = theil_sen(th, ya, confidence=1 - alpha)
    tau, p, _ = mann_kendall(ya, th)
    base = dict(slope_bytes_per_simulated_hour=slope, ci=(lo, hi), p_value=p, threshold_bytes_per_hour=threshold)
    mb = threshold / MB

    rising = p < alpha and tau > 0 and lo > 0
    if not rising or hi < threshold:
        v, why = _weak_growth(rising, slope, hi, threshold)
        return out(v, why, n, **base)
    last_half_slope = _last_half_slope(th, ya, alpha=alpha, min_points=min_points)
    if last_half_slope is not None:
        base["last_half_slope"] = last_half_slope
        if last_half_slope < 0.5 * threshold:
            why = "growth stopped: the last half is flat (an allocation step, then a plateau)"
            return out("no leak", why, n, **base)
    if _one_step_explains(th, ya, slope, intercept, threshold, alpha=alpha):
        return out("no leak", "one level shift explains the series (a step, then a plateau)", n, **base)

    if lo <= threshold:
        why = f"growth is significant but its lower bound does not clear {mb:.3g} MiB/h"
        return out("inconclusive", why, n, **base)
    return out("leak", f"memory grows by {slope / MB:.3g} MiB per simulated hour (threshold {mb:.3g})", n, **base)


# -- series out of bundle windows ------------------------------------------------------


def window_series(windows: Iterable[dict[str, Any]], *path: str) -> tuple[list[float], list[float]]:
    """(t_s, values) of one figure across bundle windows (``Bundle.windows()`` dicts).

    ``path`` walks into each window: ("target", "target_memory"), ("total", "error_rate"),
    ("total", "latency_ms", "p99"). The time of a window is its end. Windows without the
    figure are skipped.
    """
    ts, vs = [], []
    for w in windows:
        v: Any = w
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
            if v is None:
                break
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            ts.append(float(w.get("end_s", w.get("index", 0) + 1)))
            vs.append(float(v))
    return ts, vs


def generator_rss_series(windows: Iterable[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per traffic agent (and incarnation), its resident bytes across bundle windows."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for w in windows:
        t = float(w.get("end_s", w.get("index", 0) + 1))
        for agent, r in (w.get("generator") or {}).items():
            rss = r.get("rss_bytes")
            if not rss:
                continue
            label = agent if not r.get("incarnation") else f"{agent}#{r['incarnation']}"
            ts, vs = out.setdefault(label, ([], []))
            ts.append(t)
            vs.append(float(rss))
    return out
