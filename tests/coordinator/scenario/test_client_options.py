"""The scenario's client options: tls and data sections, per-entry timeout, follow_redirects
and cookies; the files they name (read with clear errors); how the plan routes and deals them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde.agents.wire import supports
from horde.coordinator.plan import build_plan
from horde.coordinator.run.client_info import VERIFY_OFF, client_summary
from horde.coordinator.scenario.attachments import MAX_DATA_COLUMNS, DataTable
from horde.coordinator.scenario.load import ScenarioError, load_scenario
from horde.coordinator.scenario.models import scenario_json_schema
from tests.agents.tls_certs import make_certs

CERTS = make_certs()

BASE = "http://127.0.0.1:8080"


def _write(tmp_path: Path, body: str, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: t
        target: {BASE}
        workload: {{model: open, stages: [{{duration: 1s, target: 10}}]}}
        """)
        + textwrap.dedent(body)
    )
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        load_scenario(path, env={})
    return [str(p) for p in e.value.problems]


REQ = 'requests: [{name: u, path: "/u/${data.acc.user}"}]\n'


@pytest.mark.parametrize(
    "data_file, text, expected",
    [
        ("acc.csv", "user,pw\nann,1\nbob,2,3\n", "data.acc.file: acc.csv:3: 3 fields, the header has 2"),
        ("acc.csv", "", "data.acc.file: acc.csv:1: empty"),
        ("acc.csv", "user\n", "data.acc.file: acc.csv:1: no rows after the header"),
        ("acc.csv", "user,user\nx,y\n", "data.acc.file: acc.csv:1: column 'user' twice"),
        ("acc.csv", "user\n\xff\n".encode("latin-1").decode("latin-1"), None),  # written as UTF-8: fine
        ("acc.jsonl", '{"user": "a"}\nnot json\n', "data.acc.file: acc.jsonl:2: not JSON"),
        ("acc.jsonl", '{"user": "a"}\n[1]\n', "data.acc.file: acc.jsonl:2: expected a JSON object, got list"),
        ("acc.jsonl", '{"user": "a"}\n{"name": "b"}\n', "data.acc.file: acc.jsonl:2: keys differ"),
        ("acc.csv", ",".join(f"c{i}" for i in range(MAX_DATA_COLUMNS + 1)) + "\n", f"at most {MAX_DATA_COLUMNS}"),
    ],
)
def test_bad_data_files_are_named_with_their_line(tmp_path, data_file, text, expected):
    path = _write(tmp_path, f"data: {{acc: {data_file}}}\n" + REQ)
    (tmp_path / data_file).write_text(text)
    if expected is None:
        assert load_scenario(path, env={}).attachments.data[0].rows == (("\xff",),)
        return
    problems = _problems(path)
    assert any(p.startswith(expected) or expected in p for p in problems), problems


def test_not_utf8_names_the_line(tmp_path):
    path = _write(tmp_path, "data: {acc: acc.csv}\n" + REQ)
    (tmp_path / "acc.csv").write_bytes(b"user\nann\n\xff\n")
    assert _problems(path) == ["data.acc.file: acc.csv:3: not UTF-8 (byte 0xff)"]


