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
    The search and the recovery must hit the same target: ``StressTarget`` starts it once
    through the seam `horde run` uses (coordinator/run/target.py ``start_target``: the
    automaton with the scenario's faults and seed; a URL target starts nothing), each run
    is pointed at its URL and /metrics, an automaton's faults are re-applied before each
    run (which restarts the scaling model and reseeds it), and it is stopped at the end.
    ``run_stress`` does all of it for a scenario file (``horde stress FILE``).

Here: the runs and their bundles. The pure half (staircase, rebuilt scenario, search plan:
coordinator/analysis/stress_plan.py; per-step analysis, verdicts, recovery from windows:
coordinator/analysis/stress.py) is re-exported for the callers of this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from horde.coordinator.analysis.spike import band_from_windows
from horde.coordinator.analysis.stress import (
    LATE_FRACTION_LIMIT,
    LOOP_LAG_LIMIT_NS,
    LOW_ERROR_RATE,
    MIN_LATE_SENDS,
    POOL_EXHAUSTED_FRACTION,
    SEND_RATE_FRACTION,
    RecoveryResult,
    StepResult,
    Verdict,
    analyse_steps,
    generator_reasons,
    recovery_from_windows,
    verdict,
)
from horde.coordinator.analysis.stress_plan import (
    AUTOMATON_METRICS,
    WARMUP_WINDOWS,
    Step,
    StressPlan,
    abort_thresholds,
    rebuild,
    search_plan,
    staircase,
    staircase_levels,
)
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.target import Target, embedded_faults, start_target
from horde.coordinator.scenario.load import LoadedScenario

__all__ = [
    "BASELINE_STEPS",
    "LATE_FRACTION_LIMIT",
    "LOOP_LAG_LIMIT_NS",
    "LOW_ERROR_RATE",
    "MIN_LATE_SENDS",
    "POOL_EXHAUSTED_FRACTION",
    "SEND_RATE_FRACTION",
    "WARMUP_WINDOWS",
    "BreakingPointResult",
    "RecoveryResult",
    "Step",
    "StepResult",
    "StressPlan",
    "StressReport",
    "StressTarget",
    "Verdict",
    "abort_thresholds",
    "analyse_steps",
    "find_breaking_point",
    "format_report",
    "generator_reasons",
    "measure_recovery",
    "rebuild",
    "recovery_from_windows",
    "run_stress",
    "search_plan",
    "staircase",
    "staircase_levels",
    "verdict",
]

BASELINE_STEPS = 2  # the band for recovery comes from this many of the lowest held steps


# --- the target shared by several runs ---------------------------------------------------------


class StressTarget:
    """One target for several runs, started once through the run's target seam
    (coordinator/run/target.py); an automaton's faults are re-applied before each run.

    ``with StressTarget.for_scenario(loaded) as target: find_breaking_point(..., target=target)``
    starts the scenario's target (a URL target starts nothing); ``StressTarget(faults)``
    starts the automaton with faults in its wire form.
    """

    def __init__(self, faults: Mapping[str, Any] | None = None, *, scenario: Any = None, **start_kwargs: Any) -> None:
        self._subject = scenario if scenario is not None else _AutomatonWithFaults(dict(faults or {}))
        self.faults = embedded_faults(self._subject) or {}
        self._start_kwargs = start_kwargs
        self.target: Target | None = None

    @classmethod
    def for_scenario(cls, loaded: LoadedScenario, **start_kwargs: Any) -> StressTarget:
        return cls(scenario=loaded.scenario, **start_kwargs)

    def start(self) -> StressTarget:
        self.target = start_target(self._subject, **self._start_kwargs)
        return self

    @property
    def process(self) -> Any:
        """The automaton horde started (None for a URL target, or before start)."""
        return self.target.process if self.target is not None else None

    @property
    def url(self) -> str:
        if self.target is None:
            raise RuntimeError("the stress target is not started")
        return self.target.url

    @property
    def metrics_url(self) -> str | None:
        return self.target.metrics_url if self.target is not None else None

    def reset(self) -> None:
        """Re-apply the faults: the scaling model restarts from its configured capacity."""
        if self.process is not None and getattr(self.process, "admin_url", None):
            self.process.set_faults(self.faults)

    def stats(self) -> dict[str, Any]:
        return self.process.stats() if self.process is not None else {}

    def stop(self) -> None:
        if self.target is not None:
            self.target.stop()
            self.target = None

    def __enter__(self) -> StressTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _AutomatonWithFaults:
    """What the target seam reads of a scenario, for an embedded automaton with faults given
    in wire form (StressTarget(faults)); their own seed, if any, stays theirs."""

    is_embedded = True
    metrics = None

    def __init__(self, faults: dict[str, Any]) -> None:
        self._faults = faults
        self.seed = faults.get("seed")
        self.target = self.embedded = self

    def faults_config(self) -> dict[str, Any]:
        return dict(self._faults)


def _target_where(target: Any) -> tuple[str | None, Any]:
    """(URL, /metrics to scrape) of a find_breaking_point / measure_recovery target:
    a StressTarget, an automaton process or an automaton's URL; (None, ...) for None."""
    if target is None:
        return None, AUTOMATON_METRICS
    if isinstance(target, str):
        return target, AUTOMATON_METRICS
    if isinstance(target, StressTarget):
        return target.url, target.metrics_url
    return target.url, AUTOMATON_METRICS


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
        ws = [w for w in _window_dicts(read_bundle(self.bundle)) if int(w["index"]) in wanted]
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
    url, metrics = _target_where(target)
    search = rebuild(
        loaded,
        target_url=url,
        target_metrics=metrics,
        start=0.0,
        stages=stages,
        thresholds=abort_thresholds(break_rules, hold_s),
    )
    if hasattr(target, "reset"):
        target.reset()
    result = run_scenario(search, options or RunOptions())
    bundle = read_bundle(result.bundle)
    windows = _window_dicts(bundle)
    hists = {int(h["index"]): h for h in bundle.window_histograms()}
    aborted = result.outcome.value == "aborted"
    run_end_s = _abort_time(bundle) if aborted else None
    step_results = analyse_steps(
        steps,
        windows,
        hists,
        bundle.sends(),  # summary.json (format 1) or sends.msgpack (format 2)
        break_rules,
        model=model,
        max_in_flight=search.scenario.workload.max_in_flight,
        run_end_s=run_end_s,
        warmup_windows=warmup_windows,
    )
    judged = verdict(step_results, levels, aborted=aborted)
    return BreakingPointResult(
        model=model,
        levels=levels,
        hold_s=float(hold_s),
        break_rules=list(break_rules),
        steps=step_results,
        highest_held=judged.highest_held,
        broke_at=judged.broke_at,
        limited_by=judged.limited_by,
        verdict=judged.text,
        outcome=result.outcome.value,
        bundle=result.bundle,
        aborted=aborted,
        stop_reason=result.summary.get("stop_reason", ""),
    )


def _window_dicts(bundle: Any) -> list[dict[str, Any]]:
    """The bundle's windows as their windows.jsonl dicts: the pure analysis reads plain values."""
    return [w.model_dump(by_alias=True, mode="json") if hasattr(w, "model_dump") else dict(w) for w in bundle.windows()]


def _abort_time(bundle: Any) -> float | None:
    ats = [a.get("at_s") for a in bundle.alerts() if a.get("kind") == "abort" and a.get("at_s") is not None]
    return float(min(ats)) if ats else None


# --- recovery from overload -----------------------------------------------------------------------


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
        stages += [
            {"name": "baseline-step", "duration": 0.0, "target": recovery_level},
            {"name": "baseline", "duration": float(baseline_s), "target": recovery_level},
        ]
    stages += [
        {"name": "overload-step", "duration": 0.0, "target": overload_level},
        {"name": "overload", "duration": float(overload_s), "target": overload_level},
        {"name": "recovery-step", "duration": 0.0, "target": recovery_level},
        {"name": "recovery", "duration": float(recovery_s), "target": recovery_level},
    ]
    url, metrics = _target_where(target)
    run = rebuild(loaded, target_url=url, target_metrics=metrics, start=0.0, stages=stages, thresholds=[])
    if hasattr(target, "reset"):
        target.reset()
    result = run_scenario(run, options or RunOptions())
    windows = _window_dicts(read_bundle(result.bundle))
    return recovery_from_windows(
        windows,
        overload_level=overload_level,
        recovery_level=recovery_level,
        overload_s=overload_s,
        recovery_s=recovery_s,
        baseline_band=baseline_band,
        baseline_s=baseline_s,
        outcome=result.outcome.value,
        bundle=result.bundle,
    )


@dataclass
class StressReport:
    search: BreakingPointResult
    recovery: RecoveryResult | None

    def to_dict(self) -> dict[str, Any]:
        return {"search": self.search.to_dict(), "recovery": self.recovery.to_dict() if self.recovery else None}


def run_stress(loaded: LoadedScenario, plan: StressPlan | None = None, options: Any = None) -> StressReport:
    """Breaking-point search, then (if it broke) recovery from overload, on one target.

    The scenario's target is started once (an embedded one with the scenario's faults; a
    URL target starts nothing) and shared by both runs.
    """
    plan = search_plan(loaded, plan or StressPlan())
    with StressTarget.for_scenario(loaded) as target:
        return _search_then_recovery(loaded, plan, options, target)


def _search_then_recovery(loaded: LoadedScenario, plan: StressPlan, options: Any, target: StressTarget) -> StressReport:
    assert plan.start is not None and plan.step is not None and plan.max_level is not None and plan.hold_s is not None
    search = find_breaking_point(
        loaded,
        start=plan.start,
        step=plan.step,
        max_level=plan.max_level,
        hold_s=plan.hold_s,
        break_rules=list(plan.break_rules),
        options=options,
        target=target,
        warmup_windows=plan.warmup_windows,
    )
    recovery = None
    if plan.recovery and search.broke_at is not None and search.limited_by == "target":
        band = search.baseline_band()
        recovery = measure_recovery(
            loaded,
            overload_level=search.broke_at,
            recovery_level=plan.recovery_level if plan.recovery_level is not None else search.levels[0],
            overload_s=plan.overload_s if plan.overload_s is not None else 2 * plan.hold_s,
            recovery_s=plan.recovery_s if plan.recovery_s is not None else 20.0,
            baseline_band=band,
            baseline_s=0.0 if band is not None else 2 * plan.hold_s,
            options=options,
            target=target,
        )
    return StressReport(search, recovery)


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
        levels = f"{r.overload_level:g} for {r.overload_s:g} s, then {r.recovery_level:g}"
        limits = (
            f"band p99 <= {_f(band.get('p99_limit_ms'))} ms, error rate <= {100 * band.get('error_rate_limit', 0):.2f}%"
        )
        lines += [f"recovery: {levels}: back in band after {rec}", f"  {limits}   bundle {r.bundle}"]
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
