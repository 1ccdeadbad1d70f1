"""The automaton's configuration: one frozen value, with module-level defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from horde.automaton.fault_model import TargetFaults

# ~0.2 ms of sha256 chaining on a 2020s core: enough CPU that a saturated automaton
# shows up in process_cpu_seconds_total, little enough to stay I/O-bound by default.
DEFAULT_THINK_CPU_ROUNDS = 450
DEFAULT_THINK_DELAY_S = 0.005
DEFAULT_TOOL_CPU_ROUNDS = 100
DEFAULT_TOOL_DELAY_S = 0.001
# SQLite serialises writers anyway; a few threads let reads overlap a write (WAL).
DEFAULT_DB_THREADS = 4


@dataclass(frozen=True)
class AutomatonConfig:
    # The faults: the same model as a scenario's target.embedded.faults.
    faults: TargetFaults = field(default_factory=lambda: TargetFaults.model_validate({}))
    # None: a fresh database in a temporary directory, deleted at shutdown.
    db_path: str | None = None
    think_cpu_rounds: int = DEFAULT_THINK_CPU_ROUNDS
    think_delay_s: float = DEFAULT_THINK_DELAY_S
    tool_cpu_rounds: int = DEFAULT_TOOL_CPU_ROUNDS
    tool_delay_s: float = DEFAULT_TOOL_DELAY_S
    # False: a workflow run completes before its POST answers. True: the POST answers
    # 202 "running" and the client polls GET /api/workflows/runs/{id}.
    async_workflows: bool = False
    db_threads: int = DEFAULT_DB_THREADS

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("think_cpu_rounds", "tool_cpu_rounds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("think_delay_s", "tool_delay_s"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0")
        if self.db_threads < 1:
            problems.append("db_threads must be >= 1")
        if problems:
            raise ValueError("invalid automaton configuration: " + "; ".join(problems))
