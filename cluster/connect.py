"""Embedded Ray on this machine, or attach to an existing cluster."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from horde.cluster.events import ClusterShape, NodeShape
from horde.cluster.shipping import JOB_ID_ENV, horde_py_module

# Ray's own metrics (the Prometheus/Grafana export of every Ray process) stall a traffic
# agent's event loop: measured on 2 cores, an agent at 5000 requests/s saw 50-100 ms loop
# stalls with them (p99 50-80 ms against an nginx answering in 0.1 ms) and 17-23 ms
# without (p99 16-18 ms). horde reports its own figures and reads none of Ray's, so the
# embedded Ray runs without them. A `ray start` cluster sets RAY_enable_metrics_collection=0
# itself (ray-config.yaml).
EMBEDDED_SYSTEM_CONFIG = {"enable_metrics_collection": False}


class ClusterError(RuntimeError):
    pass


@dataclass
class Connection:
    shape: ClusterShape
    owned: bool  # True when this process started Ray and must shut it down

    def close(self) -> None:
        if self.owned and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Connection:
    """Reuse an initialised Ray, attach to `address`, or start an embedded single-node Ray."""
    if ray.is_initialized():
        return Connection(shape=cluster_shape("attached" if address else "embedded"), owned=False)
    kwargs: dict = dict(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        configure_logging=True,
    )
    # Inside a Ray job (or with RAY_ADDRESS exported) attach to that cluster.
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address and os.environ.get(JOB_ID_ENV):
            ray.init(address=address, **kwargs)  # a horde job: its runtime_env already ships horde
            kind = "attached"
        elif address:
            with horde_py_module() as horde_dir:  # nodes need not have horde installed
                ray.init(address=address, runtime_env={"py_modules": [horde_dir]}, **kwargs)
            kind = "attached"
        else:
            # address="local": always a new instance, never a `ray start` cluster found on this machine
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                _system_config=EMBEDDED_SYSTEM_CONFIG,
                **kwargs,
            )
            kind = "embedded"
    except Exception as exc:  # Ray raises many types for a bad address or a failed start
        where = f"Ray cluster at {address}" if address else "an embedded Ray"
        raise ClusterError(f"could not start or reach {where}: {exc}") from exc
    return Connection(shape=cluster_shape(kind, address or ""), owned=True)


def cluster_shape(kind: str, address: str = "") -> ClusterShape:
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        nodes.append(
            NodeShape(
                node=n["NodeID"],
                host=n.get("NodeManagerHostname", n.get("NodeManagerAddress", "")),
                cpus=float(res.get("CPU", 0.0)),
                alive=bool(n.get("Alive", False)),
                resources={k: float(v) for k, v in res.items() if not k.startswith("node:")},
            )
        )
    return ClusterShape(kind=kind, address=address, nodes=tuple(nodes))
