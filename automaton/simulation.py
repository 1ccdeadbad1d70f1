"""What the simulated agents and tools do: a little CPU and an awaited delay each.

The CPU part is real work on the event loop (it shows in process CPU and delays other
requests, like a real handler); the delay stands for a call to a slower backend.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from horde.automaton.catalog import SEARCH_CORPUS, SimulatedAgent
from horde.automaton.config import AutomatonConfig

_MAX_ECHO_CHARS = 80


class ToolInputError(ValueError):
    """The tool's payload is malformed: the client's fault (400)."""


def burn_cpu(rounds: int, seed: bytes) -> str:
    """Chain sha256 `rounds` times: deterministic, unoptimisable CPU work."""
    digest = hashlib.sha256(seed).digest()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


async def agent_respond(agent: SimulatedAgent, payload: dict[str, Any], config: AutomatonConfig) -> dict[str, Any]:
    message = str(payload.get("message", "hello"))
    digest = burn_cpu(config.think_cpu_rounds, f"{agent.agent_id}:{message}".encode())
    if config.think_delay_s > 0:
        await asyncio.sleep(config.think_delay_s)
    return {
        "agent_id": agent.agent_id,
        "agent": agent.name,
        "reply": f"{agent.name} considered: {message[:_MAX_ECHO_CHARS]}",
        "thought_digest": digest,
    }


def _search(payload: dict[str, Any]) -> dict[str, Any]:
    query = payload.get("query", "testing")
    if not isinstance(query, str):
        raise ToolInputError("query must be a string")
    words = {w.lower() for w in query.split()}
    hits = [title for title in SEARCH_CORPUS if words & {w.lower() for w in title.split()}]
    return {"query": query, "hits": hits[:5]}


_CALCULATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "min": min,
    "max": max,
    "mean": lambda xs: sum(xs) / len(xs),
}


def _calculator(payload: dict[str, Any]) -> dict[str, Any]:
    op = payload.get("op", "sum")
    numbers = payload.get("numbers", [1, 2, 3])
    if op not in _CALCULATIONS:
        raise ToolInputError(f"op must be one of {sorted(_CALCULATIONS)}")
    valid = (
        isinstance(numbers, list)
        and numbers
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers)
    )
    if not valid:
        raise ToolInputError("numbers must be a non-empty list of numbers")
    return {"op": op, "value": _CALCULATIONS[op](numbers)}


def _summarize(payload: dict[str, Any]) -> dict[str, Any]:
    text = payload.get("text", " ".join(SEARCH_CORPUS))
    max_words = payload.get("max_words", 8)
    if not isinstance(text, str):
        raise ToolInputError("text must be a string")
    if not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1:
        raise ToolInputError("max_words must be an integer >= 1")
    words = text.split()
    return {"summary": " ".join(words[:max_words]), "words": len(words)}


_TOOLS = {"search": _search, "calculator": _calculator, "summarize": _summarize}


async def tool_invoke(name: str, payload: dict[str, Any], config: AutomatonConfig) -> dict[str, Any]:
    """Run tool `name` (one of catalog.TOOL_NAMES); raises ToolInputError on a bad payload."""
    output = _TOOLS[name](payload)
    burn_cpu(config.tool_cpu_rounds, name.encode())
    if config.tool_delay_s > 0:
        await asyncio.sleep(config.tool_delay_s)
    return {"tool": name, "output": output}
