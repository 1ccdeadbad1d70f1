"""The automaton's faults: one pydantic model for every place they are written.

The same model reads a scenario file's `target.embedded.faults`, `python -m horde.automaton
serve --faults-json`, the admin endpoint's PUT /admin/faults and keyword arguments in code.
Field names carry their units (`leak_bytes_per_request`, `db_lock_s`); where the written
form reads better without one, the field has an alias (`leak_per_request: 10KB`,
`db_lock: 5ms`). Either name is accepted, and every value may be a plain number (seconds,
bytes, a fraction) or carry a unit ("5ms", "10KB", "5%"; horde.automaton.units).

The wire form (`as_dict()`: what GET /admin/faults answers and what a scenario's faults
become for `start_automaton(faults=...)`) is the fields that differ from their defaults,
under the field names, in plain numbers, with the stall as a flat pair::

    {
      "seed": 1,
      "latency": {"dist": "lognormal", "median_s": 0.02, "sigma": 0.5},
      "error_rate": 0.05, "error_status": 500,
      "stall_every_s": 10, "stall_for_s": 1,
      "leak_bytes_per_request": 10240, "leak_cap_bytes": 1073741824,
      "cpu_per_request_s": 0.0005,
      "concurrency": {"limit": 8, "queue": 100},
      "max_connections": 500,
      "db_lock_s": 0.005,
      "scaling": {"min_workers": 2, "max_workers": 16, "step": 2, "queue_above": 10,
                  "scale_up_delay_s": 5, "cool_down_s": 30},
      "endpoints": {"health": {"error_rate": 0.01, "error_status": 503}}
    }

Input may also give the stall as `"stall": {"every_s": 10, "for_s": 1}` (the model's own
field, which a scenario writes as `stall: {every: 10s, for: 1s}`). Every
key is optional; `{}` is no faults. Invalid faults are rejected, never adjusted, with every
problem listed by its key path. Pure: no clock, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from horde.automaton.catalog import ROUTE_NAMES
from horde.automaton.latency import DISTRIBUTIONS, Bimodal, Fixed, LatencyDistribution, LogNormal, Normal
from horde.automaton.units import Duration, Percent, Size

DEFAULT_ERROR_STATUS = 500
# Leaked memory stops growing here, so a forgotten leak cannot take the machine down.
DEFAULT_LEAK_CAP_BYTES = 1 << 30
DEFAULT_SEED = 1

Loc = tuple[str | int, ...]


# --- problems with key paths ------------------------------------------------------------------


def format_loc(loc: Loc) -> str:
    """("endpoints", "health", "error_rate") -> "endpoints.health.error_rate"; ints as [i]."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems_error(items: Sequence[tuple[Loc, str]]) -> PydanticCustomError:
    """One validation error that stands for several, each with a path below the current one.

    A validator can only fail at its own location; this carries sub-paths in the error's
    context (type "horde_problems", which the scenario loader and `problem_lines` unpack)
    so a problem is reported at `requests[2].name` rather than at `requests`.
    """
    text = "; ".join(f"{format_loc(loc) or '.'}: {msg}" for loc, msg in items)
    return PydanticCustomError("horde_problems", text, {"problems": tuple(items)})


def problem_lines(exc: ValidationError) -> list[str]:
    """Every problem of a validation error as "key.path: message"."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == "horde_problems":
            lines += [f"{format_loc(loc + tuple(sub)) or '.'}: {msg}" for sub, msg in error["ctx"]["problems"]]
            continue
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            msg = "unknown key"
        elif error["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{format_loc(loc) or '.'}: {msg}")
    return lines


class FaultConfigError(ValueError):
    """Every problem with a fault configuration; each one starts with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid fault configuration: " + "; ".join(self.problems))


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# --- the parts ----------------------------------------------------------------------------------


class Stall(FrozenModel):
    """No response goes out for `for_s` seconds at the end of every `every_s` seconds."""

    every_s: Duration = Field(alias="every", gt=0)
    for_s: Duration = Field(alias="for", gt=0)

    @model_validator(mode="after")
    def _shorter_than_period(self) -> Stall:
        # A window as long as its period would never end: the server would be dead, not stalled.
        if self.for_s >= self.every_s:
            raise problems_error([(("for",), "must be shorter than 'every'")])
        return self


# Each latency distribution's parameters, by field name (the aliases drop the `_s`).
_LATENCY_PARAMS: dict[str, tuple[str, ...]] = {
    "fixed": ("delay_s",),
    "normal": ("mean_s", "stdev_s"),
    "lognormal": ("median_s", "sigma"),
    "bimodal": ("p_slow", "fast_s", "slow_s"),
}


