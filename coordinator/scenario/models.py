"""Scenario files: YAML in, frozen and fully validated models out, or every problem at once.

A scenario, with the forms each key accepts::

    name: checkout-load                 # letters, digits, _ . - (at most 80)
    description: ""
    target: http://127.0.0.1:8080       # or "embedded", {url: ...}, {embedded: {stall: {every: 5s, for: 1s}}}
    requests:                           # the request mix, at least one; names unique
      - name: list
        method: GET                     # GET POST PUT PATCH DELETE HEAD OPTIONS (any case)
        path: /api/records
        headers: {Authorization: "Bearer ${TOKEN}"}
        json: {k: v}                    # or body: "raw text", not both
        weight: 3                       # > 0, relative
        expect: [200, 404]              # empty: any 2xx/3xx
    workload:
      model: open                       # open: rate per second; closed: virtual users
      arrivals: constant                # or poisson (open model)
      start: 0                          # level at t=0
      stages:                           # piecewise-linear ramps to each target
        - {duration: 30s, target: 100, name: ramp}
      think_time: 0                     # closed model: a duration or {min: 1s, max: 3s}
      max_in_flight: 1000               # open model concurrency cap for the whole run
      max_connections: null
      graceful_stop: 5s
    agents: auto                        # or a whole number >= 1
    flush_interval: 1s                  # 100ms .. 60s
    timeout: 10s                        # per request
    connect_timeout: 5s
    thresholds:                         # grammar in coordinator/judge/thresholds.py
      - p99(latency) < 500ms
      - {expr: "error_rate < 1%", endpoint: list, stage: ramp, abort: true, delay: 10s, window: 5s}
    output: results
    seed: 1
    engine: auto                        # auto | fast | aiohttp
    tls: {verify: true, ca: ca.pem, cert: client.pem, key: client.key}   # client.py
    follow_redirects: false             # each entry and flow step may set its own, and `timeout`
    data: {accounts: {file: accounts.csv, order: unique}}   # rows as ${data.accounts.user}

Durations are seconds as a number, or strings such as "250ms", "1m30s"; the models keep
float seconds under the same key names (`timeout` is seconds, `Stall.every_s` too).

Loading (`load_scenario`, or `parse_scenario` for text already in hand) goes:
YAML -> `${NAME}` / `${NAME:-default}` interpolation in string values -> `--set KEY=VALUE`
overrides -> pydantic validation and cross-field checks. Problems from every step are
collected and raised together as `ScenarioError`, each with its key path
(`workload.stages[1].duration`), `FILE:LINE:COL` for YAML syntax, or `--set TEXT`.

Rules decided here:
- `$${` writes a literal `${`. `${NAME:-default}` takes the default when NAME is unset or
  empty (as a shell does). Every key path whose value contained a `${...}` reference is a
  secret, wherever its value came from; a `--set` on that path (or above it) lifts that.
- Secrets are redacted ("***") in `LoadedScenario.as_run`, along with sensitive header
  values and a password inside the target URL; they are also left out of problem
  messages. The validated `Scenario` keeps the real values: it is what runs.
- Stage names may not be plain numbers, so a threshold's `stage: "1"` is always an index.
- A closed-model workload's `start` and stage targets are user counts: whole numbers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, WithJsonSchema, field_validator, model_validator

from horde.coordinator.judge.alert_rules import EACH_ENDPOINT, AlertRule
from horde.coordinator.judge.alert_section import AlertSection, rules_of
from horde.coordinator.judge.thresholds import ScopedThreshold
from horde.coordinator.scenario.client import DataFile, TlsOptions
from horde.coordinator.scenario.fields import (  # noqa: F401 - names other modules import from here
    _NAME_MESSAGE,
    _SENSITIVE_NAME,
    MAX_AGENTS,
    REDACTED,
    SENSITIVE_HEADERS,
    Duration,
    Loc,
    Name,
    _between,
    _format_loc,
    _Model,
    _problems,
    _unique_name_problems,
)
from horde.coordinator.scenario.limits import Limits
from horde.coordinator.scenario.requests import (  # noqa: F401
    FlowStep,
    Method,
    PollUntil,
    RequestEntry,
    _body_problems,
    data_refs,
)
from horde.coordinator.scenario.rules import (
    ThresholdEntry,
    _endpoint_problem,
    _stage_problem,
)
from horde.coordinator.scenario.target import (  # noqa: F401
    ConcurrencyFault,
    EmbeddedTarget,
    EndpointFaults,
    LatencyFault,
    ScalingFault,
    Stall,
    Target,
    TargetFaults,
)
from horde.coordinator.scenario.users import UserEntry
from horde.coordinator.scenario.workload import (  # noqa: F401
    StageEntry,
    ThinkTime,
    Workload,
    _workload_problems,
)

# --- scenario -----------------------------------------------------------------------------


def _entry_kind(value: Any) -> str:
    if isinstance(value, UserEntry) or (isinstance(value, dict) and "user" in value):
        return "user"
    return "request"


# A mix entry: a request or flow, or a Python user (an entry with a `user` key). The loader
# drops the tag from key paths (requests[0].path, not requests[0].request.path).
MixEntry = Annotated[
    Annotated[RequestEntry, Tag("request")] | Annotated[UserEntry, Tag("user")],
    Discriminator(_entry_kind),
]


def _agents(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 18:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_AGENTS:
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f"must be a whole number from 1 to {MAX_AGENTS} or 'auto', got {shown}")


class Scenario(_Model):
    name: Name = Field(max_length=80)
    description: str = ""
    target: Target
    requests: list[MixEntry] = Field(min_length=1)
    workload: Workload
    agents: Annotated[
        int | Literal["auto"],
        BeforeValidator(_agents),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_AGENTS}, {"const": "auto"}]}),
    ] = "auto"
    flush_interval: Annotated[Duration, _between(0.1, 60.0)] = 1.0
    timeout: Duration = Field(10.0, gt=0)
    connect_timeout: Duration = Field(5.0, gt=0)
    thresholds: list[ThresholdEntry] = []
    output: str = "results"
    seed: int = Field(1, ge=0)  # numpy seeds are non-negative
    # auto: the lean HTTP/1.1 engine for every request it supports, aiohttp for the rest
    engine: Literal["aiohttp", "fast", "auto"] = "auto"
    # Soak time compression: simulated seconds per real second. Stage durations are
    # simulated time; with 60, `duration: 1h` runs for one real minute.
    time_compression: float = Field(1.0, ge=1.0, le=86400.0)
    # Warning / critical alert rules (coordinator/judge/alert_section.py): rules and "defaults";
    # None = the defaults, [] = none.
    alerts: AlertSection | None = None
    # Response caps for every request, probe and flow step (coordinator/scenario/limits.py).
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    # HTTP client options (coordinator/scenario/client.py, docs/scenarios.md).
    tls: TlsOptions = Field(default_factory=lambda: TlsOptions.model_validate({}))
    follow_redirects: bool = False  # the default of every entry and step (each may set its own)
    data: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)], DataFile] = Field({}, max_length=64)

    @field_validator("requests")
    @classmethod
    def _unique_request_names(cls, requests: list[RequestEntry | UserEntry]) -> list[RequestEntry | UserEntry]:
        if problems := _unique_name_problems([entry.name for entry in requests], "requests"):
            raise _problems(problems)
        return requests

    @model_validator(mode="after")
    def _known_references(self) -> Scenario:
        names = [r.name for r in self.requests]
        names += [n for r in self.requests if isinstance(r, UserEntry) for n in r.endpoint_names()]
        stage_names = [s.name for s in self.workload.stages]
        problems: list[tuple[Loc, str]] = []
        for i, entry in enumerate(self.thresholds):
            if entry.endpoint is not None and (p := _endpoint_problem(entry.endpoint, names)):
                problems.append((("thresholds", i, "endpoint"), p))
            if entry.stage is not None and (p := _stage_problem(entry.stage, stage_names)):
                problems.append((("thresholds", i, "stage"), p))
        for i, request in enumerate(self.requests):
            for loc, name, _column in data_refs(request):
                if name not in self.data:
                    known = ", ".join(sorted(self.data)) or "none: add a `data` section"
                    problems.append((("requests", i, *loc), f"${{data.{name}...}} names no data file (known: {known})"))
        for i, alert in enumerate(self.alerts or ()):
            endpoint = getattr(alert, "endpoint", None)
            if endpoint not in (None, EACH_ENDPOINT) and (p := _endpoint_problem(endpoint, names)):
                problems.append((("alerts", i, "endpoint"), p))
        if problems:
            raise _problems(problems)
        return self

    def rules(self) -> tuple[ScopedThreshold, ...]:
        return tuple(entry.rule() for entry in self.thresholds)

    def alert_rules(self) -> tuple[AlertRule, ...]:
        """The alert rules, "defaults" expanded (no section: the defaults)."""
        return rules_of(self.alerts)

    def stage_index(self, ref: str) -> int:
        """The index of a stage given by name or by index text (as thresholds refer to it)."""
        for i, stage in enumerate(self.workload.stages):
            if stage.name and stage.name == ref:
                return i
        if ref.isdigit() and int(ref) < len(self.workload.stages):
            return int(ref)
        raise KeyError(ref)


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of the scenario file, including the short forms the loader accepts."""
    schema = Scenario.model_json_schema(by_alias=True)
    props = schema["properties"]
    props["target"] = {
        "anyOf": [
            {"type": "string", "description": "'embedded' or an http(s) URL"},
            {"$ref": "#/$defs/Target"},
        ]
    }
    props["data"]["patternProperties"] = {
        pattern: {"anyOf": [{"type": "string", "description": "a data file's path (order: cycle)"}, ref]}
        for pattern, ref in props["data"]["patternProperties"].items()
    }
    props["thresholds"]["items"] = {
        "anyOf": [
            {"type": "string", "description": "a threshold expression"},
            {"$ref": "#/$defs/ThresholdEntry"},
        ]
    }
    return schema
