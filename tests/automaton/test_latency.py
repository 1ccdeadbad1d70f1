"""latency.py: sample statistics of each distribution over 10k seeded draws."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from horde.automaton.latency import Bimodal, Fixed, LogNormal, Normal

DRAWS = 10_000


def draws(dist: object, seed: int = 2024) -> list[float]:
    rng = random.Random(seed)
    return [dist.sample(rng) for _ in range(DRAWS)]  # type: ignore[attr-defined]


def test_fixed_is_exact() -> None:
    assert set(draws(Fixed(0.05))) == {0.05}


def test_normal_mean_and_stdev() -> None:
    values = draws(Normal(mean_s=0.05, stdev_s=0.01))
    # The sample mean's standard error is 0.01 / 100 = 0.2% of the mean.
    assert statistics.fmean(values) == pytest.approx(0.05, rel=0.01)
    assert statistics.stdev(values) == pytest.approx(0.01, rel=0.05)
    assert min(values) >= 0


def test_normal_is_clipped_at_zero() -> None:
    values = draws(Normal(mean_s=0.0, stdev_s=1.0))
    assert min(values) == 0.0
    assert sum(v == 0.0 for v in values) / DRAWS == pytest.approx(0.5, abs=0.03)
    # E[max(0, X)] for X ~ N(0, 1) is 1/sqrt(2*pi).
    assert statistics.fmean(values) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=0.05)


def test_lognormal_median_and_mean() -> None:
    values = draws(LogNormal(median_s=0.02, sigma=0.5))
    assert statistics.median(values) == pytest.approx(0.02, rel=0.03)
    # A long right tail: the mean is median * exp(sigma^2 / 2).
    assert statistics.fmean(values) == pytest.approx(0.02 * math.exp(0.125), rel=0.03)
    assert min(values) > 0


def test_lognormal_with_zero_median_is_zero() -> None:
    assert set(draws(LogNormal(median_s=0.0, sigma=1.0))) == {0.0}


def test_bimodal_takes_the_slow_mode_with_probability_p() -> None:
    values = draws(Bimodal(p_slow=0.1, fast_s=0.005, slow_s=0.5))
    assert set(values) == {0.005, 0.5}
    slow = sum(v == 0.5 for v in values) / DRAWS
    assert abs(slow - 0.1) <= 4 * math.sqrt(0.1 * 0.9 / DRAWS)
    assert statistics.median(values) == 0.005


@pytest.mark.parametrize(
    "dist",
    [Fixed(0.01), Normal(0.05, 0.01), LogNormal(0.02, 0.5), Bimodal(0.3, 0.001, 0.1)],
)
def test_same_seed_same_draws(dist: object) -> None:
    assert draws(dist, seed=5)[:100] == draws(dist, seed=5)[:100]


@pytest.mark.parametrize(
    ("dist", "problem"),
    [
        (Fixed(-1.0), "delay_s must be a finite number >= 0"),
        (Normal(0.1, -0.1), "stdev_s must be"),
        (LogNormal(math.nan, 0.5), "median_s must be"),
        (LogNormal(0.1, math.inf), "sigma must be"),
        (Bimodal(-0.1, 0.0, 1.0), "p_slow must be between 0 and 1"),
    ],
)
def test_problems(dist: object, problem: str) -> None:
    assert any(p.startswith(problem) for p in dist.problems())  # type: ignore[attr-defined]
