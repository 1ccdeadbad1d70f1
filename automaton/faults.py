"""Faults the automaton injects, with known ground truth for tests: configuration and maths.

Everything here is pure. What happens to one request is decided by `plan_request`
(given the configuration, the endpoint and a seeded generator) and `stall_hold_s`
(given the time since the server started); the app's middleware is the one place that
applies the decisions. Capacity maths (admission queue, scaling) is in `capacity.py`.

The configuration is one frozen `FaultConfig`. Its own scope fields apply to every
request; `endpoints` adds faults for single routes (by route name), on top of the
global ones: latencies add, each error rate is drawn in turn, leaks and CPU costs add,
and both concurrency limits must admit the request (the endpoint's first). Global only:
the connection limit, the slow database, the leak cap, the scaling model, the seed.

The wire form (`FaultConfig.from_dict`, `as_dict`; what `--faults-json`, the admin
endpoint and `start_automaton(faults=...)` take) uses the field names, in plain units:

    {
      "seed": 1,
      "latency": {"dist": "lognormal", "median_s": 0.02, "sigma": 0.5},   # see latency.py
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

Every key is optional; `{}` is no faults. Invalid configurations are rejected, never
adjusted, with every problem listed by its key path (`endpoints.health.error_rate ...`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable

from horde.automaton.catalog import ROUTE_NAMES
from horde.automaton.latency import DISTRIBUTIONS, LatencyDistribution

DEFAULT_ERROR_STATUS = 500
# Leaked memory stops growing here, so a forgotten leak cannot take the machine down.
DEFAULT_LEAK_CAP_BYTES = 1 << 30
DEFAULT_SEED = 1


class FaultConfigError(ValueError):
    """Every problem with a fault configuration; each message starts with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid fault configuration: " + "; ".join(self.problems))


