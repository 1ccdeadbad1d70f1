"""A decoded batch checked against the run it claims to belong to.

`decode_batch` (agents/samples.py) checks what a batch is on its own: the map, each header
field's type and range, the readings, the record bytes. What only the run knows is checked
here before anything is aggregated: the sender and its incarnation, the sequence, and
either the sample columns of a raw batch (endpoint index, status and error class ranges,
times within the run plus slack, end at or after send, the record count; a raw sample's
stage is derived from its intended time, so bounding the times bounds the stage index) or
an aggregated batch's groups (``check_aggregate``: window, endpoint and stage indices in
range, every count consistent with the others, bucket indices within the layout, times
within the run's span, the sends per 100 ms adding up to the requests), and that the
data-row counts name only the scenario's data files.

Every column check is one numpy reduction over the whole column, not a loop over samples:
a check must not make ingest measurably slower per sample (bench/ingest.py).

Pure: no clock (the session passes "now"), no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from horde.agents.histogram import COUNTS_LEN, GroupedHistograms
from horde.agents.samples import (
    ERROR_MASK,
    HIST_KINDS,
    MAX_BATCH_RECORDS,
    SEND_BIN_NS,
    Aggregate,
    Batch,
    BatchFormatError,
    ErrorClass,
)

SLACK_NS = 30_000_000_000  # clock skew between hosts and batches still in flight: 30 s either side of the run
# A status is three digits (0: no response). 1..99 is let through: the target, not the agent,
# chose it, and a strange target must not make an agent look faulty.
MAX_STATUS = 999
N_ERROR_CLASSES = len(ErrorClass)


class StaleBatchError(BatchFormatError):
    """A batch of a replaced incarnation, or a duplicate or old sequence number: dropped, not a fault."""


@dataclass(frozen=True)
class RunBounds:
    """What a batch of this run may hold."""

    endpoints: int  # endpoint indices are below this (the plan's request mix)
    stages: int = 1  # stage indices (of an aggregated batch's groups) are below this
    slack_ns: int = SLACK_NS
    max_records: int = MAX_BATCH_RECORDS
    data_files: frozenset[str] = frozenset()  # the scenario's data files: a batch's `data` names only these


def _out_of_range(name: str, value: int, low: int, high: int) -> BatchFormatError:
    return BatchFormatError(f"sample field {name!r}: {value} outside [{low}, {high}]")


def check_data_rows(batch: Batch, bounds: RunBounds) -> None:
    """The batch's `data` counts name only the scenario's data files (so at most that many)."""
    rows = batch.data_rows
    if not rows:
        return
    if len(rows) > len(bounds.data_files):
        raise BatchFormatError(
            f"batch field 'data': {len(rows)} data files, but the scenario has {len(bounds.data_files)}"
        )
    unknown = sorted(set(rows) - bounds.data_files)
    if unknown:
        raise BatchFormatError(f"batch field 'data': {unknown[0]!r} is not a data file of the scenario")


def check_samples(batch: Batch, bounds: RunBounds, now_ns: int) -> None:
    """The sample columns and the watermark against the run; `now_ns` is run time (0 = start instant)."""
    low, high = -bounds.slack_ns, now_ns + bounds.slack_ns
    if not low <= batch.watermark_ns <= high:
        raise BatchFormatError(f"batch field 'wm': {batch.watermark_ns} outside the run [{low}, {high}] ns")
    if batch.agg is not None:
        check_aggregate(batch.agg, bounds, low, high)
        return
    s = batch.samples
    if len(s) > bounds.max_records:
        raise BatchFormatError(f"batch field 'rec': {len(s)} records, over {bounds.max_records}")
    if len(s) == 0:
        return
    # A reduction over a strided column costs ~1 ns a sample (bench/ingest.py), so only the bounds that
    # can be crossed are read: unsigned columns have no lower one, and with end >= sent
    # checked, min(sent) and max(end) bound both columns.
    for name, high_u in (("endpoint", bounds.endpoints - 1), ("error", N_ERROR_CLASSES - 1), ("status", MAX_STATUS)):
        column = s[name] & ERROR_MASK if name == "error" else s[name]  # less the generator-queued flag
        top = int(column.max())
        if top > high_u:
            raise _out_of_range(name, top, 0, high_u)
    intended = s["intended_ns"]
    first, last = int(intended.min()), int(intended.max())
    if first < low or last > high:
        raise _out_of_range("intended_ns", first if first < low else last, low, high)
    first = int(s["sent_ns"].min())
    if first < low:
        raise _out_of_range("sent_ns", first, low, high)
    last = int(s["end_ns"].max())
    if last > high:
        raise _out_of_range("end_ns", last, low, high)
    if bool((s["end_ns"] < s["sent_ns"]).any()):  # a compare, not a difference: nothing overflows
        raise BatchFormatError("sample field 'end_ns': before its 'sent_ns'")


def check_aggregate(agg: Aggregate, bounds: RunBounds, low: int, high: int) -> None:
    """An aggregated batch against itself and the run; times of the run lie in [low, high] ns."""
    groups = agg.groups
    requests = groups["requests"].astype(np.int64)
    total = int(requests.sum())
    if total > bounds.max_records:
        raise BatchFormatError(f"batch field 'agg.grp': {total} requests, over {bounds.max_records}")
    if len(groups) == 0:
        _check_sends(agg, total, high)
        return
    top_window = max(high, 0) // agg.window_ns
    for name, top in (("endpoint", bounds.endpoints - 1), ("stage", bounds.stages - 1), ("window", top_window)):
        column = groups[name]
        if int(column.min()) < 0 or int(column.max()) > top:
            bad = int(column.min()) if int(column.min()) < 0 else int(column.max())
            raise BatchFormatError(f"batch field 'agg.grp.{name}': {bad} outside [0, {top}]")
    if int(requests.min()) < 1:
        raise BatchFormatError("batch field 'agg.grp.requests': a group without requests")
    if bool((groups["generator_queued"].astype(np.int64) > requests).any()):
        raise BatchFormatError("batch field 'agg.grp.generator_queued': more than the group's requests")
    if bool((groups["errors"].astype(np.int64).sum(axis=1) != requests).any()):
        raise BatchFormatError("batch field 'agg.grp.errors': the error classes do not add up to the requests")
    keys = (groups["window"] * bounds.endpoints + groups["endpoint"]) * bounds.stages + groups["stage"]
    if len(np.unique(keys)) != len(keys):
        raise BatchFormatError("batch field 'agg.grp': a (window, endpoint, stage) group twice")
    _check_sends(agg, total, high)
    span = high - low
    for kind, h in zip(HIST_KINDS, agg.histograms()):
        _check_grouped(h, f"agg.h.{kind}", requests, span)


def _check_sends(agg: Aggregate, total: int, high: int) -> None:
    if int(agg.sends.sum(dtype=np.int64)) != total:
        raise BatchFormatError(
            f"batch field 'agg.sends': {int(agg.sends.sum(dtype=np.int64))} sends, but {total} requests"
        )
    if len(agg.sends) and (agg.sends_first_bin + len(agg.sends)) * SEND_BIN_NS > high + SEND_BIN_NS:
        raise BatchFormatError(f"batch field 'agg.sb': sends counted after the run's end ({high} ns)")


def _check_grouped(h: GroupedHistograms, name: str, requests: np.ndarray, span_ns: int) -> None:
    sc = h.scalars
    if bool((sc["count"].astype(np.int64) != requests).any()):
        raise BatchFormatError(f"batch field {name!r}.count: not the group's requests")
    count = requests
    if bool((sc["overflow"] > sc["count"]).any()) or bool((sc["clamped"] > sc["count"]).any()):
        raise BatchFormatError(f"batch field {name!r}: overflow or clamped over the count")
    lo, hi = sc["min"], sc["max"]
    if int(lo.min()) < 0 or bool((lo > hi).any()) or int(hi.max()) > span_ns:
        raise BatchFormatError(f"batch field {name!r}.min/max: outside [0, {span_ns}] ns or min over max")
    # In float64 (a product may pass 2**63), with a hair of slack for its rounding.
    sums, n = sc["sum"].astype(np.float64), count.astype(np.float64)
    if bool((sums < lo * n * (1 - 1e-9) - 1).any()) or bool((sums > hi * n * (1 + 1e-9) + 1).any()):
        raise BatchFormatError(f"batch field {name!r}.sum: outside count x [min, max]")
    if len(h.idx):
        if int(h.idx.max()) >= COUNTS_LEN:
            raise BatchFormatError(f"batch field {name!r}.idx: {int(h.idx.max())} outside [0, {COUNTS_LEN - 1}]")
        if int(h.cnt.min()) == 0:
            raise BatchFormatError(f"batch field {name!r}.cnt: a bucket counted 0 times")
        # Ascending within a group: a descent may only be where a group begins (the few
        # descents are looked up among the group starts: no pass over a mask of every bucket).
        descents = np.flatnonzero(h.idx[1:] <= h.idx[:-1]) + 1
        at = np.searchsorted(h.offsets, descents)  # offsets ascend (decode_batch checked)
        if len(descents) and not bool((h.offsets[np.minimum(at, len(h.offsets) - 1)] == descents).all()):
            raise BatchFormatError(f"batch field {name!r}.idx: a group's bucket indices not ascending")
    in_buckets = _sums_per_group(h.cnt, h.offsets)
    if bool((in_buckets + sc["overflow"] != count).any()):
        raise BatchFormatError(f"batch field {name!r}.cnt: bucket counts and overflow do not add up to the count")


def _sums_per_group(cnt: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per group, the sum of its buckets' counts (int64; 0 for a group without buckets)."""
    starts, sizes = offsets[:-1], np.diff(offsets)
    if len(cnt) == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    sums = np.add.reduceat(cnt, np.minimum(starts, len(cnt) - 1), dtype=np.int64)
    sums[sizes == 0] = 0  # reduceat gives an empty segment its start's value
    return sums


