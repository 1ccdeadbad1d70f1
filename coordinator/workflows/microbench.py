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
3. statistics with confidence intervals (coordinator/analysis/microbench.py, pure): mean
   with its t interval, median with its order-statistic interval, p95, p99, errors.

``compare_results`` sets two benchmarks side by side per operation
(``horde.coordinator.analysis.microbench.compare_operation``). Closed-loop throughput is not
compared: with one worker it is the inverse of latency, not an independent count.

Operations come from the reference automaton (``automaton_operations``) or from any
scenario's own request entries (``scenario_operations``): ``horde bench``
(coordinator/workflows/bench.py) picks them by the scenario's target.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from horde.coordinator.analysis.microbench import DEFAULT_CONFIDENCE, OperationStats, compare_operation, summarize

DEFAULT_ITERATIONS = 200
DEFAULT_WARMUP = 20
DEFAULT_MAX_ITERATIONS = 1_000_000  # duration mode: at most this many samples (8 MB) per operation
DEFAULT_TIMEOUT_S = 10.0
GROUPS = ("health", "agents", "tools", "workflows", "database")  # the automaton's
REQUESTS_GROUP = "requests"  # a scenario's own request entries, on any HTTP service


# -- the operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operation: a request sent again and again on its own."""

    name: str  # "group.what", e.g. "tools.search"
    group: str
    method: str
    path: str
    json_body: Any = None
    expect: tuple[int, ...] = (200,)  # empty: any 2xx/3xx (as a scenario's `expect: []`)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # a raw body, instead of json_body

    def template(self, base_url: str) -> Any:
        from horde.agents.spec import RequestTemplate

        headers = dict(self.headers)
        body = self.body
        if self.json_body is not None:
            body = json.dumps(self.json_body, separators=(",", ":")).encode()
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        return RequestTemplate(
            name=self.name,
            method=self.method,
            url=base_url.rstrip("/") + self.path,
            headers=tuple(headers.items()),
            body=body,
            expect=frozenset(self.expect),
        )


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
    ops += [
        Operation(f"agents.{a}.respond", "agents", "POST", f"/api/agents/{a}/respond", {"message": "benchmark"})
        for a in SIMULATED_AGENTS
    ]
    ops += [
        Operation(f"tools.{t}", "tools", "POST", f"/api/tools/{t}/invoke", _TOOL_INPUTS.get(t, {})) for t in TOOL_NAMES
    ]
    ops += [
        Operation(f"workflows.{w}", "workflows", "POST", f"/api/workflows/{w}/run", {"input": "benchmark"}, (200, 201))
        for w in WORKFLOWS
    ]
    ops.append(
        Operation("database.insert", "database", "POST", "/api/records", {"kind": "bench", "value": 1}, (200, 201))
    )
    ops.append(Operation("database.list", "database", "GET", "/api/records?limit=20"))
    return tuple(op for op in ops if op.group in wanted)


def scenario_operations(requests: Iterable[Any]) -> tuple[tuple[Operation, ...], tuple[str, ...]]:
    """A scenario's plain request entries as operations of group ``requests``, named
    ``requests.<name>``; and the names of the flow entries left out (a flow is several
    requests whose later steps depend on the earlier answers, not one operation)."""
    ops: list[Operation] = []
    flows: list[str] = []
    for r in requests:
        if getattr(r, "flow", None) is not None or getattr(r, "user", None):  # flows and Python users
            flows.append(r.name)
            continue
        ops.append(
            Operation(
                f"{REQUESTS_GROUP}.{r.name}",
                REQUESTS_GROUP,
                r.method,
                r.path,
                r.json,
                tuple(r.expect),
                tuple(r.headers.items()),
                None if r.body is None else r.body.encode(),
            )
        )
    return tuple(ops), tuple(flows)


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
        return {
            "name": self.operation.name,
            "group": self.operation.group,
            "method": self.operation.method,
            "path": self.operation.path,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "wall_s": self.wall_s,
            "errors_by_class": self.errors_by_class,
            **self.stats.to_dict(),
        }


@dataclass
class MicrobenchResult:
    target_url: str
    operations: dict[str, OperationResult]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_url": self.target_url,
            "settings": self.settings,
            "operations": {k: r.to_dict() for k, r in self.operations.items()},
        }


