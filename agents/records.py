"""A traffic agent's records of its requests, and the forms a flush of them travels in.

The agent records each request as a packed little-endian record (one ``struct.pack_into``
per request: measured ~0.2 us, against ~0.45 us for seven numpy item writes) in a
``SampleBuffer``. At flush time it aggregates the records (agents/aggregate.py) into an
``Aggregate``: per (window, endpoint, stage) the counts, error classes, bytes and histograms
of latency, service time and send lag, plus the sends per 100 ms. A ``Batch`` is a flush as
the coordinator reads it; its wire form is agents/samples.py.

All times are int64 nanoseconds relative to the run's common start instant, read from the
agent's monotonic clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from horde.agents.histogram import GroupedHistograms

# One record per request. Field order is the wire layout of FORMAT_VERSION 2 (as of 1).
RECORD = struct.Struct("<HqqqHBI")
SAMPLE_DTYPE = np.dtype(
    [
        ("endpoint", "<u2"),  # index into the scenario's request mix
        ("intended_ns", "<i8"),  # when the schedule wanted it sent (open model) / user was ready (closed)
        ("sent_ns", "<i8"),  # when it was handed to the engine
        ("end_ns", "<i8"),  # when the response (or the error) was complete
        ("status", "<u2"),  # HTTP status, 0 when there was no response
        ("error", "u1"),  # ErrorClass, | GENERATOR_QUEUED when horde's own slots held the send back
        ("bytes", "<u4"),  # response body bytes
    ]
)
assert SAMPLE_DTYPE.itemsize == RECORD.size
MAX_BYTES = 0xFFFFFFFF  # a larger body is recorded as this (the field is u4)
# A flag on a record's error byte: every one of the agent's own max_in_flight slots was busy
# at the intended time, so the send waited for horde itself (generator queueing), not for a
# free target. ERROR_MASK gives the error class back.
GENERATOR_QUEUED = 0x80
ERROR_MASK = 0x7F
WINDOW_NS = 1_000_000_000  # the coordinator's window: a sample's is end_ns // WINDOW_NS
SEND_BIN_NS = 100_000_000  # sends are counted per 100 ms (spike and ramp analysis)


class ErrorClass(IntEnum):
    """Why a request failed; OK means it got an expected status."""

    OK = 0
    CONNECT = 1  # refused, unreachable, DNS
    TIMEOUT = 2  # connect or read timeout
    RESET = 3  # connection reset or closed mid-response
    HTTP_4XX = 4  # unexpected 4xx status
    HTTP_5XX = 5  # unexpected 5xx status
    UNEXPECTED_STATUS = 6  # any other status not in the request's expect list
    PROTOCOL = 7  # malformed response
    TOO_LARGE = 8  # response over the size cap
    OTHER = 9  # anything else the engine could not classify
    POLL_EXHAUSTED = 10  # a flow's polled step never met its condition within its bound
    USER_ERROR = 11  # a Python user's code raised, or called client.fail() (issue 15)
    DATA_EXHAUSTED = 12  # a data file's `unique` rows ran out (issue 15)
    TLS = 13  # the TLS handshake failed: certificate not verified, or no client certificate accepted

    @property
    def label(self) -> str:
        return self.name.lower()


ERROR_LABELS: tuple[str, ...] = tuple(e.label for e in ErrorClass)


def known_classes(error: np.ndarray) -> np.ndarray:
    """Error classes as counted: one this version does not know counts as `other`; the
    classes after OTHER (poll_exhausted, user_error, data_exhausted, tls) keep their names."""
    return np.where(error < len(ErrorClass), error, int(ErrorClass.OTHER))


def classify_status(status: int, expect: frozenset[int]) -> int:
    """Error class of a response that arrived; `expect` empty means any 2xx/3xx is fine."""
    if expect:
        if status in expect:
            return ErrorClass.OK
    elif 200 <= status < 400:
        return ErrorClass.OK
    if 500 <= status < 600:
        return ErrorClass.HTTP_5XX
    if 400 <= status < 500:
        return ErrorClass.HTTP_4XX
    return ErrorClass.UNEXPECTED_STATUS


class SampleBuffer:
    """Preallocated record buffer; grows by doubling when a flush interval outruns it.

    The agent's completion callbacks write records inline (``RECORD.pack_into(buf.data,
    i * RECORD.size, ...)`` after checking ``count`` against ``capacity``): a method call
    per request is a measurable part of the agent's own cost. `record()` is the same for
    the slow paths.
    """

    __slots__ = ("data", "capacity", "count")

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self.data = bytearray(capacity * RECORD.size)
        self.count = 0

    def grow(self) -> None:
        self.data.extend(bytes(len(self.data)))
        self.capacity *= 2

    def record(
        self,
        endpoint: int,
        intended_ns: int,
        sent_ns: int,
        end_ns: int,
        status: int,
        error: int,
        nbytes: int,
    ) -> None:
        i = self.count
        if i == self.capacity:
            self.grow()
        RECORD.pack_into(
            self.data,
            i * RECORD.size,
            endpoint,
            intended_ns,
            sent_ns,
            end_ns,
            status,
            error,
            nbytes if nbytes < MAX_BYTES else MAX_BYTES,
        )
        self.count = i + 1

    def view(self) -> np.ndarray:
        """The records so far as SAMPLE_DTYPE columns over the buffer (valid until the next
        record or grow; `clear()` empties the buffer)."""
        return np.frombuffer(self.data, dtype=SAMPLE_DTYPE, count=self.count)

    def clear(self) -> None:
        self.count = 0

    def take(self) -> bytes:
        """The records so far, as bytes; the buffer is empty afterwards."""
        out = bytes(memoryview(self.data)[: self.count * RECORD.size])
        self.count = 0
        return out


@dataclass(frozen=True)
class GeneratorReadings:
    """The agent's view of itself over one flush interval."""

    cpu_s: float = 0.0  # process user+sys CPU seconds since the agent's run began (cumulative)
    rss_bytes: int = 0
    loop_lag_max_ns: int = 0  # worst event-loop wake-up delay in the interval
    loop_lag_mean_ns: int = 0
    late_sends: int = 0  # sends more than LATE_SEND_NS late although a sender was free (generator lag)
    send_lag_max_ns: int = 0
    in_flight: int = 0
    users: int = 0  # active virtual users (closed model)
    level: float = 0.0  # the planned level for this agent at flush time
    interrupted: int = 0  # requests still in flight when the agent gave up waiting (final batch)
    unsent: int = 0  # planned sends never started because the run stopped first
    # sends more than LATE_SEND_NS late because every one of the agent's own max_in_flight
    # slots was busy (generator queueing: horde's cap held them back, not a free target)
    generator_queued_sends: int = 0