def _raise_if(problems: list[str]) -> None:
    if problems:
        # Reject rather than adjust: a fault the user did not ask for is worse than none.
        raise FaultConfigError(problems)


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` requests processed at once, up to `queue` more waiting; past that 503."""

    limit: int
    queue: int = 0

    def __post_init__(self) -> None:
        _raise_if(self.problems())

    def problems(self) -> list[str]:
        return _integer_at_least(("limit", self.limit, 1), ("queue", self.queue, 0))


@dataclass(frozen=True)
class ScalingPolicy:
    """Capacity (the global concurrency limit) that follows the queue, between min and max.

    Up by `step` once the queue has stayed above `queue_above` for `scale_up_delay_s`;
    down by `step` once the load has stayed low (empty queue, a step's worth of idle
    workers) for `cool_down_s`. The decisions: capacity.next_scaling_state.
    """

    min_workers: int
    max_workers: int
    scale_up_delay_s: float
    cool_down_s: float
    step: int = 1
    queue_above: int = 0

    def __post_init__(self) -> None:
        _raise_if(self.problems())

    def problems(self) -> list[str]:
        problems = _integer_at_least(
            ("min_workers", self.min_workers, 1),
            ("max_workers", self.max_workers, 1),
            ("step", self.step, 1),
            ("queue_above", self.queue_above, 0),
        )
        problems += _finite_at_least_zero(("scale_up_delay_s", self.scale_up_delay_s), ("cool_down_s", self.cool_down_s))
        if not problems and self.max_workers < self.min_workers:
            problems.append(f"max_workers ({self.max_workers}) must not be less than min_workers ({self.min_workers})")
        return problems


@dataclass(frozen=True)
class ScopeFaults:
    """Faults for one scope: every request (as part of FaultConfig) or one endpoint's."""

    latency: LatencyDistribution | None = None
    error_rate: float = 0.0
    error_status: int = DEFAULT_ERROR_STATUS
    # Stall: freeze every response for `stall_for_s` at the end of every `stall_every_s`.
    stall_every_s: float | None = None
    stall_for_s: float | None = None
    leak_bytes_per_request: int = 0
    cpu_per_request_s: float = 0.0
    concurrency: Concurrency | None = None

    def __post_init__(self) -> None:
        _raise_if(self.problems())

    @property
    def stall_enabled(self) -> bool:
        return self.stall_every_s is not None and self.stall_for_s is not None

    def problems(self) -> list[str]:
        """Every problem with this scope's fields, each starting with its key."""
        problems: list[str] = []
        if self.latency is not None:
            if not isinstance(self.latency, tuple(DISTRIBUTIONS.values())):
                problems.append(f"latency must be one of {', '.join(DISTRIBUTIONS)}, got {self.latency!r}")
            else:
                problems += [f"latency.{p}" for p in self.latency.problems()]
        if not (_is_number(self.error_rate) and 0 <= self.error_rate <= 1):
            problems.append(f"error_rate must be between 0 and 1, got {self.error_rate!r}")
        if not (_is_integer(self.error_status) and 400 <= self.error_status <= 599):
            problems.append(f"error_status must be an HTTP error status (400..599), got {self.error_status!r}")
        problems += _stall_problems(self.stall_every_s, self.stall_for_s)
        problems += _integer_at_least(("leak_bytes_per_request", self.leak_bytes_per_request, 0))
        problems += _finite_at_least_zero(("cpu_per_request_s", self.cpu_per_request_s))
        if self.concurrency is not None:
            problems += [f"concurrency.{p}" for p in self.concurrency.problems()]
        return problems

    def as_dict(self) -> dict[str, Any]:
        """The wire form, with only the fields that differ from their defaults."""
        out: dict[str, Any] = {}
        for f in fields(ScopeFaults):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "latency":
                value = value.as_dict()
            elif f.name == "concurrency":
                value = asdict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class FaultConfig(ScopeFaults):
    """The whole fault configuration: the global scope's fields, per-endpoint scopes, globals."""

    endpoints: Mapping[str, ScopeFaults] = field(default_factory=dict)
    leak_cap_bytes: int = DEFAULT_LEAK_CAP_BYTES
    # Open connections beyond this are closed as soon as they are accepted.
    max_connections: int | None = None
    # A lock held for this long around every database operation (they serialise).
    db_lock_s: float = 0.0
    scaling: ScalingPolicy | None = None
    seed: int = DEFAULT_SEED

    def problems(self) -> list[str]:
        problems = super().problems()
        if not isinstance(self.endpoints, Mapping):
            problems.append("endpoints must map endpoint names to their faults")
        else:
            for name, scope in self.endpoints.items():
                if name not in ROUTE_NAMES:
                    problems.append(f"endpoints.{name} is not an endpoint of the automaton; expected one of: {', '.join(ROUTE_NAMES)}")
                elif type(scope) is not ScopeFaults:
                    problems.append(f"endpoints.{name} must be a ScopeFaults, got {type(scope).__name__}")
                else:
                    problems += [f"endpoints.{name}.{p}" for p in scope.problems()]
        problems += _integer_at_least(("leak_cap_bytes", self.leak_cap_bytes, 0))
        if self.max_connections is not None:
            problems += _integer_at_least(("max_connections", self.max_connections, 1))
        problems += _finite_at_least_zero(("db_lock_s", self.db_lock_s))
        if not _is_integer(self.seed):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if self.scaling is not None:
            scaling_problems = self.scaling.problems()
            problems += [f"scaling.{p}" for p in scaling_problems]
            if self.concurrency is None:
                problems.append("scaling needs concurrency: the worker pool it resizes and the queue it watches")
            elif not scaling_problems and not self.scaling.min_workers <= self.concurrency.limit <= self.scaling.max_workers:
                problems.append(
                    f"concurrency.limit ({self.concurrency.limit}) is the starting capacity and must be between "
                    f"scaling.min_workers ({self.scaling.min_workers}) and scaling.max_workers ({self.scaling.max_workers})"
                )
        return problems

    def scopes(self, endpoint: str) -> tuple[ScopeFaults, ...]:
        """The scopes that apply to a request on `endpoint`: global first, then its own."""
        own = self.endpoints.get(endpoint)
        return (self,) if own is None else (self, own)

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        for f in fields(FaultConfig):
            if f.name in _SCOPE_FIELDS:
                continue
            value = getattr(self, f.name)
            if f.name == "endpoints":
                if value:
                    out["endpoints"] = {name: scope.as_dict() for name, scope in value.items()}
            elif value != f.default:
                out[f.name] = asdict(value) if f.name == "scaling" else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> FaultConfig:
        """Parse the wire form; raises FaultConfigError listing every problem."""
        return fault_config_from_dict(data)


_SCOPE_FIELDS = frozenset(f.name for f in fields(ScopeFaults))


# --- per-request decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class RequestPlan:
    """What the middleware does to one request, decided when it is admitted."""

    delay_s: float = 0.0  # slept before the handler runs
    error_status: int | None = None  # answer with this instead of running the handler
    leak_bytes: int = 0  # kept for good once answered
    cpu_s: float = 0.0  # CPU burnt on the event loop before the handler runs


NO_FAULT = RequestPlan()


def plan_request(faults: FaultConfig, endpoint: str, rng: random.Random) -> RequestPlan:
    """Draw the request's latency and error (in scope order), and add up its costs."""
    delay_s = 0.0
    error_status: int | None = None
    leak_bytes = 0
    cpu_s = 0.0
    for scope in faults.scopes(endpoint):
        if scope.latency is not None:
            delay_s += scope.latency.sample(rng)
        # Drawn for every scope with a rate, so the generator's sequence does not depend
        # on earlier outcomes; the first error drawn wins.
        if scope.error_rate > 0 and rng.random() < scope.error_rate and error_status is None:
            error_status = scope.error_status
        leak_bytes += scope.leak_bytes_per_request
        cpu_s += scope.cpu_per_request_s
    if not (delay_s or error_status or leak_bytes or cpu_s):
        return NO_FAULT
    return RequestPlan(delay_s=delay_s, error_status=error_status, leak_bytes=leak_bytes, cpu_s=cpu_s)


def stall_remaining(t_since_start_s: float, every_s: float, for_s: float) -> float:
    """Seconds until the current stall window ends; 0.0 when not inside one.

    Windows are [k*every - for, k*every) for k >= 1: the last `for_s` seconds of every
    period, so a freshly started server answers at once.
    """
    if t_since_start_s < 0 or for_s <= 0:
        return 0.0
    phase_s = math.fmod(t_since_start_s, every_s)
    if phase_s >= every_s - for_s:
        return every_s - phase_s
    return 0.0


def stall_hold_s(faults: FaultConfig, endpoint: str, t_since_start_s: float) -> float:
    """How long a response about to be sent at `t_since_start_s` is held back by stalls."""
    hold_s = 0.0
    for scope in faults.scopes(endpoint):
        if scope.stall_every_s is not None and scope.stall_for_s is not None:
            hold_s = max(hold_s, stall_remaining(t_since_start_s, scope.stall_every_s, scope.stall_for_s))
    return hold_s


# --- validation helpers ---------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # bool is an int subclass, and `error_rate: true` is a mistake, not 100%.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer_at_least(*named: tuple[str, Any, int]) -> list[str]:
    return [
        f"{name} must be an integer >= {low}, got {value!r}"
        for name, value, low in named
        if not (_is_integer(value) and value >= low)
    ]


def _finite_at_least_zero(*named: tuple[str, Any]) -> list[str]:
    return [
        f"{name} must be a finite number >= 0, got {value!r}"
        for name, value in named
        if not (_is_number(value) and value >= 0)
    ]


def _stall_problems(every: Any, for_: Any) -> list[str]:
    problems: list[str] = []
    if (every is None) != (for_ is None):
        problems.append("stall_every_s and stall_for_s must be given together")
    if every is not None and not (_is_number(every) and every > 0):
        problems.append(f"stall_every_s must be a finite number > 0, got {every!r}")
    if for_ is not None and not (_is_number(for_) and for_ > 0):
        problems.append(f"stall_for_s must be a finite number > 0, got {for_!r}")
    if not problems and every is not None and for_ is not None and for_ >= every:
        # A window as long as its period would never end: the server would be dead, not stalled.
        problems.append(f"stall_for_s ({for_}) must be shorter than stall_every_s ({every})")
    return problems


# --- the wire form --------------------------------------------------------------------------

# A reader checks a JSON value's type and returns it (or raises FaultConfigError).
Reader = Callable[[Any, str], Any]


def _number(value: Any, path: str) -> float:
    if not _is_number(value):
        raise FaultConfigError([f"{path} must be a finite number, got {value!r}"])
    return float(value)


def _optional_number(value: Any, path: str) -> float | None:
    return None if value is None else _number(value, path)


def _integer(value: Any, path: str) -> int:
    # JSON writers may give 5.0 for 5.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not _is_integer(value):
        raise FaultConfigError([f"{path} must be an integer, got {value!r}"])
    return int(value)


def _optional_integer(value: Any, path: str) -> int | None:
    return None if value is None else _integer(value, path)


def _object(value: Any, path: str, cls: type, readers: Mapping[str, Reader]) -> Any:
    """A dataclass from a JSON object: every key known, every required key there."""
    if not isinstance(value, Mapping):
        raise FaultConfigError([f"{path} must be an object, got {value!r}"])
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        reader = readers.get(key)
        if reader is None:
            problems.append(f"{path}.{key} is not a known key; expected one of: {', '.join(readers)}")
            continue
        try:
            kwargs[key] = reader(item, f"{path}.{key}")
        except FaultConfigError as exc:
            problems += exc.problems
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    problems += [f"{path}.{name} is required" for name in required if name not in value]
    _raise_if(problems)
    try:
        obj = cls(**kwargs)
    except FaultConfigError as exc:
        raise FaultConfigError([f"{path}.{p}" for p in exc.problems]) from None
    if hasattr(obj, "problems"):  # the distributions leave validation to their users
        _raise_if([f"{path}.{p}" for p in obj.problems()])
    return obj


def latency_from_dict(value: Any, path: str = "latency") -> LatencyDistribution:
    """A distribution from {"dist": name, ...its fields in seconds}."""
    if not isinstance(value, Mapping):
        raise FaultConfigError([f"{path} must be an object with a 'dist' key, got {value!r}"])
    dist = value.get("dist")
    cls = DISTRIBUTIONS.get(dist) if isinstance(dist, str) else None
    if cls is None:
        raise FaultConfigError([f"{path}.dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}"])
    params = {k: v for k, v in value.items() if k != "dist"}
    readers: dict[str, Reader] = {f.name: _number for f in fields(cls)}
    return _object(params, path, cls, readers)  # type: ignore[no-any-return]


def _concurrency(value: Any, path: str) -> Concurrency:
    readers: dict[str, Reader] = {"limit": _integer, "queue": _integer}
    return _object(value, path, Concurrency, readers)  # type: ignore[no-any-return]


def _scaling(value: Any, path: str) -> ScalingPolicy:
    readers: dict[str, Reader] = {
        "min_workers": _integer,
        "max_workers": _integer,
        "scale_up_delay_s": _number,
        "cool_down_s": _number,
        "step": _integer,
        "queue_above": _integer,
    }
    return _object(value, path, ScalingPolicy, readers)  # type: ignore[no-any-return]


_SCOPE_READERS: dict[str, Reader] = {
    "latency": latency_from_dict,
    "error_rate": _number,
    "error_status": _integer,
    "stall_every_s": _optional_number,
    "stall_for_s": _optional_number,
    "leak_bytes_per_request": _integer,
    "cpu_per_request_s": _number,
    "concurrency": _concurrency,
}


def _endpoints(value: Any, path: str) -> dict[str, ScopeFaults]:
    if not isinstance(value, Mapping):
        raise FaultConfigError([f"{path} must be an object keyed by endpoint name, got {value!r}"])
    problems: list[str] = []
    out: dict[str, ScopeFaults] = {}
    for name, scope in value.items():
        if name not in ROUTE_NAMES:
            problems.append(f"{path}.{name} is not an endpoint of the automaton; expected one of: {', '.join(ROUTE_NAMES)}")
            continue
        try:
            out[name] = _object(scope, f"{path}.{name}", ScopeFaults, _SCOPE_READERS)
        except FaultConfigError as exc:
            problems += exc.problems
    if problems:
        raise FaultConfigError(problems)
    return out


_CONFIG_READERS: dict[str, Reader] = {
    **_SCOPE_READERS,
    "endpoints": _endpoints,
    "leak_cap_bytes": _integer,
    "max_connections": _optional_integer,
    "db_lock_s": _number,
    "scaling": _scaling,
    "seed": _integer,
}


def fault_config_from_dict(data: Any) -> FaultConfig:
    """Parse the wire form (None or {} is no faults); raises FaultConfigError with every problem."""
    if data is None:
        return FaultConfig()
    if not isinstance(data, Mapping):
        raise FaultConfigError([f"the fault configuration must be a JSON object, got {data!r}"])
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, item in data.items():
        reader = _CONFIG_READERS.get(key)
        if reader is None:
            problems.append(f"{key} is not a known fault key; expected one of: {', '.join(_CONFIG_READERS)}")
            continue
        try:
            kwargs[key] = reader(item, str(key))
        except FaultConfigError as exc:
            problems += exc.problems
    try:
        config = FaultConfig(**kwargs)
    except FaultConfigError as exc:
        # Whole-config checks (scaling against concurrency) on the parts that did parse;
        # a concurrency that failed to parse is not also "missing".
        failed = set(data) - set(kwargs)
        problems += [p for p in exc.problems if not ("concurrency" in failed and p.startswith("scaling needs"))]
        config = None
    _raise_if(problems)
    assert config is not None
    return config
