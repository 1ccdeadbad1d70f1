"""Scenario loading: models, every problem with its key path, interpolation, overrides, secrets."""

from __future__ import annotations

import copy
import math
import textwrap

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from horde.coordinator.scenario.load import Problem, ScenarioError, load_scenario, parse_scenario
from horde.coordinator.scenario.models import REDACTED, Scenario, scenario_json_schema
from horde.coordinator.units import format_duration, format_size, parse_duration, parse_percent, parse_size

FULL = textwrap.dedent(
    """\
    name: checkout-load
    description: the checkout path under a ramp
    target: http://127.0.0.1:8080
    requests:
      - name: list
        path: /api/records
        headers: {Accept: application/json}
        expect: [200, 404]
      - name: create
        method: post
        path: /api/records
        json: {kind: order, items: [1, 2]}
        weight: 3
    workload:
      model: open
      arrivals: poisson
      start: 5
      stages:
        - {duration: 30s, target: 100, name: ramp}
        - {duration: 1m, target: 100, name: hold}
        - {duration: 2.5, target: 0}
      max_in_flight: 500
      max_connections: 64
      graceful_stop: 2s
    agents: 4
    flush_interval: 500ms
    timeout: 2s
    connect_timeout: 1s
    thresholds:
      - p99(latency) < 500ms
      - {expr: "error_rate < 1%", endpoint: create, stage: hold, abort: true, delay: 10s, window: 5s}
      - {expr: "rps > 50", stage: 2}
    output: out
    seed: 7
    engine: auto
    """
)

BASE = yaml.safe_load(FULL)


def parse(data_or_text, **kw):
    text = data_or_text if isinstance(data_or_text, str) else yaml.safe_dump(data_or_text, sort_keys=False)
    return parse_scenario(text, source="s.yaml", **kw)


def problems_of(data_or_text, **kw) -> list[Problem]:
    with pytest.raises(ScenarioError) as info:
        parse(data_or_text, **kw)
    return info.value.problems


def with_(data: dict, path: str, value) -> dict:
    """A copy of data with the dotted path ("a.b[0].c") set (or deleted when value is DELETE)."""
    out = copy.deepcopy(data)
    parts: list = []
    for piece in path.split("."):
        name, *indexes = piece.replace("]", "").split("[")
        parts += [name] + [int(i) for i in indexes]
    node = out
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


DELETE = object()


# --- a valid scenario ---------------------------------------------------------------------


def test_full_scenario(tmp_path):
    path = tmp_path / "checkout.yaml"
    path.write_text(FULL)
    loaded = load_scenario(path, env={})
    s = loaded.scenario
    assert loaded.source == str(path)
    assert (s.name, s.agents, s.engine, s.seed, s.output) == ("checkout-load", 4, "auto", 7, "out")
    assert s.target.url == "http://127.0.0.1:8080" and not s.target.is_embedded
    assert [r.name for r in s.requests] == ["list", "create"]
    assert s.requests[1].method == "POST"  # upper-cased
    assert s.requests[1].json_body == s.requests[1].json == {"kind": "order", "items": [1, 2]}
    assert s.requests[0].expect == [200, 404] and s.requests[1].weight == 3.0
    w = s.workload
    assert (w.model, w.arrivals, w.start, w.max_in_flight, w.max_connections) == ("open", "poisson", 5.0, 500, 64)
    assert [(st.duration, st.target, st.name) for st in w.stages] == [
        (30.0, 100.0, "ramp"),
        (60.0, 100.0, "hold"),
        (2.5, 0.0, ""),
    ]
    assert w.total_duration_s == 92.5 and w.graceful_stop == 2.0 and w.think_time == (0.0, 0.0)
    assert (s.flush_interval, s.timeout, s.connect_timeout) == (0.5, 2.0, 1.0)
    rules = s.rules()
    assert [r.threshold.text for r in rules] == ["p99(latency) < 500ms", "error_rate < 1%", "rps > 50"]
    assert (rules[1].endpoint, rules[1].stage, rules[1].abort, rules[1].delay_s, rules[1].window_s) == (
        "create",
        "hold",
        True,
        10.0,
        5.0,
    )
    assert rules[2].stage == "2"  # an index given as a YAML number
    assert [s.stage_index(r) for r in ("ramp", "hold", "2")] == [0, 1, 2]
    assert loaded.as_run == BASE  # nothing secret in it


