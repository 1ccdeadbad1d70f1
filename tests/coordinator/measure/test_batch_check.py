"""horde.coordinator.measure.batch_check: a decoded batch against the run's bounds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from horde.agents.samples import (
    RECORD,
    SAMPLE_DTYPE,
    BatchFormatError,
    ErrorClass,
    GeneratorReadings,
    decode_batch,
    encode_batch,
)
from horde.coordinator.measure.batch_check import (
    FAULTY_AFTER,
    SLACK_NS,
    BadBatches,
    BatchChecker,
    RunBounds,
    StaleBatchError,
    check_samples,
)

S = 1_000_000_000
NOW_NS = 10 * S  # the run is 10 s old when the batch arrives
BOUNDS = RunBounds(endpoints=2)


def _batch(rows=((1, 1 * S, 1 * S + 5, 1 * S + 900, 200, 0, 10),), *, agent=0, inc=0, seq=0, wm=2 * S):
    payload = encode_batch(
        agent=agent,
        incarnation=inc,
        seq=seq,
        watermark_ns=wm,
        records=b"".join(RECORD.pack(*r) for r in rows),
        readings=GeneratorReadings(),
    )
    return decode_batch(payload)


def _with(field: str, value: int):
    """The good batch with one sample's `field` set to `value` (the second of three rows)."""
    b = _batch(rows=[(0, S, S, S + 1, 200, 0, 1)] * 3)
    s = b.samples.copy()
    s[field][1] = value
    return dataclasses.replace(b, samples=s)


def test_a_good_batch_passes() -> None:
    check_samples(_batch(), BOUNDS, NOW_NS)
    check_samples(_batch(rows=()), BOUNDS, NOW_NS)  # an empty batch, too
    # The edges themselves are inside.
    edge = [(1, -SLACK_NS, -SLACK_NS, NOW_NS + SLACK_NS, 999, 10, 0), (0, NOW_NS + SLACK_NS, 0, 0, 0, 0, 0)]
    check_samples(_batch(rows=edge), BOUNDS, NOW_NS)


