"""The reference automaton: the system under test horde ships (aiohttp + SQLite).

Its "agents" are simulated AI agents of the target, unrelated to horde's traffic agents.
"""

from automaton.app import bind_server, build_app
from automaton.config import AutomatonConfig
from automaton.faults import FaultConfig, stall_remaining
from automaton.launch import AutomatonError, AutomatonProcess, start_automaton
from automaton.server import serve, serve_async

__all__ = [
    "AutomatonConfig",
    "AutomatonError",
    "AutomatonProcess",
    "FaultConfig",
    "bind_server",
    "build_app",
    "serve",
    "serve_async",
    "stall_remaining",
    "start_automaton",
]
