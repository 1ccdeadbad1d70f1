"""The analysis of a stress run, pure (no clock, no I/O; coordinator/workflows/stress.py
reads the bundles and hands their windows in): per-step figures and verdicts, whose limit it
was (the target's or the generator's), and the recovery from overload.

Per step: a step owns the one-second windows that lie inside it, the first
``warmup_windows`` of them are dropped (the queue of a new level is still forming), and the
break rules are checked on the rest merged (exactly, from the window histograms). The step
that broke is the first whose rules fail; the highest level that held is the one before it.
Whose limit it was, and the recovery band, are told in coordinator/workflows/stress.py's doc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from horde.coordinator.analysis.spike import band_from_windows, in_band, recovered_at
from horde.coordinator.analysis.stress_plan import WARMUP_WINDOWS, Step
from horde.coordinator.judge.thresholds import RESOURCE_KIND, parse_threshold
from horde.coordinator.measure.aggregate import Stats

LATE_FRACTION_LIMIT = 0.01  # late sends above this share of a step's sends: the generator fell behind ...
MIN_LATE_SENDS = 10  # ... and at least this many (a few late sends in a short step are scheduling noise)
LOOP_LAG_LIMIT_NS = 100_000_000  # event-loop lag above 100 ms: the generator fell behind
SEND_RATE_FRACTION = 0.9  # achieved sends below 90% of planned ...
LOW_ERROR_RATE = 0.01  # ... while the target answered (errors below 1%)
POOL_EXHAUSTED_FRACTION = 0.9  # open model: in flight at 90% of max_in_flight = waiting on the target


@dataclass
class StepResult:
    index: int
    level: float
    start_s: float
    end_s: float
    windows: list[int]  # the windows measured (after the warm-up)
    warmup_windows: list[int]
    complete: bool  # the run held this level for its whole hold
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    rps: float | None = None  # completions per second over the measured windows
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    service_time_ms: dict[str, float | None] = field(default_factory=dict)
    planned_per_s: float | None = None  # open model: the planned send rate
    sends_per_s: float | None = None  # actual sends per second over the measured span
    late_sends: int = 0
    late_fraction: float | None = None
    loop_lag_max_ms: float | None = None
    in_flight_max: int | None = None
    generator_cpu: float | None = None  # the busiest agent's CPU, fraction of one core
    target: dict[str, float | None] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    broke: bool = False
    generator_limited: bool = False
    generator_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StepView:
    """Merged stats of a step plus its target resources, as Threshold.observe reads them."""

    def __init__(self, stats: Stats, windows: Sequence[Mapping[str, Any]]) -> None:
        self._stats = stats
        self._windows = windows

    def resource_values(self, series: str):
        import numpy as np

        vals = [w["target"][series] for w in self._windows if series in (w.get("target") or {})]
        return np.asarray(vals, dtype=float)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stats, name)


def _window_total(hist: Mapping[str, Any] | None) -> Stats | None:
    if hist is None:
        return None
    total = Stats(1.0)
    for sparse in (hist.get("endpoints") or {}).values():
        total.merge(Stats.from_sparse(sparse))
    total.duration_s = 1.0
    return total


def analyse_steps(
    steps: Sequence[Step],
    windows: Iterable[Mapping[str, Any]],
    window_histograms: Mapping[int, Mapping[str, Any]],
    sends: Mapping[str, Any],
    break_rules: Sequence[str],
    *,
    model: str = "open",
    max_in_flight: int | None = None,
    run_end_s: float | None = None,
    warmup_windows: int = WARMUP_WINDOWS,
) -> list[StepResult]:
    """Per-step figures and verdicts (pure; see the module doc).

    windows: the bundle's window dicts; window_histograms: window index -> the bundle's
    windows.msgpack record ({"endpoints": {name: Stats sparse}}); sends: summary["sends"].
    run_end_s: where the run stopped (an abort cuts the last step short); None = planned end.
    Steps the run never reached are left out.
    """
    rules = [parse_threshold(r) for r in break_rules]
    by_index = {int(w["index"]): w for w in windows}
    bin_s = float(sends.get("bin_s", 0.1))
    counts = list(sends.get("counts", []))
    out: list[StepResult] = []
    for st in steps:
        if run_end_s is not None and st.start_s >= run_end_s - 1e-9:
            break
        inside = [
            i
            for i, w in sorted(by_index.items())
            if w["start_s"] >= st.start_s - 1e-9
            and w["end_s"] <= st.end_s + 1e-9
            and (run_end_s is None or w["end_s"] <= run_end_s + 1e-9)
        ]
        measured = inside[warmup_windows:] or inside  # stopped during the warm-up: judge what there is
        warm = [i for i in inside if i not in measured]
        complete = run_end_s is None or run_end_s >= st.end_s - 1e-9
        r = StepResult(st.index, st.level, st.start_s, st.end_s, measured, warm, complete)
        out.append(r)
        if not measured:
            continue
        ws = [by_index[i] for i in measured]
        stats = Stats(float(len(ws)))
        for i in measured:
            s = _window_total(window_histograms.get(i))
            if s is not None:
                stats.merge(s)
        stats.duration_s = float(len(ws))
        r.requests, r.errors = stats.requests, stats.errors
        r.error_rate = stats.error_rate if stats.requests else None
        r.rps = stats.rps
        r.latency_ms = _quantiles_ms(stats.latency)
        r.service_time_ms = _quantiles_ms(stats.service_time)
        span0, span1 = ws[0]["start_s"], ws[-1]["end_s"]
        b0, b1 = int(round(span0 / bin_s)), int(round(span1 / bin_s))
        sent = sum(counts[b0:b1])
        r.sends_per_s = sent / (span1 - span0) if span1 > span0 else None
        if model == "open":
            r.planned_per_s = st.level
        gens = [g for w in ws for g in (w.get("generator") or {}).values()]
        r.late_sends = int(sum(g.get("late_sends", 0) for g in gens))
        r.late_fraction = r.late_sends / sent if sent else None
        lags = [g.get("loop_lag_max_ns") for g in gens if g.get("loop_lag_max_ns") is not None]
        r.loop_lag_max_ms = round(max(lags) / 1e6, 3) if lags else None
        flights = [g.get("in_flight") for g in gens if g.get("in_flight") is not None]
        r.in_flight_max = int(max(flights)) if flights else None
        r.generator_cpu = _generator_cpu(by_index, measured)
        view = _StepView(stats, ws)
        r.target = {
            "memory_max_mb": _res(view, "target_memory", max, 1e-6),
            "cpu_mean": _res(view, "target_cpu", lambda v: sum(v) / len(v), 1.0),
            "connections_max": _res(view, "target_connections", max, 1.0),
        }
        for rule in rules:
            v = rule.check(view)
            r.rules.append({"expr": rule.text, "ok": v.ok, "observed": v.observed, "observed_text": v.observed_text})
        # "no data" breaks when nothing was answered (the target answered nothing); a resource
        # rule without readings (the target's metrics were not scraped) is no evidence either way.
        r.broke = any(
            not x["ok"] and not (rule.kind == RESOURCE_KIND and x["observed"] is None)
            for rule, x in zip(rules, r.rules)
        )
        r.generator_reasons = generator_reasons(r, model=model, max_in_flight=max_in_flight)
        r.generator_limited = bool(r.generator_reasons)
    return out


def generator_reasons(r: StepResult, *, model: str, max_in_flight: int | None) -> list[str]:
    """Why the generator (not the target) limited this step; [] when it kept up."""
    reasons = []
    pool_exhausted = (
        model == "open"
        and max_in_flight is not None
        and r.in_flight_max is not None
        and r.in_flight_max >= POOL_EXHAUSTED_FRACTION * max_in_flight
    )
    if (
        r.late_fraction is not None
        and r.late_fraction > LATE_FRACTION_LIMIT
        and r.late_sends >= MIN_LATE_SENDS
        and not pool_exhausted
    ):
        reasons.append(f"{r.late_sends} late sends ({r.late_fraction:.1%} of the step's sends)")
    if r.loop_lag_max_ms is not None and r.loop_lag_max_ms > LOOP_LAG_LIMIT_NS / 1e6:
        reasons.append(f"event-loop lag {r.loop_lag_max_ms:.0f} ms")
    if (
        model == "open"
        and r.planned_per_s
        and r.sends_per_s is not None
        and r.sends_per_s < SEND_RATE_FRACTION * r.planned_per_s
        and (r.error_rate or 0.0) < LOW_ERROR_RATE
        and not pool_exhausted
    ):
        reasons.append(f"sent {r.sends_per_s:.1f}/s of {r.planned_per_s:g}/s planned with the target answering")
    return reasons


def _generator_cpu(by_index: Mapping[int, Mapping[str, Any]], measured: Sequence[int]) -> float | None:
    """The busiest agent's CPU over the measured windows (cpu_s readings are cumulative)."""
    first, last = measured[0], measured[-1]
    before = by_index.get(first - 1, {}).get("generator") or {}
    after = by_index.get(last, {}).get("generator") or {}
    fracs = []
    for agent, g in after.items():
        if agent in before and "cpu_s" in g and "cpu_s" in before[agent]:
            fracs.append((g["cpu_s"] - before[agent]["cpu_s"]) / (last - first + 1))
    return round(max(fracs), 3) if fracs else None


