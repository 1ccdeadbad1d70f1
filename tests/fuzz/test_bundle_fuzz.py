"""Corrupted bundles through every command that reads one: `horde report`, `report --html`,
`export --csv`, `export --hdr`, `compare` (either side) and the history's reader
(record_bundle, as `horde run` and nightly add a run). Each ends with exit 0 (what could be
read, damaged stream records skipped with a warning), 1 with the file named, or 4 (compare
found a regression), never a traceback."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horde.coordinator.bundle.store import BundleError, read_bundle
from horde.coordinator.cli import cli
from horde.coordinator.workflows.history import HistoryError, record_bundle
from tests.fuzz.common import CORPUS, assert_clean_exit, build_bundle

EXIT = {"report": {0, 1}, "export": {0, 1}, "compare": {0, 1, 4}}
PATCHES = sorted((CORPUS / "bundles").iterdir())


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("good"))


def readers(bundle: Path, good: Path) -> list[list[str]]:
    b, g = str(bundle), str(good)
    return [
        ["report", b],
        ["report", "--html", b],
        ["export", "--csv", b],
        ["export", "--hdr", b],
        ["compare", g, b],
        ["compare", b, g],
    ]


def check_every_reader(bundle: Path, good: Path, history: Path) -> str:
    """Run every reader over bundle; return everything they printed."""
    runner = CliRunner()
    printed = []
    for argv in readers(bundle, good):
        result = runner.invoke(cli, argv)
        assert_clean_exit(result, EXIT[argv[0]], argv)
        printed.append(result.output)
    try:
        record_bundle(bundle, history)
    except (BundleError, HistoryError) as exc:
        assert bundle.name in str(exc) or str(history) in str(exc), exc
    return "\n".join(printed)


def patched(good: Path, patch: Path, dest: Path) -> Path:
    """good with the corpus case's files put over it (and its .delete list removed)."""
    shutil.copytree(good, dest)
    for f in patch.iterdir():
        if f.name == ".delete":
            for name in f.read_text().split():
                (dest / name).unlink()
        else:
            shutil.copy(f, dest / f.name)
    return dest


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_each_corpus_case(patch: Path, good: Path, tmp_path: Path) -> None:
    bundle = patched(good, patch, tmp_path / "bundle")
    printed = check_every_reader(bundle, good, tmp_path / "history.sqlite3")
    named = {"bundle-format": "manifest.json", "manifest": "manifest.json", "no-manifest": "manifest.json",
             "summary": "summary.json", "histograms": "histograms.msgpack"}  # fmt: skip
    for prefix, file in named.items():
        if patch.name.startswith(prefix + "-"):
            assert "error: " in printed and file in printed, printed
    if patch.name.startswith("bundle-format"):
        assert "bundle_format" in printed
    if patch.name.startswith(("windows-", "alerts-")):  # stream damage: skipped and said so
        assert "skipped" in printed and "damaged record(s)" in printed, printed


def test_a_bad_middle_line_is_skipped_counted_and_the_later_lines_read(good: Path, tmp_path: Path) -> None:
    bundle = patched(good, CORPUS / "bundles" / "windows-bad-middle-line", tmp_path / "bundle")
    b = read_bundle(bundle)
    assert [w.index for w in b.windows()] == [0, 2]
    assert b.problems == ["windows.jsonl: line 2: torn or not JSON"]
    result = CliRunner().invoke(cli, ["report", str(bundle)])
    assert result.exit_code == 0 and "skipped 1 damaged record(s): windows.jsonl: line 2" in result.output


def test_a_torn_last_line_is_skipped_quietly(good: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(good, tmp_path / "bundle")
    lines = gzip.decompress((bundle / "windows.jsonl").read_bytes()).decode().splitlines()  # format 2: gzip
    # a plain (format 1) file, torn
    (bundle / "windows.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:20])
    b = read_bundle(bundle)
    assert len(list(b.windows())) == len(lines) and b.problems == []


def test_special_files_in_a_bundle_are_refused(good: Path, tmp_path: Path) -> None:
    import os

    bundle = shutil.copytree(good, tmp_path / "bundle")
    (bundle / "windows.jsonl").unlink()
    os.mkfifo(bundle / "windows.jsonl")
    with pytest.raises(BundleError, match="windows.jsonl: not a regular file"):
        read_bundle(bundle)


# -- generated damage --------------------------------------------------------------------------

WRONG = [None, "x", [], {}, -1, 1e308, 2**64 - 1, True, "1e999", 10**30]


def _replace_somewhere(obj, rng: random.Random, value):
    if not isinstance(obj, (dict, list)) or not obj:
        return value
    key = rng.choice(list(obj)) if isinstance(obj, dict) else rng.randrange(len(obj))
    obj[key] = value if rng.random() < 0.3 else _replace_somewhere(obj[key], rng, value)
    return obj


def damage(good: Path, dest: Path, kind: str, name: str, seed: int) -> Path:
    rng = random.Random(seed)
    shutil.copytree(good, dest)
    f = dest / name
    data = f.read_bytes()
    if kind == "delete":
        f.unlink()
    elif kind == "truncate":
        f.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        f.write_bytes(bytes(b))
    elif kind == "types" and name.endswith(".json"):
        f.write_text(json.dumps(_replace_somewhere(json.loads(data), rng, rng.choice(WRONG))))
    elif kind == "types" and name == "histograms.msgpack":
        value = rng.choice([v for v in WRONG if not (isinstance(v, int) and v > 2**64)])
        zipped = data.startswith(b"\x1f\x8b")  # format 2: one gzip member
        entries = _replace_somewhere(msgpack.unpackb(gzip.decompress(data) if zipped else data), rng, value)
        f.write_bytes(gzip.compress(msgpack.packb(entries)) if zipped else msgpack.packb(entries))
    elif kind == "types":  # a .jsonl or the windows' msgpack stream: a bad record in the middle
        lines = data.split(b"\n")
        lines[len(lines) // 2] = rng.choice([b"{", b"[1]", b'{"index": "x"}', b"\xff\xfe", b"1" * 5000])
        f.write_bytes(b"\n".join(lines))
    return dest


FILES = ["manifest.json", "summary.json", "windows.jsonl", "windows.msgpack", "histograms.msgpack", "alerts.jsonl"]
COUNT = {"n": 0}


@pytest.mark.slow
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["delete", "truncate", "flip", "types"]),
    name=st.sampled_from(FILES),
    seed=st.integers(0, 2**32 - 1),
)
def test_damaged_bundles_fail_clearly(good: Path, tmp_path: Path, kind: str, name: str, seed: int) -> None:
    COUNT["n"] += 1
    bundle = damage(good, tmp_path / f"b{COUNT['n']}", kind, name, seed)
    check_every_reader(bundle, good, tmp_path / f"h{COUNT['n']}.sqlite3")
    shutil.rmtree(bundle)


def _all_cases(good: Path, root: Path) -> Iterator[Path]:
    n = 0
    for name in FILES:
        for kind in ("delete", "truncate", "flip", "types"):
            for seed in range(3 if kind in ("flip", "types", "truncate") else 1):
                n += 1
                yield damage(good, root / f"s{n}", kind, name, seed)


@pytest.mark.slow
def test_a_fixed_sweep_of_damage_over_every_file(good: Path, tmp_path: Path) -> None:
    for bundle in _all_cases(good, tmp_path):
        check_every_reader(bundle, good, tmp_path / "history.sqlite3")
        shutil.rmtree(bundle)
