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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from horde.coordinator.measure.aggregate import Stats, quantile_key
from horde.coordinator.measure.histogram import HIGHEST_TRACKABLE_NS, COUNTS_LEN, Histogram, highest_equivalent_value

REGRESSION = "regression"
IMPROVEMENT = "improvement"
NO_CHANGE = "no change"
INSUFFICIENT = "insufficient data"

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_EFFECT = 0.05
DEFAULT_MIN_ERROR_RATE_DIFF = 0.001  # 0.1 percentage point: below it an error-rate change is noise to anyone
DEFAULT_TAIL_QUANTILES = (0.95, 0.99)
DEFAULT_BOOTSTRAP = 10_000
# A quantile q is compared only when both sides hold at least this many samples beyond it,
# n min(q, 1 - q) >= 5 (p99: 500 samples, the median: 10): below that the bootstrap of a
# quantile is badly overconfident (with 2 samples every resampled p99 is at most the max).
DEFAULT_MIN_TAIL_SAMPLES = 5

_UPPER = highest_equivalent_value(np.arange(COUNTS_LEN)).astype(np.float64)  # a bucket's reported value


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    base: float | None  # the figure in the base run (ms for latency, a fraction for error rate, 1/s for throughput)
    candidate: float | None
    effect: float | None  # ratio candidate / base, or a difference (effect_kind)
    effect_kind: str  # "ratio" | "difference"
    ci: tuple[float, float] | None  # (1 - alpha) interval of the effect
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
    return {"u": u, "common_language": cl, "cliffs_delta": 2 * cl - 1, "z": z, "p_value": min(1.0, p),
            "n_base": int(n1), "n_candidate": int(n2)}


def _quantile_bootstrap_cdf(h: Histogram, q: float) -> tuple[np.ndarray, np.ndarray]:
    """(values, cdf) of the exact multinomial-bootstrap distribution of quantile q.

    Values are the buckets' reported values (HdrHistogram's highest equivalent, the
    overflow at max_ns), clamped to [min, max] as ``value_at_quantile`` does.
    """
    counts = _dense(h)
    n = int(h.count)
    nz = np.flatnonzero(counts)
    upper = np.append(_UPPER, float(h.max_ns or HIGHEST_TRACKABLE_NS))[nz]
    values = np.clip(upper, float(h.min_ns), float(h.max_ns))
    cum = np.cumsum(counts[nz]) / n
    rank = max(1, math.ceil(q * n))
    cdf = sps.binom.sf(rank - 1, n, np.minimum(cum, 1.0))
    cdf[-1] = 1.0
    return values, np.maximum.accumulate(cdf)


