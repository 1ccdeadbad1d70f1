"""Per-operation benchmarks of a running automaton: one operation at a time, closed loop.

Where a load run (``horde run``) measures a mix of requests at a planned rate, a
microbenchmark asks what one operation costs on its own: the automaton's agents
(``/api/agents``, each simulated agent's ``respond``), its tools, its workflows and its
database (records). For each operation, in turn:

1. warm-up: ``warmup`` requests (or ``warmup_s`` seconds) whose timings are thrown away
   (connections opened, caches and allocator warmed, the interpreter's first paths taken);
2. measurement: ``concurrency`` workers (1 by default) each send the operation and wait for
   the answer before the next (a closed loop), until ``iterations`` answers have been
   counted or ``duration_s`` has passed;
3. statistics with confidence intervals (``summarize``, pure):

   - mean with Student's t interval (the sample mean is close to normal for the sizes used
     here, even for skewed latency; with heavy tails the interval is optimistic);
   - median with the distribution-free order-statistic interval: the number of samples
     below the true median is Binomial(n, 1/2), so [x_(l), x_(u)] covers it with a
     probability known exactly (``quantile_ci_ranks``; no assumption about the shape);
   - p95 and p99 from ``horde.coordinator.measure.histogram.Histogram`` (within 1%), with the same
     order-statistic interval when there are enough samples for it (59 for a two-sided 95%
     interval of p95, 299 for p99 with these ranks);
   - standard deviation, min, max, and operations per second (answers / measuring time).

``compare_results`` sets two benchmarks side by side per operation with the statistics of
``coordinator/analysis/compare.py`` (Mann-Whitney U on the binned distributions with the ratio of
medians, exact-bootstrap quantile ratios, the error-rate test) plus Welch's t test on the
means; the verdicts mean what they mean there: significant at ``alpha`` *and* at least
``min_effect`` (5%). Closed-loop throughput is not compared: with one worker it is the
inverse of latency, not an independent count.

Raw timings are kept per operation (the order-statistic intervals need them); a
benchmark's memory is bounded by ``max_iterations`` (8 bytes a sample), never by time.

The operations are sent with the agents' request engine (``horde.agents.http.make_engine``), the
same code path a load run uses. Latency is measured around ``engine.request`` on the
monotonic clock (``perf_counter_ns``): with one request in flight per worker there is no
intended send time to correct for.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from horde.coordinator.measure.histogram import Histogram

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ITERATIONS = 200
DEFAULT_WARMUP = 20
DEFAULT_MAX_ITERATIONS = 1_000_000  # duration mode: at most this many samples (8 MB) per operation
DEFAULT_TIMEOUT_S = 10.0
GROUPS = ("health", "agents", "tools", "workflows", "database")


# -- statistics (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float  # the coverage this interval has (for order statistics: the exact one, >= asked)

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self, scale: float = 1.0) -> dict[str, float]:
        return {"low": self.low * scale, "high": self.high * scale, "confidence": self.confidence}


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = DEFAULT_CONFIDENCE
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


def quantile_ci(sorted_values: Sequence[float] | np.ndarray, q: float, confidence: float = DEFAULT_CONFIDENCE
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


def summarize(latencies_ns: Sequence[int] | np.ndarray, *, errors: int = 0, wall_s: float | None = None,
              confidence: float = DEFAULT_CONFIDENCE) -> OperationStats:
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


def welch_mean_ratio(base: Sequence[float] | np.ndarray, cand: Sequence[float] | np.ndarray, *,
                     alpha: float) -> dict[str, Any]:
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
    return {"base": m1, "candidate": m2, "ratio": ratio,
            "ci": (ratio * math.exp(-half), ratio * math.exp(half)), "p_value": p}


def compare_operation(base_ns: Sequence[int] | np.ndarray, cand_ns: Sequence[int] | np.ndarray, *,
                      base_errors: int = 0, cand_errors: int = 0, alpha: float | None = None,
                      min_effect: float | None = None, seed: int = 0) -> dict[str, Any]:
    """One operation, baseline against candidate: horde.coordinator.analysis.compare's latency, tail and
    error-rate metrics on the two histograms, plus ``mean`` (Welch). JSON-ready."""
    from horde.coordinator.measure.aggregate import Stats
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

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    min_effect = DEFAULT_MIN_EFFECT if min_effect is None else min_effect

    def stats(values: Sequence[int] | np.ndarray, errors: int) -> Stats:
        s = Stats()
        s.latency = histogram_of(values)
        s.requests = len(values)
        s.errors = int(errors)
        return s

    comp = compare_stats(stats(base_ns, base_errors), stats(cand_ns, cand_errors),
                         alpha=alpha, min_effect=min_effect, seed=seed)
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
        metrics["mean"] = MetricComparison("mean", w["base"] / 1e6, w["candidate"] / 1e6, ratio, "ratio", w["ci"],
                                           w["p_value"], verdict, test,
                                           {"n_base": len(base_ns), "n_candidate": len(cand_ns)})
    else:
        metrics["mean"] = MetricComparison("mean", None, None, None, "ratio", None, None, INSUFFICIENT, test,
                                           {"reason": "fewer than 2 samples on a side"})
    return Comparison(metrics).to_dict()


# -- the operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One automaton operation: a request sent again and again on its own."""

    name: str  # "group.what", e.g. "tools.search"
    group: str
    method: str
    path: str
    json_body: Any = None
    expect: tuple[int, ...] = (200,)

    def template(self, base_url: str) -> Any:
        from horde.agents.spec import RequestTemplate

        body = None if self.json_body is None else json.dumps(self.json_body, separators=(",", ":")).encode()
        headers = (("Content-Type", "application/json"),) if body is not None else ()
        return RequestTemplate(name=self.name, method=self.method, url=base_url.rstrip("/") + self.path,
                               headers=headers, body=body, expect=frozenset(self.expect))