N_ERROR_CLASSES = len(ErrorClass)
# One row per (window, endpoint, stage) group of an aggregated batch.
GROUP_DTYPE = np.dtype(
    [
        ("window", "<i8"),  # end_ns // window_ns
        ("endpoint", "<u2"),
        ("stage", "<u2"),  # the stage that planned it: by intended_ns
        ("requests", "<u4"),
        ("generator_queued", "<u4"),  # requests sent late because every slot of the agent was busy
        ("bytes", "<u8"),
        ("errors", "<u4", (N_ERROR_CLASSES,)),  # requests by error class (OK first)
    ]
)
HIST_KINDS = ("latency", "service_time", "send_lag", "latency_unqueued")


@dataclass(frozen=True)
class Aggregate:
    """A flush's records, aggregated (agents/aggregate.py): what an agent sends by default."""

    window_ns: int
    groups: np.ndarray  # GROUP_DTYPE, one row per (window, endpoint, stage) with requests
    latency: GroupedHistograms  # end - intended, per group
    service_time: GroupedHistograms  # end - sent
    send_lag: GroupedHistograms  # sent - intended
    # Latency with the generator-queue wait taken out (end - sent for generator-queued
    # requests); None when no request of the batch was generator-queued (then it is `latency`).
    latency_unqueued: GroupedHistograms | None
    sends_first_bin: int  # sends[i] requests were sent in SEND_BIN_NS bin sends_first_bin + i
    sends: np.ndarray  # <u4

    def histograms(self) -> list[GroupedHistograms]:
        out = [self.latency, self.service_time, self.send_lag]
        return out if self.latency_unqueued is None else [*out, self.latency_unqueued]


@dataclass(frozen=True)
class Batch:
    agent: int
    incarnation: int
    seq: int
    watermark_ns: int  # every sample with end_ns <= watermark_ns from this agent is in this or an earlier batch
    samples: np.ndarray  # SAMPLE_DTYPE (empty when the batch is aggregated)
    readings: GeneratorReadings = field(default_factory=GeneratorReadings)
    final: bool = False
    engine: str = ""
    timing: str = ""  # the agent thread's send timers and priority (agents/timers.py timing_in_use)
    # Python users (issue 15): iterations ended by an exception, by its type name, this batch.
    user_errors: dict[str, int] = field(default_factory=dict)
    # Data files (agents/data.py): name -> [rows handed out, requests refused for want of a row], this batch.
    data_rows: dict[str, list[int]] = field(default_factory=dict)
    agg: Aggregate | None = None  # the records, aggregated (the default form)

    @property
    def requests(self) -> int:
        """How many requests the batch reports."""
        if self.agg is None:
            return len(self.samples)
        return int(self.agg.groups["requests"].sum(dtype=np.int64))

    def send_bins(self) -> tuple[int, np.ndarray]:
        """(first bin, sends per SEND_BIN_NS bin from it)."""
        if self.agg is not None:
            return self.agg.sends_first_bin, self.agg.sends
        return send_bins(self.samples["sent_ns"])


def send_bins(sent_ns: np.ndarray) -> tuple[int, np.ndarray]:
    """Sends per SEND_BIN_NS bin of run time (a send before the start counts in bin 0)."""
    if len(sent_ns) == 0:
        return 0, np.zeros(0, dtype=np.uint32)
    bins = np.maximum(sent_ns, 0) // SEND_BIN_NS
    first = int(bins.min())
    return first, np.bincount(bins - first).astype(np.uint32)


LATE_SEND_NS = 10_000_000  # a send more than 10 ms behind its intended time counts as late
