"""junit.xml: one test case per threshold, a failed threshold a JUnit failure (for CI).

Built with xml.etree.ElementTree, so names and messages with markup characters or quotes
are escaped by the XML library, not by hand.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from horde.coordinator.bundle.schema import ThresholdResult


def _threshold(r: ThresholdResult | dict[str, Any]) -> ThresholdResult:
    return r if isinstance(r, ThresholdResult) else ThresholdResult.model_validate(r)


def case_name(t: ThresholdResult) -> str:
    """The expression plus its scope: `p95(latency) < 5ms [endpoint=health] [stage=hold]`."""
    scope = "".join(f" [{k}={v}]" for k, v in (("endpoint", t.endpoint), ("stage", t.stage)) if v)
    return t.expr + scope


def junit_xml(suite: str, results: Iterable[ThresholdResult | dict[str, Any]], duration_s: float) -> str:
    """The JUnit XML document (with its declaration) of a run's threshold results."""
    thresholds = [_threshold(r) for r in results]
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        {
            "name": f"horde.{suite}",
            "tests": str(len(thresholds)),
            "failures": str(sum(1 for t in thresholds if not t.ok)),
            "errors": "0",
            "time": f"{duration_s:.3f}",
        },
    )
    for t in thresholds:
        name = case_name(t)
        case = ET.SubElement(ts, "testcase", {"classname": f"horde.{suite}.thresholds", "name": name, "time": "0"})
        if not t.ok:
            msg = f"observed {t.observed_text}"
            failure = ET.SubElement(case, "failure", {"message": msg})
            failure.text = f"{name}: {msg}"
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
