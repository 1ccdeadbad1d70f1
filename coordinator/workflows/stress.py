"""Stress: find where a target breaks, and how long it takes to come back from overload.

Built on ``run_scenario``: each search or recovery is one ordinary horde run (one bundle),
whose workload this module writes, and whose bundle it then reads back.

Breaking-point search (``find_breaking_point``)
    The workload becomes a staircase: per level (``start``, ``start + step``, ... up to
    ``max_level``) an instant step to it and a hold of ``hold_s`` (open model: arrivals
    per second; closed model: users). Each break rule (threshold grammar of limits.py,
    e.g. ``error_rate < 1%``, ``p99(latency) < 500ms``, ``max(target_memory) < 2GB``)
    becomes an abort threshold over a sliding window of the hold
    (``{expr, abort: true, window: hold_s, delay: hold_s}``), so the run stops soon
    after the first step that breaks. The bundle is then analysed per step: a step owns
    the one-second windows that lie inside it, the first ``warmup_windows`` of them are
    dropped (the queue of a new level is still forming), and the rules are checked on the
    rest merged (exactly, from the window histograms). The step that broke is the first
    whose rules fail; the highest level that held is the one before it.

    Whose limit was it? A step is generator-limited when the load generator, not the
    target, fell behind during it:
      - late sends (more than 10 ms after their intended time) > 1% of its sends and at
        least 10 (on a busy machine a short step sees a few late sends from scheduling
        alone: measured, 0-7 per second at 100-200 req/s with the agent at 15% of a core),
        while the open model's worker pool was not exhausted (in flight < 90% of
        max_in_flight: a pool waiting on a slow target sends late because of the target); or
      - the agents' event-loop lag > 100 ms; or
      - open model: the achieved send rate < 90% of the planned rate while the step's
        error rate was below 1% (an erroring target is not starving the generator).
    If the step that broke (without a break: the last step run) is generator-limited, the
    result says ``limited_by: "generator"`` instead of blaming the target; otherwise
    ``limited_by: "target"`` when a step broke, None when nothing broke up to
    ``max_level``. A generator-limited step below that, followed by clean steps, was a
    passing hiccup (the machine was busy for a moment): it is kept in the step's record
    and named in the verdict text, and does not decide it (measured: a one-off stall of
    11 late sends at 120 req/s, then clean steps up to the break at 220).

Recovery from overload (``measure_recovery``)
    A second run: (optionally a baseline at the recovery level,) the overload level for
    ``overload_s``, then the recovery level for ``recovery_s``. The recovery time is
    measured like a spike's (coordinator/analysis/spike.py): from the drop to the recovery level
    to the start of the first of 3 consecutive windows inside the band, where the band is
    p99 latency <= max(baseline window p99) x 1.5 + 1 ms and error rate <= baseline
    error rate + 1 percentage point. The baseline comes from the search's low steps
    (``BreakingPointResult.baseline_band()``), or from the baseline period of this run.

One target across runs
    The search and the recovery must hit the same automaton: ``StressTarget`` starts it
    once (``horde.automaton.launch.start_automaton(faults=...)``), each run is pointed at its
    URL, its faults are re-applied before each run (which restarts the scaling model and
    reseeds it), and it is stopped at the end. ``run_stress`` does all of it for a
    scenario file (``horde stress FILE``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.judge.thresholds import RESOURCE_KIND, parse_threshold
from horde.coordinator.scenario.load import LoadedScenario
from horde.coordinator.scenario.models import Scenario
from horde.coordinator.analysis.spike import band_from_windows, in_band, recovered_at

WARMUP_WINDOWS = 1  # windows dropped at the start of each step
LATE_FRACTION_LIMIT = 0.01  # late sends above this share of a step's sends: the generator fell behind ...
MIN_LATE_SENDS = 10  # ... and at least this many (a few late sends in a short step are scheduling noise)
LOOP_LAG_LIMIT_NS = 100_000_000  # event-loop lag above 100 ms: the generator fell behind
SEND_RATE_FRACTION = 0.9  # achieved sends below 90% of planned ...
LOW_ERROR_RATE = 0.01  # ... while the target answered (errors below 1%)
POOL_EXHAUSTED_FRACTION = 0.9  # open model: in flight at 90% of max_in_flight = waiting on the target
BASELINE_STEPS = 2  # the band for recovery comes from this many of the lowest held steps


# --- the scenario rewritten ------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    index: int
    level: float
    start_s: float  # the instant step
    end_s: float  # the end of the hold
    stage: str  # the hold's stage name


def staircase_levels(start: float, step: float, max_level: float) -> list[float]:
    """start, start + step, ... while <= max_level (at least `start`)."""
    if start <= 0 or step <= 0:
        raise ValueError(f"start and step must be > 0, got start={start} step={step}")
    if max_level < start:
        raise ValueError(f"max_level ({max_level}) must be at least start ({start})")
    n = int(math.floor((max_level - start) / step + 1e-9)) + 1
    return [round(start + i * step, 9) for i in range(n)]


def staircase(levels: Sequence[float], hold_s: float) -> tuple[list[dict[str, Any]], list[Step]]:
    """Workload stages (an instant step + a hold per level) and the steps they make."""
    if hold_s <= 0:
        raise ValueError(f"hold_s must be > 0, got {hold_s}")
    stages: list[dict[str, Any]] = []
    steps: list[Step] = []
    for i, level in enumerate(levels):
        label = _label(level)
        stages.append({"name": f"step-{i + 1}-to-{label}", "duration": 0.0, "target": level})
        stages.append({"name": f"hold-{i + 1}-at-{label}", "duration": float(hold_s), "target": level})
        steps.append(Step(i, float(level), i * hold_s, (i + 1) * hold_s, f"hold-{i + 1}-at-{label}"))
    return stages, steps


def _label(level: float) -> str:
    return f"{level:g}".replace(".", "_").replace("+", "")


def abort_thresholds(break_rules: Sequence[str], hold_s: float) -> list[dict[str, Any]]:
    """The break rules as live abort thresholds over a sliding window of the hold."""
    for rule in break_rules:
        parse_threshold(rule)  # a bad rule fails here, with the parser's message
    return [{"expr": r, "abort": True, "window": float(hold_s), "delay": float(hold_s)} for r in break_rules]


def rebuild(
    loaded: LoadedScenario,
    *,
    name: str | None = None,
    target_url: str | None = None,
    start: float | None = None,
    stages: list[dict[str, Any]] | None = None,
    thresholds: list[Any] | None = None,
) -> LoadedScenario:
    """The same scenario with its target, stages or thresholds replaced (validated again)."""
    data = loaded.scenario.model_dump(by_alias=True)
    as_run = copy.deepcopy(loaded.as_run)
    if name is not None:
        data["name"] = as_run["name"] = name
    if target_url is not None:
        target: dict[str, Any] = {"url": target_url}
        if "metrics" in _target_fields():
            # Scrape the automaton's resources as run.py does for an embedded target.
            target["metrics"] = target_url.rstrip("/") + "/metrics"
        data["target"] = target
        as_run["target"] = dict(target)
    if start is not None or stages is not None:
        wl = data["workload"]
        if start is not None:
            wl["start"] = start
        if stages is not None:
            wl["stages"] = stages
        as_run.setdefault("workload", {}).update({"start": wl["start"], "stages": copy.deepcopy(wl["stages"])})
    if thresholds is not None:
        data["thresholds"] = thresholds
        as_run["thresholds"] = copy.deepcopy(thresholds)
    scenario = Scenario.model_validate(data)
    return LoadedScenario(scenario=scenario, source=loaded.source, as_run=as_run)


def _target_fields() -> set[str]:
    from horde.coordinator.scenario.models import Target

    return {f.alias or n for n, f in Target.model_fields.items()} | set(Target.model_fields)


# --- the target shared by several runs ---------------------------------------------------------


def embedded_faults(loaded: LoadedScenario) -> dict[str, Any] | None:
    """The scenario's embedded-target faults in the automaton's wire form (None: none)."""
    emb = loaded.scenario.target.embedded
    if emb is None:
        return None
    if hasattr(emb, "faults_config"):
        faults = emb.faults_config()
        if faults:
            faults.setdefault("seed", loaded.scenario.seed)  # as run.py does for an embedded target
        return faults or None
    stall = getattr(emb, "stall", None)  # a scenario model without faults: the stall alone
    if stall is not None:
        return {"stall_every_s": stall.every_s, "stall_for_s": stall.for_s}
    return None


class StressTarget:
    """One automaton for several runs: started once, faults re-applied before each run.

    ``with StressTarget(faults) as target: find_breaking_point(..., target=target)``
    """

    def __init__(self, faults: Mapping[str, Any] | None = None, **start_kwargs: Any) -> None:
        self.faults = dict(faults or {})
        self._start_kwargs = start_kwargs
        self.process = None

    @classmethod
    def for_scenario(cls, loaded: LoadedScenario, **start_kwargs: Any) -> StressTarget:
        return cls(embedded_faults(loaded), **start_kwargs)

    def start(self) -> StressTarget:
        from horde.automaton.launch import start_automaton

        self.process = start_automaton(faults=self.faults or None, **self._start_kwargs)
        return self

    @property
    def url(self) -> str:
        if self.process is None:
            raise RuntimeError("the stress target is not started")
        return self.process.url

    def reset(self) -> None:
        """Re-apply the faults: the scaling model restarts from its configured capacity."""
        if self.process is not None and getattr(self.process, "admin_url", None):
            self.process.set_faults(self.faults)

    def stats(self) -> dict[str, Any]:
        return self.process.stats() if self.process is not None else {}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> StressTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _target_url(target: Any) -> str | None:
    if target is None:
        return None
    if isinstance(target, str):
        return target
    return target.url


# --- per-step analysis (pure) -----------------------------------------------------------------


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

    def resource_values(self, series: str):  # noqa: ANN201 - numpy array
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
            i for i, w in sorted(by_index.items())
            if w["start_s"] >= st.start_s - 1e-9 and w["end_s"] <= st.end_s + 1e-9
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
        model == "open" and max_in_flight is not None and r.in_flight_max is not None
        and r.in_flight_max >= POOL_EXHAUSTED_FRACTION * max_in_flight
    )
    if (
        r.late_fraction is not None and r.late_fraction > LATE_FRACTION_LIMIT
        and r.late_sends >= MIN_LATE_SENDS and not pool_exhausted
    ):
        reasons.append(f"{r.late_sends} late sends ({r.late_fraction:.1%} of the step's sends)")
    if r.loop_lag_max_ms is not None and r.loop_lag_max_ms > LOOP_LAG_LIMIT_NS / 1e6:
        reasons.append(f"event-loop lag {r.loop_lag_max_ms:.0f} ms")
    if (
        model == "open" and r.planned_per_s and r.sends_per_s is not None
        and r.sends_per_s < SEND_RATE_FRACTION * r.planned_per_s
        and (r.error_rate or 0.0) < LOW_ERROR_RATE and not pool_exhausted
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
        return Verdict(below[-1].level if below else None, broke.level if broke else None, "generator",
                       f"the generator ran out of capacity at {first.level:g}: {why}{where}; not the target's limit")
    if broke is not None:
        failed = ", ".join(f"{x['expr']} (observed {x['observed_text']})" for x in broke.rules if not x["ok"])
        failed = failed or "the live abort rule fired"
        held_text = f"held at {highest:g}" if highest is not None else "no level held"
        return Verdict(highest, broke.level, "target", f"{held_text}; broke at {broke.level:g}: {failed}{note}")
    if len(steps) < len(levels):
        return Verdict(highest, None, None, f"the run stopped at {steps[-1].level:g} before reaching {levels[-1]:g}{note}"
                       if steps else "no step ran")
    return Verdict(highest, None, None, f"held up to the search maximum {levels[-1]:g}{note}")


# --- breaking-point search -----------------------------------------------------------------------


@dataclass
class BreakingPointResult:
    model: str
    levels: list[float]
    hold_s: float
    break_rules: list[str]
    steps: list[StepResult]
    highest_held: float | None
    broke_at: float | None
    limited_by: str | None
    verdict: str
    outcome: str
    bundle: Path | None
    aborted: bool
    stop_reason: str = ""

    def baseline_band(self, steps: int = BASELINE_STEPS) -> dict[str, Any] | None:
        """The recovery band from the lowest held steps' measured windows (None: none held)."""
        held = [s for s in self.steps if not s.broke and not s.generator_limited][:steps]
        if not held or self.bundle is None:
            return None
        wanted = {i for s in held for i in s.windows}
        ws = [w for w in read_bundle(self.bundle).windows() if int(w["index"]) in wanted]
        return band_from_windows(ws)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundle"] = str(self.bundle) if self.bundle else None
        return d


