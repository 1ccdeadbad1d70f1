"""The redaction rule (coordinator/scenario/redact.py), part by part."""

from __future__ import annotations

import pytest

from horde.coordinator.scenario.load import ScenarioError, parse_scenario
from horde.coordinator.scenario.redact import Redactor, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://bob:pw@h:1/x", "http://***@h:1/x"),
        ("http://bob@h/x", "http://***@h/x"),  # a user alone is userinfo too
        ("https://h/x?access_token=t&page=2", "https://h/x?access_token=***&page=2"),
        (
            "/hook?X-Amz-Signature=s&sig=1&Session=2&credential=3&passwd=4",
            "/hook?X-Amz-Signature=***&sig=***&Session=***&credential=***&passwd=***",
        ),
        ("http://h/x?page=2&q=auth", "http://h/x?page=2&q=auth"),  # the name counts, not the value
        ("http://h:1/x", "http://h:1/x"),
        ("http://[::1/x", "http://[::1/x"),  # not a URL: left as it is
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_text_hides_env_values_inside_longer_text_and_urls_in_messages():
    r = Redactor.of(["s3cret-value", "ab", ""])
    assert r.text("got 'x-s3cret-value-y' at http://u:p@h/?key=k.") == "got 'x-***-y' at http://***@h/?key=***."
    assert r.text("ab") == "***"  # a short value: hidden where it is the whole text
    assert r.text("tab stops") == "tab stops"  # ... but not scrubbed out of other text


def test_value_hides_secret_named_keys_and_strings_keeps_horde_keys():
    r = Redactor.of(["envval-123"])
    data = {"headers": {"Cookie": "c", "X-Auth-Token": "t", "Accept": "a"}, "json": {"password": "p", "n": 1}}
    assert r.value(data) == {
        "headers": {"Cookie": "***", "X-Auth-Token": "***", "Accept": "a"},
        "json": {"password": "***", "n": 1},
    }
    alert = {"key": "p99(latency)", "text": "at /v/envval-123", "target": "http://u:p@h/"}
    assert r.strings(alert) == {"key": "p99(latency)", "text": "at /v/***", "target": "http://***@h/"}


def test_flow_step_headers_and_env_values_in_the_scenario_copy():
    text = """
name: t
target: "http://u:pw@127.0.0.1:1/?token=tk"
requests:
  - name: f
    flow:
      - {name: a, path: /a, headers: {Authorization: literal-auth, Cookie: literal-cookie}}
  - {name: b, path: "/b?x=${SECRET}", json: {note: "${SECRET}"}}
workload: {model: open, stages: [{duration: 1s, target: 1}]}
"""
    loaded = parse_scenario(text, env={"SECRET": "from-the-env"}, overrides=["requests[1].headers.X-Key=set-val"])
    shown = repr(loaded.as_run)
    for secret in ("u:pw", "token=tk", "literal-auth", "literal-cookie", "from-the-env", "set-val"):
        assert secret not in shown, secret
    assert loaded.as_run["requests"][0]["flow"][0]["headers"] == {"Authorization": "***", "Cookie": "***"}
    assert loaded.redactor.text("x from-the-env set-val") == "x *** ***"
    assert loaded.scenario.requests[0].flow[0].headers["Authorization"] == "literal-auth"  # what runs is real


def test_validation_messages_do_not_quote_env_values():
    text = """
name: t
target: embedded
requests: [{name: a, path: /a}]
agents: "n-${SECRET}"
workload: {model: open, stages: [{duration: 1s, target: 1}]}
"""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, env={"SECRET": "hidden-value"})
    assert "agents" in str(info.value) and "hidden-value" not in str(info.value)