def _draw(values: np.ndarray, cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return values[np.minimum(np.searchsorted(cdf, u, side="left"), len(values) - 1)]


def quantile_ratio(base: Histogram, cand: Histogram, q: float, *, alpha: float = DEFAULT_ALPHA,
                   n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, float]:
    """Ratio cand / base of quantile q: point estimate, (1 - alpha) percentile interval
    and a two-sided bootstrap p-value for "ratio = 1" (floored at 1 / (n_boot + 1))."""
    b_q, c_q = base.value_at_quantile(q), cand.value_at_quantile(q)
    if not base.count or not cand.count or not b_q:
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
    return {"base_ns": float(b_q), "candidate_ns": float(c_q), "ratio": float(c_q) / float(b_q),
            "ci": (float(lo), float(hi)), "p_value": p}


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
    return {"base": r1, "candidate": r2, "ratio": ratio, "ci": (to_ratio(ci.low), to_ratio(ci.high)),
            "p_value": float(res.pvalue)}


# -- the comparison of two scopes ------------------------------------------------------


def _verdict(significant: bool, large_enough: bool, worse: bool) -> str:
    if not (significant and large_enough):
        return NO_CHANGE
    return REGRESSION if worse else IMPROVEMENT


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 6)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _insufficient(metric: str, test: str, base: float | None, cand: float | None, kind: str,
                  reason: str = "no samples on a side") -> MetricComparison:
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
    bl, cl = base.latency, cand.latency

    def enough(q: float) -> bool:
        return min(bl.count, cl.count) * min(q, 1 - q) >= min_tail_samples and bool(bl.value_at_quantile(q))

    # latency: the distribution (Mann-Whitney U), effect = ratio of medians
    test = "mann-whitney u (binned)"
    if enough(0.5):
        mw = mann_whitney_binned(bl, cl)
        med = quantile_ratio(bl, cl, 0.5, alpha=alpha, n_boot=n_boot, seed=seed)
        worse = med["ratio"] > 1
        out["latency"] = MetricComparison(
            "latency", _ms(med["base_ns"]), _ms(med["candidate_ns"]), med["ratio"], "ratio", med["ci"],
            mw["p_value"],
            _verdict(mw["p_value"] < alpha, abs(med["ratio"] - 1) >= min_effect, worse),
            test,
            {"statistic": "median", "common_language": mw["common_language"], "cliffs_delta": mw["cliffs_delta"],
             "z": mw["z"], "n_base": mw["n_base"], "n_candidate": mw["n_candidate"]},
        )
    else:
        out["latency"] = _insufficient("latency", test, _ms(bl.value_at_quantile(0.5)), _ms(cl.value_at_quantile(0.5)),
                                       "ratio", f"fewer than {2 * min_tail_samples:g} samples on a side")

    # tail quantiles: exact-bootstrap ratio
    for q in tail_quantiles:
        name = f"latency_{quantile_key(q)}"
        test = "bootstrap quantile ratio"
        if enough(q):
            r = quantile_ratio(bl, cl, q, alpha=alpha, n_boot=n_boot, seed=seed + 1)
            out[name] = MetricComparison(
                name, _ms(r["base_ns"]), _ms(r["candidate_ns"]), r["ratio"], "ratio", r["ci"], r["p_value"],
                _verdict(r["p_value"] < alpha, abs(r["ratio"] - 1) >= min_effect, r["ratio"] > 1), test,
                {"n_base": bl.count, "n_candidate": cl.count},
            )
        else:
            need = math.ceil(min_tail_samples / min(q, 1 - q))
            out[name] = _insufficient(name, test, _ms(bl.value_at_quantile(q)), _ms(cl.value_at_quantile(q)), "ratio",
                                      f"fewer than {need} samples on a side for {quantile_key(q)}")

    # error rate: difference of proportions
    if base.requests and cand.requests:
        e = error_rate_test(base.errors, base.requests, cand.errors, cand.requests, alpha=alpha)
        practical = abs(e["difference"]) >= max(min_error_rate_diff, min_effect * e["base"])
        out["error_rate"] = MetricComparison(
            "error_rate", e["base"], e["candidate"], e["difference"], "difference", e["ci"], e["p_value"],
            _verdict(e["p_value"] < alpha, practical, e["difference"] > 0), e["test"],
            {"errors_base": base.errors, "errors_candidate": cand.errors,
             "requests_base": base.requests, "requests_candidate": cand.requests},
        )
    else:
        out["error_rate"] = _insufficient("error_rate", "two proportions", base.error_rate if base.requests else None,
                                          cand.error_rate if cand.requests else None, "difference")

    # throughput: ratio of Poisson rates (fewer requests per second is worse)
    test = "poisson rate ratio (conditional binomial)"
    if base.duration_s > 0 and cand.duration_s > 0 and base.requests and cand.requests:
        r = rate_test(base.requests, base.duration_s, cand.requests, cand.duration_s, alpha=alpha)
        out["throughput"] = MetricComparison(
            "throughput", r["base"], r["candidate"], r["ratio"], "ratio",
            tuple(_finite(x) for x in r["ci"]) if r["ci"] else None,  # type: ignore[arg-type]
            r["p_value"],
            _verdict(r["p_value"] < alpha, abs(r["ratio"] - 1) >= min_effect, r["ratio"] < 1), test,
            {"duration_base_s": base.duration_s, "duration_candidate_s": cand.duration_s},
        )
    else:
        out["throughput"] = _insufficient("throughput", test, base.rps or None, cand.rps or None, "ratio")
    return Comparison(out)


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
    summary = bundle.summary or {}
    duration = summary.get("duration_s")
    if duration:  # the rates the summary reports (the planned span of a finished run)
        for (_, stage), s in scopes.items():
            if stage is None:
                s.duration_s = float(duration)
    return scopes


def _describe(bundle: Any) -> dict[str, Any]:
    m = bundle.manifest or {}
    return {
        "path": str(bundle.path),
        "scenario": (m.get("scenario") or {}).get("name"),
        "started": m.get("started"),
        "outcome": m.get("outcome"),
        "complete": bool(getattr(bundle, "complete", m.get("complete"))),
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
        gen = (bundle.summary or {}).get("generator") or {}
        if gen.get("saturated"):
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
        f"horde compare: {b.get('scenario')} {b.get('started') or ''}  ->  {c.get('scenario')} {c.get('started') or ''}",
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
