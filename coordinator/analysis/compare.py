"""Baseline against candidate: did latency, errors or throughput change, and by how much?

Every comparison works on what a bundle keeps, the binned histograms and the counts, so it
costs the same for a thousand requests or a billion; no sample is ever expanded to raw
values. docs/statistics.md gives the reasoning and the references.

Per scope (the total, each endpoint, each stage, each endpoint x stage), four metrics:

- ``latency``: the whole distribution. Mann-Whitney U computed from the bucket counts
  (a value's rank is its bucket's mid-rank, ties corrected in the variance), with the
  common-language effect size P(candidate > base) and Cliff's delta; the effect reported
  is the ratio of medians with its bootstrap interval.
- ``latency_p95``, ``latency_p99`` (``tail_quantiles``): ratio of the quantiles with an
  exact-bootstrap interval and a bootstrap p-value (below).
- ``error_rate``: difference of proportions, Newcombe's hybrid-score interval, Fisher's
  exact test when an expected cell count is under 5, the pooled two-proportion z-test
  otherwise.
- ``throughput``: ratio of request rates, the conditional (binomial) test for two Poisson
  rates with its exact interval.

A metric is a ``regression`` (or an ``improvement``) only when it is significant at
``alpha`` *and* its effect is at least ``min_effect`` (5%): with a million samples a 1%
shift is significant and still no change worth a verdict. ``insufficient data`` when a
side has no samples, or too few beyond a quantile to compare it (``min_tail_samples``).

The tests themselves (on binned histograms, proportions and rates) are in significance.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from horde.coordinator.analysis.significance import (
    DEFAULT_ALPHA,
    DEFAULT_BOOTSTRAP,
    error_rate_test,
    mann_whitney_binned,
    quantile_ratio,
    rate_test,
)
from horde.coordinator.bundle.schema import as_manifest, as_summary
from horde.coordinator.measure.aggregate import Stats, quantile_key

REGRESSION = "regression"
IMPROVEMENT = "improvement"
NO_CHANGE = "no change"
INSUFFICIENT = "insufficient data"

DEFAULT_MIN_EFFECT = 0.05
DEFAULT_MIN_ERROR_RATE_DIFF = 0.001  # 0.1 percentage point: below it an error-rate change is noise to anyone
DEFAULT_TAIL_QUANTILES = (0.95, 0.99)
# A quantile q is compared only when both sides hold at least this many samples beyond it,
# n min(q, 1 - q) >= 5 (p99: 500 samples, the median: 10): below that the bootstrap of a
# quantile is badly overconfident (with 2 samples every resampled p99 is at most the max).
DEFAULT_MIN_TAIL_SAMPLES = 5


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    base: float | None  # the figure in the base run (ms for latency, a fraction for error rate, 1/s for throughput)
    candidate: float | None
    effect: float | None  # ratio candidate / base, or a difference (effect_kind)
    effect_kind: str  # "ratio" | "difference"
    ci: tuple[float | None, float | None] | None  # (1 - alpha) interval of the effect; None: an unbounded side
    p_value: float | None
    verdict: str
    test: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "base": self.base,
            "candidate": self.candidate,
            "effect": self.effect,
            "effect_kind": self.effect_kind,
            "ci": list(self.ci) if self.ci is not None else None,
            "p_value": self.p_value,
            "verdict": self.verdict,
            "test": self.test,
            **({"details": self.details} if self.details else {}),
        }


@dataclass(frozen=True)
class Comparison:
    metrics: dict[str, MetricComparison]

    @property
    def verdict(self) -> str:
        verdicts = [m.verdict for m in self.metrics.values()]
        if REGRESSION in verdicts:
            return REGRESSION
        if IMPROVEMENT in verdicts:
            return IMPROVEMENT
        if verdicts and all(v == INSUFFICIENT for v in verdicts):
            return INSUFFICIENT
        return NO_CHANGE

    @property
    def regressed(self) -> bool:
        return self.verdict == REGRESSION

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "metrics": {k: m.to_dict() for k, m in self.metrics.items()}}


# -- the comparison of two scopes ------------------------------------------------------


def _verdict(significant: bool, large_enough: bool, worse: bool) -> str:
    if not (significant and large_enough):
        return NO_CHANGE
    return REGRESSION if worse else IMPROVEMENT


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 6)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _insufficient(
    metric: str, test: str, base: float | None, cand: float | None, kind: str, reason: str = "no samples on a side"
) -> MetricComparison:
    return MetricComparison(metric, base, cand, None, kind, None, None, INSUFFICIENT, test, {"reason": reason})


def compare_stats(
    base: Stats,
    cand: Stats,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    min_error_rate_diff: float = DEFAULT_MIN_ERROR_RATE_DIFF,
    tail_quantiles: Sequence[float] = DEFAULT_TAIL_QUANTILES,
    n_boot: int = DEFAULT_BOOTSTRAP,
    min_tail_samples: float = DEFAULT_MIN_TAIL_SAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compare one scope of two runs (see the module docstring for the metrics)."""
    out: dict[str, MetricComparison] = {}
    out["latency"] = _compare_latency(base, cand, alpha, min_effect, n_boot, min_tail_samples, seed)
    for q in tail_quantiles:
        tail = _compare_tail(base, cand, q, alpha, min_effect, n_boot, min_tail_samples, seed)
        out[tail.metric] = tail
    out["error_rate"] = _compare_error_rate(base, cand, alpha, min_effect, min_error_rate_diff)
    out["throughput"] = _compare_throughput(base, cand, alpha, min_effect)
    return Comparison(out)


