"""horde.coordinator.measure.aggregate: windows by end time, stages by intended time, exact folding."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from horde.agents.samples import SAMPLE_DTYPE, Batch, ErrorClass, GeneratorReadings
from horde.coordinator.measure.aggregate import Aggregator, Stats, Window, quantile_key
from horde.coordinator.measure.histogram import Histogram

MS, S = 1_000_000, 1_000_000_000
ENDPOINTS = ("health", "workflow", "api")
STAGE_ENDS = (2 * S, 5 * S)  # ramp: [0, 2 s), steady: [2 s, 5 s)
STAGES = ("ramp", "steady")
HEALTH, WORKFLOW, API = range(3)
OK, TIMEOUT, HTTP_5XX = ErrorClass.OK, ErrorClass.TIMEOUT, ErrorClass.HTTP_5XX


def samples(*rows: tuple[int, int, int, int, int, int, int]) -> np.ndarray:
    """rows of (endpoint, intended_ns, sent_ns, end_ns, status, error, bytes)"""
    return np.array(list(rows), dtype=SAMPLE_DTYPE)


def ok(endpoint: int, intended_ns: int, end_ns: int, sent_ns: int | None = None, nbytes: int = 100) -> tuple:
    return (endpoint, intended_ns, intended_ns if sent_ns is None else sent_ns, end_ns, 200, OK, nbytes)


def batch(agent: int, seq: int, watermark_ns: int, rows: np.ndarray, final: bool = False, **readings: float) -> Batch:
    return Batch(
        agent=agent,
        incarnation=0,
        seq=seq,
        watermark_ns=watermark_ns,
        samples=rows,
        readings=GeneratorReadings(**readings),
        final=final,
    )


def new_aggregator(**kw: int) -> Aggregator:
    return Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, **kw)


def reference(rows: np.ndarray, duration_s: float) -> Stats:
    s = Stats(duration_s)
    s.add_samples(rows)
    return s


def random_samples(rng: np.random.Generator, n: int, t_max_ns: int) -> np.ndarray:
    out = np.zeros(n, SAMPLE_DTYPE)
    intended = rng.integers(0, t_max_ns, n)
    sent = intended + rng.integers(0, 50 * MS, n)
    out["endpoint"] = rng.integers(0, len(ENDPOINTS), n)
    out["intended_ns"] = intended
    out["sent_ns"] = sent
    out["end_ns"] = sent + rng.lognormal(np.log(20 * MS), 1.0, n).astype(np.int64)
    out["status"] = 200
    out["error"] = np.where(rng.random(n) < 0.1, rng.integers(1, len(ErrorClass), n), 0)
    out["bytes"] = rng.integers(0, 10_000, n)
    return out


# -- assignment ----------------------------------------------------------------------


def test_window_is_chosen_by_end_time_and_stage_by_intended_time() -> None:
    agg = new_aggregator()
    agg.add(
        batch(
            0,
            0,
            3 * S,
            samples(
                ok(HEALTH, 500 * MS, 1200 * MS),  # intended in ramp, ends in window 1
                ok(HEALTH, 1900 * MS, 2500 * MS),  # intended in ramp although it ends in steady's time
                ok(HEALTH, 2000 * MS, 2100 * MS),  # intended exactly at the ramp's end: steady
            ),
        )
    )
    windows = agg.close_until(3 * S)
    assert [w.index for w in windows] == [0, 1, 2]
    assert [w.total.requests for w in windows] == [0, 1, 2]
    assert agg.snapshot(stage="ramp").requests == 2
    assert agg.snapshot(stage="steady").requests == 1


def test_requests_intended_after_the_last_stage_count_in_the_last_stage() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, 8 * S, samples(ok(API, 6 * S, 6 * S + 10 * MS), ok(API, 7 * S, 7 * S + 10 * MS))))
    assert agg.snapshot(stage="steady").requests == 2
    assert agg.snapshot(stage="ramp").requests == 0


def test_negative_times_fall_into_window_0_and_the_first_stage() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, S, samples(ok(HEALTH, -5 * MS, -1 * MS))))
    (w0,) = agg.close_until(S)
    assert w0.total.requests == 1
    assert agg.snapshot(stage="ramp").requests == 1


def test_latency_is_from_intended_and_service_time_from_sent() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, S, samples(ok(WORKFLOW, 0, 110 * MS, sent_ns=100 * MS))))
    snap = agg.snapshot(endpoint="workflow")
    assert snap.latency.min_ns == snap.latency.max_ns == 110 * MS
    assert snap.service_time.min_ns == 10 * MS
    assert snap.send_lag.min_ns == 100 * MS
    d = snap.to_dict()
    assert d["latency_ms"]["p99"] == 110.0 and d["latency_ms"]["max"] == 110.0
    assert d["service_time_ms"]["p50"] == 10.0
    assert d["send_lag_ms"]["mean"] == 100.0


def test_counts_errors_and_bytes_per_endpoint_from_two_agents() -> None:
    agg = new_aggregator()
    agg.add(
        batch(
            0,
            0,
            S,
            samples(
                ok(HEALTH, 0, 10 * MS, nbytes=10),
                (HEALTH, 0, 0, 20 * MS, 503, HTTP_5XX, 5),
                (API, 0, 0, 30 * MS, 0, TIMEOUT, 0),
            ),
        )
    )
    agg.add(
        batch(
            1,
            0,
            S,
            samples(
                ok(HEALTH, 0, 40 * MS, nbytes=1),
                ok(API, 0, 50 * MS, nbytes=1000),
                (API, 0, 0, 60 * MS, 0, TIMEOUT, 0),
                (API, 0, 0, 70 * MS, 500, HTTP_5XX, 0),
            ),
        )
    )
    health, api, workflow = (agg.snapshot(endpoint=e) for e in ("health", "api", "workflow"))
    assert (health.requests, health.errors, health.bytes) == (3, 1, 16)
    assert health.errors_by_class.tolist() == [2, 0, 0, 0, 0, 1] + [0] * (len(ErrorClass) - 6)
    assert (api.requests, api.errors, api.bytes) == (4, 3, 1000)
    assert api.errors_by_class[TIMEOUT] == 2 and api.errors_by_class[HTTP_5XX] == 1
    assert workflow.requests == 0 and workflow.error_rate == 0.0
    assert api.error_rate == 0.75
    assert api.to_dict()["errors_by_class"] == {"ok": 1, "timeout": 2, "http_5xx": 1}
    assert agg.snapshot().requests == 7
    assert agg.agents_seen == {0, 1}


def test_error_class_beyond_the_known_ones_counts_as_other() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, S, samples((API, 0, 0, MS, 0, 200, 0))))
    assert agg.snapshot().errors_by_class[ErrorClass.OTHER] == 1


def test_unknown_endpoint_index_is_refused_before_anything_changes() -> None:
    agg = new_aggregator()
    with pytest.raises(ValueError, match="endpoint index 7"):
        agg.add(batch(0, 0, S, samples(ok(HEALTH, 0, MS), ok(7, 0, MS))))
    assert agg.snapshot().requests == 0 and agg.agents_seen == frozenset()


# -- windows -------------------------------------------------------------------------


def test_close_until_returns_windows_in_order_once_with_empty_ones_between() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, 4 * S, samples(ok(API, 3 * S, 3 * S + 5 * MS), ok(HEALTH, 0, 5 * MS))))
    first = agg.close_until(2 * S + S // 2)
    assert [(w.index, w.start_ns, w.end_ns) for w in first] == [(0, 0, S), (1, S, 2 * S)]
    assert list(first[0].by_endpoint) == ["health"]
    assert first[1].by_endpoint == {} and first[1].total.requests == 0
    assert first[1].total.to_dict()["latency_ms"]["p99"] is None
    assert agg.close_until(2 * S + S // 2) == []
    second = agg.close_until(4 * S)
    assert [w.index for w in second] == [2, 3]
    assert second[1].by_endpoint["api"].requests == 1
    assert agg.close_until(3 * S) == []  # a lower watermark closes nothing and reopens nothing
    assert agg.closed_windows == 4


def test_window_stats_equal_the_samples_that_ended_in_them() -> None:
    rng = np.random.default_rng(7)
    rows = random_samples(rng, 20_000, 6 * S)
    agg = new_aggregator()
    for agent, part in enumerate(np.array_split(rows, 2)):
        for seq, chunk in enumerate(np.array_split(part, 7)):
            agg.add(batch(agent, seq, 0, chunk))
    windows = agg.close_all()
    window_of = rows["end_ns"] // S
    assert [w.index for w in windows] == list(range(int(window_of.max()) + 1))
    for w in windows:
        in_window = rows[window_of == w.index]
        assert w.total == reference(in_window, 1.0)
        for e, name in enumerate(ENDPOINTS):
            got = w.by_endpoint.get(name)
            want = in_window[in_window["endpoint"] == e]
            if len(want) == 0:
                assert got is None
            else:
                assert got == reference(want, 1.0)


def test_snapshot_per_endpoint_and_stage_equals_the_sum_of_what_was_added() -> None:
    rng = np.random.default_rng(11)
    rows = random_samples(rng, 30_000, 7 * S)  # some intended after the last stage ends
    agg = new_aggregator()
    for seq, chunk in enumerate(np.array_split(rows, 10)):
        agg.add(batch(seq % 2, seq // 2, 0, chunk))
        agg.close_until(int(chunk["end_ns"].min()))  # closing along the way changes nothing cumulative
    stage_of = np.minimum(np.searchsorted(STAGE_ENDS, rows["intended_ns"], side="right"), 1)
    durations = {"ramp": 2.0, "steady": 3.0}
    for s, stage in enumerate(STAGES):
        for e, endpoint in enumerate(ENDPOINTS):
            want = rows[(stage_of == s) & (rows["endpoint"] == e)]
            assert agg.snapshot(endpoint=endpoint, stage=stage) == reference(want, durations[stage])
        assert agg.snapshot(stage=stage) == reference(rows[stage_of == s], durations[stage])
    last_window = int(rows["end_ns"].max() // S)
    everything = agg.snapshot()
    assert everything == reference(rows, last_window + 1.0)
    assert everything.rps == pytest.approx(len(rows) / (last_window + 1))


def test_a_batch_spanning_many_windows_groups_the_same_way() -> None:
    # 5k windows x 3 endpoints x 2 stages is far more keys than samples: the sort path
    rng = np.random.default_rng(3)
    rows = random_samples(rng, 2_000, 5_000 * S)
    agg = new_aggregator()
    agg.add(batch(0, 0, 0, rows))
    assert agg.snapshot(endpoint="api") == reference(rows[rows["endpoint"] == API], agg.snapshot().duration_s)
    windows = {w.index: w for w in agg.close_all()}
    some = int(rows["end_ns"][123] // S)
    assert windows[some].total == reference(rows[rows["end_ns"] // S == some], 1.0)


def test_late_samples_count_cumulatively_and_in_their_closed_window() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, 2 * S, samples(ok(HEALTH, 0, 100 * MS))))
    agg.close_until(2 * S)
    agg.add(batch(1, 0, 2 * S, samples(ok(HEALTH, 0, 200 * MS), ok(API, 0, 300 * MS), ok(API, S, 2 * S + 1))))
    assert agg.late_samples == 2
    assert agg.snapshot().requests == 4
    w0 = agg.closed_window(0)
    assert w0 is not None
    assert w0.by_endpoint["health"].requests == 2 and w0.by_endpoint["api"].requests == 1
    assert w0.total.latency.max_ns == 300 * MS
    assert agg.recent(2).requests == 3  # windows 0 and 1; window 2 is still open


def test_close_all_closes_every_window_with_samples_or_readings() -> None:
    agg = new_aggregator()
    assert agg.close_all() == []
    agg.add(batch(0, 0, 0, samples(ok(HEALTH, 0, 2 * S + 1))))
    agg.add(batch(1, 5, 5 * S, samples(), final=True, in_flight=0))
    windows = agg.close_all()
    assert [w.index for w in windows] == [0, 1, 2, 3, 4]
    assert windows[2].total.requests == 1 and windows[4].generator[1]["in_flight"] == 0
    assert agg.close_all() == []


def test_recent_merges_the_last_closed_windows() -> None:
    agg = new_aggregator()
    for i in range(5):
        agg.add(batch(0, i, (i + 1) * S, samples(*[ok(API, i * S, i * S + 10 * MS)] * (i + 1))))
    agg.close_until(5 * S)
    last2 = agg.recent(2)
    assert last2.requests == 4 + 5 and last2.duration_s == 2.0 and last2.rps == 4.5
    assert agg.recent(2, endpoint="health").requests == 0
    assert agg.recent(10).requests == 15 and agg.recent(10).duration_s == 5.0
    expect = Stats(2.0)
    for w in (3, 4):
        window = agg.closed_window(w)
        assert window is not None
        expect.merge(window.total)
    expect.duration_s = 2.0
    assert last2 == expect


def test_keep_windows_bounds_the_stored_windows() -> None:
    agg = new_aggregator(keep_windows=3)
    for i in range(10):
        agg.add(batch(0, i, (i + 1) * S, samples(ok(API, i * S, i * S + MS))))
        agg.close_until((i + 1) * S)
    assert agg.closed_window(6) is None and agg.closed_window(7) is not None
    agg.add(batch(1, 0, 10 * S, samples(ok(API, 0, MS))))  # late for a dropped window
    assert agg.late_samples == 1 and agg.snapshot().requests == 11
    assert agg.recent(3).requests == 3


def test_window_to_dict_is_json_ready() -> None:
    agg = new_aggregator()
    agg.add(
        batch(
            0,
            0,
            S,
            samples(ok(API, 0, 12 * MS), (HEALTH, 0, 0, 5 * MS, 500, HTTP_5XX, 0)),
            loop_lag_max_ns=3 * MS,
            cpu_s=0.5,
        )
    )
    (w,) = agg.close_until(S)
    assert isinstance(w, Window)
    d = json.loads(json.dumps(w.to_dict()))
    assert d["start_s"] == 0.0 and d["end_s"] == 1.0
    assert d["total"]["requests"] == 2 and d["total"]["rps"] == 2.0
    assert set(d["endpoints"]) == {"api", "health"}
    assert d["endpoints"]["health"]["errors_by_class"] == {"http_5xx": 1}
    assert d["generator"]["0"]["loop_lag_max_ns"] == 3 * MS
    keys = {"p50", "p90", "p95", "p99", "p99.9", "max", "min", "mean"}
    for hist in ("latency_ms", "service_time_ms", "send_lag_ms"):
        assert keys <= set(d["total"][hist])
    assert d["endpoints"]["api"]["latency_ms"]["p50"] == 12.0


# -- generator readings and agents ---------------------------------------------------


def test_generator_readings_fold_per_agent_per_window() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, 400 * MS, samples(), loop_lag_max_ns=5, late_sends=2, in_flight=10, cpu_s=0.1, level=1.0))
    agg.add(batch(0, 1, 1 * S, samples(), loop_lag_max_ns=3, late_sends=4, in_flight=7, cpu_s=0.3, level=2.0))
    agg.add(batch(1, 0, 1 * S + 1, samples(), loop_lag_max_ns=9, rss_bytes=1234))  # lands in window 1
    (w0, w1) = agg.close_until(2 * S)
    r = w0.generator[0]
    assert (r["loop_lag_max_ns"], r["late_sends"], r["in_flight"], r["cpu_s"], r["level"]) == (5, 6, 7, 0.3, 2.0)
    assert r["batches"] == 2
    assert set(w0.generator) == {0} and w1.generator[1]["rss_bytes"] == 1234


def test_readings_arriving_out_of_order_keep_the_latest_values() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 2, S, samples(), in_flight=2, cpu_s=2.0, late_sends=1))
    agg.add(batch(0, 1, S // 2, samples(), in_flight=1, cpu_s=1.0, late_sends=1))
    (w0,) = agg.close_until(S)
    assert (w0.generator[0]["in_flight"], w0.generator[0]["cpu_s"], w0.generator[0]["late_sends"]) == (2, 2.0, 2)


def test_watermarks_and_final_agents() -> None:
    agg = new_aggregator()
    agg.add(batch(0, 0, 3 * S, samples()))
    agg.add(batch(1, 0, 2 * S, samples()))
    agg.add(batch(0, 1, 1 * S, samples()))  # an older watermark never lowers it
    assert agg.watermarks == {0: 3 * S, 1: 2 * S}
    assert agg.low_watermark_ns() == 2 * S
    assert agg.low_watermark_ns(expected_agents=[0, 1, 2]) == 0  # agent 2 not heard from yet
    agg.add(batch(1, 1, 2 * S, samples(), final=True))
    assert agg.final_agents == {1}
    assert agg.low_watermark_ns() == 3 * S
    agg.add(batch(0, 2, 4 * S, samples(), final=True))
    assert agg.low_watermark_ns() is None


# -- Stats ---------------------------------------------------------------------------


def test_stats_sparse_round_trip_through_msgpack() -> None:
    rng = np.random.default_rng(5)
    s = reference(random_samples(rng, 5_000, 3 * S), 3.0)
    s.latency.record(-1)  # clamped and overflowed values survive too
    s.latency.record(2**45)
    back = Stats.from_sparse(msgpack.unpackb(msgpack.packb(s.to_sparse(), use_bin_type=True), raw=False))
    assert back == s
    assert back.to_dict() == s.to_dict()
    empty = Stats()
    assert Stats.from_sparse(msgpack.unpackb(msgpack.packb(empty.to_sparse()), raw=False)) == empty


def test_stats_merge_adds_and_copy_is_independent() -> None:
    rng = np.random.default_rng(9)
    rows = random_samples(rng, 4_000, 2 * S)
    a, b = reference(rows[:1500], 1.0), reference(rows[1500:], 1.0)
    c = a.copy()
    c.merge(b)
    assert c == reference(rows, 1.0)
    assert a == reference(rows[:1500], 1.0)  # the copy did not share state
    assert isinstance(c.latency, Histogram)


def test_empty_stats_dict_reports_none_and_zero_rates() -> None:
    d = Stats().to_dict()
    assert (d["requests"], d["errors"], d["error_rate"], d["rps"], d["errors_by_class"]) == (0, 0, 0.0, 0.0, {})
    assert all(v is None for k, v in d["latency_ms"].items() if k != "overflow")


def test_quantile_keys() -> None:
    assert [quantile_key(q) for q in (0.5, 0.9, 0.95, 0.99, 0.999, 0.9999)] == [
        "p50",
        "p90",
        "p95",
        "p99",
        "p99.9",
        "p99.99",
    ]


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        Aggregator(ENDPOINTS, (2 * S, S), STAGES)
    with pytest.raises(ValueError):
        Aggregator(ENDPOINTS, (S,), STAGES)
    with pytest.raises(ValueError):
        Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=0)
    agg = new_aggregator()
    with pytest.raises(KeyError):
        agg.snapshot(stage="soak")
    with pytest.raises(KeyError):
        agg.snapshot(endpoint="nope")