_TOOL_INPUTS: dict[str, dict[str, Any]] = {
    "search": {"query": "load testing"},
    "calculator": {"op": "mean", "numbers": [3, 1, 4, 1, 5, 9, 2, 6]},
    "summarize": {"text": "Percentiles, histograms and merging in a distributed load generator", "max_words": 5},
}


def automaton_operations(groups: Iterable[str] | None = None) -> tuple[Operation, ...]:
    """The reference automaton's operations, by group: health, agents (list, and each
    simulated agent's respond), tools (each), workflows (each, run to completion), database
    (insert a record, list records)."""
    from horde.automaton.catalog import SIMULATED_AGENTS, TOOL_NAMES, WORKFLOWS

    wanted = set(GROUPS if groups is None else groups)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown operation group(s) {sorted(unknown)}; expected some of {list(GROUPS)}")
    ops: list[Operation] = [Operation("health", "health", "GET", "/health")]
    ops.append(Operation("agents.list", "agents", "GET", "/api/agents"))
    ops += [Operation(f"agents.{a}.respond", "agents", "POST", f"/api/agents/{a}/respond", {"message": "benchmark"})
            for a in SIMULATED_AGENTS]
    ops += [Operation(f"tools.{t}", "tools", "POST", f"/api/tools/{t}/invoke", _TOOL_INPUTS.get(t, {}))
            for t in TOOL_NAMES]
    ops += [Operation(f"workflows.{w}", "workflows", "POST", f"/api/workflows/{w}/run", {"input": "benchmark"},
                      (200, 201)) for w in WORKFLOWS]
    ops.append(Operation("database.insert", "database", "POST", "/api/records", {"kind": "bench", "value": 1},
                         (200, 201)))
    ops.append(Operation("database.list", "database", "GET", "/api/records?limit=20"))
    return tuple(op for op in ops if op.group in wanted)


# -- running (I/O) --------------------------------------------------------------------------


