"""The workload: open or closed model, stages of piecewise-linear ramps, think time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from horde.coordinator.scenario.fields import (
    DURATION_SCHEMA,
    MAX_DURATION_S,
    MAX_IN_FLIGHT,
    MAX_RATE_PER_S,
    MAX_USERS,
    Duration,
    Loc,
    _at_most_max_duration,
    _Model,
    _problems,
    _unique_name_problems,
)
from horde.coordinator.units import parse_duration


def _think_time(value: Any) -> Any:
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - {"min", "max"})
        problems: list[tuple[Loc, str]] = [((k,), "unknown key; expected min and max") for k in unknown]
        parsed = {}
        for key in ("min", "max"):
            if key not in value:
                problems.append(((key,), "required key is missing"))
                continue
            try:
                parsed[key] = _at_most_max_duration(parse_duration(value[key]))
            except ValueError as exc:
                problems.append(((key,), str(exc)))
        if not problems and parsed["min"] > parsed["max"]:
            problems.append((("min",), "must not be more than max"))
        if problems:
            raise _problems(problems)
        return (parsed["min"], parsed["max"])
    if isinstance(value, (tuple, list)):
        # (min_s, max_s), e.g. from model_copy or code, or [min, max] written in YAML: the
        # same checks as the mapping form (a negative value here once slipped through).
        if len(value) != 2:
            raise ValueError(f"expected a duration or {{min, max}}, got a list of {len(value)}")
        return _think_time({"min": value[0], "max": value[1]})
    seconds = _at_most_max_duration(parse_duration(value))
    return (seconds, seconds)


ThinkTime = Annotated[
    tuple[float, float],
    BeforeValidator(_think_time),
    WithJsonSchema(
        {
            "anyOf": [
                DURATION_SCHEMA,
                {
                    "type": "object",
                    "properties": {"min": DURATION_SCHEMA, "max": DURATION_SCHEMA},
                    "required": ["min", "max"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


def _workload_problems(
    model: Any, start: float | None, stages: Sequence[tuple[float | None, float | None, Any]]
) -> list[tuple[Loc, str]]:
    """stages: (duration_s, target, name) per stage."""
    problems: list[tuple[Loc, str]] = []
    durations = [duration for duration, _, _ in stages]
    total_s = sum(d for d in durations if d is not None)
    if stages and None not in durations and total_s <= 0:
        problems.append((("stages",), "the stages' total duration must be more than 0"))
    if total_s > MAX_DURATION_S:
        problems.append((("stages",), f"the stages' total duration must be at most 720h (30 days), got {total_s:g}s"))
    most, unit = (MAX_USERS, "users") if model == "closed" else (MAX_RATE_PER_S, "requests per second")
    if start is not None and start > most:
        problems.append((("start",), f"must be at most {most:,.0f} {unit}, got {start:g}"))
    for i, (_, target, _) in enumerate(stages):
        if target is not None and target > most:
            problems.append((("stages", i, "target"), f"must be at most {most:,.0f} {unit}, got {target:g}"))
    if model == "closed":
        whole = "closed-model levels are user counts: expected a whole number, got {:g}"
        if start is not None and not float(start).is_integer():
            problems.append((("start",), whole.format(start)))
        for i, (_, target, _) in enumerate(stages):
            if target is not None and not float(target).is_integer():
                problems.append((("stages", i, "target"), whole.format(target)))
    for i, (_, _, name) in enumerate(stages):
        if isinstance(name, str) and name.isdigit():
            problems.append((("stages", i, "name"), "must not be a plain number (it would read as a stage index)"))
    problems.extend(
        (("stages", *loc), msg) for loc, msg in _unique_name_problems([name for _, _, name in stages], "stages")
    )
    return problems


# --- workload -----------------------------------------------------------------------------


class StageEntry(_Model):
    duration: Duration = Field(ge=0)
    target: float = Field(ge=0)
    name: str = ""


class Workload(_Model):
    model: Literal["open", "closed"]
    arrivals: Literal["constant", "poisson"] = "constant"
    start: float = Field(0.0, ge=0)
    stages: list[StageEntry] = Field(min_length=1)
    think_time: ThinkTime = (0.0, 0.0)
    max_in_flight: int = Field(1000, ge=1, le=MAX_IN_FLIGHT)
    max_connections: int | None = Field(None, ge=1, le=MAX_IN_FLIGHT)
    graceful_stop: Duration = 5.0

    @model_validator(mode="after")
    def _consistent(self) -> Workload:
        stages = [(s.duration, s.target, s.name) for s in self.stages]
        if problems := _workload_problems(self.model, self.start, stages):
            raise _problems(problems)
        return self

    @property
    def total_duration_s(self) -> float:
        return sum(stage.duration for stage in self.stages)
