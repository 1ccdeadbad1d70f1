"""Capacity maths: the admission queue's accounting and the scaling model's decisions.

Pure: no clock, no sleeping, no asyncio. The app's gates (injector.py) hold the waiting
requests and call these; time comes in as an argument.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from horde.automaton.faults import ScalingPolicy


class Admission(enum.Enum):
    RUN = "run"  # a worker is free: go
    WAIT = "wait"  # all workers busy, room in the queue: wait for a worker
    REJECT = "reject"  # queue full: answer 503 at once


class AdmissionAccount:
    """At most `limit` running, up to `queue_limit` waiting, first come first served.

    `finish`, `resize` and `abandon` keep the counts right whatever order requests end
    in; the first two return how many waiters now become running (the caller wakes that
    many, oldest first).
    """

    def __init__(self, limit: int, queue_limit: int) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self.running = 0
        self.waiting = 0

    def arrive(self) -> Admission:
        # A free worker goes to the queue first: no overtaking of waiting requests.
        if self.running < self.limit and self.waiting == 0:
            self.running += 1
            return Admission.RUN
        if self.waiting < self.queue_limit:
            self.waiting += 1
            return Admission.WAIT
        return Admission.REJECT

    def finish(self) -> int:
        """A running request ended; returns the number of waiters promoted."""
        if self.running <= 0:
            raise RuntimeError("finish() without a running request")
        self.running -= 1
        return self._promote()

    def abandon(self) -> None:
        """A waiting request gave up (its client went away) before it ran."""
        if self.waiting <= 0:
            raise RuntimeError("abandon() without a waiting request")
        self.waiting -= 1

    def resize(self, limit: int, queue_limit: int) -> int:
        """New limits (scaling, a runtime change). Requests already running keep running."""
        self.limit = limit
        self.queue_limit = queue_limit
        return self._promote()

    def _promote(self) -> int:
        promoted = max(0, min(self.waiting, self.limit - self.running))
        self.waiting -= promoted
        self.running += promoted
        return promoted


@dataclass(frozen=True)
class ScalingState:
    capacity: int
    # When the current run of high (queue above threshold) or low load began; None: not in one.
    high_since_s: float | None = None
    low_since_s: float | None = None


def initial_scaling_state(policy: ScalingPolicy, capacity: int) -> ScalingState:
    return ScalingState(capacity=min(max(capacity, policy.min_workers), policy.max_workers))


def next_scaling_state(
    policy: ScalingPolicy, state: ScalingState, now_s: float, queue_length: int, running: int = 0
) -> ScalingState:
    """The state after observing `queue_length` waiting and `running` busy workers at `now_s`.

    High load: the queue is longer than `queue_above`. After `scale_up_delay_s` of it
    without a break, capacity grows by `step` (up to max) and the delay starts again.
    Low load: the queue is empty and a step's worth of workers is idle. After
    `cool_down_s` of it, capacity shrinks by `step` (down to min) and the wait starts again.
    Anything in between resets both timers. Called at any cadence; a decision lands on
    the first observation at or after its due time.
    """
    high = queue_length > policy.queue_above
    low = queue_length == 0 and running <= state.capacity - policy.step
    if high:
        since_s = state.high_since_s if state.high_since_s is not None else now_s
        if now_s - since_s >= policy.scale_up_delay_s and state.capacity < policy.max_workers:
            capacity = min(policy.max_workers, state.capacity + policy.step)
            return ScalingState(capacity=capacity, high_since_s=now_s)
        return replace(state, high_since_s=since_s, low_since_s=None)
    if low:
        since_s = state.low_since_s if state.low_since_s is not None else now_s
        if now_s - since_s >= policy.cool_down_s and state.capacity > policy.min_workers:
            capacity = max(policy.min_workers, state.capacity - policy.step)
            return ScalingState(capacity=capacity, low_since_s=now_s)
        return replace(state, high_since_s=None, low_since_s=since_s)
    return ScalingState(capacity=state.capacity)
