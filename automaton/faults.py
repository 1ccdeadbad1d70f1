"""Faults the automaton injects, with known ground truth for tests.

The decision of what happens to one request is a pure function of the fault
configuration and the time since the server started (`plan_request_faults`); the
app's middleware is the one place that applies it. Later faults (latency
distributions, error rates, leaks) extend `FaultConfig` and `FaultEffect` here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FaultConfig:
    """Stall: freeze every response for `stall_for_s` at the end of every `stall_every_s`."""

    stall_every_s: float | None = None
    stall_for_s: float | None = None

    def __post_init__(self) -> None:
        problems = fault_config_problems(self)
        if problems:
            # Reject rather than adjust: a fault the user did not ask for is worse than none.
            raise ValueError("invalid fault configuration: " + "; ".join(problems))

    @property
    def stall_enabled(self) -> bool:
        return self.stall_every_s is not None and self.stall_for_s is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fault_config_problems(faults: FaultConfig) -> list[str]:
    """Every problem with `faults`, so a caller can list them all at once."""
    problems: list[str] = []
    every, for_ = faults.stall_every_s, faults.stall_for_s
    if (every is None) != (for_ is None):
        problems.append("stall_every_s and stall_for_s must be given together")
    if every is not None and not (math.isfinite(every) and every > 0):
        problems.append(f"stall_every_s must be a finite number > 0, got {every!r}")
    if for_ is not None and not (math.isfinite(for_) and for_ > 0):
        problems.append(f"stall_for_s must be a finite number > 0, got {for_!r}")
    if every is not None and for_ is not None and for_ >= every:
        # A window as long as its period would never end: the server would be dead, not stalled.
        problems.append(f"stall_for_s ({for_}) must be shorter than stall_every_s ({every})")
    return problems


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


@dataclass(frozen=True)
class FaultEffect:
    """What the middleware does to one request."""

    # Held back before the response is sent (the request is already handled).
    delay_before_response_s: float = 0.0


NO_FAULT = FaultEffect()


def plan_request_faults(faults: FaultConfig, t_since_start_s: float) -> FaultEffect:
    """The fault effect for a response about to be sent at `t_since_start_s`."""
    if faults.stall_every_s is None or faults.stall_for_s is None:
        return NO_FAULT
    remaining_s = stall_remaining(t_since_start_s, faults.stall_every_s, faults.stall_for_s)
    if remaining_s <= 0:
        return NO_FAULT
    return FaultEffect(delay_before_response_s=remaining_s)
