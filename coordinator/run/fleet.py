"""The cluster a run's agents go to: threads of this process (in-process), or Ray (embedded or attached)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from horde.cluster.events import ClusterShape, NodeShape
from horde.coordinator.plan import Plan
from horde.coordinator.run.options import RunOptions
from horde.coordinator.run.target import RunError


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
    if options.in_process:
        import os
        import socket

        from horde.cluster.local import LocalFleet

        shape = ClusterShape(
            kind="in-process",
            address="",
            nodes=(NodeShape(node="local", host=socket.gethostname(), cpus=float(os.cpu_count() or 1)),),
        )
        return Cluster(shape, lambda plan: LocalFleet(silence_s=silence_s(scenario)))

    from horde.cluster.connect import ClusterError, connect
    from horde.cluster.fleet import RayFleet

    try:
        connection = connect(options.address)
    except ClusterError as exc:
        raise RunError(str(exc)) from exc
    return Cluster(
        connection.shape,
        lambda plan: RayFleet(
            cpus_per_agent=plan.cpus_per_agent,
            ready_timeout_s=options.ready_timeout_s,
            silence_s=1.5 * scenario.flush_interval,
            probe_timeout_s=0.5 * scenario.flush_interval,
        ),
        connection,
    )
