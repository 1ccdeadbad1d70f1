"""The SQLite run history, damaged: `horde history` and adding a run (record_bundle) end in
exit 0 or 1 with the file named (HistoryError), never a traceback. Cases: a garbage file,
a truncated database, flipped bytes, a foreign or future schema version, values of the
wrong type, a missing table, a database locked by another process."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horde.coordinator.cli import cli
from horde.coordinator.workflows import history as history_module
from horde.coordinator.workflows.history import DEFAULT_FILENAME, History, HistoryError, record_bundle
from tests.fuzz.common import CORPUS, assert_clean_exit, build_bundle


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a results directory whose history holds three runs, one of its bundles)."""
    results = tmp_path_factory.mktemp("results")
    bundle = build_bundle(results)
    for i in range(2):
        shutil.copytree(bundle, results / f"copy-{i}")
        record_bundle(results / f"copy-{i}")
    record_bundle(bundle)
    return results, bundle


def history_cli(results: Path, *extra: str) -> str:
    argv = ["history", "--results", str(results), *extra]
    result = CliRunner().invoke(cli, argv)
    assert_clean_exit(result, {0, 1}, argv)
    if result.exit_code == 1:
        assert "error: " in result.output and DEFAULT_FILENAME in result.output, result.output
    return result.output


def add_run(db: Path, bundle: Path) -> None:
    try:
        record_bundle(bundle, db)
    except HistoryError as exc:
        assert str(db) in str(exc)


def with_db(tmp_path: Path, content: bytes) -> Path:
    results = tmp_path / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / DEFAULT_FILENAME).write_bytes(content)
    return results


def test_the_filled_history_reads(filled: tuple[Path, Path]) -> None:
    out = history_cli(filled[0])
    assert "synthetic" in out


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 100, b"SQLite format 3\0" + b"\xff" * 200, (CORPUS / "valid-merge-key.yaml").read_bytes()],
    ids=["empty", "garbage", "bad-header", "a-yaml-file"],
)
def test_a_file_that_is_not_a_history(tmp_path: Path, filled: tuple[Path, Path], content: bytes) -> None:
    results = with_db(tmp_path, content)
    history_cli(results)
    add_run(results / DEFAULT_FILENAME, filled[1])


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_truncated_history(tmp_path: Path, filled: tuple[Path, Path], fraction: float) -> None:
    data = (filled[0] / DEFAULT_FILENAME).read_bytes()
    results = with_db(tmp_path, data[: int(len(data) * fraction)])
    history_cli(results)
    add_run(results / DEFAULT_FILENAME, filled[1])


def _edited(tmp_path: Path, filled: tuple[Path, Path], *sql: str) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    db = results / DEFAULT_FILENAME
    shutil.copy(filled[0] / DEFAULT_FILENAME, db)
    conn = sqlite3.connect(db)
    for stmt in sql:
        conn.executescript(stmt)
    conn.commit()
    conn.close()
    return results


@pytest.mark.parametrize(
    "sql,fragment",
    [
        ("UPDATE schema_version SET version = 99", "newer than"),
        ("UPDATE schema_version SET version = 'x'", "not one horde writes"),
        ("UPDATE schema_version SET version = -3", "not one horde writes"),
        ("UPDATE runs SET p99_latency_ms = 'fast'", "not a number"),
        ("UPDATE runs SET requests = x'00ff'", "not a number"),
        ("UPDATE runs SET scenario = x'00ff'", "not text"),
        ("DROP TABLE runs; CREATE TABLE runs (id INTEGER PRIMARY KEY, x TEXT)", "not a usable history file"),
        ("ALTER TABLE runs ADD COLUMN surprise TEXT", "unexpected content"),
    ],
)
def test_a_history_with_unexpected_content(tmp_path: Path, filled: tuple[Path, Path], sql: str, fragment: str) -> None:
    results = _edited(tmp_path, filled, sql)
    out = history_cli(results)
    assert fragment in out, out


def test_a_locked_history_is_an_error_after_the_busy_timeout(
    tmp_path: Path, filled: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _edited(tmp_path, filled)
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(results / DEFAULT_FILENAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out = history_cli(results)
        assert "locked" in out, out
        with pytest.raises(HistoryError, match="locked"):
            History(results / DEFAULT_FILENAME)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_unknown_metric_is_a_usage_error(filled: tuple[Path, Path]) -> None:
    argv = ["history", "--results", str(filled[0]), "--metric", "nope"]
    result = CliRunner().invoke(cli, argv)
    assert_clean_exit(result, {2}, argv)
    assert "unknown metric 'nope'" in result.output


@pytest.mark.slow
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 64))
def test_flipped_bytes_in_a_history(tmp_path: Path, filled: tuple[Path, Path], seed: int, flips: int) -> None:
    rng = random.Random(seed)
    data = bytearray((filled[0] / DEFAULT_FILENAME).read_bytes())
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    results = with_db(tmp_path / str(seed), bytes(data))
    history_cli(results)
    add_run(results / DEFAULT_FILENAME, filled[1])


def test_monitor_with_a_damaged_history_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"garbage" * 100)
    # loopback, a closed port, one second: nothing is loaded
    argv = ["monitor", "http://127.0.0.1:9/health", "--history", str(db), "--duration", "1"]
    result = CliRunner().invoke(cli, argv)
    assert_clean_exit(result, {1}, argv)
    assert "not a usable history file" in result.output


@pytest.mark.parametrize(
    "table, column",
    [
        ("runs", "scenario"),  # what `horde history` lists by
        ("schema_version", "version"),  # read before anything else
        ("run_endpoints", "endpoint"),
    ],
)
def test_a_renamed_column_is_a_clear_error(tmp_path: Path, filled: tuple[Path, Path], table: str, column: str) -> None:
    # A flipped byte in the schema text renames a column (hypothesis found one: IndexError).
    results = with_db(tmp_path, (filled[0] / DEFAULT_FILENAME).read_bytes())
    db = sqlite3.connect(results / DEFAULT_FILENAME)
    db.execute(f"ALTER TABLE {table} RENAME COLUMN {column} TO {column}_x")
    db.commit()
    db.close()
    assert "not a usable history file" in history_cli(results)
    with pytest.raises(HistoryError, match=f"not a usable history file: .*{column}"):
        History(results / DEFAULT_FILENAME)


def test_a_damaged_index_answering_a_run_it_was_not_asked_for(tmp_path: Path, filled: tuple[Path, Path]) -> None:
    # hypothesis found it: two flipped bytes (seed 3493) made run_endpoints answer run_id -52
    rng = random.Random(3493)
    data = bytearray((filled[0] / DEFAULT_FILENAME).read_bytes())
    for _ in range(2):
        data[rng.randrange(len(data))] = rng.randrange(256)
    history_cli(with_db(tmp_path, bytes(data)))