def compare_results(
    base: MicrobenchResult, cand: MicrobenchResult, *, alpha: float | None = None, min_effect: float | None = None
) -> dict[str, Any]:
    """Per operation present in both: ``compare_operation``; plus the lists of what
    regressed and improved (as "operation: metric")."""
    out: dict[str, Any] = {}
    regressions, improvements = [], []
    for name in base.operations:
        if name not in cand.operations:
            continue
        a, b = base.operations[name], cand.operations[name]
        c = compare_operation(
            a.latencies_ns,
            b.latencies_ns,
            base_errors=a.errors,
            cand_errors=b.errors,
            alpha=alpha,
            min_effect=min_effect,
        )
        out[name] = c
        for metric, m in c["metrics"].items():
            if m["verdict"] == "regression":
                regressions.append(f"{name}: {metric}")
            elif m["verdict"] == "improvement":
                improvements.append(f"{name}: {metric}")
    return {"operations": out, "regressed": bool(regressions), "regressions": regressions, "improvements": improvements}


async def bench_operation(
    engine: Any,
    index: int,
    operation: Operation,
    *,
    iterations: int | None = DEFAULT_ITERATIONS,
    duration_s: float | None = None,
    warmup: int = DEFAULT_WARMUP,
    warmup_s: float | None = None,
    concurrency: int = 1,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> OperationResult:
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


async def run_microbench_async(
    base_url: str,
    operations: Sequence[Operation] | None = None,
    *,
    iterations: int | None = DEFAULT_ITERATIONS,
    duration_s: float | None = None,
    warmup: int = DEFAULT_WARMUP,
    warmup_s: float | None = None,
    concurrency: int = 1,
    engine: str = "aiohttp",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    progress: Callable[[str], None] | None = None,
) -> MicrobenchResult:
    """Benchmark each operation in turn against ``base_url`` (one engine, ``concurrency``
    connections). ``duration_s`` is per operation; ``progress`` hears of each operation
    as it starts."""
    from horde.agents.http import make_engine

    ops = tuple(operations) if operations is not None else automaton_operations()
    if not ops:
        raise ValueError("no operations to benchmark")
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise ValueError("operation names must be unique")
    templates = [op.template(base_url) for op in ops]
    connect_s = min(5.0, timeout_s) if connect_timeout_s is None else connect_timeout_s
    eng = make_engine(engine, templates, max_connections=concurrency, timeout_s=timeout_s, connect_timeout_s=connect_s)
    await eng.open()
    results: dict[str, OperationResult] = {}
    try:
        for i, op in enumerate(ops):
            if progress is not None:
                progress(f"{op.name} ({i + 1}/{len(ops)})")
            results[op.name] = await bench_operation(
                eng,
                i,
                op,
                iterations=iterations,
                duration_s=duration_s,
                warmup=warmup,
                warmup_s=warmup_s,
                concurrency=concurrency,
                max_iterations=max_iterations,
            )
    finally:
        await eng.close()
    settings = {
        "iterations": iterations,
        "duration_s": duration_s,
        "warmup": warmup,
        "warmup_s": warmup_s,
        "concurrency": concurrency,
        "engine": engine,
        "timeout_s": timeout_s,
    }
    return MicrobenchResult(target_url=base_url, operations=results, settings=settings)


def run_microbench(base_url: str, operations: Sequence[Operation] | None = None, **kw: Any) -> MicrobenchResult:
    """``run_microbench_async`` on an event loop of its own (uvloop when installed). Blocking."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_microbench_async(base_url, operations, **kw))
    return uvloop.run(run_microbench_async(base_url, operations, **kw))


def text_microbench(result: MicrobenchResult | Mapping[str, Any]) -> str:
    """A table: one line per operation, milliseconds, intervals at the result's confidence."""
    d = result.to_dict() if isinstance(result, MicrobenchResult) else dict(result)
    header = (
        f"  {'operation':<28} {'n':>6} {'err':>4} {'mean':>8} {'CI':>17} {'median':>8} {'CI':>17}"
        f" {'p95':>8} {'p99':>8} {'ops/s':>8}"
    )
    lines = [header]

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
    lines.append(
        "  milliseconds; closed loop, "
        f"{d['settings'].get('concurrency', 1)} in flight; intervals at "
        f"{100 * confidence:g}% (mean: t; median: order statistics)"
    )
    return "\n".join(lines)