@pytest.mark.parametrize(
    "field, value",
    [
        ("endpoint", 2),  # only two endpoints in the plan
        ("endpoint", 65535),
        ("intended_ns", -SLACK_NS - 1),
        ("intended_ns", NOW_NS + SLACK_NS + 1),
        ("sent_ns", -SLACK_NS - 1),
        ("sent_ns", 2**62),  # the batch: one sent_ns of 2^62 (a 344 GiB bin count)
        ("end_ns", 2**63 - 1),
        ("end_ns", -(2**63)),
        ("end_ns", S - 1),  # before its send
        ("status", 1000),
        ("status", 65535),
        ("error", len(ErrorClass)),  # no such error class
        ("error", 255),
    ],
)
def test_a_bad_sample_is_a_batch_format_error_naming_its_field(field: str, value: int) -> None:
    with pytest.raises(BatchFormatError, match=f"'{field}'") as info:
        check_samples(_with(field, value), BOUNDS, NOW_NS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("wm", [-SLACK_NS - 1, NOW_NS + SLACK_NS + 1, 2**63 - 1])
def test_a_watermark_outside_the_run_is_bad(wm: int) -> None:
    with pytest.raises(BatchFormatError, match="'wm'"):
        check_samples(_batch(wm=wm), BOUNDS, NOW_NS)


def test_a_batch_over_the_record_bound_is_bad() -> None:
    rows = [(0, S, S, S, 200, 0, 0)] * 4
    check_samples(_batch(rows=rows), dataclasses.replace(BOUNDS, max_records=4), NOW_NS)
    with pytest.raises(BatchFormatError, match="'rec': 4 records, over 3"):
        check_samples(_batch(rows=rows), dataclasses.replace(BOUNDS, max_records=3), NOW_NS)


def test_the_checker_knows_the_senders_and_their_incarnations() -> None:
    c = BatchChecker(BOUNDS)
    incarnations = {0: 1, 1: 0}
    with pytest.raises(BatchFormatError, match="'agent': 1, but it came from agent 0"):
        c.check(_batch(agent=1), sender=0, incarnations=incarnations, now_ns=NOW_NS)
    with pytest.raises(BatchFormatError, match="'agent': 7 is not an agent of this run"):
        c.check(_batch(agent=7), sender=7, incarnations=incarnations, now_ns=NOW_NS)
    with pytest.raises(BatchFormatError, match="'inc': 2, but agent 0 is at incarnation 1"):
        c.check(_batch(inc=2), sender=0, incarnations=incarnations, now_ns=NOW_NS)
    with pytest.raises(StaleBatchError, match="incarnation 0 was replaced by 1"):
        c.check(_batch(inc=0), sender=0, incarnations=incarnations, now_ns=NOW_NS)
    c.check(_batch(inc=1), sender=0, incarnations=incarnations, now_ns=NOW_NS)


def test_a_duplicate_or_old_sequence_is_stale_and_a_bad_batch_does_not_advance_it() -> None:
    c = BatchChecker(BOUNDS)
    inc = {0: 0}
    c.check(_batch(seq=3), sender=0, incarnations=inc, now_ns=NOW_NS)
    for seq in (3, 2):
        with pytest.raises(StaleBatchError, match=f"'seq': {seq} after 3"):
            c.check(_batch(seq=seq), sender=0, incarnations=inc, now_ns=NOW_NS)
    with pytest.raises(BatchFormatError):
        c.check(_batch(seq=9, wm=2**62), sender=0, incarnations=inc, now_ns=NOW_NS)
    c.check(_batch(seq=4), sender=0, incarnations=inc, now_ns=NOW_NS)  # 9 was not taken
    # A new incarnation starts its own sequence.
    c.check(_batch(inc=1, seq=0), sender=0, incarnations={0: 1}, now_ns=NOW_NS)


def test_data_row_counts_name_only_the_scenarios_data_files() -> None:
    bounds = dataclasses.replace(BOUNDS, data_files=frozenset({"acc", "p"}))
    c = BatchChecker(bounds)
    inc = {0: 0}
    good = dataclasses.replace(_batch(seq=0), data_rows={"acc": [5, 0], "p": [1, 2]})
    c.check(good, sender=0, incarnations=inc, now_ns=NOW_NS)
    three = dataclasses.replace(_batch(seq=1), data_rows={"acc": [1, 0], "p": [1, 0], "q": [1, 0]})
    with pytest.raises(BatchFormatError, match="'data': 3 data files, but the scenario has 2"):
        c.check(three, sender=0, incarnations=inc, now_ns=NOW_NS)
    unknown = dataclasses.replace(_batch(seq=1), data_rows={"acc": [1, 0], "zz": [1, 0]})
    with pytest.raises(BatchFormatError, match="'data': 'zz' is not a data file of the scenario"):
        c.check(unknown, sender=0, incarnations=inc, now_ns=NOW_NS)
    # a scenario without data files: any count is bad, none is fine
    with pytest.raises(BatchFormatError, match="'data'"):
        BatchChecker(BOUNDS).check(good, sender=0, incarnations=inc, now_ns=NOW_NS)
    BatchChecker(BOUNDS).check(_batch(), sender=0, incarnations=inc, now_ns=NOW_NS)


def test_a_strange_status_from_the_target_is_not_the_agents_fault() -> None:
    # "HTTP/1.1 042 ..." parses as 42: the target chose it, so the batch is good.
    check_samples(_with("status", 42), BOUNDS, NOW_NS)


def test_stale_is_a_batch_format_error() -> None:
    assert issubclass(StaleBatchError, BatchFormatError)


def test_the_check_reads_whole_columns() -> None:
    # A bad value anywhere in a large batch is found (the reductions see every row).
    s = np.zeros(100_000, SAMPLE_DTYPE)
    s["intended_ns"] = s["sent_ns"] = S
    s["end_ns"] = S + 1
    s["status"] = 200
    s["sent_ns"][-1] = -SLACK_NS - 5
    b = dataclasses.replace(_batch(), samples=s)
    with pytest.raises(BatchFormatError, match="'sent_ns'"):
        check_samples(b, BOUNDS, NOW_NS)


def test_bad_batches_are_counted_kept_up_to_a_bound_and_make_an_incarnation_faulty_once() -> None:
    bad = BadBatches(max_records=4)
    err = BatchFormatError("sample field 'endpoint': 9 outside [0, 1]")
    verdicts = [bad.add(1, 0, 2.5, err) for _ in range(FAULTY_AFTER + 1)]
    assert [faulty for _, faulty in verdicts] == [False] * (FAULTY_AFTER - 1) + [True, False]  # once
    assert verdicts[0][0] == {"kind": "bad_batch", "agent": 1, "incarnation": 0, "at_s": 2.5, "detail": str(err)}
    assert bad.is_faulty(1, 0) and not bad.is_faulty(1, 1) and not bad.is_faulty(0, 0)
    record, faulty = bad.add(0, 0, 3.0, err)  # the fifth of the run: over the kept records, still counted
    assert (record, faulty, bad.total) == (None, False, FAULTY_AFTER + 2)
    assert bad.add(7, None, 3.0, err)[1] is False  # no incarnation known: never "faulty"


# -- aggregated batches ----------------------------------------------------------------------


def _agg_batch():
    """A good aggregated batch: two endpoints, two stages (ends 5 s, 20 s), two windows."""
    from horde.agents.aggregate import aggregate_records

    rows = [
        (0, 1 * S, 1 * S + 5, 1 * S + 900, 200, 0, 10),
        (1, 1 * S, 1 * S + 9, 1 * S + 2_000_000, 503, ErrorClass.HTTP_5XX, 3),
        (1, 6 * S, 6 * S + 2, 7 * S, 200, 0, 4),
        (1, 6 * S, 6 * S + 3, 7 * S + 5, 200, 0x80, 4),  # generator-queued
    ]
    records = np.frombuffer(b"".join(RECORD.pack(*r) for r in rows), dtype=SAMPLE_DTYPE)
    agg = aggregate_records(records, np.asarray([5 * S, 20 * S]))
    payload = encode_batch(agent=0, incarnation=0, seq=0, watermark_ns=8 * S, agg=agg, readings=GeneratorReadings())
    return decode_batch(payload)


AGG_BOUNDS = RunBounds(endpoints=2, stages=2)


def _groups_with(name: str, value, row: int = 0):
    b = _agg_batch()
    g = b.agg.groups.copy()
    g[name][row] = value
    return dataclasses.replace(b, agg=dataclasses.replace(b.agg, groups=g))


def _sends_with(change, first_bin: int | None = None):
    b = _agg_batch()
    sends = b.agg.sends.copy()
    change(sends)
    first = b.agg.sends_first_bin if first_bin is None else first_bin
    return dataclasses.replace(b, agg=dataclasses.replace(b.agg, sends=sends, sends_first_bin=first))


def _hist_with(part: str, change):
    b = _agg_batch()
    h = b.agg.latency
    if part == "scalars":
        sc = h.scalars.copy()
        change(sc)
        h = dataclasses.replace(h, scalars=sc)
    else:
        arr = getattr(h, part).copy()
        change(arr)
        h = dataclasses.replace(h, **{part: arr})
    return dataclasses.replace(b, agg=dataclasses.replace(b.agg, latency=h))


def test_a_good_aggregated_batch_passes() -> None:
    b = _agg_batch()
    assert b.requests == 4 and len(b.agg.groups) == 3 and b.agg.latency_unqueued is not None
    check_samples(b, AGG_BOUNDS, NOW_NS)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: _groups_with("endpoint", 2), "agg.grp.endpoint"),
        (lambda: _groups_with("stage", 2), "agg.grp.stage"),
        (lambda: _groups_with("window", 41), "agg.grp.window"),  # beyond the run (10 s + 30 s slack)
        (lambda: _groups_with("window", -1), "agg.grp.window"),
        (lambda: _groups_with("requests", 0), "agg.grp.requests"),
        (lambda: _sends_with(lambda a: a.__setitem__(0, a[0] + 1)), "agg.sends"),  # more sends than requests
        (lambda: _sends_with(lambda a: None, first_bin=401), "agg.sb"),  # sends after the run's end
        (lambda: _groups_with("generator_queued", 5), "agg.grp.generator_queued"),
        (lambda: _groups_with("errors", [0] * 14), "agg.grp.errors"),
        (lambda: _groups_with("endpoint", 1, row=0), "agg.grp"),  # the same group twice
        (lambda: _hist_with("scalars", lambda sc: sc["count"].__setitem__(0, 7)), "agg.h.latency'.count"),
        (lambda: _hist_with("scalars", lambda sc: sc["overflow"].__setitem__(0, 9)), "agg.h.latency"),
        (lambda: _hist_with("scalars", lambda sc: sc["min"].__setitem__(0, -1)), "agg.h.latency'.min/max"),
        (lambda: _hist_with("scalars", lambda sc: sc["max"].__setitem__(0, 10**15)), "agg.h.latency'.min/max"),
        (lambda: _hist_with("scalars", lambda sc: sc["sum"].__setitem__(0, 10**12)), "agg.h.latency'.sum"),
        (lambda: _hist_with("idx", lambda a: a.__setitem__(0, 5000)), "agg.h.latency'.idx"),
        (lambda: _hist_with("cnt", lambda a: a.__setitem__(0, 0)), "agg.h.latency'.cnt"),
        (lambda: _hist_with("cnt", lambda a: a.__setitem__(0, 2)), "agg.h.latency'.cnt"),
    ],
    ids=[
        "endpoint",
        "stage",
        "window-late",
        "window-negative",
        "no-requests",
        "sends",
        "sends-late",
        "queued",
        "errors",
        "duplicate",
        "count",
        "overflow",
        "min",
        "max",
        "sum",
        "idx",
        "cnt-zero",
        "cnt-sum",
    ],
)
def test_a_bad_aggregate_is_refused_naming_its_field(make, field) -> None:
    with pytest.raises(BatchFormatError, match=field.replace(".", r"\.").replace("/", "/")):
        check_samples(make(), AGG_BOUNDS, NOW_NS)


