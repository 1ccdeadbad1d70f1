"""The reference automaton: the system under test horde ships (aiohttp + SQLite).

Its "agents" are simulated AI agents of the target, unrelated to horde's traffic agents.

The names below are imported on first use, so that `horde.automaton.catalog` or
`horde.automaton.faults` (pure, used by the scenario loader) do not pull in the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS = {
    "AutomatonConfig": "horde.automaton.config",
    "AutomatonError": "horde.automaton.launch",
    "AutomatonProcess": "horde.automaton.launch",
    "FaultConfig": "horde.automaton.faults",
    "FaultConfigError": "horde.automaton.faults",
    "bind_server": "horde.automaton.app",
    "build_app": "horde.automaton.app",
    "serve": "horde.automaton.server",
    "serve_async": "horde.automaton.server",
    "stall_remaining": "horde.automaton.faults",
    "start_automaton": "horde.automaton.launch",
}

__all__ = [
    "AutomatonConfig",
    "AutomatonError",
    "AutomatonProcess",
    "FaultConfig",
    "FaultConfigError",
    "bind_server",
    "build_app",
    "serve",
    "serve_async",
    "stall_remaining",
    "start_automaton",
]

if TYPE_CHECKING:
    from horde.automaton.app import bind_server, build_app
    from horde.automaton.config import AutomatonConfig
    from horde.automaton.faults import FaultConfig, FaultConfigError, stall_remaining
    from horde.automaton.launch import AutomatonError, AutomatonProcess, start_automaton
    from horde.automaton.server import serve, serve_async


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'automaton' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
