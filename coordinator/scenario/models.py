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

import json
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from horde.automaton.catalog import (
    ROUTE_NAMES,  # the endpoints faults can name (a pure module)
)
from horde.coordinator.judge.thresholds import (
    ScopedThreshold,
    Threshold,
    ThresholdSyntaxError,
    parse_threshold,
)
from horde.coordinator.units import (  # embedded target faults
    format_duration,
    parse_duration,
    parse_percent,
    parse_size,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]

REDACTED = "***"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
_SENSITIVE_NAME = re.compile(r"token|secret|password|key", re.IGNORECASE)
_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_NAME_MESSAGE = "may contain only letters, digits, '_', '.' and '-'"

# --- field types --------------------------------------------------------------------------

_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "description": "seconds"},
        {"type": "string", "pattern": r"^\s*([0-9.]+(ns|us|µs|ms|s|m|h))+\s*$|^\s*[0-9.]+\s*$",
         "examples": ["250ms", "30s", "1m30s"]},
    ]
}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


def _problems(items: Sequence[tuple[Loc, str]]) -> PydanticCustomError:
    """One validation error that stands for several, each with a path below the current one.

    A validator can only fail at its own location; this carries sub-paths in the error's
    context so the loader reports `requests[2].name` rather than `requests`.
    """
    text = "; ".join(f"{_format_loc(loc) or '.'}: {msg}" for loc, msg in items)
    return PydanticCustomError("horde_problems", text, {"problems": tuple(items)})


def _between(low_s: float, high_s: float):  # noqa: ANN202 - an AfterValidator
    def check(seconds: float) -> float:
        if not low_s <= seconds <= high_s:
            raise ValueError(
                f"must be between {format_duration(low_s)} and {format_duration(high_s)}, "
                f"got {format_duration(seconds)}"
            )
        return seconds

    return AfterValidator(check)


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
                parsed[key] = parse_duration(value[key])
            except ValueError as exc:
                problems.append(((key,), str(exc)))
        if not problems and parsed["min"] > parsed["max"]:
            problems.append((("min",), "must not be more than max"))
        if problems:
            raise _problems(problems)
        return (parsed["min"], parsed["max"])
    if isinstance(value, (tuple, list)):
        return value  # already (min_s, max_s), e.g. from model_copy or code
    seconds = parse_duration(value)
    return (seconds, seconds)


ThinkTime = Annotated[
    tuple[float, float],
    BeforeValidator(_think_time),
    WithJsonSchema(
        {
            "anyOf": [
                _DURATION_SCHEMA,
                {"type": "object", "properties": {"min": _DURATION_SCHEMA, "max": _DURATION_SCHEMA},
                 "required": ["min", "max"], "additionalProperties": False},
            ]
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# --- target -------------------------------------------------------------------------------


class Stall(_Model):
    """The embedded target stops answering for `for_s` seconds every `every_s` seconds."""

    every_s: Duration = Field(alias="every", gt=0)
    for_s: Duration = Field(alias="for", gt=0)

    @model_validator(mode="after")
    def _shorter_than_period(self) -> Stall:
        if self.for_s >= self.every_s:
            raise _problems([(("for",), "must be shorter than 'every'")])
        return self


# --- embedded target faults (the wire form they become: automaton/faults.py) ----------------


def _at_most_one(fraction: float) -> float:
    if fraction > 1:
        raise ValueError(f"must be at most 100%, got {fraction * 100:g}%")
    return fraction


Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    AfterValidator(_at_most_one),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": 1, "description": "a fraction"},
                              {"type": "string", "pattern": r"^\s*[0-9.]+\s*%?\s*$", "examples": ["5%", "0.5%"]}]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "description": "bytes"},
                              {"type": "string", "examples": ["10KB", "64KiB", "1GiB"]}]}),
]

# Each latency distribution's parameters (YAML names).
_LATENCY_PARAMS: dict[str, tuple[str, ...]] = {
    "fixed": ("delay",),
    "normal": ("mean", "stdev"),
    "lognormal": ("median", "sigma"),
    "bimodal": ("p", "fast", "slow"),
}