def test_an_older_batch_format_is_refused_clearly() -> None:
    import msgpack

    payload = encode_batch(agent=0, incarnation=0, seq=0, watermark_ns=S, records=b"", readings=GeneratorReadings())
    m = msgpack.unpackb(payload, raw=False)
    m["v"] = 1
    with pytest.raises(BatchFormatError, match="version 1 .this coordinator reads 2"):
        decode_batch(msgpack.packb(m, use_bin_type=True))


def test_bucket_indices_may_fall_only_where_a_group_begins() -> None:
    """Indices ascend within each group; between groups they may fall (and do here)."""
    from horde.agents.aggregate import aggregate_records

    rng = np.random.default_rng(3)
    rows = np.zeros(400, SAMPLE_DTYPE)
    rows["endpoint"] = rng.integers(0, 2, 400)
    rows["intended_ns"] = rng.integers(1 * S, 2 * S, 400)
    rows["sent_ns"] = rows["intended_ns"]
    rows["end_ns"] = rows["sent_ns"] + rng.lognormal(np.log(5e6), 1.0, 400).astype(np.int64)
    rows["status"] = 200
    b = decode_batch(
        encode_batch(
            agent=0,
            incarnation=0,
            seq=0,
            watermark_ns=3 * S,
            agg=aggregate_records(rows, np.asarray([5 * S, 20 * S])),
            readings=GeneratorReadings(),
        )
    )
    h = b.agg.latency
    falls = np.flatnonzero(h.idx[1:] <= h.idx[:-1]) + 1
    assert len(falls) and set(falls.tolist()) <= set(h.offsets.tolist())  # falls, all at group starts
    check_samples(b, AGG_BOUNDS, NOW_NS)
    inside = int(h.offsets[1]) + 3  # a bucket inside the second group
    swapped = h.idx.copy()
    swapped[inside], swapped[inside + 1] = swapped[inside + 1], swapped[inside]
    bad = dataclasses.replace(b, agg=dataclasses.replace(b.agg, latency=dataclasses.replace(h, idx=swapped)))
    with pytest.raises(BatchFormatError, match=r"agg\.h\.latency'\.idx: a group's bucket indices not ascending"):
        check_samples(bad, AGG_BOUNDS, NOW_NS)
