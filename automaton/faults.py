"""Faults the automaton injects, with known ground truth for tests: the per-request maths.

Everything here is pure. What happens to one request is decided by `plan_request`
(given the faults, the endpoint and a seeded generator) and `stall_hold_s` (given the
time since the server started); the app's middleware is the one place that applies the
decisions. Capacity maths (admission queue, scaling) is in `capacity.py`.

The faults themselves are one pydantic model, `fault_model.TargetFaults`, the same for
a scenario file, `--faults-json`, the admin endpoint and code; this module names its parts
as the automaton's code knows them (`FaultConfig` is `TargetFaults`, `ScopeFaults` is
`EndpointFaults`, `Concurrency` and `ScalingPolicy` are the concurrency and scaling parts).
Its own scope fields apply to every request; `endpoints` adds faults for single routes,
on top of the global ones: latencies add, each error rate is drawn in turn, leaks and CPU
costs add, and both concurrency limits must admit the request (the endpoint's first).
Global only: the connection limit, the slow database, the leak cap, the scaling model, the seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from horde.automaton.fault_model import (
    DEFAULT_ERROR_STATUS,
    DEFAULT_LEAK_CAP_BYTES,
    DEFAULT_SEED,
    ConcurrencyFault,
    EndpointFaults,
    FaultConfigError,
    LatencyFault,
    ScalingFault,
    Stall,
    TargetFaults,
    fault_config_from_dict,
)

# The automaton's names for the model's parts.
FaultConfig = TargetFaults
ScopeFaults = EndpointFaults
Concurrency = ConcurrencyFault
ScalingPolicy = ScalingFault

__all__ = [
    "DEFAULT_ERROR_STATUS",
    "DEFAULT_LEAK_CAP_BYTES",
    "DEFAULT_SEED",
    "NO_FAULT",
    "Concurrency",
    "FaultConfig",
    "FaultConfigError",
    "LatencyFault",
    "RequestPlan",
    "ScalingPolicy",
    "ScopeFaults",
    "Stall",
    "fault_config_from_dict",
    "plan_request",
    "stall_hold_s",
    "stall_remaining",
]


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
            delay_s += scope.latency.distribution.sample(rng)  # the built distribution: one call less
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
        if scope.stall is not None:
            hold_s = max(hold_s, stall_remaining(t_since_start_s, scope.stall.every_s, scope.stall.for_s))
    return hold_s
