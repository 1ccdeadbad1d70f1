"""An agent's lease: it sends only while the coordinator keeps taking its batches.

Measured on the agent's own monotonic clock only, so no two hosts' clocks are ever
compared. The agent notes when it emitted each batch (by sequence number); an
acknowledgement of batch `seq` extends the lease to `sent_at[seq] + term`. A late
acknowledgement (one that waited out a partition) names an old batch, so it cannot extend
the lease past that batch's send time plus the term: stale acknowledgements never revive a
fenced agent.

The acknowledgement is the coordinator's consumption of the agent's batch stream, not a
call of its own (agents/runner.py AgentRunner.stream): the agent's host acks batch n once
the consumer has asked for the batch after it; through Ray's streaming generator with a
backpressure of one object, the agent's yield returns only once the coordinator took the
next reference, which proves it received the batch before (cluster/fleet.py). A
coordinator that stops consuming (frozen, busy, cut off, dead) acks nothing more, and the
one thing that releases a waiting yield without consumption, the coordinator dropping the
stream, it never does while the agent may live (the fleet holds every stream until close).

The coordinator's side of the bargain: the lease of an agent it has lost ends at most
`term` after that agent sent the last batch the coordinator received, so a replacement
that starts sending later than (that batch's arrival + term + margin) never overlaps it.

Pure: plain integers in, plain integers out; the agent supplies the clock readings.
"""

from __future__ import annotations

# The term is this many flush intervals: a healthy agent's batch goes out every interval and
# is acknowledged when the coordinator takes the next one, a flush later (on Ray), so an
# agent is fenced only when one of its batches waited (LEASE_FLUSHES - 2) intervals or more
# to be taken (see docs/measurement.md for the acknowledgement delays measured on a loaded
# 2-core machine).
LEASE_FLUSHES = 4
MIN_TERM_S = 2.0  # short flush intervals (tests use 0.1 s) still tolerate a busy coordinator
# What the coordinator adds to `term` before a replacement sends: the agent checks its
# lease before every send, so this covers only requests already on the wire at the lapse.
FENCE_MARGIN_S = 0.5


class LeaseLapsed(RuntimeError):
    """The agent's lease lapsed: it stopped sending and ended (its host reports it lost)."""


def lease_term_s(flush_interval_s: float) -> float:
    """The lease term for agents that flush every `flush_interval_s`."""
    return max(LEASE_FLUSHES * flush_interval_s, MIN_TERM_S)


def replacement_hold_s(flush_interval_s: float) -> float:
    """How long after the arrival of a lost agent's last batch its replacement may start sending."""
    return lease_term_s(flush_interval_s) + FENCE_MARGIN_S


class Lease:
    """The lease of one agent incarnation; times are ns on the agent's monotonic clock."""

    __slots__ = ("term_ns", "until_ns", "_sent_at", "ack_delay_max_ns")

    def __init__(self, term_ns: int, granted_at_ns: int) -> None:
        if term_ns <= 0:
            raise ValueError(f"lease term must be > 0 ns, got {term_ns}")
        self.term_ns = term_ns
        self.until_ns = granted_at_ns + term_ns  # sending is allowed while now < until_ns
        self._sent_at: dict[int, int] = {}
        self.ack_delay_max_ns = 0  # the longest a batch waited for its ack (docs/measurement.md)

    def sent(self, seq: int, at_ns: int) -> None:
        """Batch `seq` was emitted at `at_ns`."""
        self._sent_at[seq] = at_ns

    def ack(self, seq: int, now_ns: int | None = None) -> int:
        """The coordinator received batch `seq`: extend the lease from that batch's send
        time, forget it and every older batch (their acknowledgements can extend nothing
        further). An unknown or already acknowledged `seq` changes nothing. `now_ns`, when
        given, updates ack_delay_max_ns. Returns until_ns."""
        at = self._sent_at.get(seq)
        if at is None:
            return self.until_ns
        if now_ns is not None and now_ns - at > self.ack_delay_max_ns:
            self.ack_delay_max_ns = now_ns - at
        for s in [s for s in self._sent_at if s <= seq]:
            del self._sent_at[s]
        if at + self.term_ns > self.until_ns:
            self.until_ns = at + self.term_ns
        return self.until_ns

    def holds(self, now_ns: int) -> bool:
        """True while the agent may send; the lease lapses at until_ns exactly."""
        return now_ns < self.until_ns

    @property
    def unacknowledged(self) -> int:
        """Batches emitted and not acknowledged yet."""
        return len(self._sent_at)
