"""Added-latency distributions: plain values that draw from a generator they are given.

Each draw takes a `random.Random` (seeded by the caller), so a sequence of draws is a
pure function of the seed; no clock, no global generator. The stdlib generator rather
than numpy's: one scalar per request, and `random.Random` draws one in ~0.2 us against
~1 us for a numpy Generator call (numpy only pays off for vectors).

The wire form (`as_dict`, read back by `faults.latency_from_dict`) names the kind under
"dist" and carries seconds under `_s` keys:

    {"dist": "fixed", "delay_s": 0.05}
    {"dist": "normal", "mean_s": 0.05, "stdev_s": 0.01}          clipped at 0
    {"dist": "lognormal", "median_s": 0.02, "sigma": 0.5}
    {"dist": "bimodal", "p_slow": 0.1, "fast_s": 0.005, "slow_s": 0.5}
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Fixed:
    delay_s: float

    def sample(self, rng: random.Random) -> float:
        return self.delay_s

    def problems(self) -> list[str]:
        return _non_negative(("delay_s", self.delay_s))

    def as_dict(self) -> dict[str, Any]:
        return {"dist": "fixed", **asdict(self)}


@dataclass(frozen=True)
class Normal:
    """Gaussian, with negative draws clipped to 0 (a delay cannot be negative)."""

    mean_s: float
    stdev_s: float

    def sample(self, rng: random.Random) -> float:
        return max(0.0, rng.gauss(self.mean_s, self.stdev_s))

    def problems(self) -> list[str]:
        return _non_negative(("mean_s", self.mean_s), ("stdev_s", self.stdev_s))

    def as_dict(self) -> dict[str, Any]:
        return {"dist": "normal", **asdict(self)}


@dataclass(frozen=True)
class LogNormal:
    """exp(N(ln median, sigma)): a long right tail, as service times have."""

    median_s: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        if self.median_s == 0:
            return 0.0
        return rng.lognormvariate(math.log(self.median_s), self.sigma)

    def problems(self) -> list[str]:
        return _non_negative(("median_s", self.median_s), ("sigma", self.sigma))

    def as_dict(self) -> dict[str, Any]:
        return {"dist": "lognormal", **asdict(self)}


@dataclass(frozen=True)
class Bimodal:
    """`slow_s` with probability `p_slow`, else `fast_s` (a cache miss, a GC pause)."""

    p_slow: float
    fast_s: float
    slow_s: float

    def sample(self, rng: random.Random) -> float:
        return self.slow_s if rng.random() < self.p_slow else self.fast_s

    def problems(self) -> list[str]:
        problems = _non_negative(("fast_s", self.fast_s), ("slow_s", self.slow_s))
        if not (math.isfinite(self.p_slow) and 0 <= self.p_slow <= 1):
            problems.append(f"p_slow must be between 0 and 1, got {self.p_slow!r}")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {"dist": "bimodal", **asdict(self)}


LatencyDistribution = Fixed | Normal | LogNormal | Bimodal

# "dist" name -> class; the fields of each class are its other keys.
DISTRIBUTIONS: dict[str, type[Fixed] | type[Normal] | type[LogNormal] | type[Bimodal]] = {
    "fixed": Fixed,
    "normal": Normal,
    "lognormal": LogNormal,
    "bimodal": Bimodal,
}


def _non_negative(*named: tuple[str, float]) -> list[str]:
    return [
        f"{name} must be a finite number >= 0, got {value!r}"
        for name, value in named
        if not (math.isfinite(value) and value >= 0)
    ]