class BatchChecker:
    """The run's view of its senders: which incarnation is current, and the last sequence of each.

    `check` raises StaleBatchError for a batch to drop quietly, BatchFormatError for a bad
    one; a batch that passes advances its incarnation's sequence.
    """

    def __init__(self, bounds: RunBounds) -> None:
        self.bounds = bounds
        self._last_seq: dict[tuple[int, int], int] = {}

    def check(self, batch: Batch, *, sender: int, incarnations: dict[int, int], now_ns: int) -> None:
        """`sender`: the agent whose stream carried the batch; `incarnations`: agent -> its current one."""
        if batch.agent != sender:
            raise BatchFormatError(f"batch field 'agent': {batch.agent}, but it came from agent {sender}'s stream")
        current = incarnations.get(sender)
        if current is None:
            raise BatchFormatError(f"batch field 'agent': {sender} is not an agent of this run")
        if batch.incarnation < current:
            raise StaleBatchError(f"agent {sender} incarnation {batch.incarnation} was replaced by {current}")
        if batch.incarnation > current:
            raise BatchFormatError(
                f"batch field 'inc': {batch.incarnation}, but agent {sender} is at incarnation {current}"
            )
        key = (sender, batch.incarnation)
        last = self._last_seq.get(key, -1)
        if batch.seq <= last:
            raise StaleBatchError(f"batch field 'seq': {batch.seq} after {last} (a duplicate or old batch)")
        check_samples(batch, self.bounds, now_ns)
        check_data_rows(batch, self.bounds)
        self._last_seq[key] = batch.seq


