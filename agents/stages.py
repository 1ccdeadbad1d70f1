"""A run's load level over time: a stage list made into a piecewise-linear profile.

Pure: no clock, no I/O. Times are float seconds relative to the run's start instant; the
level is a rate per second (open model) or a number of users (closed model).

During stage i the level goes linearly from the previous stage's target (``start_level``
for the first) to stage i's target. A stage with ``duration_s == 0`` is an instant step.
Before 0 and from the end of the last stage on, the level is 0.

``cumulative`` is written so that it is monotone *in floating point*, not only on paper,
and ``inverse_cumulative`` returns the smallest float t with ``cumulative(t) >= n``
exactly. The arrival schedules rely on that pair being consistent: the number of j >= 1
with ``inverse_cumulative(j) <= T`` is exactly ``floor(cumulative(T))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from horde.agents.spec import Stage

# Levels computed in floats (a rate times a fraction) land a hair below a whole number.
_USERS_EPSILON = 1e-9

# Half-width, in ulps, of the bracket tried around the closed-form inverse before falling
# back to bisecting the whole segment (flat ends of a ramp down to 0, subnormal durations).
_BRACKET_ULPS = 64


def users_for_agent(total_users: int, index: int, count: int) -> int:
    """How many of the global users u in [0, total_users) have u % count == index."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count, got index={index} count={count}")
    if total_users < 0:
        raise ValueError(f"total_users must be >= 0, got {total_users}")
    return max(0, (total_users - index + count - 1) // count)


def level_to_users(level: float) -> int:
    """A (closed-model) level as a whole number of users: floor, forgiving float dust."""
    return max(0, math.floor(level + _USERS_EPSILON))


@dataclass(frozen=True)
class Profile:
    """Piecewise-linear level(t) from ``start_level`` through ``stages``; see the module doc.

    Vectorised methods take a scalar or an array and return the same shape (a Python
    float/int for a scalar).
    """

    start_level: float
    stages: tuple[Stage, ...]
    # Derived arrays, one entry per stage (read-only).
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _ends: np.ndarray = field(init=False, repr=False, compare=False)
    _lengths: np.ndarray = field(init=False, repr=False, compare=False)
    _from: np.ndarray = field(init=False, repr=False, compare=False)
    _to: np.ndarray = field(init=False, repr=False, compare=False)
    _c_start: np.ndarray = field(init=False, repr=False, compare=False)
    _c_end: np.ndarray = field(init=False, repr=False, compare=False)

    def __init__(self, start_level: float, stages: Sequence[Stage]) -> None:
        stages = tuple(stages)
        if not stages:
            raise ValueError("a profile needs at least one stage")
        if not (math.isfinite(start_level) and start_level >= 0):
            raise ValueError(f"start_level must be finite and >= 0, got {start_level}")
        for i, s in enumerate(stages):
            if not (math.isfinite(s.duration_s) and s.duration_s >= 0):
                raise ValueError(f"stage {i}: duration_s must be finite and >= 0, got {s.duration_s}")
            if not (math.isfinite(s.target) and s.target >= 0):
                raise ValueError(f"stage {i}: target must be finite and >= 0, got {s.target}")
        set_ = object.__setattr__
        set_(self, "start_level", float(start_level))
        set_(self, "stages", stages)

        ends = np.cumsum([float(s.duration_s) for s in stages])
        starts = np.concatenate(([0.0], ends[:-1]))
        # The float length, not the given duration, so that every formula below agrees
        # with where the boundaries actually are.
        lengths = ends - starts
        to = np.array([float(s.target) for s in stages])
        from_ = np.concatenate(([self.start_level], to[:-1]))
        c_end = np.cumsum(lengths * (from_ + to) * 0.5)
        c_start = np.concatenate(([0.0], c_end[:-1]))
        for name, arr in (
            ("_starts", starts),
            ("_ends", ends),
            ("_lengths", lengths),
            ("_from", from_),
            ("_to", to),
            ("_c_start", c_start),
            ("_c_end", c_end),
        ):
            arr.setflags(write=False)
            set_(self, name, arr)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild on unpickling, so the derived arrays come back read-only.
        return (Profile, (self.start_level, self.stages))

    # -- scalars ------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return float(self._ends[-1])

    @property
    def boundaries_s(self) -> np.ndarray:
        """Cumulative stage end times, one per stage (read-only)."""
        return self._ends

    @property
    def total(self) -> float:
        """The integral of the level over the whole run."""
        return float(self._c_end[-1])

    # -- vectorised -----------------------------------------------------------------------

    def stage_index(self, t: Any) -> Any:
        """The stage t falls in: a boundary belongs to the next stage; clipped to the ends."""
        ta = np.asarray(t, dtype=float)
        idx = np.minimum(np.searchsorted(self._ends, ta, side="right"), len(self.stages) - 1)
        return _shaped(idx, ta, int)

    def level(self, t: Any) -> Any:
        ta = np.asarray(t, dtype=float)
        seg = self._segment(ta)
        a, y, d = self._from[seg], self._to[seg], self._lengths[seg]
        d_safe = np.where(d > 0, d, 1.0)
        with np.errstate(all="ignore"):
            frac = np.clip((ta - self._starts[seg]) / d_safe, 0.0, 1.0)
            out = a + (y - a) * frac
        out = np.clip(out, np.minimum(a, y), np.maximum(a, y))
        out = np.where((ta < 0) | (ta >= self.duration_s) | np.isnan(ta), 0.0, out)
        return _shaped(out, ta, float)

    def cumulative(self, t: Any) -> Any:
        """Integral of the level from 0 to t: 0 before the start, ``total`` after the end."""
        ta = np.asarray(t, dtype=float)
        return _shaped(self._cumulative(ta), ta, float)

    def inverse_cumulative(self, n: Any) -> Any:
        """Smallest t in [0, duration_s] with cumulative(t) >= n; +inf where n > total."""
        na = np.asarray(n, dtype=float)
        out = np.full(na.shape, np.inf)
        out[na <= 0] = 0.0
        inside = (na > 0) & (na <= self.total)
        if inside.any():
            out[inside] = self._inverse_inside(na[inside])
        return _shaped(out, na, float)

    # -- internals ------------------------------------------------------------------------

    def _segment(self, ta: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self._ends, ta, side="right"), len(self.stages) - 1)

    def _cumulative(self, ta: np.ndarray) -> np.ndarray:
        # Each branch is a chain of operations monotone in t (rounding preserves order),
        # so the result never decreases as t grows, even by one ulp: a rising segment
        # counts from its start, a falling one counts back from its end.
        seg = self._segment(ta)
        a, y, d = self._from[seg], self._to[seg], self._lengths[seg]
        c0, c1 = self._c_start[seg], self._c_end[seg]
        d_safe = np.where(d > 0, d, 1.0)
        u = np.maximum(ta - self._starts[seg], 0.0)
        v = np.maximum(self._ends[seg] - ta, 0.0)
        with np.errstate(all="ignore"):
            rising = c0 + u * (a + (y - a) * u / d_safe * 0.5)
            falling = c1 - v * (y + (a - y) * v / d_safe * 0.5)
        out = np.where(y >= a, rising, falling)
        out = np.clip(np.nan_to_num(out, nan=0.0, posinf=np.inf), c0, c1)
        out = np.where(ta <= 0, 0.0, out)
        return np.where(ta >= self.duration_s, self.total, out)

    def _inverse_inside(self, n: np.ndarray) -> np.ndarray:
        """For 0 < n <= total: the exact smallest float t with _cumulative(t) >= n."""
        # The first segment whose end reaches n; its area is > 0, so its length is too,
        # and cumulative(start) = c_start < n <= c_end = cumulative(end).
        seg = np.searchsorted(self._c_end, n, side="left")
        a, y, d = self._from[seg], self._to[seg], self._lengths[seg]
        start, end = self._starts[seg], self._ends[seg]
        r = n - self._c_start[seg]
        # Solve a*u + s*u^2/2 = r in the form without cancellation: the root is
        # 2r / (a + level(u)), level(u) = sqrt(a^2 + 2 s r); fine for s ~ 0 and for a = 0.
        with np.errstate(all="ignore"):
            slope = (y - a) / d
            disc = np.maximum(a * a + 2.0 * slope * r, 0.0)
            u = 2.0 * r / (a + np.sqrt(disc))
            guess = start + u
        guess = np.where(np.isfinite(guess), guess, start)
        guess = np.clip(guess, start, end)

        # Polish to the exact float answer, on the bit patterns (ordered like the values
        # for non-negative floats). One evaluation checks the guess, usually exact already,
        # and the segment start: everything before the segment is <= c_start < n, but a
        # falling segment's formula may round its own start up to n, which makes the start
        # the answer.
        m = len(n)
        lo_lim, hi_lim = _bits(start), _bits(end)
        hi = _bits(guess)
        lo = np.maximum(hi - 1, lo_lim)
        c = self._cumulative(_floats(np.concatenate((lo, hi, lo_lim))))
        at_start = c[2 * m :] >= n
        bad = np.flatnonzero(~((c[:m] < n) & (c[m : 2 * m] >= n)) & ~at_start)
        if bad.size:
            # A few ulps around the guess, else the whole segment, which always brackets
            # (cumulative(start) < n <= cumulative(end)); then bisect.
            nb = n[bad]
            wlo = np.maximum(hi[bad] - _BRACKET_ULPS, lo_lim[bad])
            whi = np.minimum(hi[bad] + _BRACKET_ULPS, hi_lim[bad])
            cw = self._cumulative(_floats(np.concatenate((wlo, whi))))
            narrow = (cw[: bad.size] < nb) & (cw[bad.size :] >= nb)
            blo = np.where(narrow, wlo, lo_lim[bad])
            bhi = np.where(narrow, whi, hi_lim[bad])
            active = np.flatnonzero(bhi - blo > 1)
            while active.size:
                mid = blo[active] + (bhi[active] - blo[active]) // 2
                up = self._cumulative(_floats(mid)) >= nb[active]
                bhi[active[up]] = mid[up]
                blo[active[~up]] = mid[~up]
                active = active[bhi[active] - blo[active] > 1]
            hi[bad] = bhi
        return np.where(at_start, start, _floats(hi))


def _bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.int64).copy()


def _floats(b: np.ndarray) -> np.ndarray:
    return np.asarray(b, dtype=np.int64).view(np.float64)


def _shaped(out: np.ndarray, like: np.ndarray, kind: type) -> Any:
    return kind(out) if like.ndim == 0 else out
