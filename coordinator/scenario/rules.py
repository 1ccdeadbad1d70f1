"""Thresholds (and alert rules) as written in a scenario, checked against its requests and stages."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from horde.coordinator.judge.thresholds import (
    ScopedThreshold,
    Threshold,
    ThresholdSyntaxError,
    parse_threshold,
)
from horde.coordinator.scenario.fields import Duration, _Model


class ThresholdEntry(_Model):
    expr: str
    endpoint: str | None = None
    stage: str | None = None  # a stage name, or its index as a string
    abort: bool = False
    delay: Duration = 0.0
    window: Annotated[Duration, Field(gt=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"expr": data} if isinstance(data, str) else data

    @field_validator("stage", mode="before")
    @classmethod
    def _index_as_text(cls, stage: Any) -> Any:
        return str(stage) if isinstance(stage, int) and not isinstance(stage, bool) else stage

    @field_validator("expr")
    @classmethod
    def _parse(cls, expr: str) -> str:
        try:
            parse_threshold(expr)
        except ThresholdSyntaxError as exc:
            raise ValueError(exc.message) from None
        return expr

    # With the loader's context (names read from the raw file) a bad reference is reported
    # even when other parts of the file are invalid; Scenario checks again without it.
    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, endpoint: str | None, info: ValidationInfo) -> str | None:
        names = (info.context or {}).get("request_names")
        if endpoint is not None and names is not None and (problem := _endpoint_problem(endpoint, names)):
            raise ValueError(problem)
        return endpoint

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, stage: str | None, info: ValidationInfo) -> str | None:
        stages = (info.context or {}).get("stage_names")
        if stage is not None and stages is not None and (problem := _stage_problem(stage, stages)):
            raise ValueError(problem)
        return stage

    @cached_property
    def threshold(self) -> Threshold:
        return parse_threshold(self.expr)

    def rule(self) -> ScopedThreshold:
        return ScopedThreshold(
            threshold=self.threshold,
            endpoint=self.endpoint,
            stage=self.stage,
            abort=self.abort,
            delay_s=self.delay,
            window_s=self.window,
        )


def _endpoint_problem(endpoint: str, request_names: Sequence[str]) -> str | None:
    if endpoint in request_names:
        return None
    if not request_names:
        return f"no request entry named {endpoint!r}: the scenario has no valid request entries"
    return f"no request entry named {endpoint!r}; expected one of: {', '.join(dict.fromkeys(request_names))}"


def _stage_problem(stage: str, stage_names: Sequence[str]) -> str | None:
    if stage in stage_names and stage != "":
        return None
    if not stage_names:
        return f"no stage {stage!r}: the workload has no stages"
    if stage.isdigit():
        if int(stage) < len(stage_names):
            return None
        return f"stage index {stage} is out of range: the workload has {len(stage_names)} stage(s)"
    named = list(dict.fromkeys(n for n in stage_names if n))
    choices = f"a stage name ({', '.join(named)}) or " if named else ""
    return f"no stage named {stage!r}; expected {choices}an index 0..{len(stage_names) - 1}"