def _enough(base: Stats, cand: Stats, q: float, min_tail_samples: float) -> bool:
    """Whether both sides hold enough samples beyond quantile q to compare it."""
    bl, cl = base.latency, cand.latency
    return min(bl.count, cl.count) * min(q, 1 - q) >= min_tail_samples and bool(bl.value_at_quantile(q))


def _compare_latency(
    base: Stats, cand: Stats, alpha: float, min_effect: float, n_boot: int, min_tail_samples: float, seed: int
) -> MetricComparison:
    """The distribution (Mann-Whitney U), effect = ratio of medians."""
    bl, cl = base.latency, cand.latency
    test = "mann-whitney u (binned)"
    if not _enough(base, cand, 0.5, min_tail_samples):
        return _insufficient(
            "latency",
            test,
            _ms(bl.value_at_quantile(0.5)),
            _ms(cl.value_at_quantile(0.5)),
            "ratio",
            f"fewer than {2 * min_tail_samples:g} samples on a side",
        )
    mw = mann_whitney_binned(bl, cl)
    med = quantile_ratio(bl, cl, 0.5, alpha=alpha, n_boot=n_boot, seed=seed)
    worse = med["ratio"] > 1
    return MetricComparison(
        "latency",
        _ms(med["base_ns"]),
        _ms(med["candidate_ns"]),
        med["ratio"],
        "ratio",
        med["ci"],
        mw["p_value"],
        _verdict(mw["p_value"] < alpha, abs(med["ratio"] - 1) >= min_effect, worse),
        test,
        {
            "statistic": "median",
            "common_language": mw["common_language"],
            "cliffs_delta": mw["cliffs_delta"],
            "z": mw["z"],
            "n_base": mw["n_base"],
            "n_candidate": mw["n_candidate"],
        },
    )


def _compare_tail(
    base: Stats,
    cand: Stats,
    q: float,
    alpha: float,
    min_effect: float,
    n_boot: int,
    min_tail_samples: float,
    seed: int,
) -> MetricComparison:
    """One tail quantile: exact-bootstrap ratio."""
    bl, cl = base.latency, cand.latency
    name = f"latency_{quantile_key(q)}"
    test = "bootstrap quantile ratio"
    if not _enough(base, cand, q, min_tail_samples):
        need = math.ceil(min_tail_samples / min(q, 1 - q))
        return _insufficient(
            name,
            test,
            _ms(bl.value_at_quantile(q)),
            _ms(cl.value_at_quantile(q)),
            "ratio",
            f"fewer than {need} samples on a side for {quantile_key(q)}",
        )
    r = quantile_ratio(bl, cl, q, alpha=alpha, n_boot=n_boot, seed=seed + 1)
    return MetricComparison(
        name,
        _ms(r["base_ns"]),
        _ms(r["candidate_ns"]),
        r["ratio"],
        "ratio",
        r["ci"],
        r["p_value"],
        _verdict(r["p_value"] < alpha, abs(r["ratio"] - 1) >= min_effect, r["ratio"] > 1),
        test,
        {"n_base": bl.count, "n_candidate": cl.count},
    )


