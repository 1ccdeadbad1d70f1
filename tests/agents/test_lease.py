"""The lease's pure logic, with plain integers for times (ns on the agent's own clock)."""

from __future__ import annotations

import pytest

from horde.agents.lease import FENCE_MARGIN_S, Lease, lease_term_s, replacement_hold_s

TERM = 1000


def test_initial_grant_lasts_one_term_and_lapses_at_exactly_the_boundary():
    lease = Lease(TERM, granted_at_ns=50)
    assert lease.until_ns == 1050
    assert lease.holds(1049)
    assert not lease.holds(1050)
    assert not lease.holds(5000)


def test_ack_extends_from_the_batch_send_time_not_from_its_arrival():
    lease = Lease(TERM, granted_at_ns=0)
    lease.sent(0, 400)
    lease.sent(1, 900)
    assert lease.ack(1) == 1900
    assert lease.holds(1899) and not lease.holds(1900)


def test_stale_ack_does_not_extend_and_cannot_revive_a_lapsed_lease():
    lease = Lease(TERM, granted_at_ns=0)
    lease.sent(0, 100)
    lease.sent(1, 200)
    lease.sent(2, 300)
    assert lease.ack(2) == 1300
    # acks of older batches (delivered late, after a partition) extend nothing
    assert lease.ack(0) == 1300
    assert lease.ack(1) == 1300
    assert lease.unacknowledged == 0
    # lapsed at 1300; an ack of the last batch, arriving at 5000, cannot bring it back
    lease.sent(3, 400)  # a batch sent before the lapse, acknowledged long after it
    assert lease.ack(3) == 1400
    assert not lease.holds(5000)


def test_ack_of_an_older_batch_after_a_newer_one_is_ignored():
    lease = Lease(TERM, granted_at_ns=0)
    lease.sent(0, 100)
    lease.sent(1, 600)
    assert lease.ack(1) == 1600
    assert lease.ack(0) == 1600  # forgotten when 1 was acknowledged


def test_ack_of_an_unknown_seq_is_ignored():
    lease = Lease(TERM, granted_at_ns=0)
    lease.sent(0, 500)
    assert lease.ack(7) == 1000
    assert lease.ack(-1) == 1000
    assert lease.unacknowledged == 1
    assert lease.ack(0) == 1500


def test_an_early_batch_never_shortens_the_lease():
    lease = Lease(TERM, granted_at_ns=800)  # granted after the batch below was noted
    lease.sent(0, 100)
    assert lease.ack(0) == 1800


def test_term_is_validated():
    with pytest.raises(ValueError, match="term"):
        Lease(0, 0)


def test_term_and_hold_follow_the_flush_interval():
    assert lease_term_s(1.0) == 4.0
    assert lease_term_s(0.1) == 2.0  # floor: short intervals still tolerate a busy coordinator
    assert replacement_hold_s(1.0) == lease_term_s(1.0) + FENCE_MARGIN_S


def test_ack_delay_is_measured_from_the_batch_send_time():
    lease = Lease(TERM, granted_at_ns=0)
    lease.sent(0, 100)
    lease.sent(1, 200)
    lease.ack(0, now_ns=400)
    lease.ack(1, now_ns=250)
    lease.ack(1, now_ns=9000)  # already acknowledged: not a delay
    assert lease.ack_delay_max_ns == 300
