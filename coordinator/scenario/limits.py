"""The scenario's `limits`: how much of a response a peer can make horde hold or wait for.

    limits:
      max_response_bytes: 64MiB     # a body over it: the request fails as too_large
      max_header_bytes: 64KiB       # a response head (aiohttp: a head line) over it: protocol
      header_timeout: 10s           # no complete head this long after sending: timeout

They apply to every request of the run (both engines and flow steps) and to `horde
monitor`'s probes of the scenario; `to_agent()` is the agents' copy (agents/spec.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from horde.agents.samples import MAX_BYTES
from horde.agents.spec import DEFAULT_LIMITS
from horde.agents.spec import Limits as AgentLimits
from horde.automaton.units import Size
from horde.coordinator.scenario.fields import Duration, _between, _Model

MIN_RESPONSE_CAP_BYTES = 1024
MAX_HEADER_CAP_BYTES = 16 * 1024 * 1024  # aiohttp keeps a head line whole in memory: no more than this


class Limits(_Model):
    # The cap is at most what a sample's 32-bit byte count can say (4 GiB - 1).
    max_response_bytes: Size = Field(DEFAULT_LIMITS.max_response_bytes, ge=MIN_RESPONSE_CAP_BYTES, le=MAX_BYTES)
    max_header_bytes: Size = Field(DEFAULT_LIMITS.max_header_bytes, ge=1024, le=MAX_HEADER_CAP_BYTES)
    header_timeout: Annotated[Duration, _between(0.001, 3600.0)] = DEFAULT_LIMITS.header_timeout_s

    def to_agent(self) -> AgentLimits:
        return AgentLimits(
            max_response_bytes=self.max_response_bytes,
            max_header_bytes=self.max_header_bytes,
            header_timeout_s=self.header_timeout,
        )
