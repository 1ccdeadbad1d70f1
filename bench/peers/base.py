"""What the runner hands a peer, and what a peer reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Load:
    """The same load for every peer: `users` keep-alive connections, back to back, for `seconds`."""

    url: str
    users: int
    seconds: int
    workdir: Path  # private to this peer run: output files, temp scenario, bundle


@dataclass(frozen=True)
class Count:
    """A peer's own account of its run."""

    requests: int  # completed requests, as the tool counts them
    errors: int  # failed requests (non-2xx/3xx or transport errors), as the tool counts them
    run_s: float  # span of the load as the tool measured it (its duration if it reports none)
    extra: dict[str, float] = field(default_factory=dict)  # e.g. {"agent_cpu_s": ...}


class PeerFailed(RuntimeError):
    """The peer ran but its output cannot be read as a result."""


class Peer(Protocol):
    """A generator the runner can launch. Optionally also `process_part(pid, top) -> str`:
    the name of the part of the run a process of its tree is (`top`: the command itself),
    for the runner's steady-state breakdown by process (bench/peers/horde.py has one)."""

    name: str
    startup_slack_s: float  # time allowed beyond `seconds` for start-up and shutdown

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (shown as the skip reason), or None."""

    def command(self, load: Load) -> list[str]:
        """argv of the generator; it is run pinned, as a child of the CPU meter."""

    def count(self, load: Load, stdout: str, exit_code: int) -> Count:
        """Read the result from stdout or files in load.workdir; PeerFailed if there is none."""