class LatencyFault(FrozenModel):
    """Added latency drawn per request: `50ms` (fixed) or {dist: ..., its parameters}.

    fixed {delay}; normal {mean, stdev} (clipped at 0); lognormal {median, sigma}
    (sigma of the log, unitless); bimodal {p, fast, slow}: `slow` with probability p.
    The draws: horde.automaton.latency.
    """

    dist: Literal["fixed", "normal", "lognormal", "bimodal"]
    delay_s: Duration | None = Field(None, alias="delay")
    mean_s: Duration | None = Field(None, alias="mean")
    stdev_s: Duration | None = Field(None, alias="stdev")
    median_s: Duration | None = Field(None, alias="median")
    sigma: Annotated[float, Field(ge=0)] | None = None
    p_slow: Percent | None = Field(None, alias="p")
    fast_s: Duration | None = Field(None, alias="fast")
    slow_s: Duration | None = Field(None, alias="slow")

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, (str, int, float)) and not isinstance(data, bool):
            return {"dist": "fixed", "delay": data}
        if isinstance(data, (Fixed, Normal, LogNormal, Bimodal)):
            return data.as_dict()  # a horde.automaton.latency value, from code
        return data

    @model_validator(mode="after")
    def _parameters_of_its_dist(self) -> LatencyFault:
        wanted = _LATENCY_PARAMS[self.dist]
        written = [_alias(LatencyFault, name) for name in wanted]
        problems: list[tuple[Loc, str]] = [
            ((_alias(LatencyFault, name),), f"required for dist {self.dist}")
            for name in wanted
            if getattr(self, name) is None
        ]
        problems += [
            ((_alias(LatencyFault, name),), f"not a parameter of dist {self.dist} (it takes {', '.join(written)})")
            for names in _LATENCY_PARAMS.values()
            for name in names
            if name not in wanted and getattr(self, name) is not None
        ]
        if problems:
            raise problems_error(problems)
        return self

    @cached_property
    def distribution(self) -> LatencyDistribution:
        """The distribution that draws the delays (built once)."""
        params = {name: getattr(self, name) for name in _LATENCY_PARAMS[self.dist]}
        return DISTRIBUTIONS[self.dist](**params)

    def sample(self, rng: random.Random) -> float:
        return self.distribution.sample(rng)