def _compare_error_rate(
    base: Stats, cand: Stats, alpha: float, min_effect: float, min_error_rate_diff: float
) -> MetricComparison:
    """Difference of proportions."""
    if not (base.requests and cand.requests):
        return _insufficient(
            "error_rate",
            "two proportions",
            base.error_rate if base.requests else None,
            cand.error_rate if cand.requests else None,
            "difference",
        )
    e = error_rate_test(base.errors, base.requests, cand.errors, cand.requests, alpha=alpha)
    practical = abs(e["difference"]) >= max(min_error_rate_diff, min_effect * e["base"])
    return MetricComparison(
        "error_rate",
        e["base"],
        e["candidate"],
        e["difference"],
        "difference",
        e["ci"],
        e["p_value"],
        _verdict(e["p_value"] < alpha, practical, e["difference"] > 0),
        e["test"],
        {
            "errors_base": base.errors,
            "errors_candidate": cand.errors,
            "requests_base": base.requests,
            "requests_candidate": cand.requests,
        },
    )


def _compare_throughput(base: Stats, cand: Stats, alpha: float, min_effect: float) -> MetricComparison:
    """Ratio of Poisson rates (fewer requests per second is worse)."""
    test = "poisson rate ratio (conditional binomial)"
    if not (base.duration_s > 0 and cand.duration_s > 0 and base.requests and cand.requests):
        return _insufficient("throughput", test, base.rps or None, cand.rps or None, "ratio")
    r = rate_test(base.requests, base.duration_s, cand.requests, cand.duration_s, alpha=alpha)
    return MetricComparison(
        "throughput",
        r["base"],
        r["candidate"],
        r["ratio"],
        "ratio",
        (_finite(r["ci"][0]), _finite(r["ci"][1])) if r["ci"] else None,
        r["p_value"],
        _verdict(r["p_value"] < alpha, abs(r["ratio"] - 1) >= min_effect, r["ratio"] < 1),
        test,
        {"duration_base_s": base.duration_s, "duration_candidate_s": cand.duration_s},
    )


# -- bundles ---------------------------------------------------------------------------


def _scope_label(endpoint: str | None, stage: str | None) -> str:
    if endpoint is None and stage is None:
        return "total"
    if stage is None:
        return f"endpoint {endpoint}"
    if endpoint is None:
        return f"stage {stage}"
    return f"{endpoint} @ {stage}"


def bundle_scopes(bundle: Any) -> dict[tuple[str | None, str | None], Stats]:
    """(endpoint, stage) -> Stats of a bundle, None meaning all. From histograms.msgpack;
    a bundle without it (a killed coordinator) is rebuilt per endpoint from its windows."""
    scopes: dict[tuple[str | None, str | None], Stats] = {}
    for entry in bundle.histograms():
        scopes[(entry.get("endpoint"), entry.get("stage"))] = Stats.from_sparse(entry["stats"])
    if not scopes:
        windows = 0
        for w in bundle.window_histograms():
            windows += 1
            for name, sparse in (w.get("endpoints") or {}).items():
                s = Stats.from_sparse(sparse)
                for key in ((name, None), (None, None)):
                    scopes.setdefault(key, Stats()).merge(s)
        for s in scopes.values():
            s.duration_s = float(windows)
    summary = as_summary(bundle.summary)
    duration = summary.duration_s if summary is not None else None
    if duration:  # the rates the summary reports (the planned span of a finished run)
        for (_, stage), s in scopes.items():
            if stage is None:
                s.duration_s = float(duration)
    return scopes


def _describe(bundle: Any) -> dict[str, Any]:
    m = as_manifest(bundle.manifest)
    return {
        "path": str(bundle.path),
        "scenario": m.scenario_name,
        "started": m.started,
        "outcome": m.outcome,
        "complete": bool(bundle.complete),
    }


