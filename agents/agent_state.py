"""What a traffic agent holds: built once from its AgentSpec, then the state of its run.

The agent (agents/traffic.py) is put together from parts, one module each, over this one
state: open_model.py (the arrival pump), closed_model.py (virtual users), slow_path.py
(requests that run as a task: flows, Python users, engines without submit()) and flush.py
(self-monitoring and the batches). The parts are mixins, not objects of their own: the
per-request callbacks read the slots, the sample buffer and the counters as attributes of
the agent, one lookup each, where a part held as another object would add a hop per
request (bench/cpu_per_request.py measures it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from horde.agents.aggregate import raw_samples_requested, stage_ends_ns
from horde.agents.arrivals import ConstantArrivals, PoissonArrivals
from horde.agents.data import DataFeeds
from horde.agents.http import Engine, make_engine
from horde.agents.lease import Lease
from horde.agents.probe import ProcessProbe
from horde.agents.samples import RECORD, SampleBuffer
from horde.agents.spec import AgentSpec, FlowTemplate, UserTemplate
from horde.agents.stages import Profile
from horde.agents.timers import TimerHandle, Timers

if TYPE_CHECKING:
    from horde.agents.flows import FlowRunner
    from horde.agents.users import UserRunner

# An engine's callback-driven send: submit(template index, token, done(token, status, bytes, error)).
_Submit = Callable[[int, int, Callable[[int, int, int, int], None]], None]

CHOICES = 1 << 16  # pre-drawn endpoint choices / think times, used cyclically

_T = TypeVar("_T")


def cycled(values: list[_T]) -> Callable[[], _T]:
    """values[0], values[1], ... for ever, holding no copy of them (~24 ns a draw)."""
    return itertools.chain.from_iterable(itertools.repeat(values)).__next__


# The callbacks' recording, as module globals (one dict lookup each, no attribute hop).
RECORD_SIZE = RECORD.size
pack_record = RECORD.pack_into
mono_ns = time.monotonic_ns

_DEFAULT_OK = frozenset(range(200, 400))  # no `expect`: any 2xx or 3xx (as classify_status)
_NO_LEASE_NS = 1 << 62  # an agent run without a lease (tests, benchmarks): never lapses


class AgentState:
    def __init__(
        self,
        spec: AgentSpec,
        *,
        engine_factory: Callable[..., Engine] = make_engine,
        lease_term_s: float | None = None,
        timers: str | None = None,
    ) -> None:
        """`timers`: how sends wait for their time (agents/timers.py; None: $HORDE_SEND_TIMERS
        or "precise"); "ms", the old whole-millisecond loop timers, is for benchmarking."""
        self.spec = spec
        # Fencing (agents/lease.py): with a term, the agent sends only while its host acks
        # its batches. The hot path compares a clock reading it already took with
        # _lease_until (ns, the agent's run time); None: no lease, never fenced.
        self._lease_term_ns = None if lease_term_s is None else int(lease_term_s * 1e9)
        self._lease: Lease | None = None
        self._lease_until = _NO_LEASE_NS
        self._fenced = False
        self._resume_ns: int | None = None
        self._profile = Profile(spec.start_level, spec.stages)
        self._buf = SampleBuffer()
        self._stage_ends = stage_ends_ns(spec.stages)  # batches are aggregated per stage (_batch)
        self._raw_samples = raw_samples_requested()  # HORDE_SAMPLES=raw: every sample is sent (debugging)
        self._probe = ProcessProbe()
        self._seq = 0
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._mono_start = 0
        self._in_flight = 0
        self._users = 0
        self._late = 0
        self._queued = 0
        self._send_lag_max = 0
        self._lag_max = 0
        self._lag_sum = 0
        self._lag_n = 0
        self._interrupted = 0
        self._unsent = 0
        self._sleepers: set[asyncio.Task] = set()
        self._cpu0 = 0.0
        # Per-slot state of the request in flight (a slot is a user, or an open-model sender).
        self._slot_ep: list[int] = []
        self._slot_intended: list[int] = []
        self._slot_sent: list[int] = []
        self._slot_queued: list[bool] = []
        # What a slot does after a slow request; returns the slot's next (endpoint, intended) or None.
        self._after: tuple[Callable[[int], tuple[int, int] | None], ...] = ()
        self._drained: asyncio.Future | None = None  # every sender is done
        self._finished = False
        self._sending_ended = False
        self._slow: set[asyncio.Task] = set()
        # open model
        self._schedule: ConstantArrivals | PoissonArrivals | None = None
        self._pending: list[int] = []
        self._pos = 0
        self._exhausted = False
        self._free: list[int] | None = None
        self._full_since = -1  # since when every slot has been busy (-1: one is free)
        # Arrivals, think times and flow sleeps wait on these (a timerfd: microsecond
        # sends, agents/timers.py); made on the agent's loop in run().
        self._timer_kind = timers
        self._timers: Timers | None = None
        self._timer: TimerHandle | None = None
        self._timer_at = 0
        # closed model
        self._active: list[bool] = []
        self._allowed = 0
        self._thinking: dict[int, TimerHandle] = {}
        self._closed_cb = self._closed_done  # bound once: the engines keep it per request
        self._open_cb = self._open_done
        self._draw(spec)
        self._build_senders(spec, engine_factory)
        self._build_users(spec)
        # Plain: sent by submit() and completed by callback; the rest by a task each.
        self._plain = [
            f is None and u is None and sub is not None for f, u, sub in zip(self._flows, self._user_of, self._submit)
        ]

    def _draw(self, spec: AgentSpec) -> None:
        """The endpoint choices and think times, drawn once from the agent's seed."""
        rng = np.random.default_rng([spec.seed, spec.index, 7])
        w = np.asarray(spec.weights, dtype=float)
        self._choices: list[int] = rng.choice(len(w), size=CHOICES, p=w / w.sum()).tolist()
        lo, hi = spec.think_time_s
        thinks = (rng.uniform(lo, hi, size=CHOICES) if hi > lo else np.full(CHOICES, lo)).tolist()
        # Pre-drawn, used cyclically; a bound __next__ is the cheapest draw per request. Not
        # itertools.cycle: it copies what it yields on its first pass (+0.5 MiB a list, one
        # pointer a request until the pass ends: a slow creep at a low rate).
        self._next_choice: Callable[[], int] = cycled(self._choices)
        self._next_think_s: Callable[[], float] = cycled(thinks)
        self._thinks = hi > 0  # False: users send back to back, no draw per request

    def _build_senders(self, spec: AgentSpec, engine_factory: Callable[..., Engine]) -> None:
        """The data feeds, the engines and the flow runner; what each endpoint is sent with."""
        names = sorted({t.engine for t in spec.requests})
        # The scenario's data files, this agent's share: one source for every engine, flow and user.
        self.data = DataFeeds(
            spec.data, index=spec.index, count=spec.count, incarnation=spec.incarnation, seed=spec.seed
        )
        kw = dict(
            max_connections=spec.max_connections,
            timeout_s=spec.timeout_s,
            connect_timeout_s=spec.connect_timeout_s,
            limits=spec.limits,
            tls=spec.tls,
            data=self.data,
        )
        self._engines = {n: engine_factory(n, spec.requests, **kw) for n in names}
        # The lean engine (only it calls _open_done/_closed_done back): its rx_ns is the
        # kernel's receive time of the response being called back, 0 when unknown.
        self._stamps = self._engines.get("fast")
        self._send = [self._engines[t.engine].request for t in spec.requests]
        # None where the engine has no submit(); called only for the plain entries (_plain below).
        submits = [getattr(self._engines[t.engine], "submit", None) for t in spec.requests]
        self._submit: list[_Submit] = submits  # type: ignore[assignment]  # its None entries are never called
        self._expect = [t.expect for t in spec.requests]
        # The statuses that count as OK, per endpoint: one set lookup per response.
        self._ok_status = [t.expect or _DEFAULT_OK for t in spec.requests]
        self._flows: list[FlowTemplate | None] = list(spec.flows) or [None] * len(spec.requests)
        self._flow_runner: FlowRunner | None = None
        if any(f is not None for f in self._flows):
            from horde.agents.flows import FlowRunner  # on aiohttp: imported only for flows (agents/http.py)

            self._flow_runner = FlowRunner(
                max_connections=spec.max_connections,
                timeout_s=spec.timeout_s,
                connect_timeout_s=spec.connect_timeout_s,
                clock_ns=self._now,
                limits=spec.limits,
                tls=spec.tls,
                data=self.data,
            )

    def _build_users(self, spec: AgentSpec) -> None:
        """Python users (agents/users.py): loaded here, before the start instant, so that a
        user file that does not load stops the agent before it sends anything. The runner
        joins the engines: opened, fenced and closed with them."""
        self._user_of: tuple[UserTemplate | None, ...] = tuple(spec.users) or (None,) * len(spec.requests)
        self._user_runner: UserRunner | None = None
        if any(u is not None for u in self._user_of):
            from horde.agents.users import UserRunner

            self._user_runner = UserRunner(
                self._user_of,
                record=self._record_done,
                clock_ns=self._now,
                sleep_until=self._sleep_until,
                max_connections=spec.max_connections,
                timeout_s=spec.timeout_s,
                connect_timeout_s=spec.connect_timeout_s,
                limits=spec.limits,
                lean=spec.engine != "aiohttp",
                data=self.data.next if self.data.names() else None,
                tls=spec.tls,
            )
            self._engines[UserRunner.name] = self._user_runner  # type: ignore[assignment]  # has the lifecycle

    # -- shared by the parts ----------------------------------------------------------------

    def _now(self) -> int:
        return time.monotonic_ns() - self._mono_start

    def _grow_slots(self, n: int) -> None:
        while len(self._slot_ep) < n:
            self._slot_ep.append(0)
            self._slot_intended.append(0)
            self._slot_sent.append(0)
            self._slot_queued.append(False)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    def _requests_in_flight(self) -> int:
        """Requests sent and not yet answered: the slow paths' count plus the engines' own
        (plain requests are not counted one by one in the callbacks)."""
        n = self._in_flight
        for e in self._engines.values():
            count = getattr(e, "in_flight", None)
            if count is not None:
                n += count()
        return n

    def _set_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    if TYPE_CHECKING:  # the steps one part calls in another (each defined in the module named)

        def _lapse(self) -> None: ...  # traffic.py

        def _end_sending(self) -> None: ...  # traffic.py

        async def _wait_drained(self) -> None: ...  # traffic.py

        def _open_done(self, slot: int, status: int, nbytes: int, err: int) -> None: ...  # open_model.py

        def _count_unsent(self) -> None: ...  # open_model.py

        def _closed_done(self, j: int, status: int, nbytes: int, err: int) -> None: ...  # closed_model.py

        def _user_leave(self, j: int) -> None: ...  # closed_model.py

        async def _slow_request(self, slot: int, ep: int, intended: int, queued: bool) -> None: ...  # slow_path.py

        def _record_done(  # slow_path.py
            self, ep: int, intended: int, sent: int, status: int, nbytes: int, err: int
        ) -> None: ...

        async def _sleep_until(self, t_ns: int) -> bool: ...  # slow_path.py