def test_defaults_and_short_forms():
    minimal = {
        "name": "m",
        "target": "embedded",
        "requests": [{"name": "health", "path": "/health"}],
        "workload": {"model": "closed", "stages": [{"duration": 10, "target": 5}], "think_time": "1s"},
    }
    s = parse(minimal, env={}).scenario
    assert s.target.is_embedded and s.target.embedded.stall is None
    assert (s.agents, s.flush_interval, s.timeout, s.connect_timeout, s.engine, s.seed) == (
        "auto",
        1.0,
        10.0,
        5.0,
        "auto",
        1,
    )
    assert s.time_compression == 1.0 and s.alerts is None and s.target.metrics is None
    assert s.requests[0].method == "GET" and s.requests[0].weight == 1.0 and s.requests[0].expect == []
    assert s.workload.think_time == (1.0, 1.0) and s.workload.graceful_stop == 5.0
    assert s.thresholds == [] and s.output == "results"

    stall = with_(minimal, "target", {"embedded": {"stall": {"every": "5s", "for": "1s"}}})
    s = parse(stall).scenario
    assert (s.target.embedded.stall.every_s, s.target.embedded.stall.for_s) == (5.0, 1.0)
    assert (
        parse(with_(minimal, "target", {"url": "https://example.com/x"})).scenario.target.url == "https://example.com/x"
    )
    ranged = parse(with_(minimal, "workload.think_time", {"min": "500ms", "max": 2})).scenario
    assert ranged.workload.think_time == (0.5, 2.0)


def test_models_are_frozen():
    s = parse(BASE).scenario
    with pytest.raises(ValidationError, match="frozen"):
        s.name = "other"  # type: ignore[misc]  # the point: assigning must fail


# --- problems with their paths ------------------------------------------------------------

PROBLEMS = [
    # (path to change, value, expected problem path, fragment of its message)
    ("name", "has space", "name", "may contain only letters, digits"),
    ("name", "x" * 81, "name", "at most 80 characters"),
    ("target", "ftp://host", "target", "must be an http:// or https:// URL"),  # short form: path stays "target"
    ("target", {"url": "http://"}, "target.url", "URL has no host"),
    ("target", {"url": "http://h:99999"}, "target.url", "invalid URL"),
    ("target", {}, "target", "give exactly one of url and embedded"),
    ("target", {"url": "http://h", "embedded": {}}, "target", "give exactly one"),
    (
        "target",
        {"embedded": {"stall": {"every": "1s", "for": "2s"}}},
        "target.embedded.stall.for",
        "shorter than 'every'",
    ),
    ("target", {"embedded": {"stall": {"every": 0, "for": "1s"}}}, "target.embedded.stall.every", "greater than 0"),
    ("requests", [], "requests", "must have at least one entry"),
    ("requests[0].name", "a b", "requests[0].name", "may contain only"),
    ("requests[1].name", "list", "requests[1].name", "duplicate name 'list' (also requests[0])"),
    ("requests[0].method", "FETCH", "requests[0].method", "must be 'GET', 'POST'"),
    ("requests[0].path", "api", "requests[0].path", "must start with '/'"),
    ("requests[1].body", "raw", "requests[1].body", "either json or body, not both"),
    ("requests[0].weight", 0, "requests[0].weight", "greater than 0"),
    ("requests[0].expect", [200, 700], "requests[0].expect[1]", "less than or equal to 599"),
    ("requests[0].headers", {"X-A": "a\r\nX-B: b"}, "requests[0].headers.X-A", "line breaks"),
    ("requests[0].colour", "red", "requests[0].colour", "unknown key; expected one of: name, method"),
    ("workload.model", "opne", "workload.model", "must be 'open' or 'closed' (got 'opne')"),
    ("workload.arrivals", "burst", "workload.arrivals", "must be 'constant' or 'poisson'"),
    ("workload.stages", [], "workload.stages", "must have at least one entry"),
    ("workload.stages", [{"duration": 0, "target": 1}], "workload.stages", "total duration must be more than 0"),
    ("workload.stages[1].duration", "10 parsecs", "workload.stages[1].duration", "invalid duration '10 parsecs'"),
    ("workload.stages[1].duration", -1, "workload.stages[1].duration", "must not be negative"),
    ("workload.stages[2].target", -5, "workload.stages[2].target", "greater than or equal to 0"),
    ("workload.stages[2].name", "ramp", "workload.stages[2].name", "duplicate name 'ramp' (also stages[0])"),
    ("workload.stages[2].name", "7", "workload.stages[2].name", "must not be a plain number"),
    ("workload.stages[0].duraton", "1s", "workload.stages[0].duraton", "did you mean 'duration'?"),
    ("workload.think_time", {"min": "2s", "max": "1s"}, "workload.think_time.min", "must not be more than max"),
    ("workload.think_time", {"min": "1s"}, "workload.think_time.max", "required key is missing"),
    ("workload.think_time", {"min": "1s", "max": "x"}, "workload.think_time.max", "invalid duration 'x'"),
    ("workload.max_in_flight", 0, "workload.max_in_flight", "greater than or equal to 1"),
    ("workload.max_connections", 0, "workload.max_connections", "greater than or equal to 1"),
    ("workload.model", DELETE, "workload.model", "required key is missing"),
    ("agents", 0, "agents", "whole number from 1 to 1024 or 'auto'"),
    ("agents", "many", "agents", "whole number from 1 to 1024 or 'auto'"),
    ("flush_interval", "50ms", "flush_interval", "must be between 100ms and 1m, got 50ms"),
    ("flush_interval", 61, "flush_interval", "must be between 100ms and 1m"),
    ("timeout", 0, "timeout", "greater than 0"),
    ("connect_timeout", True, "connect_timeout", "expected a duration"),  # a boolean is not a duration
    ("engine", "curl", "engine", "must be 'aiohttp', 'fast' or 'auto'"),
    ("thresholds[0]", "p99(latncy) < 5ms", "thresholds[0].expr", "unknown series 'latncy' at column 5"),
    ("thresholds[1].expr", "error_rate < 5", "thresholds[1].expr", "above 1 at column 14"),
    (
        "thresholds[1].endpoint",
        "nope",
        "thresholds[1].endpoint",
        "no request entry named 'nope'; expected one of: list, create",
    ),
    (
        "thresholds[1].stage",
        "warmup",
        "thresholds[1].stage",
        "no stage named 'warmup'; expected a stage name (ramp, hold) or an index 0..2",
    ),
    ("thresholds[1].stage", "3", "thresholds[1].stage", "stage index 3 is out of range"),
    ("thresholds[1].window", 0, "thresholds[1].window", "greater than 0"),
    ("thresholds[1].abort", "maybe", "thresholds[1].abort", "valid boolean"),
    ("thresholds[1].when", "now", "thresholds[1].when", "unknown key"),
    ("colour", "red", "colour", "unknown key; expected one of: name, description, target"),
]