@dataclass
class OperationResult:
    operation: Operation
    latencies_ns: np.ndarray  # measured answers, in completion order
    errors: int
    errors_by_class: dict[str, int]
    wall_s: float  # the measuring time (warm-up excluded)
    concurrency: int
    warmup: int  # warm-up requests sent (not measured)
    stats: OperationStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = summarize(self.latencies_ns, errors=self.errors, wall_s=self.wall_s)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.operation.name, "group": self.operation.group, "method": self.operation.method,
                "path": self.operation.path, "concurrency": self.concurrency, "warmup": self.warmup,
                "wall_s": self.wall_s, "errors_by_class": self.errors_by_class, **self.stats.to_dict()}


@dataclass
class MicrobenchResult:
    target_url: str
    operations: dict[str, OperationResult]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"target_url": self.target_url, "settings": self.settings,
                "operations": {k: r.to_dict() for k, r in self.operations.items()}}


def compare_results(base: MicrobenchResult, cand: MicrobenchResult, *, alpha: float | None = None,
                    min_effect: float | None = None) -> dict[str, Any]:
    """Per operation present in both: ``compare_operation``; plus the lists of what
    regressed and improved (as "operation: metric")."""
    out: dict[str, Any] = {}
    regressions, improvements = [], []
    for name in base.operations:
        if name not in cand.operations:
            continue
        a, b = base.operations[name], cand.operations[name]
        c = compare_operation(a.latencies_ns, b.latencies_ns, base_errors=a.errors, cand_errors=b.errors,
                              alpha=alpha, min_effect=min_effect)
        out[name] = c
        for metric, m in c["metrics"].items():
            if m["verdict"] == "regression":
                regressions.append(f"{name}: {metric}")
            elif m["verdict"] == "improvement":
                improvements.append(f"{name}: {metric}")
    return {"operations": out, "regressed": bool(regressions), "regressions": regressions,
            "improvements": improvements}