def _alias(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name


class ConcurrencyFault(FrozenModel):
    """At most `limit` requests processed at once, `queue` more waiting; past that, 503."""

    limit: int = Field(ge=1)
    queue: int = Field(0, ge=0)


class ScalingFault(FrozenModel):
    """Worker capacity (the global concurrency limit) that follows the queue.

    Up by `step` once the queue has stayed longer than `queue_above` for `scale_up_delay`;
    down by `step` after `cool_down` of low load (empty queue, a step's worth of idle
    workers); always between min and max workers. The decisions: capacity.next_scaling_state.
    """

    min_workers: int = Field(ge=1)
    max_workers: int = Field(ge=1)
    scale_up_delay_s: Duration = Field(alias="scale_up_delay")
    cool_down_s: Duration = Field(alias="cool_down")
    step: int = Field(1, ge=1)
    queue_above: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ScalingFault:
        if self.max_workers < self.min_workers:
            raise problems_error([(("max_workers",), "must not be less than min_workers")])
        return self


_LEGACY_STALL = ("stall_every_s", "stall_for_s")


class EndpointFaults(FrozenModel):
    """Faults for one endpoint of the automaton (or, in TargetFaults, for every request)."""

    latency: LatencyFault | None = None
    error_rate: Percent = 0.0
    error_status: int = Field(DEFAULT_ERROR_STATUS, ge=400, le=599)
    stall: Stall | None = None
    leak_bytes_per_request: Size = Field(0, alias="leak_per_request")
    cpu_per_request_s: Duration = Field(0.0, alias="cpu_per_request")
    concurrency: ConcurrencyFault | None = None

    @model_validator(mode="before")
    @classmethod
    def _flat_stall(cls, data: Any) -> Any:
        """The older wire form's `stall_every_s` + `stall_for_s`, read as `stall`."""
        if not isinstance(data, Mapping) or not any(key in data for key in _LEGACY_STALL):
            return data
        given = {key: data[key] for key in _LEGACY_STALL if data.get(key) is not None}
        rest = {key: value for key, value in data.items() if key not in _LEGACY_STALL}
        if not given:
            return rest
        if rest.get("stall") is not None:
            raise problems_error([(("stall",), "given twice: also as stall_every_s and stall_for_s; keep one")])
        # One of the pair alone is reported by Stall as the other one missing, along with
        # the scope's other problems.
        return {**rest, "stall": {key.removeprefix("stall_"): value for key, value in given.items()}}

    @property
    def stall_every_s(self) -> float | None:
        return None if self.stall is None else self.stall.every_s

    @property
    def stall_for_s(self) -> float | None:
        return None if self.stall is None else self.stall.for_s

    @property
    def stall_enabled(self) -> bool:
        return self.stall is not None

    def as_dict(self) -> dict[str, Any]:
        """The wire form, as the automaton has always answered: the fields that differ from
        their defaults, under the field names, in plain numbers, the stall as the flat pair
        `stall_every_s` / `stall_for_s` (GET /admin/faults; a bundle's manifest.target.faults)."""
        out: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value == info.default or (name == "seed" and value == DEFAULT_SEED):
                continue
            if isinstance(value, Stall):
                out["stall_every_s"], out["stall_for_s"] = value.every_s, value.for_s
            elif name == "endpoints":
                out[name] = {endpoint: scope.as_dict() for endpoint, scope in value.items()}
            elif isinstance(value, BaseModel):
                out[name] = value.model_dump(mode="json", exclude_none=True)
            else:
                out[name] = value
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
          max_connections: 500            # connections beyond are closed at once
          db_lock: 5ms                    # held around every database operation
          scaling: {min_workers: 2, max_workers: 16, step: 2, queue_above: 10,
                    scale_up_delay: 5s, cool_down: 30s}
          seed: 7
          endpoints:                      # route names: /stats lists them; on top of the above
            health: {error_rate: 5%, error_status: 500}

    Per endpoint, latencies, leaks and CPU costs add to the global ones, each error rate is
    drawn in turn (global first), the longer stall hold wins, and both concurrency limits
    must admit the request (the endpoint's first).
    """

    endpoints: dict[str, EndpointFaults] = {}
    leak_cap_bytes: Size = Field(DEFAULT_LEAK_CAP_BYTES, alias="leak_cap")
    max_connections: int | None = Field(None, ge=1)
    db_lock_s: Duration = Field(0.0, alias="db_lock")
    scaling: ScalingFault | None = None
    # null: the scenario's seed (the run adds it to the wire form); the automaton on its own
    # draws from DEFAULT_SEED, so its faults are always reproducible.
    seed: int | None = Field(None, ge=0, validate_default=True)

    @field_validator("seed")
    @classmethod
    def _seed_or_default(cls, seed: int | None) -> int:
        return DEFAULT_SEED if seed is None else seed

    @field_validator("endpoints", mode="wrap")
    @classmethod
    def _known_endpoints(cls, endpoints: Any, handler: Any) -> dict[str, EndpointFaults]:
        if not isinstance(endpoints, Mapping) or all(name in ROUTE_NAMES for name in endpoints):
            return handler(endpoints)
        # Unknown names and the known endpoints' own problems, reported together.
        known = ", ".join(ROUTE_NAMES)
        line_errors: list[InitErrorDetails] = [
            InitErrorDetails(
                type=problems_error([((), f"not an endpoint of the automaton; expected one of: {known}")]),
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
            raise problems_error(
                [(("scaling",), "needs concurrency: the worker pool it resizes and the queue it watches")]
            )
        if not self.scaling.min_workers <= self.concurrency.limit <= self.scaling.max_workers:
            raise problems_error(
                [
                    (
                        ("concurrency", "limit"),
                        "is the starting capacity: must be between scaling.min_workers and scaling.max_workers",
                    )
                ]
            )
        return self

    def scopes(self, endpoint: str) -> tuple[EndpointFaults, ...]:
        """The scopes that apply to a request on `endpoint`: global first, then its own."""
        own = self.endpoints.get(endpoint)
        return (self,) if own is None else (self, own)

    @classmethod
    def from_dict(cls, data: Any) -> TargetFaults:
        """Parse the wire form (or the scenario form); raises FaultConfigError listing every problem."""
        return fault_config_from_dict(data)


def fault_config_from_dict(data: Any) -> TargetFaults:
    """Faults from JSON-like data (None or {} is no faults); FaultConfigError lists every problem."""
    if data is None:
        return TargetFaults.model_validate({})
    if not isinstance(data, Mapping):
        raise FaultConfigError([f"the fault configuration must be a JSON object, got {data!r}"])
    try:
        return TargetFaults.model_validate(data)
    except ValidationError as exc:
        raise FaultConfigError(problem_lines(exc)) from None