@pytest.mark.parametrize("path,value,problem_path,fragment", PROBLEMS)
def test_each_problem_reports_its_path(path, value, problem_path, fragment):
    problems = problems_of(with_(BASE, path, value))
    assert problems[0].path == problem_path, problems
    assert fragment in problems[0].message
    # Anything else is a threshold whose endpoint or stage the change took away.
    assert all(p.path.startswith("thresholds[") for p in problems[1:]), problems
    assert "errors.pydantic.dev" not in problems[0].message and "[type=" not in problems[0].message


def test_closed_model_levels_are_whole_numbers():
    data = with_(BASE, "workload.model", "closed")
    data = with_(data, "workload.start", 1.5)
    data = with_(data, "workload.stages[1].target", 2.5)
    problems = problems_of(data)
    assert [(p.path, p.message) for p in problems] == [
        ("workload.start", "closed-model levels are user counts: expected a whole number, got 1.5"),
        ("workload.stages[1].target", "closed-model levels are user counts: expected a whole number, got 2.5"),
    ]
    assert parse(with_(data, "workload.model", "open")).scenario.workload.start == 1.5  # rates may be fractional


def test_all_problems_in_one_file_are_listed():
    text = textwrap.dedent(
        """\
        name: bad name
        target: embedded
        requests:
          - {name: a, path: nope, json: {}, body: x}
          - {name: a, path: /b}
        workload:
          model: closed
          stages:
            - {duration: 10xs, target: 1.5, name: up}
            - {duration: 1s, target: 1, name: up}
        timeout: -1
        thresholds:
          - p99(latency) <
          - {expr: "rps > 1", endpoint: c, stage: down}
        """
    )
    problems = problems_of(text)
    assert {p.path for p in problems} == {
        "name",
        "requests[0].path",
        "requests[0].body",  # a cross-field check, even though the entry has other problems
        "requests[1].name",  # duplicate, although requests[0] is invalid
        "workload.stages[0].duration",
        "workload.stages[0].target",  # closed model: whole users
        "workload.stages[1].name",  # duplicate stage name
        "timeout",
        "thresholds[0].expr",
        "thresholds[1].endpoint",
        "thresholds[1].stage",
    }, problems
    assert len(problems) == 11  # each once
    text = str(ScenarioError(problems))
    assert text.splitlines()[0] == f"{problems[0].path}: {problems[0].message}"
    assert len(text.splitlines()) == 11


