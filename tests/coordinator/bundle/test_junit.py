"""horde.coordinator.bundle.junit: one JUnit test case per threshold, built with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from horde.coordinator.bundle.junit import junit_xml
from horde.coordinator.bundle.schema import ThresholdResult

RESULTS = [
    {
        "expr": "p99(latency) < 250ms",
        "endpoint": None,
        "stage": None,
        "abort": False,
        "ok": True,
        "observed": 1.2e8,
        "observed_text": "120ms",
    },
    {
        "expr": "error_rate < 1%",
        "endpoint": 'search <q> & "x"',
        "stage": "hold",
        "abort": True,
        "ok": False,
        "observed": 0.04,
        "observed_text": "4.00% <high>",
    },
]


def test_junit_holds_a_case_per_threshold_and_a_failure_per_failed_one() -> None:
    text = junit_xml("synthetic <run>", RESULTS, 20.0)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text.split("\n", 1)[1])
    (suite,) = root.findall("testsuite")
    assert suite.attrib == {
        "name": "horde.synthetic <run>",
        "tests": "2",
        "failures": "1",
        "errors": "0",
        "time": "20.000",
    }
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "p99(latency) < 250ms",
        'error_rate < 1% [endpoint=search <q> & "x"] [stage=hold]',
    ]
    assert {c.get("classname") for c in cases} == {"horde.synthetic <run>.thresholds"}
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure.get("message") == "observed 4.00% <high>"
    assert failure.text == 'error_rate < 1% [endpoint=search <q> & "x"] [stage=hold]: observed 4.00% <high>'


def test_typed_results_and_none() -> None:
    typed = [ThresholdResult.model_validate(r) for r in RESULTS]
    assert junit_xml("s", typed, 1.0) == junit_xml("s", RESULTS, 1.0)
    root = ET.fromstring(junit_xml("s", [], 0.0).split("\n", 1)[1])
    assert root.find("testsuite").get("tests") == "0" and not root.findall("testsuite/testcase")
