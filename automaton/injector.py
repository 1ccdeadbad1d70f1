"""The runtime side of the faults: the state the pure decisions act on.

`FaultInjector` holds the current `FaultConfig` (replaceable while the server runs), the
seeded generator, the concurrency gates, the scaling state, the leaked memory and the
database's lock time. `ConnectionLimiter` wraps the server's protocol factory to refuse
connections past the limit. The maths they call is pure (faults.py, capacity.py); the
app's middleware applies a request's faults in one place (app._with_faults).
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from horde.automaton.capacity import (
    Admission,
    AdmissionAccount,
    ScalingState,
    initial_scaling_state,
    next_scaling_state,
)
from horde.automaton.faults import Concurrency, FaultConfig

# A gate whose scope lost its limit: lets everyone through (and wakes its waiters).
_UNLIMITED = sys.maxsize


class LockHolder(Protocol):
    """What the injector sets on the database (db.Database)."""

    lock_hold_s: float


class Gate:
    """An admission queue: asyncio waiters around an AdmissionAccount (FIFO)."""

    def __init__(self, limit: int, queue_limit: int) -> None:
        self.account = AdmissionAccount(limit, queue_limit)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def enter(self) -> bool:
        """True once the request may run (after queueing, perhaps); False: rejected."""
        decision = self.account.arrive()
        if decision is Admission.RUN:
            return True
        if decision is Admission.REJECT:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self.leave()  # promoted just as it was cancelled: it holds a worker
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self.account.abandon()
            # else: _wake found it cancelled and already handed its worker on.
            raise
        return True

    def leave(self) -> None:
        self._wake(self.account.finish())

    def resize(self, limit: int, queue_limit: int) -> None:
        self._wake(self.account.resize(limit, queue_limit))

    def _wake(self, promoted: int) -> None:
        while promoted > 0 and self._waiters:
            waiter = self._waiters.popleft()
            promoted -= 1
            if waiter.cancelled():
                # Its request will never run: give the worker straight back.
                promoted += self.account.finish()
            else:
                waiter.set_result(None)


class FaultInjector:
    def __init__(self, faults: FaultConfig) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self._gates: dict[str | None, Gate] = {}  # None: the global gate
        self.scaling: ScalingState | None = None
        self._database: LockHolder | None = None
        self._leaked: list[bytes] = []
        self.leaked_bytes = 0
        self.apply(faults)

    def apply(self, faults: FaultConfig) -> None:
        """Make `faults` the configuration from now on (requests already admitted go on).

        The generator is reseeded and the scaling model restarts from the configured
        limit; leaked memory stays leaked.
        """
        self.faults = faults
        self.rng = random.Random(faults.seed)
        limits: dict[str | None, Concurrency | None] = {
            None: faults.concurrency,
            **{name: s.concurrency for name, s in faults.endpoints.items()},
        }
        for scope in list(self._gates):
            if limits.get(scope) is None:
                self._gates.pop(scope).resize(_UNLIMITED, 0)
        for scope, concurrency in limits.items():
            if concurrency is None:
                continue
            gate = self._gates.get(scope)
            if gate is None:
                self._gates[scope] = Gate(concurrency.limit, concurrency.queue)
            else:
                gate.resize(concurrency.limit, concurrency.queue)
        self.scaling = None
        if faults.scaling is not None and faults.concurrency is not None:
            self.scaling = initial_scaling_state(faults.scaling, faults.concurrency.limit)
        if self._database is not None:
            self._database.lock_hold_s = faults.db_lock_s

    def attach_database(self, database: LockHolder) -> None:
        self._database = database
        database.lock_hold_s = self.faults.db_lock_s

    # -- concurrency -----------------------------------------------------------------

    async def admit(self, endpoint: str) -> tuple[Gate, ...] | None:
        """The gates entered (release each with `leave`), or None: rejected, queue full.

        The endpoint's own gate first, then the global one: a request waiting for its
        endpoint's pool does not hold a global worker meanwhile.
        """
        gates = [g for g in (self._gates.get(endpoint), self._gates.get(None)) if g is not None]
        entered: list[Gate] = []
        try:
            for gate in gates:
                if not await gate.enter():
                    for held in entered:
                        held.leave()
                    return None
                entered.append(gate)
        except BaseException:
            for held in entered:
                held.leave()
            raise
        return tuple(entered)

    def queue_length(self) -> int:
        """Requests waiting for a worker, in every gate."""
        return sum(gate.account.waiting for gate in self._gates.values())

    def capacity_workers(self) -> int | None:
        """The global concurrency limit in force (scaled or not); None: unlimited."""
        gate = self._gates.get(None)
        return None if gate is None else gate.account.limit

    def tick(self, now_s: float) -> None:
        """Let the scaling model look at the global queue (called every SCALING_TICK_S)."""
        gate = self._gates.get(None)
        policy = self.faults.scaling
        if self.scaling is None or policy is None or gate is None:
            return
        self.scaling = next_scaling_state(policy, self.scaling, now_s, gate.account.waiting, gate.account.running)
        if self.scaling.capacity != gate.account.limit:
            gate.resize(self.scaling.capacity, gate.account.queue_limit)

    # -- memory ----------------------------------------------------------------------

    def leak(self, nbytes: int) -> None:
        """Keep `nbytes` for good, unless that would pass the cap."""
        if nbytes <= 0 or self.leaked_bytes + nbytes > self.faults.leak_cap_bytes:
            return
        # Written bytes, not bytearray(n): untouched pages would not count in RSS.
        self._leaked.append(b"\xa5" * nbytes)
        self.leaked_bytes += nbytes


def burn_cpu_s(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU time (a preempted spin keeps going)."""
    end_ns = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < end_ns:
        pass


# --- connections ----------------------------------------------------------------------


class ConnectionLimiter:
    """A protocol factory that refuses connections past a limit, and counts the open ones.

    Wraps aiohttp's low-level Server (a protocol factory) for `loop.create_server`. A
    connection over the limit is accepted by the kernel and closed at once: the client
    sees the server hang up before any response.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        limit: Callable[[], int | None],
        on_refused: Callable[[], None],
    ) -> None:
        self._factory = factory
        self._limit = limit
        self._on_refused = on_refused
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        limit = self._limit()
        if limit is not None and self.open >= limit:
            self._on_refused()
            return _Refused()
        self.open += 1
        return _Counted(self._factory(), self)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """Forwards every callback to the real protocol; counts the connection out when lost."""

    def __init__(self, inner: asyncio.Protocol, limiter: ConnectionLimiter) -> None:
        self._inner = inner
        self._limiter = limiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limiter.open -= 1
        self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
