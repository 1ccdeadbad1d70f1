"""Tracking a headline metric across a scenario's runs (pure: no clock, no I/O).

The headline figures a run is remembered by (``HEADLINE``, read from a summary scope by
``headline``), the row of one remembered run (``RunRow``), and the judgement of the last
run against the runs before it (median/MAD robust z, ``track_series``) with the trend over
the recent ones. The SQLite store that keeps the rows is horde.coordinator.workflows.history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from horde.coordinator.bundle.schema import Stats

# Headline figures: column name -> how to read it from a summary scope (Stats.to_dict()).
HEADLINE: dict[str, tuple[str, ...]] = {
    "requests": ("requests",),
    "errors": ("errors",),
    "rps": ("rps",),
    "error_rate": ("error_rate",),
    "p50_latency_ms": ("latency_ms", "p50"),
    "p95_latency_ms": ("latency_ms", "p95"),
    "p99_latency_ms": ("latency_ms", "p99"),
    "max_latency_ms": ("latency_ms", "max"),
    "p50_service_ms": ("service_time_ms", "p50"),
    "p99_service_ms": ("service_time_ms", "p99"),
}
RUN_METRICS = (*HEADLINE, "duration_s", "thresholds_failed", "target_memory_max_bytes")
ENDPOINT_METRICS = tuple(HEADLINE)
# Metrics where a larger value is better; every other one is better when smaller.
HIGHER_IS_BETTER = frozenset({"requests", "rps"})


@dataclass(frozen=True)
class RunRow:
    id: int
    scenario: str
    started: str | None
    ended: str | None
    outcome: str | None
    complete: bool
    bundle_path: str  # absolute
    duration_s: float | None
    requests: int | None
    errors: int | None
    rps: float | None
    error_rate: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    max_latency_ms: float | None
    p50_service_ms: float | None
    p99_service_ms: float | None
    thresholds_total: int | None
    thresholds_failed: int | None
    saturated: bool | None
    target_memory_max_bytes: float | None
    horde_version: str | None
    endpoints: dict[str, dict[str, float | None]] = field(default_factory=dict)
    thresholds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def finite_number(v: Any) -> float | None:
    """A finite int or float as a float; anything else (bool, NaN, text, None) as None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def headline(scope: Stats | None) -> dict[str, float | None]:
    """The headline figures (``HEADLINE``) of one summary scope; missing ones None."""
    out: dict[str, float | None] = {}
    for col, path in HEADLINE.items():
        v: Any = scope
        for attr in path:  # JSON keys and attribute names agree on the headline paths
            v = None if v is None else getattr(v, attr)
        out[col] = finite_number(v)
    return out


_MAD_TO_SD = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation
DEFAULT_MIN_ABS_CHANGE = {"error_rate": 0.001}  # below 0.1 percentage point, no verdict


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _judge(
    value: float,
    baseline: Sequence[float],
    *,
    higher_is_better: bool,
    z_threshold: float,
    min_effect: float,
    min_abs_change: float,
) -> dict[str, Any]:
    med = _median(baseline)
    mad = _median([abs(x - med) for x in baseline])
    scale = _MAD_TO_SD * mad
    diff = value - med
    if scale > 0:
        z = diff / scale
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    change = diff / abs(med) if med else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    big = abs(change) >= min_effect and abs(diff) >= min_abs_change
    if abs(z) > z_threshold and big:
        worse = diff < 0 if higher_is_better else diff > 0
        verdict = "regression" if worse else "improvement"
    else:
        verdict = "no change"
    return {
        "verdict": verdict,
        "robust_z": z if math.isfinite(z) else None,
        "change": change if math.isfinite(change) else None,
        "baseline_median": med,
        "baseline_mad": mad,
    }


def track_series(
    rows: Sequence[tuple[int, str | None, float]],
    *,
    scenario: str,
    metric: str = "p99_latency_ms",
    endpoint: str | None = None,
    baseline_runs: int = 10,
    min_baseline: int = 3,
    trend_runs: int = 20,
    min_trend_runs: int = 6,
    z_threshold: float = 3.5,
    min_effect: float = 0.05,
    min_abs_change: float | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """A headline metric across a scenario's runs: ``rows`` are (run id, started, value) of
    its complete runs, oldest first (``History.series_rows``).

    - The last run against a baseline of the ``baseline_runs`` runs before it: robust
      z-score (value - median) / (1.4826 MAD); a regression or improvement needs |z| >
      ``z_threshold`` (3.5, Iglewicz and Hoaglin's outlier rule) and a change of at least
      ``min_effect`` (5%) of the baseline median (and ``min_abs_change``, 0.1 pp for error
      rates).
    - ``events``: the same judgement for every earlier run against the runs before it,
      so a regression that came and went is still on record.
    - ``trend``: Theil-Sen / Mann-Kendall over the last ``trend_runs`` runs, per run
      (horde.coordinator.analysis.trends.trend), read as worsening / improving / stable / inconclusive.
    """
    from horde.coordinator.analysis.trends import trend as _trend  # deferred: scipy

    higher_is_better = metric in HIGHER_IS_BETTER
    floor = min_abs_change if min_abs_change is not None else DEFAULT_MIN_ABS_CHANGE.get(metric, 0.0)
    values = [v for _, _, v in rows]
    out: dict[str, Any] = {
        "scenario": scenario,
        "metric": metric,
        "endpoint": endpoint,
        "better": "higher" if higher_is_better else "lower",
        "runs": len(rows),
        "last": None,
        "baseline": None,
        "robust_z": None,
        "change": None,
        "verdict": "insufficient history",
        "events": [],
        "trend": None,
    }
    judge: dict[str, Any] = dict(
        higher_is_better=higher_is_better, z_threshold=z_threshold, min_effect=min_effect, min_abs_change=floor
    )
    if rows:
        run_id, started, value = rows[-1]
        out["last"] = {"run_id": run_id, "started": started, "value": value}
    if len(rows) >= min_baseline + 1:
        base = values[max(0, len(values) - 1 - baseline_runs) : -1]
        j = _judge(values[-1], base, **judge)
        out.update(
            verdict=j["verdict"],
            robust_z=j["robust_z"],
            change=j["change"],
            baseline={"runs": len(base), "median": j["baseline_median"], "mad": j["baseline_mad"]},
        )
    for i in range(min_baseline, len(rows)):
        j = _judge(values[i], values[max(0, i - baseline_runs) : i], **judge)
        if j["verdict"] != "no change":
            out["events"].append(
                {
                    "run_id": rows[i][0],
                    "started": rows[i][1],
                    "value": values[i],
                    "verdict": j["verdict"],
                    "robust_z": j["robust_z"],
                    "change": j["change"],
                }
            )
    recent = values[-trend_runs:]
    tr = _trend(
        list(range(len(recent))),
        recent,
        unit=metric,
        per="run",
        alpha=alpha,
        min_points=min_trend_runs,
        min_relative_change=min_effect,
    )
    reading = {
        "rising": "improving" if higher_is_better else "worsening",
        "falling": "worsening" if higher_is_better else "improving",
        "flat": "stable",
        "inconclusive": "inconclusive",
    }[tr.verdict]
    out["trend"] = {**tr.to_dict(), "reading": reading}
    return out
