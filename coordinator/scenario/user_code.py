"""Python user files: read them (bounded, relative to the scenario file) and check that they
import, in a subprocess (`horde validate`): importing user code runs it, and a module that
hangs, exits or breaks the interpreter must not take the coordinator with it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from horde.coordinator.scenario.users import UserCode, UserEntry

if TYPE_CHECKING:
    from horde.coordinator.scenario.models import Scenario

MAX_USER_FILE_BYTES = 1024 * 1024  # as agents/users.py
CHECK_TIMEOUT_S = 60.0


def read_user_code(file: str, base_dir: str) -> tuple[UserCode | None, str | None]:
    """The file's text and hash, or a problem (why it cannot be read)."""
    resolved = os.path.normpath(os.path.join(base_dir, file))
    shown = file if file.isprintable() else repr(file)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot read the user file {shown}: {exc.strerror or exc} (looked for {resolved})"
    with os.fdopen(fd, "rb") as f:
        if not os.path.isfile(resolved):
            return None, f"the user file {shown} is not a regular file"
        data = f.read(MAX_USER_FILE_BYTES + 1)
    if len(data) > MAX_USER_FILE_BYTES:
        return None, f"the user file {shown} is larger than {MAX_USER_FILE_BYTES} bytes (1 MiB)"
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"the user file {shown} is not UTF-8 text (byte offset {exc.start})"
    return UserCode(path=file, resolved=resolved, source=source, sha256=hashlib.sha256(data).hexdigest()), None


def attach_user_code(scenario: Scenario, base_dir: str) -> list[tuple[str, str]]:
    """Read each Python user's file (relative to `base_dir`, the scenario file's directory)
    onto its entry; the problems as (where, message), one per entry that cannot be read."""
    problems = []
    for i, entry in enumerate(scenario.requests):
        if isinstance(entry, UserEntry):
            code, problem = read_user_code(entry.file, base_dir)
            if problem:
                problems.append((f"requests[{i}].user", problem))
            elif code is not None:
                entry.with_code(code)
    return problems


def _pythonpath() -> str:
    """PYTHONPATH for the subprocess: whatever makes `horde` importable here."""
    import horde.agents

    here = Path(horde.agents.__file__ or "").resolve().parent.parent
    parts = [os.environ.get("PYTHONPATH", "")]
    if here.name == "horde":
        parts.insert(0, str(here.parent))
    return os.pathsep.join(p for p in parts if p)


def check_user_code(entries: Sequence[tuple[int, UserEntry]]) -> list[tuple[str, str]]:
    """(key path, problem) for every user entry whose class does not import or has a wrong
    signature; each problem names the file and line."""
    problems: list[tuple[str, str]] = []
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    for i, entry in entries:
        code = entry.code
        if code is None:
            continue
        where = f"requests[{i}].user"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "horde.agents.users", "check", code.resolved, entry.class_name, code.path],
                capture_output=True,
                timeout=CHECK_TIMEOUT_S,
                env=env,
                cwd=os.path.dirname(code.resolved),
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            problems.append((where, f"{code.path}: importing it took longer than {CHECK_TIMEOUT_S:g}s"))
            continue
        try:
            found = json.loads(done.stdout.decode().strip().splitlines()[-1])["problems"]
        except (ValueError, IndexError, KeyError, TypeError):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            problems.append((where, f"{code.path}: the import check failed: {tail[0][:300]}"))
            continue
        problems.extend((where, str(p)) for p in found)
    return problems
