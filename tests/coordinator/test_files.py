"""The one writer (coordinator/files.py): a link at the written name is refused and the
file it points to keeps its bytes; writes are whole or absent; modes are as asked."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from horde.coordinator import files
from horde.coordinator.bundle.store import INCOMPLETE_SUFFIX, BundleWriter, bundle_name
from horde.coordinator.run.exposition import write_json_atomic
from horde.coordinator.workflows.history import History

SECRET = b"ssh-ed25519 AAAA the user's key\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the written directory that a planted link points to."""
    v = tmp_path / "outside" / "authorized_keys"
    v.parent.mkdir()
    v.write_bytes(SECRET)
    return v


@pytest.fixture
def here(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    return d


WRITES = {
    # name: what writes one file at `path`
    "write_text": lambda p: files.write_text(p, "new\n"),
    "write_bytes": lambda p: files.write_bytes(p, b"new\n"),
    "replacing": lambda p: files.replacing(p, "wb").__enter__(),
    "open_append text": lambda p: files.open_append(p, "a"),
    "open_append bytes": lambda p: files.open_append(p, "ab"),
    "write_json_atomic": lambda p: write_json_atomic(p, {"a": 1}),
    "History": lambda p: History(p),
}


@pytest.mark.parametrize("how", list(WRITES))
def test_a_link_at_the_written_name_is_refused_and_its_target_kept(how, here, victim):
    link = here / "report.html"
    link.symlink_to(victim)
    with pytest.raises(files.UnsafePathError, match=r"refusing to write .*report\.html: it is a symbolic link"):
        WRITES[how](link)
    assert victim.read_bytes() == SECRET
    assert link.is_symlink()
    assert sorted(p.name for p in here.iterdir()) == ["report.html"]  # no temporary file left


@pytest.mark.parametrize("how", ["write_text", "write_bytes", "open_append text", "write_json_atomic"])
def test_a_dangling_link_is_refused_too(how, here, tmp_path):
    link = here / "out.json"
    link.symlink_to(tmp_path / "not-yet" / "there")
    with pytest.raises(files.UnsafePathError):
        WRITES[how](link)
    assert not (tmp_path / "not-yet").exists()


def test_history_refuses_a_link_at_a_sqlite_side_file(here, victim):
    (here / "history.sqlite3-wal").symlink_to(victim)
    with pytest.raises(files.UnsafePathError, match="history.sqlite3-wal"):
        History(here / "history.sqlite3")
    assert victim.read_bytes() == SECRET


def test_the_temporary_file_is_created_exclusively(here, victim, monkeypatch):
    """A link planted at the temporary name is not followed: the writer takes another name."""
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    (here / ".out.txt.aaaaaaaa.tmp").symlink_to(victim)
    files.write_text(here / "out.txt", "new\n")
    assert (here / "out.txt").read_text() == "new\n"
    assert victim.read_bytes() == SECRET


def test_replace_is_whole_or_nothing(here):
    target = here / "summary.json"
    files.write_text(target, "old\n")
    with pytest.raises(RuntimeError), files.replacing(target, "w") as f:
        f.write("half")
        raise RuntimeError("the writer died")
    assert target.read_text() == "old\n"
    assert [p.name for p in here.iterdir()] == ["summary.json"]


def test_modes_are_as_asked_under_the_umask(here):
    old = os.umask(0o022)
    try:
        files.write_text(here / "public", "x")
        files.write_text(here / "private", "x", perm=files.PRIVATE_MODE)
        files.open_append(here / "log", "a").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((here / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((here / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((here / "log").stat().st_mode) == 0o644


def test_append_appends(here):
    for text in ("a\n", "b\n"):
        with files.open_append(here / "windows.jsonl") as f:
            f.write(text)
    assert (here / "windows.jsonl").read_text() == "a\nb\n"


def test_a_directory_reached_through_a_link_is_the_users_choice(tmp_path):
    """Only the written name is checked: a results directory may be a link to another disk."""
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "results").symlink_to(real, target_is_directory=True)
    files.write_text(tmp_path / "results" / "x.json", "{}")
    assert (real / "x.json").read_text() == "{}"


@pytest.mark.parametrize("suffix", ["", INCOMPLETE_SUFFIX])
def test_a_link_at_the_bundle_directory_name_is_refused(suffix, tmp_path, victim):
    started = datetime(2026, 12, 3, 10, 0, 0, tzinfo=timezone.utc)
    out = tmp_path / "results"
    out.mkdir()
    (out / (bundle_name("smoke", started) + suffix)).symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(files.UnsafePathError, match="smoke-20261203T100000Z"):
        BundleWriter(out, "smoke", started)
    assert sorted(p.name for p in victim.parent.iterdir()) == ["authorized_keys"]
    assert victim.read_bytes() == SECRET


def test_bad_modes_are_an_error():
    with pytest.raises(ValueError):
        files.open_append("x", "w")
    with pytest.raises(ValueError), files.replacing("x", "a"):
        pass
