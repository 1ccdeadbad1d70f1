"""A scenario's `alerts:` section is a typed pydantic model: key paths, JSON schema, rules. Pure."""

from __future__ import annotations

import pytest
import yaml

from horde.coordinator.judge.alert_rules import DEFAULT_RULES, AlertRule
from horde.coordinator.judge.alert_section import AlertRuleEntry
from horde.coordinator.scenario.load import ScenarioError, parse_scenario
from horde.coordinator.scenario.models import Scenario, scenario_json_schema

BASE = {
    "name": "alerting",
    "target": "embedded",
    "requests": [{"name": "health", "path": "/health"}],
    "workload": {"model": "open", "stages": [{"duration": "10s", "target": 5}]},
}


def parse(alerts: object) -> Scenario:
    return parse_scenario(yaml.safe_dump({**BASE, "alerts": alerts}, sort_keys=False), source="s.yaml").scenario


def problems(alerts: object) -> list[tuple[str, str]]:
    with pytest.raises(ScenarioError) as info:
        parse(alerts)
    return [(p.path, p.message) for p in info.value.problems]


def test_the_section_is_typed_and_gives_the_engines_rules():
    scenario = parse(
        [
            "defaults",
            {
                "name": "slow",
                "metric": "p99(latency)",
                "endpoint": "health",
                "warning": "> 200ms",
                "critical": "1s",
                "for": "5s",
                "clear": "10s",
            },
        ]
    )
    assert scenario.alerts is not None
    assert scenario.alerts[0] == "defaults" and isinstance(scenario.alerts[1], AlertRuleEntry)
    assert scenario.alert_rules() == (
        *DEFAULT_RULES,
        AlertRule("slow", "p99(latency)", warning=0.2, critical=1.0, for_s=5.0, clear_s=10.0, endpoint="health"),
    )
    assert parse(None).alert_rules() == DEFAULT_RULES
    assert parse([]).alert_rules() == ()


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        (
            [{"metric": "p95(latency)", "warning": 1}],
            [("alerts[0].warning", "a duration needs a unit, e.g. 1s or 250ms (got 1)")],
        ),
        (
            [{"metric": "p95(latency)", "warning": "1s", "colour": "red"}],
            [
                (
                    "alerts[0].colour",
                    "unknown key; expected one of: name, metric, endpoint, warning, critical, for, clear",
                )
            ],
        ),
        (
            [{"metric": "p95(latency)", "warning": "1s", "endpoint": "nope"}],
            [("alerts[0].endpoint", "no request entry named 'nope'; expected \"*\" or one of: health")],
        ),
        ([{"metric": "rps"}], [("alerts[0]", "give a warning level, a critical level or both")]),
        (
            ["defaults", {"name": "cpu", "metric": "target_cpu", "warning": "50%"}],
            [("alerts[1].name", "duplicate rule name 'cpu' (also at [0])")],
        ),
        (
            [{"metric": "error_rate", "warning": "> 5%", "critical": "< 20%", "for": "soon"}],
            [
                ("alerts[0].critical", "must use the same comparison as warning (>)"),
                (
                    "alerts[0].for",
                    (
                        "invalid duration 'soon': expected a number with a unit (ns, us, ms, s, m, h) "
                        "such as 30s, 250ms or 1m30s"
                    ),
                ),
            ],
        ),
        ([3], [("alerts[0]", 'expected a rule mapping or "defaults", got int')]),
        ({"metric": "rps"}, [("alerts", "expected a list of alert rules, got dict")]),
    ],
)
def test_problems_have_key_paths(alerts, expected):
    assert problems(alerts) == expected


def test_without_the_loader_the_scenario_checks_the_endpoint_too():
    data = {**BASE, "target": {"embedded": {}}, "alerts": [{"metric": "rps", "warning": "< 1", "endpoint": "x"}]}
    with pytest.raises(ValueError, match="no request entry named 'x'"):
        Scenario.model_validate(data)


def test_json_schema_has_the_rule_model():
    schema = scenario_json_schema()
    items = schema["properties"]["alerts"]["anyOf"][0]["items"]["anyOf"]
    assert {"$ref": "#/$defs/AlertRuleEntry"} in items and {"const": "defaults", "type": "string"} in items
    rule = schema["$defs"]["AlertRuleEntry"]
    assert rule["required"] == ["metric"] and rule["additionalProperties"] is False
    assert list(rule["properties"]) == ["name", "metric", "endpoint", "warning", "critical", "for", "clear"]
    assert {alt.get("type") for alt in rule["properties"]["warning"]["anyOf"]} == {"string", "number", "null"}