def compare_bundles(a: Any, b: Any, **kw: Any) -> dict[str, Any]:
    """Compare bundle ``a`` (baseline) with ``b`` (candidate) scope by scope.

    Keyword arguments go to ``compare_stats``. JSON-ready: ``scopes`` (a list of
    {endpoint, stage, label, verdict, metrics}), ``regressed``, ``improved``, the lists of
    what regressed and improved, ``warnings`` and the settings used.
    """
    sa, sb = bundle_scopes(a), bundle_scopes(b)
    keys = sorted(set(sa) | set(sb), key=lambda k: (k[0] is not None, k[1] is not None, k[0] or "", k[1] or ""))
    scopes = []
    regressions, improvements = [], []
    for endpoint, stage in keys:
        label = _scope_label(endpoint, stage)
        comp = compare_stats(sa.get((endpoint, stage), Stats()), sb.get((endpoint, stage), Stats()), **kw)
        for name, m in comp.metrics.items():
            if m.verdict == REGRESSION:
                regressions.append(f"{label}: {name}")
            elif m.verdict == IMPROVEMENT:
                improvements.append(f"{label}: {name}")
        scopes.append({"endpoint": endpoint, "stage": stage, "label": label, **comp.to_dict()})
    warnings = []
    da, db = _describe(a), _describe(b)
    if da["scenario"] != db["scenario"]:
        warnings.append(f"different scenarios: {da['scenario']!r} and {db['scenario']!r}")
    for side, bundle, d in (("base", a, da), ("candidate", b, db)):
        if not d["complete"]:
            warnings.append(f"{side} bundle is incomplete ({d['outcome']})")
        summary = as_summary(bundle.summary)
        if summary is not None and summary.generator.saturated:
            warnings.append(f"{side} run's generator saturated: its latency includes the generator's own delay")
    settings = {
        "alpha": kw.get("alpha", DEFAULT_ALPHA),
        "min_effect": kw.get("min_effect", DEFAULT_MIN_EFFECT),
        "min_error_rate_diff": kw.get("min_error_rate_diff", DEFAULT_MIN_ERROR_RATE_DIFF),
        "tail_quantiles": list(kw.get("tail_quantiles", DEFAULT_TAIL_QUANTILES)),
        "n_boot": kw.get("n_boot", DEFAULT_BOOTSTRAP),
        "min_tail_samples": kw.get("min_tail_samples", DEFAULT_MIN_TAIL_SAMPLES),
    }
    return {
        "base": da,
        "candidate": db,
        "settings": settings,
        "regressed": bool(regressions),
        "improved": bool(improvements),
        "regressions": regressions,
        "improvements": improvements,
        "warnings": warnings,
        "scopes": scopes,
    }


# -- text ------------------------------------------------------------------------------


def _fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric.startswith("latency"):
        return f"{v / 1000:.3g}s" if v >= 1000 else f"{v:.3g}ms"
    if metric == "error_rate":
        return f"{100 * v:.3g}%"
    return f"{v:.4g}/s"


def _fmt_effect(m: dict[str, Any]) -> str:
    e = m["effect"]
    if e is None:
        return "-"
    if m["effect_kind"] == "ratio":
        return f"x{e:.3f}"
    return f"{100 * e:+.3g}pp"


def _fmt_ci(m: dict[str, Any]) -> str:
    ci = m["ci"]
    if ci is None:
        return "-"

    def one(x: float | None) -> str:
        if x is None:
            return "inf"
        return f"{x:.3f}" if m["effect_kind"] == "ratio" else f"{100 * x:+.3g}"

    return f"[{one(ci[0])}, {one(ci[1])}]"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-6" if p < 1e-6 else f"{p:.2g}"


_NAMES = {"latency": "latency p50", "error_rate": "errors", "throughput": "throughput"}


def text_comparison(result: dict[str, Any]) -> str:
    """A readable table: total, endpoints and stages in full; endpoint x stage scopes only
    where something changed."""
    s = result["settings"]
    b, c = result["base"], result["candidate"]
    lines = [
        (
            f"horde compare: {b.get('scenario')} {b.get('started') or ''}"
            f"  ->  {c.get('scenario')} {c.get('started') or ''}"
        ),
        f"  base       {b['path']}",
        f"  candidate  {c['path']}",
        f"  alpha {s['alpha']:g}, minimum effect {100 * s['min_effect']:g}%: "
        + ("REGRESSED" if result["regressed"] else "no regression")
        + (", improved" if result["improved"] else ""),
    ]
    for w in result.get("warnings", []):
        lines.append(f"  warning: {w}")
    lines.append("")
    header = f"  {'scope':<28} {'metric':<13} {'base':>10} {'candidate':>10} {'effect':>9} {'CI':>19} {'p':>7}  verdict"
    lines.append(header)
    quiet = 0
    for scope in result["scopes"]:
        detailed = scope["endpoint"] is not None and scope["stage"] is not None
        if detailed and scope["verdict"] in (NO_CHANGE, INSUFFICIENT):
            quiet += 1
            continue
        for name, m in scope["metrics"].items():
            label = _NAMES.get(name, name.replace("latency_", "latency "))
            verdict = m["verdict"].upper() if m["verdict"] in (REGRESSION, IMPROVEMENT) else m["verdict"]
            lines.append(
                f"  {scope['label'][:28]:<28} {label:<13} {_fmt_value(name, m['base']):>10}"
                f" {_fmt_value(name, m['candidate']):>10} {_fmt_effect(m):>9} {_fmt_ci(m):>19}"
                f" {_fmt_p(m['p_value']):>7}  {verdict}"
            )
    if quiet:
        lines.append(f"  ({quiet} endpoint x stage scope(s) with no change not shown)")
    return "\n".join(lines)
