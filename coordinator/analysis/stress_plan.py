"""What `horde stress` does to a scenario, pure: the staircase of levels (stages and the steps
they make), the break rules as live abort thresholds, the scenario rebuilt with another
target, stages or thresholds, and the plan of a search filled in from a scenario whose
workload is already a staircase (coordinator/workflows/stress.py runs it).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from horde.coordinator.judge.thresholds import parse_threshold
from horde.coordinator.scenario.load import LoadedScenario
from horde.coordinator.scenario.models import Scenario

WARMUP_WINDOWS = 1  # windows dropped at the start of each step
AUTOMATON_METRICS = object()  # rebuild(): a new target URL is the automaton's, scraped at URL/metrics


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
    target_metrics: str | object | None = AUTOMATON_METRICS,
    start: float | None = None,
    stages: list[dict[str, Any]] | None = None,
    thresholds: list[Any] | None = None,
) -> LoadedScenario:
    """The same scenario with its target, stages or thresholds replaced (validated again).

    target_metrics: the /metrics a new `target_url` is scraped at; by default the
    automaton's (`target_url`/metrics), None for none.
    """
    data = loaded.scenario.model_dump(by_alias=True)
    # The dump spells an absent `url` or `embedded` as None, and the Target model reads an
    # `embedded: null` as the embedded automaton: drop them, or a URL target comes back as both.
    data["target"] = {k: v for k, v in data["target"].items() if v is not None}
    as_run = copy.deepcopy(loaded.as_run)
    if name is not None:
        data["name"] = as_run["name"] = name
    if target_url is not None:
        target: dict[str, Any] = {"url": target_url}
        if target_metrics is AUTOMATON_METRICS:
            # Scrape the automaton's resources as `horde run` does for an embedded target.
            target["metrics"] = target_url.rstrip("/") + "/metrics"
        elif target_metrics is not None:
            target["metrics"] = target_metrics
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
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:  # a plan that makes no valid scenario: say where, no pydantic dump
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'scenario'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(f"the rebuilt scenario {data.get('name')!r} is invalid: {problems}") from None
    return LoadedScenario(scenario=scenario, source=loaded.source, as_run=as_run)


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


def search_plan(loaded: LoadedScenario, plan: StressPlan | None = None) -> StressPlan:
    """Fill a StressPlan's gaps from a scenario whose workload is a staircase.

    A staircase: stages alternating an instant step (duration 0) and a hold of the same
    length, levels rising by a constant step. Break rules: the scenario's abort thresholds.
    """
    plan = plan or StressPlan()
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
    diffs = {round(b - a, 9) for a, b in itertools.pairwise(levels)}
    start = plan.start if plan.start is not None else (levels[0] if levels else None)
    step = plan.step if plan.step is not None else (diffs.pop() if len(diffs) == 1 else None)
    max_level = plan.max_level if plan.max_level is not None else (levels[-1] if levels else None)
    hold_s = plan.hold_s if plan.hold_s is not None else (holds[0] if holds and len(set(holds)) == 1 else None)
    rules = plan.break_rules or tuple(
        t.expr for t in loaded.scenario.thresholds if t.abort and not t.endpoint and not t.stage
    )
    missing = [
        n for n, v in (("start", start), ("step", step), ("max level", max_level), ("hold", hold_s)) if v is None
    ]
    if missing or not rules:
        what = ", ".join(missing + ([] if rules else ["break rules (abort thresholds)"]))
        raise ValueError(f"the scenario's workload is not a staircase of equal steps and holds; give: {what}")
    return StressPlan(
        start=start,
        step=step,
        max_level=max_level,
        hold_s=hold_s,
        break_rules=tuple(rules),
        recovery=plan.recovery,
        overload_s=plan.overload_s,
        recovery_level=plan.recovery_level,
        recovery_s=plan.recovery_s,
        warmup_windows=plan.warmup_windows,
    )