def test_references_are_checked_without_the_loader_too():
    data = with_(BASE, "thresholds[1].endpoint", "nope")
    with pytest.raises(Exception) as info:
        Scenario.model_validate(data)
    assert "thresholds[1].endpoint: no request entry named 'nope'" in str(info.value)


def test_threshold_scoped_to_a_stage_by_index_or_name():
    for stage in ("ramp", "hold", "0", 2):
        s = parse(with_(BASE, "thresholds[1].stage", stage)).scenario
        assert s.thresholds[1].stage == str(stage)


# --- YAML ---------------------------------------------------------------------------------

YAML_ERRORS = [
    # (text, expected path, fragment)
    ("name: a\n  target: b\n", "s.yaml:2:9", "mapping values are not allowed here"),  # bad indentation
    ("name: a\nrequests: [a, b\n", "s.yaml:3:1", "expected ',' or ']'"),  # unclosed flow list
    ("name: 'a\n", "s.yaml:2:1", "found unexpected end of stream"),  # unclosed quote
    ("", "s.yaml", "the scenario is empty"),
    ("- a\n- b\n", "s.yaml", "expected a mapping of keys (name, target, ...) at the top, got a list"),
]


@pytest.mark.parametrize("text,path,fragment", YAML_ERRORS)
def test_yaml_errors(text, path, fragment):
    problems = problems_of(text)
    assert [p.path for p in problems] == [path]
    assert fragment in problems[0].message


def test_yaml_duplicate_key_is_a_problem_with_its_line():
    text = FULL + "timeout: 3s\n"  # FULL already has a timeout; YAML would quietly keep the last
    problems = problems_of(text)
    last_line = len(text.splitlines())
    assert [(p.path, p.message) for p in problems] == [(f"s.yaml:{last_line}:1", "duplicate key 'timeout'")]


def test_yaml_dates_stay_text():
    s = parse(FULL.replace("kind: order", "day: 2024-01-01")).scenario  # unquoted: YAML would make it a date
    assert s.requests[1].json_body["day"] == "2024-01-01"


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.yaml")
    [problem] = info.value.problems
    assert problem.path == str(tmp_path / "nope.yaml")
    assert "cannot read the scenario" in problem.message


# --- interpolation ------------------------------------------------------------------------

INTERPOLATION = [
    # (value written, env, value seen by the model)
    ("http://${HOST}:8080", {"HOST": "10.0.0.1"}, "http://10.0.0.1:8080"),  # set
    ("http://${HOST:-localhost}:8080", {}, "http://localhost:8080"),  # unset: default
    ("http://${HOST:-localhost}:8080", {"HOST": ""}, "http://localhost:8080"),  # empty: default, like a shell
    ("http://${HOST:-localhost}:8080", {"HOST": "h2"}, "http://h2:8080"),  # set beats default
    ("http://${A}${B}/", {"A": "h", "B": "3"}, "http://h3/"),  # two in one string
    ("http://h/$${X}", {}, "http://h/${X}"),  # $${ is a literal ${
    ("http://h/$x", {}, "http://h/$x"),  # a lone $ is text
]


@pytest.mark.parametrize("written,env,seen", INTERPOLATION)
def test_interpolation(written, env, seen):
    loaded = parse(with_(BASE, "target", written), env=env)
    assert loaded.scenario.target.url == seen


def test_interpolation_in_numbers_and_nested_values():
    data = with_(BASE, "workload.stages[0].target", "${RATE:-250}")
    data = with_(data, "thresholds[0]", "p99(latency) < ${P99:-500ms}")
    s = parse(data, env={"P99": "1s"}).scenario
    assert s.workload.stages[0].target == 250.0
    assert s.thresholds[0].threshold.value == 1e9