def _res(view: _StepView, series: str, how: Any, scale: float) -> float | None:
    v = view.resource_values(series)
    return round(float(how(list(v))) * scale, 3) if len(v) else None


def _quantiles_ms(h: Any) -> dict[str, float | None]:
    if not h.count:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    q = h.quantiles((0.5, 0.9, 0.99))
    ms = lambda ns: None if ns is None else round(ns / 1e6, 3)  # noqa: E731
    return {"p50": ms(q[0.5]), "p90": ms(q[0.9]), "p99": ms(q[0.99]), "max": ms(h.max_ns), "mean": ms(h.mean_ns())}


@dataclass
class Verdict:
    highest_held: float | None
    broke_at: float | None
    limited_by: str | None  # "target", "generator" or None (nothing broke up to the max)
    text: str


def verdict(steps: Sequence[StepResult], levels: Sequence[float], *, aborted: bool) -> Verdict:
    """Which level held, which broke, and whose limit it was (pure).

    The generator ran out of capacity first when the step that broke (without a break: the
    last step run) was generator-limited: running out of capacity lasts. A generator-limited
    step below it followed by clean ones was a passing hiccup (a busy machine); it stays in
    that step's record and is named in the text, and does not decide the verdict.
    """
    broke = next((s for s in steps if s.broke), None)
    if broke is None and aborted and steps:
        broke = steps[-1]  # the live rule stopped the run, the per-step check found no failing step
    final = broke if broke is not None else (steps[-1] if steps else None)
    held = [s for s in steps if not s.broke and (broke is None or s.index < broke.index) and s.complete]
    highest = held[-1].level if held else None
    hiccups = [s for s in steps if s.generator_limited and final is not None and s.index < final.index]
    note = f" (generator hiccups, not sustained, at {', '.join(f'{s.level:g}' for s in hiccups)})" if hiccups else ""
    if final is not None and final.generator_limited:
        first = final
        for s in reversed([s for s in steps if s.index < final.index]):
            if not s.generator_limited:
                break
            first = s  # the run of generator-limited steps that ends at the final one
        below = [s for s in held if s.index < first.index]
        why = "; ".join(first.generator_reasons)
        where = f" (the target broke at {broke.level:g})" if broke is not None else ""
        return Verdict(
            below[-1].level if below else None,
            broke.level if broke else None,
            "generator",
            f"the generator ran out of capacity at {first.level:g}: {why}{where}; not the target's limit",
        )
    if broke is not None:
        failed = ", ".join(f"{x['expr']} (observed {x['observed_text']})" for x in broke.rules if not x["ok"])
        failed = failed or "the live abort rule fired"
        held_text = f"held at {highest:g}" if highest is not None else "no level held"
        return Verdict(highest, broke.level, "target", f"{held_text}; broke at {broke.level:g}: {failed}{note}")
    if len(steps) < len(levels):
        return Verdict(
            highest,
            None,
            None,
            f"the run stopped at {steps[-1].level:g} before reaching {levels[-1]:g}{note}" if steps else "no step ran",
        )
    return Verdict(highest, None, None, f"held up to the search maximum {levels[-1]:g}{note}")


