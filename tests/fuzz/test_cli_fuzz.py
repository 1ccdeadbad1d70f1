"""Random argument lists for each command, through click's CliRunner: the exit code is one the
docs list for that command (docs/cli.md#exit-codes) and nothing prints a traceback.

Commands that would start work (run, bench, submit, nightly, stress, monitor) always get a
scenario that cannot be read or parsed whatever the options say (a missing file, a NUL in
the text, a billion-laughs file, an empty file), so no example starts a run, contacts a
cluster or sends a request; the options around it are random. `jobs` (a job server's HTTP
API) and `target serve` (a server that runs until Ctrl-C) are left out for that reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horde.coordinator.cli import cli
from tests.fuzz.common import CORPUS, REPO, assert_clean_exit, build_bundle

# The documented exit codes of each command for input that cannot start any work.
EXIT = {
    "validate": {0, 2, 3},
    "run": {2, 3},
    "bench": {2, 3},
    "submit": {2, 3},
    "nightly": {2, 3},
    "stress": {2, 3},
    "monitor": {2, 3},
    "report": {0, 1, 2},
    "export": {0, 1, 2},
    "compare": {0, 1, 2, 4},
    "history": {0, 1, 2},
    "schema": {0, 2},
    "down": {0, 2},  # nothing recorded under the test session's HOME: nothing to stop
}
STARTS_WORK = {"run", "bench", "submit", "nightly", "stress", "monitor"}
UNREADABLE = [
    "/nonexistent/scenario.yaml",
    "/dev/null",
    str(CORPUS / "scenarios" / "nul.yaml"),
    str(CORPUS / "scenarios" / "billion-laughs.yaml"),
    str(CORPUS / "scenarios" / "not-utf8.yaml"),
    str(CORPUS / "scenarios" / "deep-flow.yaml"),
]
NASTY = [
    "", "-", "--", "0", "-1", "1e400", "9" * 40, "nan", "inf", "x", "é", "\u202e", "\x1b[31m", "a=b", "=",
    "agents=1", "workload=[", "a" + ".a" * 40 + "=1", "{" * 50, "/", "/dev/zero", "/nonexistent",
    "latency", "p99_latency_ms", "--help", "-h", "--version",
]  # fmt: skip


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Paths worth giving a command: a good bundle (a copy: export writes into it), a damaged
    one, a results directory with a history, a directory, a file, nothing."""
    root = tmp_path_factory.mktemp("cli")
    good = build_bundle(root / "results")
    damaged = shutil.copytree(good, root / "damaged")
    (damaged / "summary.json").write_text("{")
    return [str(good), str(damaged), str(root / "results"), str(root), str(REPO / "README.md"), "/nonexistent"]


def _option_tokens(command: click.Command, draw: st.DrawFn, values: st.SearchStrategy[str]) -> list[str]:
    options = [p for p in command.params if isinstance(p, click.Option)]
    tokens: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        if not options:
            break
        opt = draw(st.sampled_from(options))
        tokens.append(draw(st.sampled_from(opt.opts)))
        if not opt.is_flag:
            tokens.append(draw(values))
    return tokens


@st.composite
def argv_for(draw: st.DrawFn, name: str, paths: list[str]) -> list[str]:
    command = cli.commands[name]
    values = st.one_of(st.sampled_from(NASTY), st.sampled_from(paths), st.text(max_size=12))
    # Values that would point a working command at something real stay out of its options.
    safe_values = st.one_of(st.sampled_from([v for v in NASTY if v not in ("agents=1",)]), st.text(max_size=12))
    tokens = _option_tokens(command, draw, safe_values if name in STARTS_WORK else values)
    if name in STARTS_WORK:
        return [name, *tokens, "--", draw(st.sampled_from(UNREADABLE))]
    if name == "validate":
        positional = [draw(st.sampled_from([*UNREADABLE, *paths, str(REPO / "scenarios" / "smoke.yaml")]))]
    elif name in ("report", "export"):
        positional = [draw(st.sampled_from(paths))]
    elif name == "compare":
        positional = [draw(st.sampled_from(paths)), draw(st.sampled_from(paths))]
    else:
        positional = []
    if draw(st.booleans()):
        tokens.insert(draw(st.integers(0, len(tokens))), draw(values))  # a stray token anywhere
    return [name, *tokens, *positional]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXIT))
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_arguments_end_in_a_documented_exit_code(
    name: str, paths: list[str], data: st.DataObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path a command writes (report -o 1e400) lands here, not in the checkout
    argv = data.draw(argv_for(name, paths))
    result = CliRunner().invoke(cli, argv)
    assert_clean_exit(result, EXIT[name], argv)


def test_the_commands_fuzzed_are_the_cli_minus_the_ones_that_serve_or_call_out() -> None:
    assert set(cli.commands) - set(EXIT) == {"jobs", "target", "up"}  # up starts a Ray that outlives it


@pytest.mark.parametrize("path", UNREADABLE, ids=lambda p: Path(p).name)
def test_each_command_that_reads_a_scenario_exits_3_on_an_unreadable_one(path: str) -> None:
    for name in sorted(STARTS_WORK | {"validate"}):
        required = {"submit": ["--address", "http://127.0.0.1:9"], "nightly": ["--history", "/nonexistent"]}
        argv = [name, *required.get(name, []), path]
        result = CliRunner().invoke(cli, argv)
        assert_clean_exit(result, {3}, argv)
        assert "invalid scenario" in result.output


@pytest.mark.parametrize(
    "path", ["/dev/zero", "/nonexistent", str(REPO / "README.md")], ids=["device", "missing", "not json"]
)
def test_an_unreadable_set_file_exits_3_without_reading_without_end(path: str) -> None:
    # /dev/zero was read whole: the fuzzer's run grew to 24 GB and was killed
    argv = ["run", "--set-file", path, "--", "/dev/null"]
    result = CliRunner().invoke(cli, argv)
    assert_clean_exit(result, {3}, argv)
    assert "invalid --set-file" in result.output
