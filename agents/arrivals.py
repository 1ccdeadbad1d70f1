"""Open model: the intended send times of one agent's slice of a rate profile.

Pure: no clock, no sleeping, no I/O. A schedule hands out its send times (float seconds
from the run's start, non-decreasing) in batches; only the agent reads the clock.

Constant arrivals: the j-th global arrival (j = 1, 2, ...) is at
``profile.inverse_cumulative(j)``; agent ``index`` of ``count`` sends the j with
``(j - 1) % count == index``. The agents' sets are disjoint, their union is the global
schedule, and the global number of sends in [0, T] is exactly ``floor(cumulative(T))``.

Poisson arrivals: each agent runs its own inhomogeneous Poisson process at
``level(t) / count`` (the superposition of the agents is Poisson at ``level(t)``): unit-rate
exponential gaps summed to S_k and mapped through the inverse of ``cumulative(t) / count``.
The generator is seeded from (seed, index), and the stream does not depend on how it is
batched, so a replacement agent with the same index reproduces the schedule.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from horde.agents.stages import Profile, users_for_agent

# Domain tag mixed into the Poisson seed, so another module that seeds its own generator
# from (seed, index) does not draw the very same numbers.
_POISSON_STREAM = 0x6172_7269  # "arri"

# Draws per step when skipping ahead in a Poisson stream.
_SKIP_CHUNK = 1 << 16


class ArrivalSchedule(Protocol):
    def next_batch(self, max_count: int) -> np.ndarray: ...

    def skip_until(self, t: float) -> None: ...

    @property
    def exhausted(self) -> bool: ...


def _check_slice(index: int, count: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count, got index={index} count={count}")


def _arrivals_before(profile: Profile, t: float) -> float:
    """Largest n such that every arrival numbered <= n is strictly before t.

    inverse_cumulative(n) is the smallest float with cumulative >= n and cumulative is
    monotone in floats, so inverse_cumulative(n) < t  <=>  cumulative(prev float of t) >= n.
    """
    if not t > 0:
        return -math.inf
    return float(profile.cumulative(np.nextafter(t, -math.inf)))


class ConstantArrivals:
    """Evenly spaced (in cumulative level) arrivals, this agent's share of the global ones."""

    def __init__(self, profile: Profile, index: int, count: int) -> None:
        _check_slice(index, count)
        self.profile = profile
        self.index = index
        self.count = count
        # Global arrivals 1..n_global exist (inverse_cumulative(j) is finite iff j <= total).
        self._n_local = users_for_agent(math.floor(profile.total), index, count)
        self._next = 0  # local arrival number k: global j = index + 1 + k * count

    @property
    def exhausted(self) -> bool:
        return self._next >= self._n_local

    def next_batch(self, max_count: int) -> np.ndarray:
        stop = min(self._next + max(0, int(max_count)), self._n_local)
        k = np.arange(self._next, stop, dtype=np.int64)
        self._next = stop
        # int64 -> float64 is exact below 2**53 arrivals.
        j = (self.index + 1 + k * self.count).astype(np.float64)
        return np.asarray(self.profile.inverse_cumulative(j), dtype=np.float64)

    def skip_until(self, t: float) -> None:
        """Drop this agent's arrivals before t (never moves backwards)."""
        before = _arrivals_before(self.profile, t)
        if before < 1:
            return
        n_global = min(math.floor(before), math.floor(self.profile.total))
        self._next = max(self._next, users_for_agent(n_global, self.index, self.count))


class PoissonArrivals:
    """This agent's Poisson process at level(t) / count, reproducible from (seed, index)."""

    def __init__(self, profile: Profile, index: int, count: int, seed: int) -> None:
        _check_slice(index, count)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.profile = profile
        self.index = index
        self.count = count
        self.seed = seed
        self._rng = np.random.default_rng(np.random.SeedSequence([_POISSON_STREAM, seed, index]))
        self._sum = 0.0  # S of the last draw, carried into the next cumsum
        self._pending = np.empty(0)  # drawn S values not handed out yet (after a skip)
        self._exhausted = False

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def _draw(self, n: int) -> np.ndarray:
        """The next n cumulative sums S_k of unit exponentials."""
        # Carrying the running sum through cumsum makes the result independent of n.
        gaps = self._rng.standard_exponential(n)
        sums = np.cumsum(np.concatenate(([self._sum], gaps)))[1:]
        if n:
            self._sum = float(sums[-1])
        return sums

    def _take(self, n: int) -> np.ndarray:
        head, self._pending = self._pending[:n], self._pending[n:]
        return np.concatenate((head, self._draw(n - len(head))))

    def next_batch(self, max_count: int) -> np.ndarray:
        if self._exhausted or max_count <= 0:
            return np.empty(0)
        sums = self._take(int(max_count))
        times = np.asarray(self.profile.inverse_cumulative(sums * self.count), dtype=np.float64)
        finite = np.isfinite(times)
        if not finite.all():  # past the end of the profile: S only grows, so we are done
            self._exhausted = True
            self._pending = np.empty(0)
            times = times[finite]
        return times

    def skip_until(self, t: float) -> None:
        """Drop this agent's arrivals before t, drawing (and discarding) what it skips."""
        before = _arrivals_before(self.profile, t)
        if self._exhausted or before < 0:
            return
        if before >= self.profile.total:  # t is past the last possible arrival
            self._exhausted = True
            self._pending = np.empty(0)
            return
        while True:
            if not len(self._pending):
                self._pending = self._draw(_SKIP_CHUNK)
            # Same product as in next_batch, so the comparison matches the times exactly.
            keep = np.searchsorted(self._pending * self.count, before, side="right")
            self._pending = self._pending[keep:]
            if len(self._pending):
                return
