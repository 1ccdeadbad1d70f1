"""Aggregator.recent over a running sum (measure/sliding.py) equals the re-merge of the windows."""

from __future__ import annotations

import numpy as np
import pytest

from horde.agents.aggregate import aggregate_records
from horde.agents.samples import SAMPLE_DTYPE, Batch, ErrorClass, GeneratorReadings
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.sliding import SlidingSum

MS, S = 1_000_000, 1_000_000_000
ENDPOINTS = ("health", "workflow", "api", "flow")
STAGE_ENDS = (3 * S, 40 * S)
STAGES = ("ramp", "steady")


def _samples(rng: np.random.Generator, n: int, lo_ns: int, hi_ns: int) -> np.ndarray:
    out = np.zeros(n, SAMPLE_DTYPE)
    intended = rng.integers(lo_ns, hi_ns, n)
    sent = intended + rng.integers(0, 30 * MS, n)
    out["endpoint"] = rng.integers(0, len(ENDPOINTS), n)
    out["intended_ns"], out["sent_ns"] = intended, sent
    out["end_ns"] = sent + rng.lognormal(np.log(20 * MS), 1.2, n).astype(np.int64)
    out["status"] = 200
    out["error"] = np.where(rng.random(n) < 0.1, rng.integers(1, len(ErrorClass), n), 0)
    out["bytes"] = rng.integers(0, 10_000, n)
    return out


def _batch(agent: int, seq: int, watermark_ns: int, rows: np.ndarray, aggregated: bool) -> Batch:
    agg = aggregate_records(rows, np.asarray(STAGE_ENDS)) if aggregated else None
    return Batch(
        agent=agent,
        incarnation=0,
        seq=seq,
        watermark_ns=watermark_ns,
        samples=rows[:0] if aggregated else rows,
        readings=GeneratorReadings(),
        agg=agg,
    )


def _assert_same(agg: Aggregator, n: int) -> None:
    for endpoint in (None, *ENDPOINTS):
        running = agg.recent(n, endpoint=endpoint)
        merged = agg.recent(n, endpoint=endpoint, exact=True)
        assert running == merged, (n, endpoint, running, merged)
        assert running.latency.quantiles([0.5, 0.99]) == merged.latency.quantiles([0.5, 0.99])
        assert running.latency.stdev_ns() == merged.latency.stdev_ns()


@pytest.mark.parametrize("aggregated", [False, True], ids=["raw", "aggregated"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_running_sums_equal_the_re_merge_after_every_close(aggregated: bool, seed: int) -> None:
    """Two agents, batches spanning windows, late samples into closed windows both inside and
    outside the span, empty windows, an endpoint left out of the total."""
    rng = np.random.default_rng(seed)
    spans = (1, 3, 10)
    agg = Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, keep_windows=12, not_in_total=["flow"], sliding=spans)
    checked = 0
    for t in range(25):
        if t in (7, 8):  # two windows with nothing in them
            agg.close_until(t * S)
            continue
        for agent in (0, 1):
            rows = _samples(rng, int(rng.integers(1, 300)), max(0, (t - 1) * S), (t + 1) * S)
            if t > 4 and rng.random() < 0.5:  # late: ended in a window closed 1..6 s ago
                old = int(rng.integers(1, min(7, t)))
                late = _samples(rng, 20, max(0, (t - old - 1) * S), (t - old) * S - 400 * MS)
                rows = np.concatenate([rows, late[late["end_ns"] < (t - old) * S]])
            agg.add(_batch(agent, t, (t + 1) * S, rows, aggregated))
        agg.close_until(t * S)
        for n in spans:
            _assert_same(agg, n)
            checked += 1
    assert agg.late_samples > 0  # the late path was taken
    assert checked == 3 * 23


def test_a_span_not_kept_as_a_sum_is_re_merged() -> None:
    agg = Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, sliding=(10,))
    rows = _samples(np.random.default_rng(0), 100, 0, 3 * S)
    agg.add(_batch(0, 0, 4 * S, rows, True))
    agg.close_until(4 * S)
    assert agg.recent(2) == agg.recent(2, exact=True)
    assert agg.recent(10).requests == int((rows["end_ns"] < 4 * S).sum())


def test_a_window_leaving_the_span_takes_its_minimum_with_it() -> None:
    """min and max cannot be subtracted: each window of the span keeps its own."""
    sums = SlidingSum(2, n_endpoints=1, in_total=[0])
    agg = Aggregator(["only"], (10 * S,), ["main"], window_ns=S, sliding=(2,))
    rows = np.zeros(3, SAMPLE_DTYPE)
    rows["end_ns"] = [1 * MS, 1 * S + 50 * MS, 2 * S + 9 * MS]  # latencies 1, 50 and 9 ms in windows 0, 1, 2
    rows["intended_ns"] = rows["end_ns"] - [1 * MS, 50 * MS, 9 * MS]
    rows["sent_ns"] = rows["intended_ns"]
    rows["status"] = 200
    agg.add(_batch(0, 0, 3 * S, rows, True))
    agg.close_until(2 * S)
    assert agg.recent(2).latency.min_ns == 1 * MS
    agg.close_until(3 * S)
    r = agg.recent(2)
    assert (r.latency.min_ns, r.latency.max_ns, r.requests) == (9 * MS, 50 * MS, 2)
    assert r == agg.recent(2, exact=True)
    assert sums.stats(0, 2.0).latency.min_ns is None  # nothing added: no minimum


def test_a_span_longer_than_the_windows_kept_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_windows"):
        Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, keep_windows=5, sliding=(10,))


def test_close_each_closes_a_window_only_once_the_one_before_was_taken() -> None:
    """Two windows closing together (2 s flushes): what is read at each covers up to it."""
    agg = Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, sliding=(10,))
    rows = _samples(np.random.default_rng(5), 400, 0, 4 * S)
    rows = rows[rows["end_ns"] < 4 * S]
    agg.add(_batch(0, 0, 4 * S, rows, True))
    seen = []
    for w in agg.close_each(4 * S):
        assert agg.closed_windows == w.index + 1
        seen.append((w.index, agg.recent(10).requests, agg.recent(10, exact=True).requests))
    ends = rows["end_ns"]
    assert seen == [(i, int((ends < (i + 1) * S).sum()), int((ends < (i + 1) * S).sum())) for i in range(4)]
    assert list(agg.close_each()) == []  # nothing left with data