def find_breaking_point(
    loaded: LoadedScenario,
    *,
    start: float,
    step: float,
    max_level: float,
    hold_s: float,
    break_rules: Sequence[str],
    options: Any = None,
    target: Any = None,
    warmup_windows: int = WARMUP_WINDOWS,
) -> BreakingPointResult:
    """Raise the level in steps until a break rule fails; see the module doc.

    target: a StressTarget (reset before the run), an automaton process or a URL; None
    runs the scenario's own target (an embedded one is started for this run only).
    """
    from horde.coordinator.run.session import RunOptions, run_scenario

    if not break_rules:
        raise ValueError("at least one break rule is needed")
    model = loaded.scenario.workload.model
    if model == "closed":
        for name, v in (("start", start), ("step", step)):
            if float(v) != int(v):
                raise ValueError(f"closed model: {name} is a number of users, got {v}")
    levels = staircase_levels(start, step, max_level)
    stages, steps = staircase(levels, hold_s)
    url = _target_url(target)
    if url is not None and "metrics" not in _target_fields():
        resource = [r for r in break_rules if parse_threshold(r).kind == RESOURCE_KIND]
        if resource:
            raise ValueError(
                f"break rules on target resources ({', '.join(resource)}) need the target's metrics, "
                "and a URL target is not scraped by this horde (no `target.metrics`); run the scenario's "
                "embedded target instead (target=None)"
            )
    search = rebuild(
        loaded,
        target_url=url,
        start=0.0,
        stages=stages,
        thresholds=abort_thresholds(break_rules, hold_s),
    )
    if hasattr(target, "reset"):
        target.reset()
    result = run_scenario(search, options or RunOptions())
    bundle = read_bundle(result.bundle)
    windows = list(bundle.windows())
    hists = {int(h["index"]): h for h in bundle.window_histograms()}
    aborted = result.outcome.value == "aborted"
    run_end_s = _abort_time(bundle) if aborted else None
    step_results = analyse_steps(
        steps, windows, hists, result.summary.get("sends", {}), break_rules,
        model=model, max_in_flight=search.scenario.workload.max_in_flight,
        run_end_s=run_end_s, warmup_windows=warmup_windows,
    )
    v = verdict(step_results, levels, aborted=aborted)
    return BreakingPointResult(
        model=model, levels=levels, hold_s=float(hold_s), break_rules=list(break_rules), steps=step_results,
        highest_held=v.highest_held, broke_at=v.broke_at, limited_by=v.limited_by, verdict=v.text,
        outcome=result.outcome.value, bundle=result.bundle, aborted=aborted,
        stop_reason=result.summary.get("stop_reason", ""),
    )


