"""Preparing a Ray job for horde: its id, entrypoint, runtime_env, and the files that travel with it.

`cluster/jobs.py` sends what `prepare_job` builds; this part talks to no job server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from horde.cluster.allocator import allocator_env
from horde.cluster.job_exec import SCENARIO_ENV
from horde.cluster.job_server import JobsError
from horde.cluster.shipping import JOB_ID_ENV
from horde.coordinator import files

REPO_ROOT = Path(__file__).resolve().parents[1]  # a checkout's root (editable install)

JOB_PREFIX = "horde-"
STOP_GRACE_S = 20  # after `stop`, SIGKILL comes this much later: time to write the incomplete bundle

# Never shipped to the cluster (Ray also honours .gitignore and .rayignore).
DEFAULT_EXCLUDES = (
    ".git",
    "results/",
    ".horde-jobs/",
    "**/__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
    "build/",
    ".venv",
    "venv",
)

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


def new_job_id(scenario_name: str, now: datetime | None = None) -> str:
    """`horde-<scenario>-<UTC time>-<4 hex>`: sortable, readable, unique enough per cluster."""
    stem = re.sub(r"[^a-z0-9]+", "-", scenario_name.lower()).strip("-")[:40] or "run"
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{JOB_PREFIX}{stem}-{stamp}-{uuid.uuid4().hex[:4]}"


def job_entrypoint(
    job_id: str,
    scenario_arg: str,
    *,
    set_file: str | None = None,
    out_dir: str = "results",
    scenario_from_env: bool = False,
) -> str:
    """The job's shell command: this module's `exec` wrapping `python -m horde.coordinator.cli run`.

    `--set` values never appear here (the dashboard shows the entrypoint): they reach the run
    through `set_file`, a file in the job's working_dir."""
    job_out = f"{out_dir.rstrip('/')}/{job_id}"
    run = ["python", "-m", "horde.coordinator.cli", "run", scenario_arg]
    if set_file is not None:
        run += ["--set-file", set_file]
    run += ["--out", job_out, "--address", "auto"]
    wrapper = ["python", "-m", "horde.cluster.jobs", "exec", "--job-id", job_id, "--bundles", job_out]
    if scenario_from_env:
        wrapper += ["--scenario-from-env", scenario_arg]
    return shlex.join(wrapper + ["--"] + run)