FAULTY_AFTER = 3  # this many bad batches from one incarnation: the agent is faulty, lost and replaced
MAX_BAD_BATCH_RECORDS = 100  # bad_batch records a run keeps (alerts.jsonl, summary); the count stays exact


class BadBatches:
    """The run's bad batches: a count per agent incarnation, the records to keep, which are faulty."""

    def __init__(self, faulty_after: int = FAULTY_AFTER, max_records: int = MAX_BAD_BATCH_RECORDS) -> None:
        self.faulty_after, self.max_records = faulty_after, max_records
        self.counts: dict[tuple[int, int | None], int] = {}
        self.total = 0

    def add(self, agent: int, incarnation: int | None, at_s: float, exc: BatchFormatError) -> tuple[dict | None, bool]:
        """(the bad_batch record to keep, or None past the first `max_records`; True when this
        batch makes the incarnation faulty: once, at the `faulty_after`-th)."""
        key = (agent, incarnation)
        n = self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1
        record = None
        if self.total <= self.max_records:
            record = {"kind": "bad_batch", "agent": agent, "incarnation": incarnation, "at_s": at_s, "detail": str(exc)}
        return record, n == self.faulty_after and incarnation is not None

    def is_faulty(self, agent: int, incarnation: int) -> bool:
        return self.counts.get((agent, incarnation), 0) >= self.faulty_after
