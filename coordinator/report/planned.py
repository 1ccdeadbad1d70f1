"""The planned load as the report draws it, and each agent loss against it.

The planned rate comes from the scenario as run and the plan's stage ends, not from the
agents' readings: a reading is taken when a batch is flushed, so a line drawn from them
trails the plan by up to a flush interval and runs on past the last stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from horde.coordinator.bundle.schema import AlertRecord, Manifest
from horde.coordinator.report.chart_data import Band
from horde.coordinator.report.timeline import number

Points = tuple[list[float], list[float]]  # (t_s, level) vertices of a piecewise-linear line
LOSS_COLOR = "#e15759"


def planned_points(manifest: Manifest) -> Points | None:
    """The planned level as the agents follow it (agents/stages.py: within a stage it goes
    linearly from the previous stage's target, ``workload.start`` for the first, to the
    stage's own; a zero-length stage is a step): its vertices from 0 to the end of the last
    stage. None when the bundle does not say (no plan, stages that do not match)."""
    workload = manifest.scenario.get("workload")
    if manifest.plan is None or not isinstance(workload, dict):
        return None
    stages, ends = workload.get("stages"), [st.end_s for st in manifest.plan.stages]
    if not isinstance(stages, list) or not ends or len(stages) != len(ends):
        return None
    targets = [number(st.get("target")) if isinstance(st, dict) else None for st in stages]
    start = number(workload.get("start", 0.0))
    levels = [t for t in targets if t is not None]
    if start is None or len(levels) != len(targets):
        return None
    return [0.0, *ends], [start, *levels]


def planned_at(points: Points, t_s: float) -> float:
    """The planned level at ``t_s``: after a step its new level; 0 outside the stages."""
    xs, ys = points
    if not xs or not xs[0] <= t_s <= xs[-1]:
        return 0.0
    for i in range(len(xs) - 1):
        x0, x1 = xs[i], xs[i + 1]
        if x0 <= t_s < x1:
            return ys[i] + (ys[i + 1] - ys[i]) * (t_s - x0) / (x1 - x0)
    return ys[-1]


@dataclass(frozen=True)
class LossInterval:
    """An agent's loss: from its loss record to the same agent's first restoration after it
    (the end of the run when it was not restored); ``share`` of the planned load was its."""

    agent: int | None
    from_s: float
    to_s: float
    share: float
    restored: bool


def _share(text: str | None) -> float:
    """A loss record's "1/4" as 0.25; the whole load when it does not say."""
    try:
        num, den = str(text).split("/")
        value = float(num) / float(den)
    except (ValueError, ZeroDivisionError):
        return 1.0
    return value if 0.0 < value <= 1.0 else 1.0


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def loss_intervals(alerts: Sequence[AlertRecord], end_s: float) -> list[LossInterval]:
    """Each agent_lost record with the same agent's next agent_restored record (or the loss
    record's own ``restored_at_s``)."""
    out = []
    for a in alerts:
        at = _finite(a.at_s)
        if a.kind != "agent_lost" or at is None:
            continue
        back = [
            t
            for r in alerts
            if r.kind == "agent_restored" and r.agent == a.agent and (t := _finite(r.at_s)) is not None and t >= at
        ]
        own = number(a.get("restored_at_s"))
        restored_at = min(back) if back else (own if own is not None and own >= at else None)
        to = restored_at if restored_at is not None else max(end_s, at)
        out.append(LossInterval(a.agent, at, to, _share(a.share), restored_at is not None))
    return out


def loss_bands(losses: Sequence[LossInterval], planned: Points | None) -> list[Band]:
    """The throughput chart's shaded intervals: under the planned-rate line, the lost
    agent's share of it (load that was planned and that agent did not send); the plot's
    full height when the plan is unknown."""
    out = []
    for loss in losses:
        if not loss.to_s > loss.from_s:
            continue
        who = f"agent {loss.agent}" if loss.agent is not None else "an agent"
        until = f"restored at {loss.to_s:g} s" if loss.restored else "not restored"
        detail = f"{who} lost at {loss.from_s:g} s, {until}; its share ({loss.share:.3g}) of the planned rate"
        if planned is None:
            out.append(Band("lost agent", [loss.from_s, loss.to_s], color=LOSS_COLOR, detail=detail))
            continue
        # the plan's own vertices inside the interval (both sides of a step) keep its shape
        inner = [(x, y) for x, y in zip(*planned) if loss.from_s < x < loss.to_s]
        xs = [loss.from_s, *(x for x, _ in inner), loss.to_s]
        hi = [planned_at(planned, loss.from_s), *(y for _, y in inner), planned_at(planned, loss.to_s)]
        lo = [h * (1.0 - loss.share) for h in hi]
        out.append(Band("lost agent's planned share", xs, lo, hi, LOSS_COLOR, detail))
    return out