def _abort_time(bundle: Any) -> float | None:
    ats = [a.get("at_s") for a in bundle.alerts() if a.get("kind") == "abort" and a.get("at_s") is not None]
    return float(min(ats)) if ats else None


# --- recovery from overload -----------------------------------------------------------------------


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
    bundle: Path | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundle"] = str(self.bundle) if self.bundle else None
        return d


def measure_recovery(
    loaded: LoadedScenario,
    *,
    overload_level: float,
    recovery_level: float,
    overload_s: float,
    recovery_s: float,
    baseline_band: Mapping[str, Any] | None = None,
    baseline_s: float = 0.0,
    options: Any = None,
    target: Any = None,
) -> RecoveryResult:
    """Overload, then the recovery level; the time until the target is back in the band.

    baseline_band: from ``BreakingPointResult.baseline_band()`` (or spike.band_from_windows);
    None measures it in this run over ``baseline_s`` at the recovery level first.
    """
    from horde.coordinator.run.session import RunOptions, run_scenario

    if baseline_band is None and baseline_s <= 0:
        raise ValueError("give baseline_band, or baseline_s > 0 to measure one first")
    stages: list[dict[str, Any]] = []
    if baseline_s > 0:
        stages += [{"name": "baseline-step", "duration": 0.0, "target": recovery_level},
                   {"name": "baseline", "duration": float(baseline_s), "target": recovery_level}]
    stages += [
        {"name": "overload-step", "duration": 0.0, "target": overload_level},
        {"name": "overload", "duration": float(overload_s), "target": overload_level},
        {"name": "recovery-step", "duration": 0.0, "target": recovery_level},
        {"name": "recovery", "duration": float(recovery_s), "target": recovery_level},
    ]
    run = rebuild(loaded, target_url=_target_url(target), start=0.0, stages=stages, thresholds=[])
    if hasattr(target, "reset"):
        target.reset()
    result = run_scenario(run, options or RunOptions())
    windows = list(read_bundle(result.bundle).windows())
    return recovery_from_windows(
        windows, overload_level=overload_level, recovery_level=recovery_level, overload_s=overload_s,
        recovery_s=recovery_s, baseline_band=baseline_band, baseline_s=baseline_s,
        outcome=result.outcome.value, bundle=result.bundle,
    )


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
    bundle: Path | None = None,
) -> RecoveryResult:
    """The recovery analysis of a finished run (pure)."""
    by_index = {int(w["index"]): w for w in windows}
    band = dict(baseline_band) if baseline_band is not None else None
    if band is None:
        pre = [w for _, w in sorted(by_index.items()) if w["end_s"] <= baseline_s + 1e-9
               and (w.get("total") or {}).get("requests")]
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
        overload_level=float(overload_level), recovery_level=float(recovery_level), overload_s=float(overload_s),
        recovery_s=float(recovery_s), overload_end_s=end_s, band=band,
        recovery_time_s=None if back is None else round(back - end_s, 6), recovered_at_s=back,
        overload={"requests": req, "errors": err, "error_rate": err / req if req else None,
                  "latency_p99_ms_worst_window": max(p99s) if p99s else None},
        windows=[
            {"index": i, "start_s": w["start_s"], "requests": w["total"]["requests"],
             "error_rate": w["total"]["error_rate"], "p99_ms": w["total"]["latency_ms"].get("p99"),
             "in_band": in_band(w, band) if band is not None else None}
            for i, w in sorted(by_index.items())
        ],
        outcome=outcome, bundle=bundle, note=note,
    )