class LatencyFault(_Model):
    """Added latency drawn per request: `50ms` (fixed) or {dist: ..., its parameters}.

    fixed {delay}; normal {mean, stdev} (clipped at 0); lognormal {median, sigma}
    (sigma of the log, unitless); bimodal {p, fast, slow}: `slow` with probability p.
    """

    dist: Literal["fixed", "normal", "lognormal", "bimodal"]
    delay: Duration | None = None
    mean: Duration | None = None
    stdev: Duration | None = None
    median: Duration | None = None
    sigma: Annotated[float, Field(ge=0)] | None = None
    p: Percent | None = None
    fast: Duration | None = None
    slow: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, (str, int, float)) and not isinstance(data, bool):
            return {"dist": "fixed", "delay": data}
        return data

    @model_validator(mode="after")
    def _parameters_of_its_dist(self) -> LatencyFault:
        wanted = _LATENCY_PARAMS[self.dist]
        problems: list[tuple[Loc, str]] = [
            ((name,), f"required for dist {self.dist}") for name in wanted if getattr(self, name) is None
        ]
        problems += [
            ((name,), f"not a parameter of dist {self.dist} (it takes {', '.join(wanted)})")
            for names in _LATENCY_PARAMS.values()
            for name in names
            if name not in wanted and getattr(self, name) is not None
        ]
        if problems:
            raise _problems(problems)
        return self

    def automaton_config(self) -> dict[str, Any]:
        """automaton/latency.py's wire form: seconds under `_s` keys."""
        if self.dist == "fixed":
            return {"dist": "fixed", "delay_s": self.delay}
        if self.dist == "normal":
            return {"dist": "normal", "mean_s": self.mean, "stdev_s": self.stdev}
        if self.dist == "lognormal":
            return {"dist": "lognormal", "median_s": self.median, "sigma": self.sigma}
        return {"dist": "bimodal", "p_slow": self.p, "fast_s": self.fast, "slow_s": self.slow}


class ConcurrencyFault(_Model):
    """At most `limit` requests processed at once, `queue` more waiting; past that, 503."""

    limit: int = Field(ge=1)
    queue: int = Field(0, ge=0)


class ScalingFault(_Model):
    """Worker capacity (the global concurrency limit) that follows the queue.

    Up by `step` once the queue has stayed longer than `queue_above` for `scale_up_delay`;
    down by `step` after `cool_down` of low load; always between min and max workers.
    """

    min_workers: int = Field(ge=1)
    max_workers: int = Field(ge=1)
    step: int = Field(1, ge=1)
    queue_above: int = Field(0, ge=0)
    scale_up_delay: Duration
    cool_down: Duration

    @model_validator(mode="after")
    def _ordered(self) -> ScalingFault:
        if self.max_workers < self.min_workers:
            raise _problems([(("max_workers",), "must not be less than min_workers")])
        return self

    def automaton_config(self) -> dict[str, Any]:
        return {
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
            "step": self.step,
            "queue_above": self.queue_above,
            "scale_up_delay_s": self.scale_up_delay,
            "cool_down_s": self.cool_down,
        }


class EndpointFaults(_Model):
    """Faults for one endpoint of the automaton (or, in TargetFaults, for every request)."""

    latency: LatencyFault | None = None
    error_rate: Percent = 0.0
    error_status: int = Field(500, ge=400, le=599)
    stall: Stall | None = None
    leak_per_request: Size = 0
    cpu_per_request: Duration = 0.0
    concurrency: ConcurrencyFault | None = None

    def automaton_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.latency is not None:
            out["latency"] = self.latency.automaton_config()
        if self.error_rate:
            out["error_rate"] = self.error_rate
            out["error_status"] = self.error_status
        if self.stall is not None:
            out["stall_every_s"] = self.stall.every_s
            out["stall_for_s"] = self.stall.for_s
        if self.leak_per_request:
            out["leak_bytes_per_request"] = self.leak_per_request
        if self.cpu_per_request:
            out["cpu_per_request_s"] = self.cpu_per_request
        if self.concurrency is not None:
            out["concurrency"] = {"limit": self.concurrency.limit, "queue": self.concurrency.queue}
        return out


