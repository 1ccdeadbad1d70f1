"""The scenario models' shared parts: the base model, field types and problems with key paths.

Every scenario model derives from `_Model` (frozen, unknown keys rejected, YAML aliases
and python names both accepted). A validator that finds several problems raises
`_problems`, whose sub-paths the loader reports one by one (`requests[2].name`).
Durations are horde.coordinator.units' `Duration` (float seconds from "250ms", 30, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from horde.automaton.fault_model import Loc, format_loc, problems_error
from horde.coordinator.units import DURATION_SCHEMA, format_duration
from horde.coordinator.units import Duration as _AnyDuration

__all__ = ["DURATION_SCHEMA", "REDACTED", "SENSITIVE_HEADERS", "Duration", "Loc", "Name"]

# Limits on values, so that every scenario that validates can run (docs/scenarios.md#value-limits).
MAX_DURATION_S = 30 * 86400.0  # any one duration, and the stages' total: 30 days
MAX_AGENTS = 1024
MAX_USERS = 1_000_000  # closed model: start and stage targets
MAX_RATE_PER_S = 10_000_000.0  # open model: start and stage targets
MAX_IN_FLIGHT = 1_000_000  # max_in_flight and max_connections
MAX_WEIGHT = 1_000_000.0  # one request's weight (so the sum stays finite)
MAX_POLLS = 1_000_000
# RFC 7230 token characters: what a header name may hold (no space, colon, CR or LF).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _at_most_max_duration(seconds: float) -> float:
    if seconds > MAX_DURATION_S:
        raise ValueError(f"must be at most {format_duration(MAX_DURATION_S)} (30 days), got {format_duration(seconds)}")
    return seconds


# A duration in float seconds, at most MAX_DURATION_S.
Duration = Annotated[_AnyDuration, AfterValidator(_at_most_max_duration)]


def header_name_problems(names: Sequence[Any]) -> list[tuple[Loc, str]]:
    """Header names that are not RFC 7230 tokens (a colon, space, CR or LF would split or
    inject header lines), reported at the headers mapping with the name quoted."""
    return [
        ((), f"header name {name[:60]!r} may contain only letters, digits and !#$%&'*+-.^_`|~ (RFC 7230)")
        for name in names
        if isinstance(name, str) and not _HEADER_NAME.fullmatch(name)
    ]


REDACTED = "***"
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_SENSITIVE_NAME = re.compile(r"token|secret|password|key", re.IGNORECASE)
_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_NAME_MESSAGE = "may contain only letters, digits, '_', '.' and '-'"

Name = Annotated[str, Field(pattern=_NAME_PATTERN)]

# One validation error standing for several, each at a path below the current one
# (type "horde_problems"; the loader unpacks it). Shared with the automaton's fault model.
_problems = problems_error
_format_loc = format_loc


def _between(low_s: float, high_s: float):
    def check(seconds: float) -> float:
        if not low_s <= seconds <= high_s:
            raise ValueError(
                f"must be between {format_duration(low_s)} and {format_duration(high_s)}, "
                f"got {format_duration(seconds)}"
            )
        return seconds

    return AfterValidator(check)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


def _unique_name_problems(names: Sequence[Any], listing: str) -> list[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            continue
        if name in seen:
            problems.append(((i, "name"), f"duplicate name {name!r} (also {listing}[{seen[name]}])"))
        seen.setdefault(name, i)
    return problems