# --- search + recovery for a scenario file --------------------------------------------------------


@dataclass(frozen=True)
class StressPlan:
    """What `horde stress` does. None fields come from the scenario (see search_plan)."""

    start: float | None = None
    step: float | None = None
    max_level: float | None = None
    hold_s: float | None = None
    break_rules: tuple[str, ...] = ()
    recovery: bool = True
    overload_s: float | None = None  # default: two holds
    recovery_level: float | None = None  # default: the first level
    recovery_s: float | None = None  # default: 20 s
    warmup_windows: int = WARMUP_WINDOWS


def search_plan(loaded: LoadedScenario, plan: StressPlan = StressPlan()) -> StressPlan:
    """Fill a StressPlan's gaps from a scenario whose workload is a staircase.

    A staircase: stages alternating an instant step (duration 0) and a hold of the same
    length, levels rising by a constant step. Break rules: the scenario's abort thresholds.
    """
    wl = loaded.scenario.workload
    levels: list[float] = []
    holds: list[float] = []
    for s in wl.stages:
        if s.duration == 0:
            continue
        if levels and s.target == levels[-1]:
            holds[-1] += s.duration
            continue
        levels.append(float(s.target))
        holds.append(float(s.duration))
    diffs = {round(b - a, 9) for a, b in zip(levels, levels[1:])}
    start = plan.start if plan.start is not None else (levels[0] if levels else None)
    step = plan.step if plan.step is not None else (diffs.pop() if len(diffs) == 1 else None)
    max_level = plan.max_level if plan.max_level is not None else (levels[-1] if levels else None)
    hold_s = plan.hold_s if plan.hold_s is not None else (holds[0] if holds and len(set(holds)) == 1 else None)
    rules = plan.break_rules or tuple(t.expr for t in loaded.scenario.thresholds if t.abort and not t.endpoint and not t.stage)
    missing = [n for n, v in (("start", start), ("step", step), ("max level", max_level), ("hold", hold_s)) if v is None]
    if missing or not rules:
        what = ", ".join(missing + ([] if rules else ["break rules (abort thresholds)"]))
        raise ValueError(f"the scenario's workload is not a staircase of equal steps and holds; give: {what}")
    return StressPlan(start=start, step=step, max_level=max_level, hold_s=hold_s, break_rules=tuple(rules),
                      recovery=plan.recovery, overload_s=plan.overload_s, recovery_level=plan.recovery_level,
                      recovery_s=plan.recovery_s, warmup_windows=plan.warmup_windows)


