"""Checks that keep the user documentation true to the code.

- docs/scenarios.md documents every key of every scenario model (walked recursively from
  `Scenario`, by YAML name) in that model's own table, with the default the code has;
- every YAML block in the docs loads: a full scenario (top-level `name:` and `workload:`)
  as it is, a block marked `<!-- docs-test: fragment -->` merged into a small base
  scenario, a block marked `<!-- docs-test: invalid -->` fails with exactly the problems the
  text block after it lists; `<!-- docs-test: skip -->` skips a block;
- the threshold examples of docs/thresholds.md parse (or fail with the message shown), and
  its table of default alert rules is `DEFAULT_RULES`;
- docs/cli.md has a section for every command of the click group, naming each option (with
  its default) and argument, and its exit-code table lists exactly horde.coordinator.bundle.outcome's codes;
- relative links between the docs point at files and headings that exist.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from horde.coordinator.bundle import outcome
from horde.coordinator.cli import cli
from horde.coordinator.judge.alerts import DEFAULT_RULES, parse_rules
from horde.coordinator.judge.thresholds import ThresholdSyntaxError, parse_threshold
from horde.coordinator.scenario.load import ScenarioError, parse_scenario
from horde.coordinator.scenario.models import Scenario

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHECKED_DOCS = ("quickstart.md", "scenarios.md", "thresholds.md", "cli.md", "measurement.md")

# What a `fragment` block is merged into (its top-level keys replace these).
BASE_SCENARIO: dict[str, Any] = {
    "name": "docs-fragment",
    "target": "embedded",
    "requests": [{"name": "health", "path": "/health"}],
    "workload": {
        "model": "open",
        "stages": [
            {"name": "ramp", "duration": "10s", "target": 10},
            {"name": "hold", "duration": "10s", "target": 10},
        ],
    },
}

_MARKER = re.compile(r"<!--\s*docs-test:\s*([a-z-]+(?:\s+[a-z]+)?)\s*-->")
_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --- markdown helpers -----------------------------------------------------------------------


class Block(typing.NamedTuple):
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the docs-test marker on the line before the fence, if any

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


def fenced_blocks(doc: str) -> list[Block]:
    lines = read(doc).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = _MARKER.search(prev)
        blocks.append(
            Block(
                doc, start + 1, m.group(1), "\n".join(lines[start + 1 : j]) + "\n", marker.group(1) if marker else None
            )
        )
        i = j + 1
    return blocks


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every ATX heading outside code blocks."""
    out = []
    fenced = False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6})\s+(.*?)\s*$", line)):
            out.append((i, len(m.group(1)), m.group(2)))
    return out


def section(text: str, contains: str, *, to_any_heading: bool = False) -> str:
    """The text under the first heading whose title contains `contains`, up to the next
    heading of the same or a higher level (or of any level)."""
    lines = text.splitlines()
    hs = headings(text)
    for n, (i, level, title) in enumerate(hs):
        if contains in title:
            end = next((j for j, lv, _ in hs[n + 1 :] if to_any_heading or lv <= level), len(lines))
            return "\n".join(lines[i:end])
    raise AssertionError(f"no heading containing {contains!r}")


