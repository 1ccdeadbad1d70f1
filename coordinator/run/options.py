"""What a caller gives `run_scenario` (RunOptions) and gets back (RunResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from horde.coordinator.bundle.outcome import EXIT_CODES, Outcome

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    address: str | None = None  # Ray address; None = embedded
    warm: bool = False  # `address` is the loopback head of `horde up`: its workers import horde from this machine
    in_process: bool = False  # agents on threads of this process, no Ray
    out_dir: str | None = None  # overrides scenario.output
    progress: Progress | None = None
    install_signal_handlers: bool = True
    ready_timeout_s: float = 60.0
    on_window: Callable[[dict], None] | None = None  # a live view; None: progress() gets a line per window
    prometheus_port: int | None = None  # serve live run metrics on 127.0.0.1:PORT (0 = any free port)
    prometheus_host: str = "127.0.0.1"


@dataclass
class RunResult:
    outcome: Outcome
    bundle: Path
    summary: dict
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        self.exit_code = EXIT_CODES[self.outcome]