@dataclass
class StressReport:
    search: BreakingPointResult
    recovery: RecoveryResult | None

    def to_dict(self) -> dict[str, Any]:
        return {"search": self.search.to_dict(), "recovery": self.recovery.to_dict() if self.recovery else None}


def run_stress(loaded: LoadedScenario, plan: StressPlan = StressPlan(), options: Any = None) -> StressReport:
    """Breaking-point search, then (if it broke) recovery from overload, on one target.

    An embedded target is started once with the scenario's faults and shared by both runs;
    a URL target is used as it is.
    """
    plan = search_plan(loaded, plan)
    assert plan.start is not None and plan.step is not None and plan.max_level is not None and plan.hold_s is not None
    shared = StressTarget.for_scenario(loaded) if loaded.scenario.target.is_embedded else None
    target: Any = shared.start() if shared is not None else None
    try:
        search = find_breaking_point(
            loaded, start=plan.start, step=plan.step, max_level=plan.max_level, hold_s=plan.hold_s,
            break_rules=list(plan.break_rules), options=options, target=target, warmup_windows=plan.warmup_windows,
        )
        recovery = None
        if plan.recovery and search.broke_at is not None and search.limited_by == "target":
            band = search.baseline_band()
            recovery = measure_recovery(
                loaded, overload_level=search.broke_at,
                recovery_level=plan.recovery_level if plan.recovery_level is not None else search.levels[0],
                overload_s=plan.overload_s if plan.overload_s is not None else 2 * plan.hold_s,
                recovery_s=plan.recovery_s if plan.recovery_s is not None else 20.0,
                baseline_band=band, baseline_s=0.0 if band is not None else 2 * plan.hold_s,
                options=options, target=target,
            )
        return StressReport(search, recovery)
    finally:
        if shared is not None:
            shared.stop()