class TargetFaults(EndpointFaults):
    """The embedded automaton's faults: for every request, per endpoint, and global ones.

        faults:
          latency: {dist: lognormal, median: 20ms, sigma: 0.5}   # or just 20ms (fixed)
          error_rate: 1%
          error_status: 503
          stall: {every: 10s, for: 1s}
          leak_per_request: 10KB
          leak_cap: 1GiB                  # the leak stops growing here
          cpu_per_request: 200us
          concurrency: {limit: 8, queue: 100}
          max_connections: 500
          db_lock: 5ms                    # held around every database operation
          scaling: {min_workers: 2, max_workers: 16, step: 2, queue_above: 10,
                    scale_up_delay: 5s, cool_down: 30s}
          seed: 7
          endpoints:                      # route names: /stats lists them; on top of the above
            health: {error_rate: 5%, error_status: 500}
    """

    endpoints: dict[str, EndpointFaults] = {}
    leak_cap: Size = 1 << 30
    max_connections: int | None = Field(None, ge=1)
    db_lock: Duration = 0.0
    scaling: ScalingFault | None = None
    seed: int | None = Field(None, ge=0)

    @field_validator("endpoints", mode="wrap")
    @classmethod
    def _known_endpoints(cls, endpoints: Any, handler: Any) -> dict[str, EndpointFaults]:
        if not isinstance(endpoints, Mapping) or all(name in ROUTE_NAMES for name in endpoints):
            return handler(endpoints)  # type: ignore[no-any-return]
        # Unknown names and the known endpoints' own problems, reported together.
        known = ", ".join(ROUTE_NAMES)
        line_errors: list[InitErrorDetails] = [
            InitErrorDetails(
                type=_problems([((), f"not an endpoint of the automaton; expected one of: {known}")]),
                loc=(name,),
                input=endpoints[name],
            )
            for name in endpoints
            if name not in ROUTE_NAMES
        ]
        try:
            handler({name: value for name, value in endpoints.items() if name in ROUTE_NAMES})
        except ValidationError as exc:
            line_errors += [
                InitErrorDetails(
                    type=PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
                    loc=tuple(error["loc"]),
                    input=error["input"],
                )
                for error in exc.errors(include_url=False)
            ]
        raise ValidationError.from_exception_data(cls.__name__, line_errors)

    @model_validator(mode="after")
    def _scaling_has_a_pool(self) -> TargetFaults:
        if self.scaling is None:
            return self
        if self.concurrency is None:
            raise _problems([(("scaling",), "needs concurrency: the worker pool it resizes and the queue it watches")])
        if not self.scaling.min_workers <= self.concurrency.limit <= self.scaling.max_workers:
            raise _problems([(("concurrency", "limit"), "is the starting capacity: must be between "
                              "scaling.min_workers and scaling.max_workers")])
        return self

    def automaton_config(self) -> dict[str, Any]:
        out = super().automaton_config()
        if self.endpoints:
            out["endpoints"] = {name: scope.automaton_config() for name, scope in self.endpoints.items()}
        if self.leak_cap != 1 << 30:
            out["leak_cap_bytes"] = self.leak_cap
        if self.max_connections is not None:
            out["max_connections"] = self.max_connections
        if self.db_lock:
            out["db_lock_s"] = self.db_lock
        if self.scaling is not None:
            out["scaling"] = self.scaling.automaton_config()
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class EmbeddedTarget(_Model):
    """The reference automaton, with faults. `stall:` is short for `faults: {stall: ...}`."""

    stall: Stall | None = None
    faults: TargetFaults | None = None

    @model_validator(mode="after")
    def _stall_once(self) -> EmbeddedTarget:
        if self.stall is not None and self.faults is not None and self.faults.stall is not None:
            raise _problems([(("stall",), "given twice: also as faults.stall; keep one")])
        return self

    def faults_config(self) -> dict[str, Any]:
        """The faults as plain JSON for `start_automaton(faults=...)` (automaton/faults.py's wire form)."""
        config = self.faults.automaton_config() if self.faults is not None else {}
        if self.stall is not None:
            config["stall_every_s"] = self.stall.every_s
            config["stall_for_s"] = self.stall.for_s
        return config


class Target(_Model):
    """Exactly one of `url` (an http or https service) and `embedded` (the reference automaton)."""

    url: str | None = None
    embedded: EmbeddedTarget | None = None
    # A Prometheus /metrics URL of the target (standard process metrics): sampled during the
    # run for resource series and thresholds. The embedded automaton's is used automatically.
    metrics: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"embedded": {}} if data.strip() == "embedded" else {"url": data}
        if isinstance(data, Mapping) and "embedded" in data and data["embedded"] in (None, True):
            return {**data, "embedded": {}}
        return data

    @field_validator("url", "metrics")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL, or 'embedded'")
        if not parts.hostname:
            raise ValueError("URL has no host")
        return url

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.url is None) == (self.embedded is None):
            raise ValueError("give exactly one of url and embedded")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None


# --- requests -----------------------------------------------------------------------------

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
    max_polls: int = Field(50, ge=1)  # the bound: after this many, the flow fails (poll_exhausted)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @property
    def json(self) -> JsonValue | None:  # type: ignore[override]
        return self.json_body

    @model_validator(mode="after")
    def _one_body(self) -> FlowStep:
        if problems := _body_problems(self.json_body, self.body):
            raise _problems(problems)
        return self