def test_interpolation_problems_have_key_paths():
    data = with_(BASE, "requests[0].headers", {"Authorization": "Bearer ${TOKEN}"})
    data = with_(data, "target", "http://${HOST")
    data = with_(data, "output", "${9X}")
    problems = problems_of(data, env={})
    assert [(p.path, p.message) for p in problems] == [
        ("target", "unclosed '${': expected ${NAME} or ${NAME:-default}"),
        (
            "requests[0].headers.Authorization",
            "environment variable TOKEN is not set (give a default with ${TOKEN:-default})",
        ),
        ("output", "invalid reference '${9X}': expected ${NAME} or ${NAME:-default}"),
    ]  # and no second "invalid URL" problem for the target that could not be interpolated


def test_load_scenario_reads_os_environ_by_default(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_(BASE, "target", "http://${HORDE_TEST_HOST}:1")))
    monkeypatch.setenv("HORDE_TEST_HOST", "example.org")
    assert load_scenario(path).scenario.target.url == "http://example.org:1"
    assert load_scenario(path, env={"HORDE_TEST_HOST": "other"}).scenario.target.url == "http://other:1"


# --- --set overrides ----------------------------------------------------------------------

OVERRIDES = [
    # (override, attribute path to read on the scenario, expected)
    ("workload.stages[0].target=10", lambda s: s.workload.stages[0].target, 10.0),  # list index
    ("target=http://127.0.0.1:9000", lambda s: s.target.url, "http://127.0.0.1:9000"),  # a URL stays text
    (
        "thresholds[0]={expr: 'rps > 1', abort: true}",
        lambda s: (s.thresholds[0].expr, s.thresholds[0].abort),
        ("rps > 1", True),
    ),
    ("thresholds[1].abort=false", lambda s: s.thresholds[1].abort, False),  # YAML boolean
    ("thresholds[3]=errors == 0", lambda s: s.thresholds[3].expr, "errors == 0"),  # index == len appends
    ("requests[0].expect=[201, 202]", lambda s: s.requests[0].expect, [201, 202]),  # YAML list
    ("requests[0].headers.X-Run=nightly", lambda s: s.requests[0].headers["X-Run"], "nightly"),  # new key in a dict
    ("timeout=250ms", lambda s: s.timeout, 0.25),
    ("workload.stages[3]={duration: 1s, target: 0}", lambda s: len(s.workload.stages), 4),
    ("agents=auto", lambda s: s.agents, "auto"),
    (" seed = 9", lambda s: s.seed, 9),  # spaces around the key
]


@pytest.mark.parametrize("override,read,expected", OVERRIDES)
def test_overrides(override, read, expected):
    assert read(parse(BASE, overrides=[override]).scenario) == expected


def test_override_creates_missing_maps():
    s = parse(BASE, overrides=["workload.think_time.min=1s", "workload.think_time.max=3s"]).scenario
    assert s.workload.think_time == (1.0, 3.0)
    s = parse(BASE, overrides=["target={}", "target.embedded.stall.every=5s", "target.embedded.stall.for=1s"])
    assert s.scenario.target.embedded.stall.every_s == 5.0


def test_overrides_apply_in_order():
    s = parse(BASE, overrides=["seed=2", "seed=3"]).scenario
    assert s.seed == 3


BAD_OVERRIDES = [
    # (override, fragment)
    ("seed", "expected KEY=VALUE"),  # no '='
    ("=5", "empty key"),
    ("workload..model=open", "invalid key 'workload..model' at character 9"),
    (".seed=1", "invalid key '.seed' at character 1"),
    ("workload.stages[x].target=1", "invalid key"),
    ("workload.stages[-1].target=1", "invalid key"),
    ("workload.stages[9].target=1", "index [9] is out of range: workload.stages has 3 entries (use [3] to append)"),
    ("name[0]=x", "name is a string, not a list: cannot use [0]"),
    ("workload.stages.name=x", "workload.stages is a list, not a mapping: cannot set 'name' in it"),
    ("target.url=x", "target is a string, not a mapping"),
    ("seed=[1,", "the value is not valid YAML"),
]


@pytest.mark.parametrize("override,fragment", BAD_OVERRIDES)
def test_bad_overrides(override, fragment):
    problems = problems_of(BASE, overrides=[override, "seed=5"])
    assert [p.path for p in problems] == [f"--set {override}"]
    assert fragment in problems[0].message


