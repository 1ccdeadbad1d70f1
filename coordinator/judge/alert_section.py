"""The ``alerts:`` section as written: each rule a pydantic model (key paths, JSON schema).

    alerts:
      - defaults                      # the four DEFAULT_RULES
      - name: slow-health             # unique across the section, defaults included
        metric: p99(latency)          # the metric grammar shared with thresholds
        endpoint: health              # absent: all together; "*": each endpoint on its own
        warning: "> 200ms"            # [op] value in the metric's unit
        critical: 1s
        for: 5s
        clear: 10s

``AlertRuleEntry`` is one rule (``rule()``: the AlertRule the engine runs, alert_rules.py);
``AlertSection`` is the section's type (a scenario's ``alerts``); ``parse_rules`` reads a
section from plain data for code that has no scenario model. A rule's endpoint is checked
against the request names given in the validation context (``request_names``). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticUseDefault

from horde.coordinator.judge.alert_rules import (
    CRITICAL,
    DEFAULT_FOR_S,
    DEFAULT_RULES,
    EACH_ENDPOINT,
    WARNING,
    AlertRule,
    Loc,
    _worse,
    format_value,
    parse_level,
    parse_metric,
)
from horde.coordinator.units import Duration

# --- the rule as written ----------------------------------------------------------------------


def _problems(items: Sequence[tuple[Loc, str]]) -> PydanticCustomError:
    """Several problems at paths below the current one (the scenario loader's "horde_problems")."""
    text = "; ".join(f"{format_loc('', loc) or '.'}: {msg}" for loc, msg in items)
    return PydanticCustomError("horde_problems", text, {"problems": tuple(items)})


_LEVEL_SCHEMA = {
    "anyOf": [
        {
            "type": "string",
            "description": "[op] value in the metric's unit",
            "examples": ["> 1s", ">= 5%", "1GB", "< 10"],
        },
        {"type": "number"},
    ]
}
# (operator or None when not written, value in the metric's base unit)
Level = Annotated[tuple[str | None, float], WithJsonSchema(_LEVEL_SCHEMA)]


class AlertRuleEntry(BaseModel):
    """One alert rule as written; `rule()` is the AlertRule the engine runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    name: str | None = None
    metric: str
    endpoint: str | None = None
    warning: Level | None = None
    critical: Level | None = None
    for_s: Duration = Field(DEFAULT_FOR_S, alias="for")
    clear_s: Duration = Field(0.0, alias="clear")

    @field_validator("name")
    @classmethod
    def _named(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("expected a non-empty name")
        return name

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        parse_metric(metric)
        return metric

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, endpoint: str | None, info: ValidationInfo) -> str | None:
        names = (info.context or {}).get("request_names")
        if endpoint is not None and endpoint != EACH_ENDPOINT and names is not None and endpoint not in names:
            known = ", ".join(dict.fromkeys(names)) or "none"
            raise ValueError(f'no request entry named {endpoint!r}; expected "*" or one of: {known}')
        return endpoint

    @field_validator("warning", "critical", mode="before")
    @classmethod
    def _level(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        metric = info.data.get("metric")
        if metric is None:
            raise PydanticUseDefault()  # the metric's problem is reported; its unit is unknown
        op, number = parse_level(value, parse_metric(metric)[1])
        warning = info.data.get(WARNING)
        if info.field_name == CRITICAL and warning is not None:
            _check_against_warning(warning, (op, number), parse_metric(metric)[1])
        return (op, number)

    @model_validator(mode="after")
    def _a_level(self) -> AlertRuleEntry:
        if self.warning is None and self.critical is None:
            raise _problems([((), "give a warning level, a critical level or both")])
        return self

    @property
    def op(self) -> str:
        written = [level[0] for level in (self.warning, self.critical) if level is not None and level[0]]
        return written[0] if written else ">"

    @property
    def rule_name(self) -> str:
        if self.name is not None:
            return self.name
        return self.metric.strip() + (f"[{self.endpoint}]" if self.endpoint is not None else "")

    def rule(self) -> AlertRule:
        return AlertRule(
            name=self.rule_name,
            metric=self.metric,
            warning=None if self.warning is None else self.warning[1],
            critical=None if self.critical is None else self.critical[1],
            op=self.op,
            for_s=self.for_s,
            clear_s=self.clear_s,
            endpoint=self.endpoint,
        )


def _check_against_warning(warning: tuple[str | None, float], critical: tuple[str | None, float], kind: str) -> None:
    if warning[0] is not None and critical[0] is not None and warning[0] != critical[0]:
        raise ValueError(f"must use the same comparison as warning ({warning[0]})")
    op = warning[0] or critical[0] or ">"
    if _worse(op, warning[1], critical[1]):
        raise ValueError(f"must be at least as severe as warning ({op} {format_value(warning[1], kind)})")


# --- the section --------------------------------------------------------------------------------


def _error_details(exc: ValidationError, prefix: Loc) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(
            type=PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
            loc=(*prefix, *error["loc"]),
            input=error["input"],
        )
        for error in exc.errors(include_url=False)
    ]


def _section(value: Any, handler: Any, info: ValidationInfo) -> list[AlertRuleEntry | Literal["defaults"]]:
    """Each entry a rule or "defaults"; rule names unique across the section (defaults expanded)."""
    if not isinstance(value, list):
        raise _problems([((), f"expected a list of alert rules, got {type(value).__name__}")])
    entries: list[AlertRuleEntry | Literal["defaults"]] = []
    errors: list[InitErrorDetails] = []
    names: dict[str, Loc] = {}
    for i, item in enumerate(value):
        found: list[tuple[str, Loc]]
        if item == "defaults":
            found = [(rule.name, (i,)) for rule in DEFAULT_RULES]
            entries.append("defaults")
        elif isinstance(item, (Mapping, AlertRuleEntry)):
            try:
                entry = AlertRuleEntry.model_validate(item, context=info.context)
            except ValidationError as exc:
                errors += _error_details(exc, (i,))
                continue
            found = [(entry.rule_name, (i, "name"))]
            entries.append(entry)
        else:
            problem = f'expected a rule mapping or "defaults", got {type(item).__name__}'
            errors.append(InitErrorDetails(type=_problems([((), problem)]), loc=(i,), input=item))
            continue
        for name, loc in found:
            if name in names:
                problem = f"duplicate rule name {name!r} (also at {format_loc('', names[name])})"
                errors.append(InitErrorDetails(type=_problems([((), problem)]), loc=loc, input=item))
            names.setdefault(name, loc)
    if errors:
        raise ValidationError.from_exception_data("alerts", errors)
    return entries


# The `alerts:` section: None = the defaults, [] = no rules, ["defaults", {...}] adds to them.
AlertSection = Annotated[list[AlertRuleEntry | Literal["defaults"]], WrapValidator(_section)]
_SECTION = TypeAdapter(AlertSection)


class AlertRuleError(ValueError):
    """Every problem of an ``alerts:`` section, each with its key path."""

    def __init__(self, problems: Sequence[tuple[Loc, str]], path: str = "alerts") -> None:
        self.problems = list(problems)  # (location below the section, message)
        self.path = path
        super().__init__("\n".join(f"{format_loc(path, loc)}: {msg}" for loc, msg in self.problems))


def format_loc(path: str, loc: Loc) -> str:
    out = path
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def rules_of(section: Sequence[AlertRuleEntry | str] | None) -> tuple[AlertRule, ...]:
    """The rules of a validated section, "defaults" expanded; None is the defaults."""
    if section is None:
        return DEFAULT_RULES
    rules: list[AlertRule] = []
    for entry in section:
        rules += DEFAULT_RULES if entry == "defaults" else [entry.rule()]  # type: ignore[union-attr]  # str is "defaults"
    return tuple(rules)


def parse_rules(value: Any, path: str = "alerts", *, endpoints: Sequence[str] | None = None) -> tuple[AlertRule, ...]:
    """An ``alerts:`` section -> rules, or AlertRuleError listing every problem.

    A section replaces the defaults: ``alerts: []`` means no alert rules, ``[defaults,
    {...}]`` adds to them. None means the defaults. With `endpoints` (the scenario's
    request names) a rule's endpoint must be one of them.
    """
    if value is None:
        return DEFAULT_RULES
    problems = rule_problems(value, endpoints=endpoints)
    if problems:
        raise AlertRuleError(problems, path)
    return rules_of(_SECTION.validate_python(value, context={"request_names": endpoints}))


def rule_problems(value: Any, *, endpoints: Sequence[str] | None = None) -> list[tuple[Loc, str]]:
    """The problems of an ``alerts:`` section, locations relative to it."""
    if value is None:
        return []
    try:
        _SECTION.validate_python(value, context={"request_names": endpoints})
    except ValidationError as exc:
        return _problem_list(exc)
    return []


def _problem_list(exc: ValidationError) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == "horde_problems":
            problems += [((*loc, *sub), msg) for sub, msg in error["ctx"]["problems"]]
        elif error["type"] == "extra_forbidden":
            keys = [f.alias or name for name, f in AlertRuleEntry.model_fields.items()]
            problems.append((loc, f"unknown key; expected one of: {', '.join(keys)}"))
        elif error["type"] == "missing":
            problems.append((loc, "required key is missing"))
        else:
            problems.append((loc, re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])))
    return problems
