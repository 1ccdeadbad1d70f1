"""The target: an http(s) URL, or the embedded automaton with its faults.

The faults' model is the automaton's own (horde.automaton.fault_model: the automaton
reads the same model from `--faults-json` and its admin endpoint), so a scenario's
`target.embedded.faults` and the JSON the automaton receives are one schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator

from horde.automaton.fault_model import (
    ConcurrencyFault,
    EndpointFaults,
    LatencyFault,
    ScalingFault,
    Stall,
    TargetFaults,
)
from horde.coordinator.scenario.fields import _Model, _problems

__all__ = [
    "ConcurrencyFault",
    "EmbeddedTarget",
    "EndpointFaults",
    "LatencyFault",
    "ScalingFault",
    "Stall",
    "Target",
    "TargetFaults",
]


class EmbeddedTarget(_Model):
    """The reference automaton, with faults. `stall:` is short for `faults: {stall: ...}`."""

    stall: Stall | None = None
    faults: TargetFaults | None = None

    @model_validator(mode="after")
    def _stall_once(self) -> EmbeddedTarget:
        if self.stall is not None and self.faults is not None and self.faults.stall is not None:
            raise _problems([(("stall",), "given twice: also as faults.stall; keep one")])
        return self

    def faults_config(self) -> dict[str, Any]:
        """The faults as plain JSON for `start_automaton(faults=...)`: TargetFaults' wire form,
        with the `stall:` shorthand as the global stall and a seed only when one is written
        (the run gives the scenario's seed otherwise)."""
        faults = self.faults if self.faults is not None else TargetFaults.model_validate({})
        if self.stall is not None:
            faults = faults.model_copy(update={"stall": self.stall})
        config = faults.as_dict()
        if "seed" in faults.model_fields_set:
            config["seed"] = faults.seed
        return config


class Target(_Model):
    """Exactly one of `url` (an http or https service) and `embedded` (the reference automaton)."""

    url: str | None = None
    embedded: EmbeddedTarget | None = None
    # A Prometheus /metrics URL of the target (standard process metrics): sampled during the
    # run for resource series and thresholds. The embedded automaton's is used automatically.
    metrics: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"embedded": {}} if data.strip() == "embedded" else {"url": data}
        if isinstance(data, Mapping) and "embedded" in data and data["embedded"] in (None, True):
            return {**data, "embedded": {}}
        return data

    @field_validator("url", "metrics")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL, or 'embedded'")
        if not parts.hostname:
            raise ValueError("URL has no host")
        return url

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.url is None) == (self.embedded is None):
            raise ValueError("give exactly one of url and embedded")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None