def test_override_problems_are_listed_with_model_problems():
    problems = problems_of(BASE, overrides=["nope", "workload.model=opne"])
    assert [p.path for p in problems] == ["--set nope", "workload.model"]


def test_overridden_value_is_validated():
    problems = problems_of(BASE, overrides=["workload.stages[0].duration=forever"])
    assert [p.path for p in problems] == ["workload.stages[0].duration"]


# --- secrets ------------------------------------------------------------------------------


def secret_data() -> dict:
    data = with_(
        BASE,
        "requests[0].headers",
        {
            "Authorization": "Bearer literal-in-file",  # sensitive by name
            "Cookie": "session=1",
            "X-Api-Key": "k1",
            "X-Session-Token": "t1",  # matches /token/i
            "X-Password": "p1",
            "Accept": "application/json",  # not sensitive
            "X-Tenant": "${TENANT}",  # not sensitive by name, but interpolated
        },
    )
    data = with_(data, "target", "http://${HOST:-127.0.0.1}:8080")  # interpolated: a secret, even from its default
    data = with_(data, "requests[1].json", {"user": "u", "password": "${PASSWORD}"})
    return data


def test_secrets_are_redacted_in_as_run_but_not_in_the_scenario():
    loaded = parse(secret_data(), env={"TENANT": "acme", "PASSWORD": "hunter2"})
    headers = loaded.as_run["requests"][0]["headers"]
    assert headers == {
        "Authorization": REDACTED,
        "Cookie": REDACTED,
        "X-Api-Key": REDACTED,
        "X-Session-Token": REDACTED,
        "X-Password": REDACTED,
        "Accept": "application/json",
        "X-Tenant": REDACTED,
    }
    assert loaded.as_run["target"] == REDACTED
    assert loaded.as_run["requests"][1]["json"] == {"user": "u", "password": REDACTED}
    assert "hunter2" not in repr(loaded.as_run) and "acme" not in repr(loaded.as_run)
    # The scenario that runs keeps the real values.
    s = loaded.scenario
    assert s.requests[0].headers["Authorization"] == "Bearer literal-in-file"
    assert s.requests[0].headers["X-Tenant"] == "acme"
    assert s.requests[1].json_body == {"user": "u", "password": "hunter2"}
    assert s.target.url == "http://127.0.0.1:8080"


def test_url_password_is_redacted():
    loaded = parse(with_(BASE, "target", "http://bob:s3cret@h:1/x"))
    assert loaded.as_run["target"] == "http://***@h:1/x"  # userinfo, user and password both
    assert loaded.scenario.target.url == "http://bob:s3cret@h:1/x"


def test_override_on_a_secret_path_lifts_the_secret():
    loaded = parse(secret_data(), env={"TENANT": "acme", "PASSWORD": "x"}, overrides=["target=http://h:1"])
    assert loaded.as_run["target"] == "http://h:1"


def test_secrets_stay_out_of_problem_messages():
    data = with_(BASE, "requests[0].weight", "${WEIGHT}")
    data = with_(data, "requests[0].headers", {"X-Count": ["${COUNT}"]})  # a list: invalid header value
    problems = problems_of(
        data,
        env={"WEIGHT": "heavy-secret", "COUNT": "count-secret"},
        overrides=["requests[1].headers.Authorization=[x"],
    )
    text = str(ScenarioError(problems))
    assert "heavy-secret" not in text and "count-secret" not in text
    assert "--set requests[1].headers.Authorization=***" in text
    assert "requests[0].weight" in text


# --- durations and other units ------------------------------------------------------------

