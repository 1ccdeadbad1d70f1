"""The performance suite: horde's scenarios run through its public API against the automaton.

Sizes: by default each scenario is shrunk to fit CI (fewer users, stages of a few seconds,
given as `--set`-style overrides next to each test); with `HORDE_PERF_FULL=1` or
`--perf-full` the scenario files run as they are written (minutes each).

Every test prints the figures it measured (and records them as user properties), so
`pytest tests/performance/ -v -s` or `--json-report` keeps them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from horde.coordinator.run.session import RunOptions, RunResult, run_scenario
from horde.coordinator.scenario.load import LoadedScenario, load_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--perf-full",
        action="store_true",
        default=False,
        help="performance suite: run the scenario files at their full sizes (also HORDE_PERF_FULL=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full_only: runs only at full size (HORDE_PERF_FULL=1 or --perf-full)")


def _full(config: pytest.Config) -> bool:
    return os.environ.get("HORDE_PERF_FULL", "") not in ("", "0") or bool(config.getoption("--perf-full", False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _full(config):
        return
    skip = pytest.mark.skip(reason="full size only: set HORDE_PERF_FULL=1 or pass --perf-full")
    for item in items:
        if "full_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def perf_full(pytestconfig: pytest.Config) -> bool:
    return _full(pytestconfig)


@pytest.fixture
def run_options(tmp_path: Path) -> RunOptions:
    return RunOptions(out_dir=str(tmp_path / "results"), install_signal_handlers=False)


@pytest.fixture
def load(perf_full: bool) -> Callable[..., LoadedScenario]:
    """load("load-10", ci=[...], overrides=[...], target=URL): a shipped scenario, CI-sized
    unless full size is asked for."""

    def _load(
        name: str, *, ci: Sequence[str] = (), overrides: Sequence[str] = (), target: str | None = None
    ) -> LoadedScenario:
        ov = list(overrides) + ([] if perf_full else list(ci))
        if target is not None:
            ov.append(f"target={target}")
        return load_scenario(SCENARIOS / f"{name}.yaml", overrides=ov)

    return _load


@pytest.fixture
def run(ray_cluster: str, run_options: RunOptions) -> Callable[[LoadedScenario], RunResult]:
    """run(loaded) on the session's embedded Ray."""

    def _run(loaded: LoadedScenario) -> RunResult:
        return run_scenario(loaded, run_options)

    return _run


@pytest.fixture
def report(record_property: Callable[[str, Any], None]) -> Callable[..., None]:
    """report(key=value, ...): print the figures a test measured and record them."""

    def _report(**figures: Any) -> None:
        for key, value in figures.items():
            record_property(key, value)
            print(f"{key}: {json.dumps(value, default=str)}")

    return _report


@pytest.fixture
def verdicts() -> Callable[[RunResult], dict[str, dict[str, Any]]]:
    """verdicts(result): the run's threshold results by expression (with its scope)."""

    def _verdicts(result: RunResult) -> dict[str, dict[str, Any]]:
        out = {}
        for t in result.summary.get("thresholds", []):
            scope = "".join(f" [{k}={t[k]}]" for k in ("endpoint", "stage") if t.get(k))
            out[t["expr"] + scope] = t
        return out

    return _verdicts