_FLOW_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RequestEntry(_Model):
    """A plain request (method, path, ...) or a flow (`flow:` a list of steps)."""

    name: Name
    method: Annotated[Method, BeforeValidator(_upper)] = "GET"
    path: str | None = None
    flow: list[FlowStep] | None = Field(None, min_length=1)
    headers: dict[str, Annotated[str, BeforeValidator(_header_value)]] = {}
    json_body: JsonValue | None = Field(None, alias="json")
    body: str | None = None
    weight: float = Field(1.0, gt=0)
    expect: list[Annotated[int, Field(ge=100, le=599)]] = []

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @property
    def json(self) -> JsonValue | None:  # type: ignore[override]
        """The JSON body (the field is `json_body`: a field named json would shadow BaseModel.json)."""
        return self.json_body

    @model_validator(mode="after")
    def _one_body(self) -> RequestEntry:
        problems = _body_problems(self.json_body, self.body)
        if (self.path is None) == (self.flow is None):
            problems.append((("path",), "give either path (a request) or flow (a list of steps), not both"
                             if self.path is not None else "a request needs a path (or a flow)"))
        if self.flow is not None:
            problems.extend((("flow", *loc), m) for loc, m in _unique_name_problems([st.name for st in self.flow], "flow"))
            captured: set[str] = set()
            for i, step in enumerate(self.flow):
                text = " ".join([step.path, *step.headers.values(), step.body or "",
                                 json.dumps(step.json_body) if step.json_body is not None else ""])
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


def _workload_problems(
    model: Any, start: float | None, stages: Sequence[tuple[float | None, float | None, Any]]
) -> list[tuple[Loc, str]]:
    """stages: (duration_s, target, name) per stage."""
    problems: list[tuple[Loc, str]] = []
    durations = [duration for duration, _, _ in stages]
    if stages and None not in durations and sum(durations) <= 0:  # type: ignore[arg-type]
        problems.append((("stages",), "the stages' total duration must be more than 0"))
    if model == "closed":
        whole = "closed-model levels are user counts: expected a whole number, got {:g}"
        if start is not None and not float(start).is_integer():
            problems.append((("start",), whole.format(start)))
        for i, (_, target, _) in enumerate(stages):
            if target is not None and not float(target).is_integer():
                problems.append((("stages", i, "target"), whole.format(target)))
    for i, (_, _, name) in enumerate(stages):
        if isinstance(name, str) and name.isdigit():
            problems.append(
                (("stages", i, "name"), "must not be a plain number (it would read as a stage index)")
            )
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
    max_in_flight: int = Field(1000, ge=1)
    max_connections: int | None = Field(None, ge=1)
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


# --- thresholds ---------------------------------------------------------------------------


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


# --- scenario -----------------------------------------------------------------------------


def _agents(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"must be a whole number of at least 1 or 'auto', got {value!r}")


class Scenario(_Model):
    name: Name = Field(max_length=80)
    description: str = ""
    target: Target
    requests: list[RequestEntry] = Field(min_length=1)
    workload: Workload
    agents: Annotated[
        int | Literal["auto"],
        BeforeValidator(_agents),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}),
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
    # Warning / critical alert rules (coordinator/judge/alerts.py); None = the defaults, [] = none.
    alerts: list[Any] | None = None

    @model_validator(mode="after")
    def _valid_alerts(self) -> Scenario:
        if self.alerts is None:
            return self
        from horde.coordinator.judge.alerts import rule_problems

        endpoints = [r.name for r in self.requests]
        if problems := rule_problems(self.alerts, endpoints=endpoints):
            raise _problems([(("alerts", *(loc if isinstance(loc, tuple) else (loc,))), msg) for loc, msg in problems])
        return self

    @field_validator("requests")
    @classmethod
    def _unique_request_names(cls, requests: list[RequestEntry]) -> list[RequestEntry]:
        if problems := _unique_name_problems([entry.name for entry in requests], "requests"):
            raise _problems(problems)
        return requests

    @model_validator(mode="after")
    def _known_references(self) -> Scenario:
        names = [r.name for r in self.requests]
        stage_names = [s.name for s in self.workload.stages]
        problems: list[tuple[Loc, str]] = []
        for i, entry in enumerate(self.thresholds):
            if entry.endpoint is not None and (p := _endpoint_problem(entry.endpoint, names)):
                problems.append((("thresholds", i, "endpoint"), p))
            if entry.stage is not None and (p := _stage_problem(entry.stage, stage_names)):
                problems.append((("thresholds", i, "stage"), p))
        if problems:
            raise _problems(problems)
        return self

    def rules(self) -> tuple[ScopedThreshold, ...]:
        return tuple(entry.rule() for entry in self.thresholds)

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
    props["thresholds"]["items"] = {
        "anyOf": [
            {"type": "string", "description": "a threshold expression"},
            {"$ref": "#/$defs/ThresholdEntry"},
        ]
    }
    return schema


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
