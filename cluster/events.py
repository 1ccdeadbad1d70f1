"""What a fleet tells the coordinator: plain values, no Ray types."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AgentInfo:
    index: int
    incarnation: int
    pid: int
    node: str  # node id (Ray) or "local"
    host: str


@dataclass(frozen=True)
class BatchReceived:
    index: int
    payload: bytes


@dataclass(frozen=True)
class AgentEnded:
    index: int
    incarnation: int


@dataclass(frozen=True)
class AgentLost:
    index: int
    incarnation: int
    reason: str
    detail: str = ""


FleetEvent = BatchReceived | AgentEnded | AgentLost


@dataclass(frozen=True)
class NodeShape:
    node: str
    host: str
    cpus: float
    alive: bool = True
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterShape:
    kind: str  # "embedded" | "attached" | "in-process"
    address: str
    nodes: tuple[NodeShape, ...]

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes if n.alive)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "address": self.address,
            "cpus": self.cpus,
            "nodes": [{"node": n.node, "host": n.host, "cpus": n.cpus, "alive": n.alive} for n in self.nodes],
        }