def test_a_missing_file_a_directory_and_an_unknown_column(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    path = _write(
        tmp_path,
        """
        data: {acc: acc.csv, gone: missing.csv, d: dir.csv}
        requests: [{name: u, path: "/u/${data.acc.nick}"}]
        """,
        acc__csv="user\nann\n",
    )
    problems = _problems(path)
    assert "data.gone.file: missing.csv: cannot read: No such file or directory" in problems
    assert "data.d.file: dir.csv: cannot read: not a regular file (a directory)" in problems
    assert "requests[0]: ${data.acc.nick}: acc has no column 'nick' (user)" in problems


def test_a_reference_to_an_unknown_data_file(tmp_path):
    path = _write(tmp_path, 'requests: [{name: u, path: "/u/${data.nope.user}"}]\n')
    assert _problems(path) == ["requests[0]: ${data.nope...} names no data file (known: none: add a `data` section)"]


def test_tls_files_are_read_relative_to_the_scenario_and_checked(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text(CERTS.ca_pem)
    (tmp_path / "certs" / "key.pem").write_text("not a key")
    ok = _write(tmp_path, "tls: {ca: certs/ca.pem}\nrequests: [{name: a, path: /}]\n")
    assert load_scenario(ok, env={}).attachments.tls.ca_pem.startswith("-----BEGIN CERTIFICATE")
    bad = _write(tmp_path, "tls: {cert: certs/ca.pem, key: certs/key.pem}\nrequests: [{name: a, path: /}]\n")
    assert _problems(bad) == ["tls.key: certs/key.pem: not PEM (no '-----BEGIN' line)"]
    half = _write(tmp_path, "tls: {cert: certs/ca.pem}\nrequests: [{name: a, path: /}]\n")
    assert any("tls.key" in p and "cert and key together" in p for p in _problems(half))


def test_the_key_is_kept_out_of_reprs_and_the_scenario_as_run(tmp_path):
    (tmp_path / "c.pem").write_text(CERTS.client_pem)
    (tmp_path / "k.pem").write_text(CERTS.client_key_pem)
    path = _write(tmp_path, "tls: {cert: c.pem, key: k.pem}\nrequests: [{name: a, path: /}]\n")
    loaded = load_scenario(path, env={})
    secret = CERTS.client_key_pem.splitlines()[1]
    assert secret not in repr(loaded.attachments) and secret not in str(loaded.as_run)
    assert loaded.attachments.tls.key_pem == CERTS.client_key_pem


@pytest.mark.parametrize(
    "files, tls, expected",
    [
        ({"ca.pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "{ca: ca.pem}", "tls.ca"),
        # a client certificate with another certificate's key
        ({"c.pem": CERTS.client_pem, "k.pem": CERTS.server_key_pem}, "{cert: c.pem, key: k.pem}", "tls.cert"),
    ],
)
def test_tls_files_that_do_not_load_fail_validation(tmp_path, files, tls, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = _write(tmp_path, f"tls: {tls}\nrequests: [{{name: a, path: /}}]\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{expected}: the TLS files do not load: ")
    assert "PRIVATE" not in problem


def test_entries_with_client_options_go_to_aiohttp(tmp_path):
    path = _write(
        tmp_path,
        """
        data: {acc: acc.csv}
        requests:
          - {name: plain, path: /a}
          - {name: timed, path: /a, timeout: 100ms}
          - {name: follows, path: /a, follow_redirects: true}
          - {name: session, path: /a, cookies: true}
          - {name: fed, path: "/u/${data.acc.user}"}
          - name: flow
            flow: [{name: s, path: "/u/${data.acc.user}", timeout: 1s, follow_redirects: true}]
        """,
        acc__csv="user\nann\n",
    )
    loaded = load_scenario(path, env={})
    for engine in ("auto", "fast"):
        scenario = loaded.scenario.model_copy(update={"engine": engine})
        plan = build_plan(scenario, BASE, 4, supports_fast=supports, agents=1, attachments=loaded.attachments)
        assert plan.engines == {
            "plain": "fast",
            "timed": "aiohttp",
            "follows": "aiohttp",
            "session": "aiohttp",
            "fed": "aiohttp",
            "flow": "flow",
        }
    spec = plan.agents[0]
    step = spec.flows[5].steps[0]  # type: ignore[union-attr]
    assert (step.timeout_s, step.follow_redirects) == (1.0, True)
    assert spec.flows[5].data == ("acc",)  # type: ignore[union-attr]
    assert spec.requests[1].timeout_s == 0.1 and spec.requests[4].data == ("acc",)
    assert plan.data_uses == {"fed": ("acc",), "flow": ("acc",)}


def test_the_scenario_follow_redirects_is_the_default_of_every_entry(tmp_path):
    path = _write(
        tmp_path,
        "follow_redirects: true\nrequests: [{name: a, path: /}, {name: b, path: /, follow_redirects: false}]\n",
    )
    loaded = load_scenario(path, env={})
    plan = build_plan(loaded.scenario, BASE, 4, supports_fast=supports, agents=1, attachments=loaded.attachments)
    assert [t.follow_redirects for t in plan.agents[0].requests] == [True, False]


@given(rows=st.integers(0, 500), agents=st.integers(1, 40))
def test_unique_rows_are_dealt_without_overlap_and_all_of_them(rows, agents):
    table = DataTable("acc", "acc.csv", "unique", ("user",), tuple((str(i),) for i in range(rows)))
    cycle = DataTable("all", "all.csv", "cycle", ("user",), tuple((str(i),) for i in range(rows)))

    class _Attach:
        tls = __import__("horde.agents.spec", fromlist=["TlsSpec"]).TlsSpec()
        data = (table, cycle)

    from horde.coordinator.scenario.models import Scenario

    scenario = Scenario.model_validate(
        {
            "name": "t",
            "target": BASE,
            "requests": [{"name": "a", "path": "/"}],
            "workload": {"model": "open", "stages": [{"duration": 1, "target": 10}]},
        }
    )
    plan = build_plan(scenario, BASE, 4, agents=agents, attachments=_Attach())
    shares = [spec.data[0].rows for spec in plan.agents]
    dealt = [r for share in shares for r in share]
    assert sorted(dealt) == sorted(table.rows)  # every row once: none lost, none twice
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # as evenly as the load
    assert all(spec.data[1].rows == cycle.rows for spec in plan.agents)  # cycle: every agent the whole file


def test_client_summary_reports_the_measured_rows_and_warns():
    class _Plan:
        tls_verify = False
        data_files = {
            "acc": {"file": "acc.csv", "order": "unique", "rows": 10, "sha256": "x"},
            "idle": {"file": "idle.csv", "order": "cycle", "rows": 4, "sha256": "y"},
        }

    # the session's sums of the batches' `data` counts; a file no batch named took no row
    out = client_summary(_Plan(), {"acc": [10, 3]})  # type: ignore[arg-type]
    assert out["data"]["idle"] == {**_Plan.data_files["idle"], "rows_used": 0, "exhausted": 0, "ran_out": False}
    assert out["data"]["acc"] == {
        "file": "acc.csv",
        "order": "unique",
        "rows": 10,
        "sha256": "x",
        "rows_used": 10,
        "exhausted": 3,
        "ran_out": True,
    }
    assert out["warnings"][0] == VERIFY_OFF and "'acc' ran out" in out["warnings"][1]


def test_the_schema_shows_the_client_options():
    schema = scenario_json_schema()
    props = schema["properties"]
    assert {"tls", "data", "follow_redirects"} <= set(props)
    entry = schema["$defs"]["RequestEntry"]["properties"]
    assert {"timeout", "follow_redirects", "cookies"} <= set(entry)
    assert {"timeout", "follow_redirects"} <= set(schema["$defs"]["FlowStep"]["properties"])
    assert set(schema["$defs"]["TlsOptions"]["properties"]) == {"verify", "ca", "cert", "key"}
    assert schema["$defs"]["DataFile"]["properties"]["order"]["enum"] == ["unique", "cycle", "random"]
    (value,) = props["data"]["patternProperties"].values()
    assert value["anyOf"][0]["type"] == "string"  # the short form: a path
