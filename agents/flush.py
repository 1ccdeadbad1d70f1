"""The agent's self-monitoring and its batches: the event-loop lag probe, the flush timer,
and one batch built from the samples and readings since the last.

A part of TrafficAgent (agents/traffic.py; why the parts are mixins: agents/agent_state.py).
Not per request: a batch is built once every flush interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from horde.agents.agent_state import AgentState
from horde.agents.aggregate import aggregate_records
from horde.agents.samples import GeneratorReadings, encode_batch
from horde.agents.timers import sleep_until

Emit = Callable[[bytes], None]

_LOOP_LAG_PERIOD_S = 0.05
_FLUSH_YIELD_NS = 3_000_000  # a flush waits for a send due within this (see _flush_every_interval)


class Flushing(AgentState):
    async def _watch_loop_lag(self) -> None:
        # A loop timer, not the send timers: a 50 ms probe needs no microseconds, and the
        # send timers wake a long sleep 150 us early and spin (agents/timers.py LEAD_NS),
        # 3 ms of CPU a second at 20 probes. Its reading includes up to ~1 ms of rounding.
        period_ns = int(_LOOP_LAG_PERIOD_S * 1e9)
        while True:
            t0 = time.monotonic_ns()
            await asyncio.sleep(_LOOP_LAG_PERIOD_S)
            lag = time.monotonic_ns() - t0 - period_ns
            if lag < 0:
                lag = 0
            if lag > self._lag_max:
                self._lag_max = lag
            self._lag_sum += lag
            self._lag_n += 1

    async def _flush_every_interval(self, emit: Emit) -> None:
        interval = int(self.spec.flush_interval_s * 1e9)
        k = max(1, self._now() // interval + 1)
        while True:
            delay = k * interval - self._now()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            # A send due in the next moment goes first: building the batch would hold it
            # back (constant arrivals at 1/s, 2/s... fall on the flush instants). The batch
            # is built right after it (the send timers), with the whole gap to the next.
            due = self._timer_at - self._now() if self._timer is not None else _FLUSH_YIELD_NS
            if due < _FLUSH_YIELD_NS:
                await sleep_until(self._timers, self._timer_at + self._mono_start + 1)  # type: ignore[arg-type]  # set by run()
                for _ in range(3):  # overdue (the loop was held): its wake-up runs within a turn or two
                    if self._timer is None or self._timer_at > self._now():
                        break
                    await asyncio.sleep(0)
            if self._now() >= self._lease_until:  # nothing sent or in flight after a lapse
                self._lapse()
                return
            emit(self._batch(final=False))
            k = self._now() // interval + 1

    def _batch(self, *, final: bool) -> bytes:
        cpu_s, rss = self._probe.read()
        cpu_s -= self._cpu0
        t = self._now() / 1e9
        level = float(self._profile.level(t)) / self.spec.count if t < self._profile.duration_s else 0.0
        readings = GeneratorReadings(
            cpu_s=cpu_s,
            rss_bytes=rss,
            loop_lag_max_ns=self._lag_max,
            loop_lag_mean_ns=self._lag_sum // self._lag_n if self._lag_n else 0,
            late_sends=self._late,
            generator_queued_sends=self._queued,
            send_lag_max_ns=self._send_lag_max,
            in_flight=self._requests_in_flight(),
            users=self._users,
            level=level,
            interrupted=self._interrupted if final else 0,
            unsent=self._unsent if final else 0,
        )
        self._lag_max = self._lag_sum = self._lag_n = 0
        self._late = 0
        self._queued = 0
        self._send_lag_max = 0
        if self._lease is not None:
            self._lease.sent(self._seq, self._now())
        # Every record so far ended before now: the watermark covers them all.
        watermark_ns = self._now()
        records, agg = None, None
        if not self._raw_samples:
            try:
                agg = aggregate_records(self._buf.view(), self._stage_ends)
            except OverflowError:  # a group's sum of times beyond 64 bits: this batch goes raw
                agg = None
        if agg is None:
            records = self._buf.take()
        self._buf.clear()
        payload = encode_batch(
            agent=self.spec.index,
            incarnation=self.spec.incarnation,
            seq=self._seq,
            watermark_ns=watermark_ns,
            readings=readings,
            records=records,
            agg=agg,
            final=final,
            engine=",".join(sorted(self._engines)),
            user_errors=self._user_runner.take_errors() if self._user_runner is not None else None,
            data_rows=self.data.take_counts(),
        )
        self._seq += 1
        return payload
