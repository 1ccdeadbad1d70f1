"""capacity.py: admission-queue accounting and scaling decisions, as tables. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde.automaton.capacity import (
    Admission,
    AdmissionAccount,
    ScalingState,
    initial_scaling_state,
    next_scaling_state,
)
from horde.automaton.faults import ScalingPolicy

RUN, WAIT, REJECT = Admission.RUN, Admission.WAIT, Admission.REJECT


# (operation, what it returns, running after, waiting after)
LIMIT_2_QUEUE_2 = [
    ("arrive", RUN, 1, 0),
    ("arrive", RUN, 2, 0),
    ("arrive", WAIT, 2, 1),  # both workers busy: queued
    ("arrive", WAIT, 2, 2),
    ("arrive", REJECT, 2, 2),  # queue full: 503
    ("arrive", REJECT, 2, 2),
    ("finish", 1, 2, 1),  # a worker frees up: the oldest waiter takes it
    ("arrive", WAIT, 2, 2),  # no overtaking: a newcomer queues even though...
    ("finish", 1, 2, 1),
    ("abandon", None, 2, 0),  # a waiter's client went away
    ("finish", 0, 1, 0),
    ("arrive", RUN, 2, 0),
    ("finish", 0, 1, 0),
    ("finish", 0, 0, 0),
]


def _apply(account: AdmissionAccount, op: str) -> object:
    if op.startswith("resize"):
        limit, queue = map(int, op.split()[1:])
        return account.resize(limit, queue)
    return getattr(account, op)()


def test_admission_accounting_limit_2_queue_2() -> None:
    account = AdmissionAccount(limit=2, queue_limit=2)
    for step, (op, returned, running, waiting) in enumerate(LIMIT_2_QUEUE_2):
        assert _apply(account, op) == returned, (step, op)
        assert (account.running, account.waiting) == (running, waiting), (step, op)


def test_ten_at_once_with_limit_2_queue_2_runs_4_and_rejects_6() -> None:
    account = AdmissionAccount(limit=2, queue_limit=2)
    decisions = [account.arrive() for _ in range(10)]
    assert decisions == [RUN, RUN, WAIT, WAIT] + [REJECT] * 6
    # The two running finish and hand their workers to the two waiting.
    assert account.finish() + account.finish() == 2
    assert (account.running, account.waiting) == (2, 0)


RESIZES = [
    ("arrive", RUN, 1, 0),
    ("arrive", WAIT, 1, 1),
    ("arrive", WAIT, 1, 2),
    ("arrive", WAIT, 1, 3),
    ("resize 3 5", 2, 3, 1),  # scaled up: two waiters start at once
    ("resize 1 5", 0, 3, 1),  # scaled down: running requests are not interrupted...
    ("finish", 0, 2, 1),  # ...but nobody starts until running is below the limit
    ("finish", 0, 1, 1),
    ("finish", 1, 1, 0),
    ("resize 1 0", 0, 1, 0),
    ("arrive", REJECT, 1, 0),  # no queue: past the limit is an immediate 503
]


def test_admission_accounting_under_resizes() -> None:
    account = AdmissionAccount(limit=1, queue_limit=5)
    for step, (op, returned, running, waiting) in enumerate(RESIZES):
        assert _apply(account, op) == returned, (step, op)
        assert (account.running, account.waiting) == (running, waiting), (step, op)


def test_accounting_refuses_impossible_calls() -> None:
    account = AdmissionAccount(limit=1, queue_limit=1)
    with pytest.raises(RuntimeError):
        account.finish()
    with pytest.raises(RuntimeError):
        account.abandon()


@given(
    st.lists(st.sampled_from(["arrive", "finish", "abandon", "resize"]), max_size=200),
    st.integers(1, 5),
    st.integers(0, 5),
)
def test_accounting_invariants(ops: list[str], limit: int, queue: int) -> None:
    account = AdmissionAccount(limit=limit, queue_limit=queue)
    for i, op in enumerate(ops):
        if (op == "finish" and account.running == 0) or (op == "abandon" and account.waiting == 0):
            continue
        if op == "resize":
            limit, queue = 1 + i % 4, i % 3
            account.resize(limit, queue)
        else:
            getattr(account, op)()
        assert account.running >= 0 and account.waiting >= 0
        # Nobody waits while a worker is free.
        assert account.waiting == 0 or account.running >= account.limit


# --- scaling ------------------------------------------------------------------------------------

POLICY = ScalingPolicy(min_workers=1, max_workers=3, step=1, queue_above=2, scale_up_delay_s=1.0, cool_down_s=2.0)

# (time s, queue length, running, capacity after the observation)
TIMELINE = [
    (0.0, 0, 0, 1),  # starts at the configured limit
    (0.5, 5, 1, 1),  # queue above 2: high load starts at 0.5
    (1.0, 5, 1, 1),
    (1.49, 5, 1, 1),  # not yet a full second of it
    (1.5, 5, 1, 2),  # a second of high load: up one step, the delay starts again
    (2.0, 3, 2, 2),
    (2.4, 2, 2, 2),  # queue == threshold is not above it: the run of high load is broken
    (2.5, 3, 2, 2),  # high again from 2.5
    (3.4, 3, 2, 2),
    (3.5, 3, 2, 3),  # up again
    (4.5, 9, 3, 3),  # at max: stays
    (6.0, 9, 3, 3),
    (6.5, 0, 3, 3),  # empty queue but every worker busy: not low load
    (7.0, 0, 2, 3),  # a step's worth idle: low load from 7.0
    (8.9, 0, 2, 3),
    (9.0, 0, 0, 2),  # two seconds of it: down one step, the cool-down starts again
    (10.5, 0, 0, 2),
    (11.0, 0, 0, 1),  # down again
    (30.0, 0, 0, 1),  # at min: stays
    (30.5, 4, 1, 1),  # a new burst...
    (31.0, 0, 1, 1),  # ...too short to scale for
    (31.5, 4, 1, 1),
    (32.49, 4, 1, 1),
    (32.5, 4, 1, 2),
]


def test_scaling_follows_a_scripted_queue_timeline() -> None:
    state = initial_scaling_state(POLICY, capacity=1)
    for t_s, queue, running, expected in TIMELINE:
        state = next_scaling_state(POLICY, state, t_s, queue, running)
        assert state.capacity == expected, (t_s, queue, running, state)


def test_scaling_decisions_land_on_the_first_observation_after_they_are_due() -> None:
    # Sparse observations (every 0.7 s): the step comes at the first one past the delay.
    state = initial_scaling_state(POLICY, capacity=1)
    capacities = []
    for i in range(6):
        state = next_scaling_state(POLICY, state, i * 0.7, queue_length=10, running=1)
        capacities.append(state.capacity)
    # high from 0.0; due at 1.0 -> seen at 1.4; next due 2.4 -> seen at 2.8; then at max.
    assert capacities == [1, 1, 2, 2, 3, 3]


def test_big_steps_are_clamped_to_the_bounds() -> None:
    policy = ScalingPolicy(min_workers=2, max_workers=5, step=4, queue_above=0, scale_up_delay_s=0.0, cool_down_s=0.0)
    state = initial_scaling_state(policy, capacity=2)
    state = next_scaling_state(policy, state, 0.0, queue_length=1)
    assert state.capacity == 5
    state = next_scaling_state(policy, state, 1.0, queue_length=0, running=0)
    assert state.capacity == 2
    assert initial_scaling_state(policy, capacity=9) == ScalingState(capacity=5)


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 20), st.integers(0, 6)), max_size=100))
def test_scaling_stays_in_bounds_and_moves_a_step_at_a_time(observations: list[tuple[float, int, int]]) -> None:
    state = initial_scaling_state(POLICY, capacity=2)
    now_s = 0.0
    for dt_s, queue, running in observations:
        now_s += dt_s
        before = state.capacity
        state = next_scaling_state(POLICY, state, now_s, queue, running)
        assert POLICY.min_workers <= state.capacity <= POLICY.max_workers
        assert abs(state.capacity - before) <= POLICY.step
        if state.capacity > before:
            assert queue > POLICY.queue_above
        if state.capacity < before:
            assert queue == 0
