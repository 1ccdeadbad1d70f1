"""The one seam that starts a run's target: a URL starts nothing, `embedded` starts the automaton.

`run_scenario` starts the target in a background thread (`start_target_in_background`) so
the automaton's start overlaps Ray's; the workflows that want it at once call `start_target`.
Either way the result is a `Target`: where the load goes, which /metrics to scrape, and the
process horde started (if any), which `stop()` ends.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

# Long enough for the automaton's own start timeout (20 s) with room for a busy machine.
_BACKGROUND_CLOSE_WAIT_S = 60.0


class RunError(RuntimeError):
    """A run that could not start (target, cluster, placement); the message says why."""


def embedded_faults(scenario: Any) -> dict[str, Any] | None:
    """The embedded automaton's faults in wire form, with the scenario's seed (None: a URL target)."""
    embedded = scenario.target.embedded
    if embedded is None:
        return None
    faults = embedded.faults_config()
    faults.setdefault("seed", scenario.seed)  # the scenario's seed drives the faults too
    return faults


@dataclass
class Target:
    url: str  # base URL the load goes to
    # Prometheus /metrics to scrape: the scenario's `target.metrics` if given, else the
    # embedded automaton's own; None for a URL target without one.
    metrics_url: str | None
    process: Any | None = None  # the AutomatonProcess when horde started one, else None

    def stop(self) -> None:
        """Stop the process horde started; idempotent, and a no-op for a URL target."""
        process, self.process = self.process, None
        if process is not None:
            process.stop()


def _metrics_url(scenario: Any, process: Any | None) -> str | None:
    given = getattr(scenario.target, "metrics", None)
    if given:
        return given
    if process is not None:
        return process.url.rstrip("/") + "/metrics"
    return None


def start_target(scenario: Any, **start_kwargs: Any) -> Target:
    """Start the scenario's target (blocking). Raises RunError if the automaton did not start."""
    if not scenario.target.is_embedded:
        return Target(url=scenario.target.url, metrics_url=_metrics_url(scenario, None))
    from horde.automaton.launch import AutomatonError, start_automaton

    try:
        process = start_automaton(faults=embedded_faults(scenario), **start_kwargs)
    except AutomatonError as exc:
        raise RunError(f"the embedded automaton did not start: {exc}") from exc
    return Target(url=process.url, metrics_url=_metrics_url(scenario, process), process=process)


class TargetStarting:
    """A target being started in a background thread; `result()` waits for it."""

    def __init__(self, scenario: Any, **start_kwargs: Any) -> None:
        self._target: Target | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._start, args=(scenario,), kwargs=start_kwargs, name="horde-target", daemon=True
        )
        self._thread.start()

    def _start(self, scenario: Any, **start_kwargs: Any) -> None:
        try:
            self._target = start_target(scenario, **start_kwargs)
        except BaseException as exc:  # handed to result(); a thread must not die with it
            self._error = exc

    def result(self) -> Target:
        """The started target. Raises RunError if the automaton did not start."""
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, RunError) or not isinstance(self._error, Exception):
                raise self._error
            raise RunError(f"the target did not start: {type(self._error).__name__}: {self._error}")
        assert self._target is not None
        return self._target

    def close(self) -> None:
        """Stop the target, waiting for its start if need be (a run that failed before taking it)."""
        self._thread.join(_BACKGROUND_CLOSE_WAIT_S)
        if self._target is not None:
            with contextlib.suppress(Exception):
                self._target.stop()


def start_target_in_background(scenario: Any, **start_kwargs: Any) -> TargetStarting:
    """Start the target in a thread, so it overlaps the cluster's start."""
    return TargetStarting(scenario, **start_kwargs)
