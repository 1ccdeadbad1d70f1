"""What the automaton offers: its simulated AI agents, tools and workflows.

These agents are the system under test's own; they have nothing to do with horde's
traffic agents (`agents/`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimulatedAgent:
    agent_id: str
    name: str
    role: str
    tools: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"id": self.agent_id, "name": self.name, "role": self.role, "tools": list(self.tools)}


@dataclass(frozen=True)
class Workflow:
    name: str
    agent_id: str
    tools: tuple[str, ...]


SIMULATED_AGENTS: dict[str, SimulatedAgent] = {
    a.agent_id: a
    for a in (
        SimulatedAgent("planner", "Planner", "breaks a goal into steps", ("search",)),
        SimulatedAgent("researcher", "Researcher", "finds and condenses sources", ("search", "summarize")),
        SimulatedAgent("analyst", "Analyst", "computes figures", ("calculator",)),
        SimulatedAgent("writer", "Writer", "drafts the answer", ("summarize",)),
    )
}

TOOL_NAMES: tuple[str, ...] = ("search", "calculator", "summarize")

WORKFLOWS: dict[str, Workflow] = {
    w.name: w
    for w in (
        Workflow("research", "researcher", ("search", "summarize")),
        Workflow("analysis", "analyst", ("calculator", "summarize")),
        Workflow("triage", "planner", ("search",)),
    )
}

# search's corpus: fixed, so results are deterministic for tests.
SEARCH_CORPUS: tuple[str, ...] = (
    "Load testing distributed systems",
    "Coordinated omission in latency measurement",
    "SQLite write-ahead logging",
    "Event loops and cooperative scheduling",
    "Percentiles, histograms and merging",
    "Spike and soak testing in practice",
    "Agents, tools and workflows",
    "Connection pools under overload",
)

# The routes that serve the system's work, by route name: the `endpoint` label of
# automaton_requests_total and the keys of per-endpoint faults. (/metrics and /stats
# observe the automaton and are neither counted nor faulted.)
ROUTE_NAMES: tuple[str, ...] = (
    "health",
    "agents_list",
    "agent_respond",
    "tool_invoke",
    "workflow_run",
    "workflow_get",
    "records_list",
    "records_create",
)
