"""Request entries: a plain request or a flow of steps with captures and polling."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, JsonValue, field_validator, model_validator

from horde.coordinator.scenario.fields import (
    MAX_POLLS,
    MAX_WEIGHT,
    Duration,
    Loc,
    Name,
    _Model,
    _problems,
    _unique_name_problems,
    header_name_problems,
)

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _header_value(value: Any) -> Any:
    # `X-Count: 5` in YAML is a number; a header value is text either way.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and ("\r" in value or "\n" in value):
        raise ValueError("header values must not contain line breaks")
    return value


def _checked_header_names(headers: dict[str, str]) -> dict[str, str]:
    if problems := header_name_problems(list(headers)):
        raise _problems(problems)
    return headers


class PollUntil(_Model):
    """Poll a step until a field of its JSON response equals a value."""

    path: str  # dot path into the JSON response, e.g. status or result.items[0].state
    equals: JsonValue


class FlowStep(_Model):
    """One request of a flow. `${var}` in its path, headers and body takes a value captured
    by an earlier step."""

    name: Name
    method: Annotated[Method, BeforeValidator(_upper)] = "GET"
    path: str
    headers: dict[str, Annotated[str, BeforeValidator(_header_value)]] = {}
    json_body: JsonValue | None = Field(None, alias="json")
    body: str | None = None
    expect: list[Annotated[int, Field(ge=100, le=599)]] = []
    capture: dict[str, str] = {}  # variable -> dot path into the JSON response
    until: PollUntil | None = None  # repeat this step until the condition holds
    every: Duration = Field(0.1, gt=0)  # time between polls
    max_polls: int = Field(50, ge=1, le=MAX_POLLS)  # the bound: after this many, the flow fails (poll_exhausted)
    timeout: Duration | None = Field(None, gt=0)  # this step's timeout (None: the scenario's)
    follow_redirects: bool | None = None  # None: the scenario's (false unless set)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        return _checked_header_names(headers)

    @property
    def json(self) -> JsonValue | None:  # type: ignore[override]  # the YAML key, not BaseModel.json
        return self.json_body

    @model_validator(mode="after")
    def _one_body(self) -> FlowStep:
        if problems := _body_problems(self.json_body, self.body):
            raise _problems(problems)
        return self


_FLOW_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ${data.NAME.COLUMN}: a column of one of the scenario's data files (checked by Scenario).
DATA_REF = re.compile(r"\$\{data\.([A-Za-z0-9_-]+)\.([^}]+)\}")


def entry_texts(path: str, headers: dict[str, str], body: str | None, json_body: Any) -> str:
    """The parts of a request that may hold ${...} references, as one text."""
    return " ".join([path, *headers.values(), body or "", json.dumps(json_body) if json_body is not None else ""])


def data_refs(entry: Any) -> list[tuple[Loc, str, str]]:
    """Every ${data.NAME.COLUMN} of an entry: (where, NAME, COLUMN). A Python user's entry
    has none (its code reads rows with client.data())."""
    out: list[tuple[Loc, str, str]] = []
    if not isinstance(entry, RequestEntry):
        return out
    if entry.flow is not None:
        for i, st in enumerate(entry.flow):
            text = entry_texts(st.path, st.headers, st.body, st.json_body)
            out.extend((("flow", i), n, c) for n, c in DATA_REF.findall(text))
    elif entry.path is not None:
        text = entry_texts(entry.path, entry.headers, entry.body, entry.json_body)
        out.extend(((), n, c) for n, c in DATA_REF.findall(text))
    return out


class RequestEntry(_Model):
    """A plain request (method, path, ...) or a flow (`flow:` a list of steps)."""

    name: Name
    method: Annotated[Method, BeforeValidator(_upper)] = "GET"
    path: str | None = None
    flow: list[FlowStep] | None = Field(None, min_length=1)
    headers: dict[str, Annotated[str, BeforeValidator(_header_value)]] = {}
    json_body: JsonValue | None = Field(None, alias="json")
    body: str | None = None
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    expect: list[Annotated[int, Field(ge=100, le=599)]] = []
    timeout: Duration | None = Field(None, gt=0)  # this entry's timeout (None: the scenario's)
    follow_redirects: bool | None = None  # None: the scenario's (false unless set)
    cookies: bool = False  # a plain request that carries its virtual user's cookies (served by aiohttp)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        return _checked_header_names(headers)

    @property
    def json(self) -> JsonValue | None:  # type: ignore[override]  # the YAML key, not BaseModel.json
        """The JSON body (the field is `json_body`: a field named json would shadow BaseModel.json)."""
        return self.json_body

    @model_validator(mode="after")
    def _one_body(self) -> RequestEntry:
        problems = _body_problems(self.json_body, self.body)
        if (self.path is None) == (self.flow is None):
            problems.append(
                (
                    ("path",),
                    "give either path (a request) or flow (a list of steps), not both"
                    if self.path is not None
                    else "a request needs a path (or a flow)",
                )
            )
        if self.flow is not None:
            problems.extend(
                (("flow", *loc), m) for loc, m in _unique_name_problems([st.name for st in self.flow], "flow")
            )
            captured: set[str] = set()
            for i, step in enumerate(self.flow):
                text = entry_texts(step.path, step.headers, step.body, step.json_body)
                for var in _FLOW_VAR.findall(text):
                    if var not in captured:
                        problems.append((("flow", i), f"${{{var}}} is not captured by an earlier step"))
                captured.update(step.capture)
        if problems:
            raise _problems(problems)
        return self


# Cross-field checks work on plain values (None: unknown) so that the loader can also run
# them on the raw data when validation of the surrounding model failed for another reason.
def _body_problems(json_body: Any, body: Any) -> list[tuple[Loc, str]]:
    if json_body is not None and body is not None:
        return [(("body",), "give either json or body, not both")]
    return []