def build_runtime_env(
    working_dir: Path,
    job_id: str,
    *,
    scenario_text: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    env_vars: dict[str, str] = {JOB_ID_ENV: job_id, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}
    # glibc's malloc as horde sets it up (cluster/allocator.py): the job's driver and agents
    # would otherwise run with the defaults whose heaps crept over a soak
    env_vars.update(allocator_env())
    if scenario_text is not None:
        env_vars[SCENARIO_ENV] = scenario_text
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    for key, value in (extra or {}).items():
        if key == "env_vars":
            env_vars.update({str(k): str(v) for k, v in value.items()})
        elif key == "excludes":
            runtime_env["excludes"] += list(value)
        else:
            runtime_env[key] = value
    runtime_env["env_vars"] = env_vars
    return runtime_env


JOB_FILES_DIR = ".horde-jobs"  # in working_dir: a job's files that travel with the upload
OVERRIDES_FILE = "overrides.json"


@dataclass(frozen=True)
class PreparedJob:
    """What `submit` hands the job server, and the files that travel in the working_dir upload."""

    job_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # path relative to working_dir -> text


def prepare_job(
    scenario_path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    out_dir: str = "results",
    working_dir: str | os.PathLike[str] | None = None,
    runtime_env_extra: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    user_files: Sequence[str] = (),
) -> PreparedJob:
    """The job `submit` sends, without sending it: entrypoint, runtime_env, metadata, and the
    files (the scenario when it lies outside working_dir, the overrides) to put in working_dir.
    `user_files`: the scenario's Python user files, relative to it; they travel in the
    working_dir upload too (beside a copy of the scenario when the upload would miss one)."""
    wd = Path(working_dir or _default_working_dir()).resolve()
    if not wd.is_dir():
        raise JobsError(f"working_dir {wd} is not a directory")
    scenario = Path(scenario_path).resolve()
    if not scenario.is_file():
        raise JobsError(f"scenario {scenario_path}: no such file")
    if job_id is None:
        job_id = new_job_id(scenario.stem)
    elif not job_id.startswith(JOB_PREFIX):
        job_id = JOB_PREFIX + job_id
    if not _JOB_ID_RE.match(job_id):
        raise JobsError(f"job id {job_id!r}: use letters, digits, '-', '_' and '.' only")
    job_dir = f"{JOB_FILES_DIR}/{job_id}"
    job_files: dict[str, str] = {}
    # The upload carries the scenario (and its Python user files) when all of them are in
    # working_dir and not ignored; otherwise they travel as this job's files, side by side.
    if _travels(wd, scenario) and all(_travels(wd, scenario.parent / f) for f in user_files):
        scenario_arg = scenario.relative_to(wd).as_posix()
    else:
        scenario_arg = f"{job_dir}/{scenario.name}"
        job_files[scenario_arg] = scenario.read_text()
        for f in user_files:
            job_files[f"{job_dir}/{_inside(f)}"] = (scenario.parent / f).read_text()
    set_file = None
    if overrides:
        set_file = f"{job_dir}/{OVERRIDES_FILE}"
        job_files[set_file] = json.dumps(list(overrides))
    if job_files and _git_ignored(wd, Path(job_dir)):
        raise JobsError(
            f"{JOB_FILES_DIR}/ is git-ignored in {wd}, and Ray does not upload git-ignored files: "
            "the scenario copy and the --set values travel there; remove it from .gitignore"
        )
    entrypoint = job_entrypoint(job_id, scenario_arg, set_file=set_file, out_dir=out_dir)
    runtime_env = build_runtime_env(wd, job_id, extra=runtime_env_extra)
    if job_files:
        # DEFAULT_EXCLUDES leaves out .horde-jobs/; this job's own files go with it (the last
        # matching pattern wins in Ray's gitwildmatch excludes; the directory and its files
        # each need a pattern, measured on Ray 2.60).
        runtime_env["excludes"] += [f"!{job_dir}", f"!{job_dir}/**"]
    metadata = {"horde.scenario": scenario.name, "horde.out": f"{out_dir.rstrip('/')}/{job_id}"}
    return PreparedJob(job_id, entrypoint, runtime_env, metadata, job_files)


@contextlib.contextmanager
def _job_files(working_dir: Path, job_files: Mapping[str, str]) -> Iterator[None]:
    """The job's files in working_dir (owner-only) while the block runs, then gone again."""
    written: list[Path] = []
    made: list[Path] = []  # directories created here, removed again when empty
    try:
        for relative, text in job_files.items():
            path = working_dir / relative
            missing = [d for d in path.parents if d.is_relative_to(working_dir) and not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made += [d for d in missing if d not in made]
            files.write_bytes(path, text.encode("utf-8"), perm=files.PRIVATE_MODE)
            written.append(path)
        yield
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for path in sorted(made, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty (another submit's) or already gone
                path.rmdir()


def _travels(working_dir: Path, path: Path) -> bool:
    path = path.resolve()
    return path.is_relative_to(working_dir) and _shipped_with(working_dir, path.relative_to(working_dir))


def _inside(user_file: str) -> str:
    """A user file's path beside the scenario's copy: relative and inside its folder."""
    parts = Path(user_file).parts
    if Path(user_file).is_absolute() or ".." in parts:
        raise JobsError(
            f"user file {user_file}: outside the scenario's folder and not in working_dir; "
            "put it beside the scenario (or in working_dir) to submit it"
        )
    return Path(*parts).as_posix()


def _default_working_dir() -> Path:
    """The checkout horde runs from, or (installed from a wheel) the current directory."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def _shipped_with(working_dir: Path, relative: Path) -> bool:
    """Whether Ray's upload of working_dir includes this file (not excluded, not git-ignored)."""
    if relative.parts[0].rstrip("/") in {e.rstrip("/") for e in DEFAULT_EXCLUDES}:
        return False
    return not _git_ignored(working_dir, relative)


def _git_ignored(working_dir: Path, relative: Path) -> bool:
    if (working_dir / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "-C", str(working_dir), "check-ignore", "-q", relative.as_posix()],
            capture_output=True,
            timeout=10,
        )
        return ignored.returncode == 0  # 0: ignored; 1: not ignored; 128: not a repository after all
    return False