@dataclass
class RecoveryResult:
    overload_level: float
    recovery_level: float
    overload_s: float
    recovery_s: float
    overload_end_s: float  # when the level dropped to the recovery level (from the run's start)
    band: dict[str, Any] | None
    recovery_time_s: float | None  # from the drop to the start of the first of 3 in-band windows
    recovered_at_s: float | None
    overload: dict[str, Any]  # requests, errors, error rate, worst p99 during the overload
    windows: list[dict[str, Any]]  # per window: index, start_s, requests, error_rate, p99_ms, in_band
    outcome: str
    bundle: Any  # the run's bundle directory (a Path), None without one
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundle"] = str(self.bundle) if self.bundle else None
        return d


def recovery_from_windows(
    windows: Iterable[Mapping[str, Any]],
    *,
    overload_level: float,
    recovery_level: float,
    overload_s: float,
    recovery_s: float,
    baseline_band: Mapping[str, Any] | None,
    baseline_s: float = 0.0,
    outcome: str = "",
    bundle: Any = None,
) -> RecoveryResult:
    """The recovery analysis of a finished run (pure)."""
    by_index = {int(w["index"]): w for w in windows}
    band = dict(baseline_band) if baseline_band is not None else None
    if band is None:
        pre = [
            w
            for _, w in sorted(by_index.items())
            if w["end_s"] <= baseline_s + 1e-9 and (w.get("total") or {}).get("requests")
        ]
        band = band_from_windows(pre[1:] if len(pre) > 1 else pre)
    end_s = baseline_s + overload_s
    until_s = end_s + recovery_s
    back = recovered_at(by_index, band, end_s, until_s) if band is not None else None
    during = [w for _, w in sorted(by_index.items()) if w["start_s"] >= baseline_s - 1e-9 and w["start_s"] < end_s]
    req = sum(int(w["total"]["requests"]) for w in during)
    err = sum(int(w["total"]["errors"]) for w in during)
    p99s = [w["total"]["latency_ms"]["p99"] for w in during if w["total"]["latency_ms"].get("p99") is not None]
    note = ""
    if band is None:
        note = "no baseline window to measure a band from"
    elif back is None:
        note = "not back inside the band for 3 consecutive windows before the end of the run"
    return RecoveryResult(
        overload_level=float(overload_level),
        recovery_level=float(recovery_level),
        overload_s=float(overload_s),
        recovery_s=float(recovery_s),
        overload_end_s=end_s,
        band=band,
        recovery_time_s=None if back is None else round(back - end_s, 6),
        recovered_at_s=back,
        overload={
            "requests": req,
            "errors": err,
            "error_rate": err / req if req else None,
            "latency_p99_ms_worst_window": max(p99s) if p99s else None,
        },
        windows=[
            {
                "index": i,
                "start_s": w["start_s"],
                "requests": w["total"]["requests"],
                "error_rate": w["total"]["error_rate"],
                "p99_ms": w["total"]["latency_ms"].get("p99"),
                "in_band": in_band(w, band) if band is not None else None,
            }
            for i, w in sorted(by_index.items())
        ],
        outcome=outcome,
        bundle=bundle,
        note=note,
    )
