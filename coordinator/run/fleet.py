"""The cluster a run's agents go to: threads of this process (in-process), or Ray (embedded,
the warm head of `horde up`, or attached)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from horde.cluster.events import ClusterShape, NodeShape
from horde.coordinator.plan import Plan
from horde.coordinator.run.options import RunOptions
from horde.coordinator.run.target import RunError

POOL_HOLD_MARGIN_S = 600.0


def silence_s(scenario: Any) -> float:
    # An agent silent for 1.5 flush intervals is pinged; no answer within half an interval
    # more and it is lost: noticed within two flush intervals (Ray itself raises nothing for
    # a frozen or partitioned agent for about a minute).
    return 2 * scenario.flush_interval


@dataclass
class Cluster:
    shape: ClusterShape
    make_fleet: Callable[[Plan], Any]  # the fleet for a plan (LocalFleet or RayFleet)
    connection: Any | None = None  # the Ray connection this run opened, closed by close()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def connect_cluster(scenario: Any, options: RunOptions) -> Cluster:
    """Connect to the run's cluster. Raises RunError when Ray cannot be reached."""
    shape, connection = _open(options)
    return Cluster(shape, fleet_factory(scenario, options), connection)


def _open(options: RunOptions) -> tuple[ClusterShape, Any]:
    """The cluster's shape and the Ray connection opened (None: in-process, no Ray)."""
    if options.in_process:
        import os
        import socket

        shape = ClusterShape(
            kind="in-process",
            address="",
            nodes=(NodeShape(node="local", host=socket.gethostname(), cpus=float(os.cpu_count() or 1)),),
        )
        return shape, None

    from horde.cluster.connect import ClusterError, connect

    try:
        connection = connect(options.address, ship_horde=not options.warm)
    except ClusterError as exc:
        raise RunError(str(exc)) from exc
    return connection.shape, connection


def fleet_factory(scenario: Any, options: RunOptions) -> Callable[[Plan], Any]:
    """The fleet for a plan of this scenario: LocalFleet in-process, else RayFleet."""
    if options.in_process:
        from horde.cluster.local import LocalFleet

        return lambda plan: LocalFleet(silence_s=silence_s(scenario))

    from horde.cluster.fleet import RayFleet

    return lambda plan: RayFleet(
        cpus_per_agent=plan.cpus_per_agent,
        ready_timeout_s=options.ready_timeout_s,
        silence_s=1.5 * scenario.flush_interval,
        probe_timeout_s=0.5 * scenario.flush_interval,
        # the warm head of `horde up` keeps agents warm (cluster/pool.py): leased for the run's
        # planned length and a margin, given back at its end
        pool_hold_s=_pool_hold_s(plan, scenario) if options.warm else None,
    )


def _pool_hold_s(plan: Plan, scenario: Any) -> float:
    return plan.duration_s + scenario.workload.graceful_stop + POOL_HOLD_MARGIN_S


class ClusterStarting:
    """The cluster connected on a thread: Ray starts, or is attached to (seconds, mostly waiting
    on its processes), while the caller loads the scenario, imports the run's modules and starts
    the target. `result(scenario)` waits for it.

    The thread lives until close(): Ray starts its processes with a parent-death signal
    (prctl PR_SET_PDEATHSIG), which Linux sends when the *thread* that started them ends.
    """

    def __init__(self, options: RunOptions) -> None:
        self._options = options
        self._opened: tuple[ClusterShape, Any] | None = None
        self._error: BaseException | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        # Loaded here, before the thread: `import ray` there and the run's modules here both
        # import asyncio, and two threads importing one package at once can meet in Python's
        # module locks (a _DeadlockError once in a full test suite: "the cluster did not start").
        import asyncio  # noqa: F401

        self._thread = threading.Thread(target=self._connect, args=(options,), name="horde-cluster", daemon=True)
        self._thread.start()

    def _connect(self, options: RunOptions) -> None:
        try:
            self._opened = _open(options)
        except BaseException as exc:  # handed to result(); a thread must not die with it
            self._error = exc
            return
        finally:
            self._connected.set()
        self._closed.wait()

    def result(self, scenario: Any) -> Cluster:
        """The connected cluster, its fleets for `scenario`. Raises RunError if Ray could not be
        started or reached."""
        self._connected.wait()
        if self._error is not None:
            if isinstance(self._error, RunError) or not isinstance(self._error, Exception):
                raise self._error
            raise RunError(f"the cluster did not start: {type(self._error).__name__}: {self._error}")
        assert self._opened is not None
        shape, connection = self._opened
        closed = self._closed

        def close() -> None:
            try:
                if connection is not None:
                    connection.close()
            finally:
                closed.set()

        return Cluster(shape, fleet_factory(scenario, self._options), _Closer(close))

    def close(self) -> None:
        """Stop what was started, waiting for the start to end (a run that failed before taking it)."""
        self._connected.wait()
        try:
            if self._opened is not None and self._opened[1] is not None:
                self._opened[1].close()
        finally:
            self._closed.set()
            self._thread.join()


@dataclass
class _Closer:
    close: Callable[[], None]