async def bench_operation(engine: Any, index: int, operation: Operation, *, iterations: int | None = DEFAULT_ITERATIONS,
                          duration_s: float | None = None, warmup: int = DEFAULT_WARMUP, warmup_s: float | None = None,
                          concurrency: int = 1, max_iterations: int = DEFAULT_MAX_ITERATIONS) -> OperationResult:
    """Warm up, then time ``operation`` (template ``index`` of ``engine``) in a closed loop."""
    from horde.agents.samples import ERROR_LABELS, ErrorClass, classify_status

    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if iterations is None and duration_s is None:
        raise ValueError("give iterations, duration_s or both")
    limit = min(max_iterations, iterations if iterations is not None else max_iterations)
    expect = frozenset(operation.expect)

    async def one() -> tuple[int, int]:
        t0 = time.perf_counter_ns()
        status, _, error = await engine.request(index)
        elapsed = time.perf_counter_ns() - t0
        if error == ErrorClass.OK and status:
            error = classify_status(status, expect)
        return elapsed, int(error)

    # Warm-up: a count, or a time, or both (whichever ends later), at the same concurrency.
    sent = 0
    warm_end = time.monotonic() + (warmup_s or 0.0)

    async def warm_worker() -> None:
        nonlocal sent
        while sent < warmup or time.monotonic() < warm_end:
            sent += 1
            await one()

    await asyncio.gather(*(warm_worker() for _ in range(concurrency)))

    latencies = np.zeros(limit, dtype=np.int64)
    classes: dict[int, int] = {}
    claimed = 0
    done = 0
    start = time.monotonic()
    deadline = start + duration_s if duration_s is not None else math.inf

    async def worker() -> None:
        nonlocal claimed, done
        while claimed < limit and time.monotonic() < deadline:
            claimed += 1
            elapsed, error = await one()
            latencies[done] = elapsed
            done += 1
            classes[error] = classes.get(error, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.monotonic() - start
    errors = sum(n for c, n in classes.items() if c != ErrorClass.OK)
    return OperationResult(
        operation=operation,
        latencies_ns=latencies[:done].copy(),
        errors=errors,
        errors_by_class={ERROR_LABELS[c]: n for c, n in sorted(classes.items())},
        wall_s=wall_s,
        concurrency=concurrency,
        warmup=sent,
    )


async def run_microbench_async(base_url: str, operations: Sequence[Operation] | None = None, *,
                               iterations: int | None = DEFAULT_ITERATIONS, duration_s: float | None = None,
                               warmup: int = DEFAULT_WARMUP, warmup_s: float | None = None, concurrency: int = 1,
                               engine: str = "aiohttp", timeout_s: float = DEFAULT_TIMEOUT_S,
                               max_iterations: int = DEFAULT_MAX_ITERATIONS) -> MicrobenchResult:
    """Benchmark each operation in turn against ``base_url`` (one engine, ``concurrency``
    connections). ``duration_s`` is per operation."""
    from horde.agents.http import make_engine

    ops = tuple(operations) if operations is not None else automaton_operations()
    if not ops:
        raise ValueError("no operations to benchmark")
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise ValueError("operation names must be unique")
    templates = [op.template(base_url) for op in ops]
    eng = make_engine(engine, templates, max_connections=concurrency, timeout_s=timeout_s,
                      connect_timeout_s=min(5.0, timeout_s))
    await eng.open()
    results: dict[str, OperationResult] = {}
    try:
        for i, op in enumerate(ops):
            results[op.name] = await bench_operation(
                eng, i, op, iterations=iterations, duration_s=duration_s, warmup=warmup, warmup_s=warmup_s,
                concurrency=concurrency, max_iterations=max_iterations)
    finally:
        await eng.close()
    settings = {"iterations": iterations, "duration_s": duration_s, "warmup": warmup, "warmup_s": warmup_s,
                "concurrency": concurrency, "engine": engine, "timeout_s": timeout_s}
    return MicrobenchResult(target_url=base_url, operations=results, settings=settings)


def run_microbench(base_url: str, operations: Sequence[Operation] | None = None, **kw: Any) -> MicrobenchResult:
    """``run_microbench_async`` on an event loop of its own (uvloop when installed). Blocking."""
    try:
        import uvloop

        return uvloop.run(run_microbench_async(base_url, operations, **kw))
    except ImportError:
        return asyncio.run(run_microbench_async(base_url, operations, **kw))


def text_microbench(result: MicrobenchResult | Mapping[str, Any]) -> str:
    """A table: one line per operation, milliseconds, intervals at the result's confidence."""
    d = result.to_dict() if isinstance(result, MicrobenchResult) else dict(result)
    lines = [f"  {'operation':<28} {'n':>6} {'err':>4} {'mean':>8} {'CI':>17} {'median':>8} {'CI':>17}"
             f" {'p95':>8} {'p99':>8} {'ops/s':>8}"]

    def ci(c: Mapping[str, float] | None) -> str:
        return "-" if c is None else f"[{c['low']:.3f}, {c['high']:.3f}]"

    confidence = DEFAULT_CONFIDENCE
    for name, op in d["operations"].items():
        confidence = op.get("confidence", confidence)
        lines.append(
            f"  {name[:28]:<28} {op['n']:>6} {op['errors']:>4} {op['mean_ms']:>8.3f} {ci(op['mean_ci_ms']):>17}"
            f" {op['median_ms']:>8.3f} {ci(op['median_ci_ms']):>17} {op['p95_ms']:>8.3f} {op['p99_ms']:>8.3f}"
            f" {(op['ops_per_s'] or 0):>8.1f}"
        )
    lines.append("  milliseconds; closed loop, "
                 f"{d['settings'].get('concurrency', 1)} in flight; intervals at "
                 f"{100 * confidence:g}% (mean: t; median: order statistics)")
    return "\n".join(lines)
