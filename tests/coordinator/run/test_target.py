"""coordinator/run/target.py: the one seam that starts a run's target."""

from __future__ import annotations

import textwrap
import urllib.request

import pytest

from horde.coordinator.run.target import (
    RunError,
    Target,
    embedded_faults,
    start_target,
    start_target_in_background,
)
from horde.coordinator.scenario.load import parse_scenario

_BODY = """
requests:
  - {name: health, method: GET, path: /health}
workload:
  model: open
  stages:
    - {duration: 1s, target: 1}
"""


def _scenario(target: str, extra: str = ""):
    text = f"name: t\nseed: 7\n{target}\n{extra}" + textwrap.dedent(_BODY)
    return parse_scenario(text).scenario


def test_a_url_target_starts_nothing_and_has_no_metrics_unless_given():
    scenario = _scenario("target: http://127.0.0.1:9/")
    target = start_target(scenario)
    assert target == Target(url="http://127.0.0.1:9/", metrics_url=None, process=None)
    target.stop()  # a no-op, twice
    target.stop()
    assert embedded_faults(scenario) is None


def test_a_url_target_scrapes_the_metrics_url_it_gives():
    scenario = _scenario("target: {url: 'http://127.0.0.1:9', metrics: 'http://127.0.0.1:10/metrics'}")
    starting = start_target_in_background(scenario)
    target = starting.result()
    starting.close()
    assert (target.url, target.metrics_url, target.process) == (
        "http://127.0.0.1:9",
        "http://127.0.0.1:10/metrics",
        None,
    )


def test_embedded_faults_carry_the_scenario_seed_unless_one_is_written():
    assert embedded_faults(_scenario("target: embedded"))["seed"] == 7
    written = _scenario("target: {embedded: {faults: {seed: 3}}}")
    assert embedded_faults(written)["seed"] == 3


@pytest.mark.timeout(60)
def test_an_embedded_target_is_a_real_automaton_that_stop_ends():
    scenario = _scenario("target: embedded")
    target = start_target(scenario)
    try:
        assert target.process is not None
        assert target.url.startswith("http://127.0.0.1:")
        assert target.metrics_url == target.url.rstrip("/") + "/metrics"
        with urllib.request.urlopen(target.url.rstrip("/") + "/health", timeout=10) as r:
            assert r.status == 200
        assert target.process.faults()["seed"] == 7  # the seed went over the wire
        process = target.process
    finally:
        target.stop()
    assert process.process.poll() is not None  # the automaton's process has ended
    assert target.process is None
    target.stop()  # idempotent


@pytest.mark.timeout(60)
def test_an_embedded_target_given_metrics_scrapes_those():
    scenario = _scenario("target: {embedded: {}, metrics: 'http://127.0.0.1:10/metrics'}")
    starting = start_target_in_background(scenario)
    try:
        target = starting.result()
        assert target.process is not None and target.metrics_url == "http://127.0.0.1:10/metrics"
    finally:
        starting.close()
    assert target.process is None  # close() stopped it


@pytest.mark.timeout(60)
def test_close_without_result_stops_the_automaton():
    starting = start_target_in_background(_scenario("target: embedded"))
    starting.close()  # waits for the start, then stops it
    assert starting._target is not None and starting._target.process is None


def test_an_automaton_that_cannot_start_is_a_run_error():
    scenario = _scenario("target: embedded")
    starting = start_target_in_background(scenario, host="256.0.0.1", startup_timeout_s=5)
    with pytest.raises(RunError, match="the embedded automaton did not start"):
        starting.result()
    starting.close()