DURATIONS = [
    # (written, seconds)
    (30, 30.0),  # a number is seconds
    (1.5, 1.5),
    ("30", 30.0),  # numeric text (from ${ENV}) too
    ("250ms", 0.25),
    ("30s", 30.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("1h30m", 5400.0),  # compound
    ("1m30s", 90.0),
    ("1.5s", 1.5),
    ("500us", 0.0005),
    ("500µs", 0.0005),
    ("100ns", 1e-7),
    (" 2s ", 2.0),  # surrounding space
    (0, 0.0),
]


@pytest.mark.parametrize("written,seconds", DURATIONS)
def test_parse_duration(written, seconds):
    assert parse_duration(written) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("written", [30, "250ms", "1h30m", "500us", 1.5])
def test_durations_in_a_scenario(written):
    s = parse(with_(BASE, "workload.stages[0].duration", written)).scenario
    assert s.workload.stages[0].duration == pytest.approx(parse_duration(written))


BAD_DURATIONS = [
    # (written, fragment)
    ("", "invalid duration ''"),
    ("10 s", "invalid duration '10 s'"),  # no space inside
    ("1d", "invalid duration '1d'"),  # no days
    ("s", "invalid duration 's'"),
    ("30s1m", "largest to smallest"),
    ("1m1m", "largest to smallest"),
    (-1, "must not be negative"),
    ("-5s", "invalid duration"),
    (float("nan"), "must be finite"),
    (True, "expected a duration"),
    (None, "expected a duration"),
    ([1], "expected a duration"),
]


@pytest.mark.parametrize("written,fragment", BAD_DURATIONS)
def test_parse_duration_rejects(written, fragment):
    with pytest.raises(ValueError) as info:
        parse_duration(written)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0s"), (0.0005, "500us"), (0.25, "250ms"), (1.5, "1.5s"), (90, "1m30s"), (3600, "1h"), (5400.5, "1h30m0.5s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize(
    "written,fraction",
    [("1%", 0.01), ("0.5%", 0.005), (" 12 %", 0.12), (0.25, 0.25), ("0.25", 0.25), (0, 0.0)],
)
def test_parse_percent(written, fraction):
    assert math.isclose(parse_percent(written), fraction)


@pytest.mark.parametrize("written", ["%", "1%%", "abc", -0.1, "-1%", True])
def test_parse_percent_rejects(written):
    with pytest.raises(ValueError):
        parse_percent(written)


@pytest.mark.parametrize(
    "written,nbytes",
    [(512, 512), ("512", 512), ("64KiB", 65536), ("1kb", 1000), ("1.5MiB", 1572864), ("2 GB", 2 * 10**9)],
)
def test_parse_size(written, nbytes):
    assert parse_size(written) == nbytes


@pytest.mark.parametrize("written", ["1XB", "-1", "KiB", True])
def test_parse_size_rejects(written):
    with pytest.raises(ValueError):
        parse_size(written)


def test_format_size():
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 1024**2, 3 * 1024**3)] == [
        "0B",
        "1023B",
        "1KiB",
        "1.5KiB",
        "1MiB",
        "3GiB",
    ]


# --- schema -------------------------------------------------------------------------------


def test_json_schema_describes_the_file_format():
    schema = scenario_json_schema()
    assert set(schema["required"]) == {"name", "target", "requests", "workload"}
    props = schema["properties"]
    assert {"string"} <= {alt.get("type") for alt in props["target"]["anyOf"]}  # "embedded" / URL short forms
    assert {"string"} <= {alt.get("type") for alt in props["thresholds"]["items"]["anyOf"]}
    assert {"number", "string"} == {alt["type"] for alt in props["timeout"]["anyOf"]}  # durations: both forms
    stall = schema["$defs"]["Stall"]["properties"]
    assert set(stall) == {"every", "for"}  # YAML names, not python names
    assert "json" in schema["$defs"]["RequestEntry"]["properties"]


def test_soak_alerts_and_metrics_keys():
    data = {
        "name": "soak",
        "target": {"url": "http://127.0.0.1:9000", "metrics": "http://127.0.0.1:9000/metrics"},
        "requests": [{"name": "health", "path": "/health"}],
        "workload": {"model": "open", "stages": [{"duration": "1h", "target": 5}]},
        "time_compression": 60,
        "alerts": [{"name": "slow", "metric": "p95(latency)", "warning": "1s", "critical": "5s"}],
    }
    s = parse(data, env={}).scenario
    assert s.time_compression == 60 and s.target.metrics.endswith("/metrics") and len(s.alerts) == 1


@pytest.mark.parametrize(
    "key, value, path",
    [
        ("time_compression", 0.5, "time_compression"),  # compression below 1 would stretch time
        ("alerts", [{"name": "x", "metric": "p95(latency)", "warning": "fast"}], "alerts[0]"),  # bad level
    ],
)
def test_soak_and_alert_problems_name_their_path(key, value, path):
    data = {
        "name": "soak",
        "target": "embedded",
        "requests": [{"name": "health", "path": "/health"}],
        "workload": {"model": "open", "stages": [{"duration": "10s", "target": 5}]},
        key: value,
    }
    with pytest.raises(ScenarioError) as e:
        parse(data, env={})
    assert any(p.path.startswith(path) for p in e.value.problems), e.value.problems