def table_rows(text: str) -> list[list[str]]:
    """Cells of every table body row (header and separator rows left out)."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|\s*$", line):
            continue
        if i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1]):
            continue  # a header row
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([c.strip() for c in cells])
    return rows


def region(text: str, name: str) -> str:
    m = re.search(rf"<!--\s*docs-test:\s*{re.escape(name)}\s*-->(.*?)<!--\s*/docs-test\s*-->", text, re.S)
    assert m, f"no <!-- docs-test: {name} --> ... <!-- /docs-test --> region"
    return m.group(1)


def code(cell: str) -> str | None:
    """The text of the first `code span` in a table cell."""
    m = re.search(r"`([^`]*)`", cell)
    return m.group(1) if m else None


# --- the scenario models --------------------------------------------------------------------


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    elif origin is Annotated:
        yield from _nested_models(typing.get_args(annotation)[0])
    elif origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _nested_models(arg)


def scenario_models() -> dict[type[BaseModel], dict[str, Any]]:
    """Every model reachable from Scenario -> {YAML key: FieldInfo}, in walk order."""
    found: dict[type[BaseModel], dict[str, Any]] = {}
    todo: list[type[BaseModel]] = [Scenario]
    while todo:
        model = todo.pop(0)
        if model in found:
            continue
        found[model] = {(f.alias or name): f for name, f in model.model_fields.items()}
        for f in model.model_fields.values():
            todo.extend(m for m in _nested_models(f.annotation) if m not in found)
    return found


MODELS = scenario_models()


def test_the_walk_finds_the_nested_models():
    names = {m.__name__ for m in MODELS}
    assert {
        "Scenario",
        "Target",
        "EmbeddedTarget",
        "TargetFaults",
        "EndpointFaults",
        "LatencyFault",
        "RequestEntry",
        "Workload",
        "StageEntry",
        "ThresholdEntry",
    } <= names


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_every_scenario_key_is_in_its_models_table_with_the_codes_default(model):
    text = section(read("scenarios.md"), f"(`{model.__name__}`)", to_any_heading=True)
    rows = {code(r[0]): r for r in table_rows(text) if code(r[0])}
    problems = []
    for key, field in MODELS[model].items():
        row = rows.get(key)
        if row is None:
            problems.append(f"{key}: no table row `{key}` under the {model.__name__} heading")
            continue
        cell = row[2] if len(row) > 2 else ""
        if field.is_required():
            if cell != "required":
                problems.append(f"{key}: required in the code, default column says {cell!r}")
            continue
        written = code(cell)
        if written is None:
            problems.append(f"{key}: default column {cell!r} has no `value`")
            continue
        adapter = TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)
        try:
            value = adapter.validate_python(yaml.safe_load(written))
        except Exception as exc:
            problems.append(f"{key}: documented default `{written}` is not a valid value: {exc}")
            continue
        actual = field.get_default(call_default_factory=True)
        if value != actual:
            problems.append(f"{key}: documented default `{written}` means {value!r}, the code has {actual!r}")
    assert not problems, f"docs/scenarios.md, {model.__name__}:\n  " + "\n  ".join(problems)


# --- YAML blocks ------------------------------------------------------------------------------


YAML_BLOCKS = [b for doc in CHECKED_DOCS for b in fenced_blocks(doc) if b.lang in ("yaml", "yml")]


def _env_for(text: str) -> dict[str, str]:
    return dict.fromkeys(_REFERENCE.findall(text), "docs-test-value")


def _problem_lines(exc: ScenarioError) -> list[str]:
    return [f"{p.path}: {p.message}" for p in exc.problems]


def test_the_docs_have_yaml_blocks():
    docs = {b.doc for b in YAML_BLOCKS}
    assert {"scenarios.md", "quickstart.md", "thresholds.md"} <= docs


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_block_loads(block):
    if block.marker == "skip":
        pytest.skip("marked skip")
    env = _env_for(block.text)
    if block.marker == "invalid":
        with pytest.raises(ScenarioError) as info:
            parse_scenario(block.text, source="doc", env=env)
        blocks = fenced_blocks(block.doc)
        shown = blocks[blocks.index(block) + 1]
        assert shown.lang == "text", f"{block.where}: an invalid example is followed by a text block of its problems"
        listed = [line.strip() for line in shown.text.splitlines() if line.startswith("  ")]
        assert sorted(listed) == sorted(_problem_lines(info.value)), (
            f"{shown.where}: the problems shown are not the loader's"
        )
        assert f"{len(info.value.problems)} problem(s)" in shown.text
        return
    if block.marker == "fragment":
        fragment = yaml.safe_load(block.text)
        assert isinstance(fragment, dict), f"{block.where}: a fragment is a mapping of top-level keys"
        data = {**copy.deepcopy(BASE_SCENARIO), **fragment}
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        assert block.marker is None, f"{block.where}: unknown marker {block.marker!r}"
        data = yaml.safe_load(block.text)
        assert isinstance(data, dict) and "name" in data and "workload" in data, (
            f"{block.where}: not a full scenario (top-level name: and workload:); "
            "mark it <!-- docs-test: fragment -->, invalid or skip"
        )
        text = block.text
    try:
        parse_scenario(text, source=block.where, env=env)
    except ScenarioError as exc:
        pytest.fail(f"{block.where} does not load:\n  " + "\n  ".join(_problem_lines(exc)))


# --- thresholds and alert rules ---------------------------------------------------------------


def _examples(kind: str) -> list[list[str]]:
    rows = table_rows(region(read("thresholds.md"), f"threshold-examples {kind}"))
    assert rows, f"no {kind} threshold examples"
    return rows


@pytest.mark.parametrize("row", _examples("valid"), ids=lambda r: code(r[0]) or "?")
def test_threshold_example_parses(row):
    expr, limit = code(row[0]), code(row[-1])
    assert expr is not None and limit is not None
    t = parse_threshold(expr)
    assert t.limit_text == limit, f"{expr}: the limit is reported as {t.limit_text!r}, the doc says {limit!r}"


@pytest.mark.parametrize("row", _examples("invalid"), ids=lambda r: code(r[0]) or "?")
def test_invalid_threshold_example_fails_with_the_message_shown(row):
    expr, message = code(row[0]), row[1]
    assert expr is not None
    with pytest.raises(ThresholdSyntaxError) as info:
        parse_threshold(expr)
    assert info.value.message == message


def test_the_default_alert_rules_table_is_the_codes():
    rules = []
    for row in table_rows(region(read("thresholds.md"), "default-alert-rules")):
        name, metric, endpoint, warning, critical, for_, clear = (code(c) for c in row)
        rule = {"name": name, "metric": metric, "warning": warning, "critical": critical, "for": for_, "clear": clear}
        if endpoint is not None:
            rule["endpoint"] = endpoint
        rules.append(rule)
    assert parse_rules(rules) == DEFAULT_RULES


# --- the command line -----------------------------------------------------------------------


def _commands(group: click.Group, prefix: str = "horde") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


COMMANDS = list(_commands(cli))


def test_the_cli_walk_finds_nested_commands():
    paths = {p for p, _ in COMMANDS}
    assert {"horde run", "horde jobs fetch", "horde target serve"} <= paths


@pytest.mark.parametrize("path, command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_is_documented_with_its_options(path, command):
    text = section(read("cli.md"), f"`{path}`")
    problems = []
    for param in command.params:
        if isinstance(param, click.Argument):
            if param.human_readable_name not in text:
                problems.append(f"argument {param.human_readable_name} is not mentioned")
            continue
        if not isinstance(param, click.Option) or param.hidden or "--help" in param.opts:
            continue
        flag = max(param.opts, key=len)
        rows = [r for r in table_rows(text) if re.search(rf"`{re.escape(flag)}[` ]", r[0])]
        if not rows:
            problems.append(f"option {flag} has no table row")
            continue
        default = param.default
        plain = isinstance(default, (str, int, float)) and not isinstance(default, bool) and not param.is_flag
        if plain and f"`{default}`" not in rows[0][1]:
            problems.append(f"option {flag}: default {default!r} is not in its row's default column")
    assert not problems, f"docs/cli.md, {path}:\n  " + "\n  ".join(problems)


def test_the_exit_code_table_lists_exactly_the_codes():
    documented = {int(code(r[0]) or -1) for r in table_rows(region(read("cli.md"), "exit-codes"))}
    codes = {v for k, v in vars(outcome).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert documented == codes


# --- links ----------------------------------------------------------------------------------


def slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = title.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, _, title in headings(doc.read_text(encoding="utf-8")):
        s = slug(title)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


LINKS = [
    (doc, target)
    for doc in CHECKED_DOCS
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", read(doc), flags=re.S))
    if not re.match(r"^[a-z]+:", target)
]


def test_the_docs_link_to_each_other():
    assert LINKS


@pytest.mark.parametrize("doc, target", LINKS, ids=[f"{d}->{t}" for d, t in LINKS])
def test_link_target_exists(doc, target):
    file, _, anchor = target.partition("#")
    path = (DOCS / file).resolve() if file else DOCS / doc
    assert path.exists(), f"docs/{doc}: link to missing file {file}"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"docs/{doc}: no heading #{anchor} in {path.name}"