def format_report(report: StressReport) -> str:
    """A text summary of a stress report (for the CLI)."""
    s = report.search
    unit = "users" if s.model == "closed" else "req/s"
    lines = [
        f"breaking-point search ({s.model} model, {unit}): {s.verdict}",
        f"  bundle {s.bundle}",
        f"  {'level':>8} {'requests':>9} {'rps':>8} {'sent/s':>8} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}  verdict",
    ]
    for st in s.steps:
        mark = "BROKE" if st.broke else ("held" if st.complete else "cut short")
        if st.generator_limited:
            mark += " (generator: " + "; ".join(st.generator_reasons) + ")"
        er = "-" if st.error_rate is None else f"{100 * st.error_rate:.2f}%"
        lines.append(
            f"  {st.level:>8g} {st.requests:>9} {_f(st.rps):>8} {_f(st.sends_per_s):>8} {er:>7} "
            f"{_f(st.latency_ms.get('p50')):>8} {_f(st.latency_ms.get('p99')):>8}  {mark}"
        )
    r = report.recovery
    if r is not None:
        rec = "never (within the run)" if r.recovery_time_s is None else f"{r.recovery_time_s:g} s"
        band = r.band or {}
        lines += [
            f"recovery: {r.overload_level:g} for {r.overload_s:g} s, then {r.recovery_level:g}: back in band after {rec}",
            f"  band p99 <= {_f(band.get('p99_limit_ms'))} ms, error rate <= "
            f"{100 * band.get('error_rate_limit', 0):.2f}%   bundle {r.bundle}",
        ]
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
