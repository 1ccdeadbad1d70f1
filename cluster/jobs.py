"""horde runs as Ray jobs: submit, list, status, logs, stop, and fetch the result bundle.

Two sides:

- *Client* (this machine): every function here talks to the cluster's job server, the
  dashboard's HTTP port (8265), through `ray.job_submission.JobSubmissionClient`. Keep that
  port private (ray-config.yaml; reach it with `ray dashboard ray-config.yaml`).
- *Job* (on the cluster): a submitted job's entrypoint is `python -m horde.cluster.jobs exec ...`,
  which runs `python -m horde.coordinator.cli run ...` as a child process (plain `python -m`, so no
  console script is needed on the cluster; the job's working_dir is the repository and is
  the driver's current directory) and, once the child has ended -- passed, failed, or
  stopped by `horde jobs stop` -- exports the bundle for `fetch`.

How a bundle travels home. The job writes its bundle under the job's working directory on
the driver's node (`<out_dir>/<job id>/`), then copies it as one tar.gz into the Ray session's
log directory of that node: `<session>/logs/horde-bundles/<job id>.tar.gz` (the driver's
stdout *is* `<session>/logs/job-driver-<job id>.log`, so that directory is easy to find and
it lives as long as the Ray session). `fetch` reads the file back over the dashboard's log
API -- `GET /api/v0/logs/file?node_id=<driver node>&filename=horde-bundles/<id>.tar.gz`, the
endpoint behind `ray logs` and `ray.util.state.get_log` -- with the job's `driver_node_id`
from the job info, and unpacks it. Measured on Ray 2.60: the endpoint returns the file's bytes
unchanged, binary included, so no base64 is needed. No extra service, no shared storage,
nothing but the port the jobs API already uses. By default the driver runs on the head node
(horde asks for no entrypoint resources), so the bundle survives autoscaling; it is gone when
the cluster is restarted.

A scenario file inside `working_dir` is passed by its relative path. One outside it (say
`/tmp/checkout.yaml`) travels in the job's environment (`HORDE_SCENARIO_YAML`) and the job
writes it back to `.horde-jobs/<job id>/<name>` before the run: nothing is copied into the
repository on this machine. Its `${ENV}` references are resolved on the cluster, from the
job's environment (`runtime_env_extra={"env_vars": {...}}`; those values are visible to
anyone who can read the job's info on the dashboard).

Authentication (Ray 2.60 token auth). `JobSubmissionClient` adds the cluster token only when
`RAY_AUTH_MODE=token` is set in *this* process; with the mode unset it sends nothing, even
when `~/.ray/auth_token` exists, and a token cluster answers 401. So horde reads the token the
way Ray's own loader does -- `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`,
else `~/.ray/auth_token` -- and sends it as `Authorization: Bearer <token>` on every request
(jobs API and log API alike); an explicit `token=` argument comes first, and
`RAY_AUTH_MODE=disabled` turns it off. On the head node, `ray get-auth-token` prints it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from horde.cluster.shipping import JOB_ID_ENV, horde_py_module

REPO_ROOT = Path(__file__).resolve().parents[1]  # a checkout's root (editable install)

JOB_PREFIX = "horde-"
BUNDLES_SUBDIR = "horde-bundles"  # under the Ray session's log directory of the driver's node
SCENARIO_ENV = "HORDE_SCENARIO_YAML"  # a scenario from outside working_dir travels here
STOP_GRACE_S = 20  # after `stop`, SIGKILL comes this much later: time to write the incomplete bundle
PROBE_TIMEOUT_S = 5.0
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

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


class JobsError(RuntimeError):
    """A jobs operation failed; the message says what to do about it."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str
    entrypoint: str
    start_time_s: float | None
    end_time_s: float | None
    driver_node_id: str | None
    driver_exit_code: int | None  # horde's exit code (0 passed, 4 thresholds failed, ...)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- client side -------------------------------------------------------------------------


def new_job_id(scenario_name: str, now: datetime | None = None) -> str:
    """`horde-<scenario>-<UTC time>-<4 hex>`: sortable, readable, unique enough per cluster."""
    stem = re.sub(r"[^a-z0-9]+", "-", scenario_name.lower()).strip("-")[:40] or "run"
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{JOB_PREFIX}{stem}-{stamp}-{uuid.uuid4().hex[:4]}"


def job_entrypoint(
    job_id: str,
    scenario_arg: str,
    *,
    overrides: Sequence[str] = (),
    out_dir: str = "results",
    scenario_from_env: bool = False,
) -> str:
    """The job's shell command: this module's `exec` wrapping `python -m horde.coordinator.cli run`."""
    job_out = f"{out_dir.rstrip('/')}/{job_id}"
    run = ["python", "-m", "horde.coordinator.cli", "run", scenario_arg]
    for o in overrides:
        run += ["--set", o]
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


def submit(
    scenario_path: str | os.PathLike[str],
    *,
    address: str,
    overrides: Sequence[str] = (),
    out_dir: str = "results",
    working_dir: str | os.PathLike[str] | None = None,
    runtime_env_extra: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    token: str | None = None,
) -> str:
    """Submit `horde run SCENARIO --set ... --out OUT_DIR/<job id>` as a Ray job; return its id.

    `working_dir` (default: this checkout, or the current directory for a wheel install) is
    shipped as the job's working_dir and the `horde` package as a py_module; horde's
    dependencies must already be installed on the cluster's nodes (ray-config.yaml does it).
    `out_dir` is relative to the job's working directory on the driver's node, or absolute.
    The scenario is not validated here: run `horde validate` first; a job with an invalid
    scenario fails with exit code 3 and says why in its logs.
    """
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
    if scenario.is_relative_to(wd) and _shipped_with(wd, scenario.relative_to(wd)):
        scenario_arg, scenario_text = scenario.relative_to(wd).as_posix(), None
    else:
        scenario_arg, scenario_text = f".horde-jobs/{job_id}/{scenario.name}", scenario.read_text()
    entrypoint = job_entrypoint(
        job_id, scenario_arg, overrides=overrides, out_dir=out_dir, scenario_from_env=scenario_text is not None
    )
    runtime_env = build_runtime_env(wd, job_id, scenario_text=scenario_text, extra=runtime_env_extra)
    client = _client(address, token)
    metadata = {"horde.scenario": scenario.name, "horde.out": f"{out_dir.rstrip('/')}/{job_id}"}
    with _translated(address, job_id), horde_py_module() as horde_dir:
        # horde travels as a py_module, so nodes need only Ray and horde's dependencies
        runtime_env["py_modules"] = [horde_dir, *runtime_env.get("py_modules", [])]
        return client.submit_job(
            entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env, metadata=metadata
        )


def _default_working_dir() -> Path:
    """The checkout horde runs from, or (installed from a wheel) the current directory."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def _shipped_with(working_dir: Path, relative: Path) -> bool:
    """Whether Ray's upload of working_dir includes this file (not excluded, not git-ignored)."""
    if relative.parts[0].rstrip("/") in {e.rstrip("/") for e in DEFAULT_EXCLUDES}:
        return False
    if (working_dir / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "-C", str(working_dir), "check-ignore", "-q", relative.as_posix()],
            capture_output=True, timeout=10,
        )
        return ignored.returncode != 0  # 0: ignored; 1: not ignored; 128: not a repository after all
    return True


def list_jobs(address: str, *, token: str | None = None, all_jobs: bool = False) -> list[JobInfo]:
    """The cluster's horde jobs (every job with `all_jobs`), oldest first."""
    client = _client(address, token)
    with _translated(address, None):
        details = client.list_jobs()
    infos = [_info(d) for d in details if all_jobs or (d.submission_id or "").startswith(JOB_PREFIX)]
    return sorted(infos, key=lambda i: (i.start_time_s or 0.0, i.job_id))


def status(address: str, job_id: str, *, token: str | None = None) -> JobInfo:
    client = _client(address, token)
    with _translated(address, job_id):
        return _info(client.get_job_info(job_id))


def logs(address: str, job_id: str, *, token: str | None = None) -> str:
    """The job's output so far (the driver's stdout and stderr)."""
    client = _client(address, token)
    with _translated(address, job_id):
        client.get_job_info(job_id)  # a clear "unknown job" rather than an empty log
        return client.get_job_logs(job_id)


async def follow_logs(address: str, job_id: str, *, token: str | None = None) -> AsyncIterator[str]:
    """The job's output as it comes (from the beginning); ends when the job has ended."""
    import aiohttp

    client = _client(address, token)
    with _translated(address, job_id):
        client.get_job_info(job_id)
    try:
        with _quiet_sdk():
            async with contextlib.aclosing(client.tail_job_logs(job_id)) as chunks:
                async for chunk in chunks:
                    yield chunk
    except (OSError, RuntimeError, aiohttp.ClientError) as exc:
        raise JobsError(f"lost the log stream of job {job_id} on {_http_address(address)}: {exc}") from exc


def stop(address: str, job_id: str, *, token: str | None = None, wait_s: float = STOP_GRACE_S + 15.0) -> JobInfo:
    """Stop the job (SIGTERM: horde writes its bundle, marked incomplete) and wait for it to end.

    Returns the job's info; its status is STOPPED, or SUCCEEDED/FAILED when it had already
    ended. Raises JobsError when it has not ended within `wait_s`.
    """
    client = _client(address, token)
    with _translated(address, job_id):
        info = _info(client.get_job_info(job_id))
        if info.terminal:
            return info
        client.stop_job(job_id)
        deadline = time.monotonic() + wait_s
        while True:
            info = _info(client.get_job_info(job_id))
            if info.terminal:
                return info
            if time.monotonic() > deadline:
                raise JobsError(
                    f"job {job_id} was asked to stop but is still {info.status} after {wait_s:.0f}s; "
                    f"check again with `horde jobs status {job_id}`"
                )
            time.sleep(0.5)


def fetch(
    address: str, job_id: str, dest_dir: str | os.PathLike[str], *, token: str | None = None, timeout_s: float = 300.0
) -> Path:
    """Bring the finished job's result bundle to `dest_dir`; return the bundle's local path."""
    import requests

    info = status(address, job_id, token=token)
    if not info.terminal:
        raise JobsError(
            f"job {job_id} is {info.status}: its bundle is exported when the run ends; "
            f"wait for it (`horde jobs logs {job_id} --follow`) and fetch again"
        )
    if not info.driver_node_id:
        raise JobsError(
            f"job {job_id} ended ({info.status}: {info.message}) before its driver started: it left no bundle"
        )
    url = f"{_http_address(address)}/api/v0/logs/file"
    params = {
        "node_id": info.driver_node_id,
        "filename": f"{BUNDLES_SUBDIR}/{job_id}.tar.gz",
        "lines": -1,
        "timeout": int(timeout_s),
    }
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".horde-fetch-", dir=dest) as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        try:
            with requests.get(
                url, params=params, headers=auth_headers(token), stream=True, timeout=(PROBE_TIMEOUT_S, timeout_s)
            ) as r:
                if r.status_code in (401, 403):
                    raise JobsError(_auth_advice(address, r.status_code))
                if r.status_code != 200:
                    raise JobsError(_no_bundle_advice(job_id, info, r.text))
                with open(archive, "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
        except requests.RequestException as exc:
            raise JobsError(f"could not download the bundle of job {job_id} from {_http_address(address)}: {exc}") from exc
        return _unpack(archive, dest, job_id)


# --- job side ----------------------------------------------------------------------------


def export_bundle_for_fetch(
    bundle_path: str | os.PathLike[str],
    *,
    job_id: str | None = None,
    logs_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Copy a bundle (complete or `.incomplete`) as `<logs>/horde-bundles/<job id>.tar.gz`.

    Runs on the cluster, inside the job. `job_id` defaults to $HORDE_JOB_ID and `logs_dir` to
    the Ray session's log directory (see ray_logs_dir). Written to a temporary name and
    renamed, so `fetch` never sees half a file. Returns the archive's path.
    """
    bundle = Path(bundle_path)
    if not bundle.is_dir():
        raise JobsError(f"{bundle}: not a bundle directory")
    job_id = job_id or os.environ.get(JOB_ID_ENV)
    if not job_id:
        raise JobsError(f"no job id: not inside a horde Ray job (${JOB_ID_ENV} is unset)")
    target_dir = Path(logs_dir) if logs_dir else ray_logs_dir()
    target_dir = target_dir / BUNDLES_SUBDIR
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / f"{job_id}.tar.gz"
    part = final.with_name(final.name + ".part")
    with tarfile.open(part, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    os.replace(part, final)
    return final


def ray_logs_dir() -> Path:
    """The Ray session's log directory of this node, seen from inside a job's driver.

    In order: $HORDE_RAY_LOGS_DIR; the directory of the job's own log file (Ray points the
    driver's stdout at `<session>/logs/job-driver-<id>.log`; Linux /proc); a connected Ray's
    node; the default session `/tmp/ray/session_latest/logs`.
    """
    if os.environ.get("HORDE_RAY_LOGS_DIR"):
        return Path(os.environ["HORDE_RAY_LOGS_DIR"])
    for fd in (1, 2):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if target.name.startswith("job-driver-") and target.parent.is_dir():
            return target.parent
    try:
        import ray

        if ray.is_initialized():
            node = ray._private.worker._global_node  # no public accessor for the log directory
            if node is not None:
                return Path(node.get_logs_dir_path())
    except Exception:  # an old or minimal Ray: fall through to the default location
        pass
    default = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
    if default.is_dir():
        return default.resolve()
    raise JobsError("cannot find the Ray session's log directory; set HORDE_RAY_LOGS_DIR")


def find_bundle(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest bundle directory (complete or `.incomplete`) in `out_dir`, if any."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").exists()]
    return max(dirs, key=lambda p: p.stat().st_mtime, default=None)


def _exec_main(argv: Sequence[str]) -> int:
    """`python -m horde.cluster.jobs exec --job-id ID --bundles DIR [--scenario-from-env PATH] -- CMD...`"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m horde.cluster.jobs exec")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--bundles", required=True, help="directory the run writes its bundle into")
    parser.add_argument("--scenario-from-env", metavar="PATH", help=f"write ${SCENARIO_ENV} to PATH first")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    if args.scenario_from_env:
        text = os.environ.get(SCENARIO_ENV)
        if text is None:
            print(f"horde job: ${SCENARIO_ENV} is not set; cannot write {args.scenario_from_env}", file=sys.stderr)
            return 1
        path = Path(args.scenario_from_env)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    child = subprocess.Popen(command)

    # Ray's stop signals every process of the job; the run handles it (writes its bundle) and
    # this wrapper stays to export whatever the run left. A signal that reached only us is passed on.
    def relay(signum, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, relay)
    code = child.wait()
    if code < 0:  # killed by a signal: report it the way a shell does
        code = 128 - code
    bundle = find_bundle(args.bundles)
    if bundle is None:
        print(f"horde job: the run left no bundle in {args.bundles}; nothing to fetch", file=sys.stderr)
    else:
        try:
            archive = export_bundle_for_fetch(bundle, job_id=args.job_id)
        except (OSError, JobsError) as exc:
            print(f"horde job: could not export {bundle} for fetch: {exc}", file=sys.stderr)
            return code or 1
        print(
            f"horde job: bundle {bundle.name} exported ({archive.stat().st_size} bytes); "
            f"`horde jobs fetch {args.job_id}` brings it home",
            flush=True,
        )
    return code


# --- plumbing ----------------------------------------------------------------------------


def auth_headers(token: str | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` from the sources Ray 2.60 reads, in its order; or nothing."""
    if token is None:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            return {}
        token = _token_from_environment()
    token = (token or "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _token_from_environment() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        try:
            return Path(path_env).expanduser().read_text()
        except OSError as exc:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path_env}: cannot read the token: {exc}") from exc
    default = Path.home() / ".ray" / "auth_token"
    try:
        return default.read_text()
    except OSError:
        return None


def _http_address(address: str) -> str:
    address = (address or "").strip().rstrip("/")
    if not address:
        raise JobsError("no job server address: give the dashboard's address, e.g. http://127.0.0.1:8265")
    if address.startswith("ray://"):
        raise JobsError(
            f"{address} is a Ray client address; jobs go to the dashboard's HTTP port: "
            "http://HEAD:8265 (`ray dashboard ray-config.yaml` forwards it to 127.0.0.1:8265)"
        )
    if "://" not in address:
        address = "http://" + address
    return address


def _probe(url: str) -> None:
    """Fail fast and clearly on an unreachable job server (requests alone may hang for minutes)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise JobsError(
            f"cannot reach the Ray job server at {url} ({exc}). Is the cluster up, and is this its "
            "dashboard address (port 8265)? For a cluster from ray-config.yaml, run "
            "`ray dashboard ray-config.yaml` and use http://127.0.0.1:8265"
        ) from exc


def _auth_error_type() -> type[BaseException]:
    import ray.exceptions

    # Ray < 2.52 has no token auth and no such error: nothing will match it.
    return getattr(ray.exceptions, "AuthenticationError", type("_NoAuthError", (Exception,), {}))


def _client(address: str, token: str | None):
    from ray.job_submission import JobSubmissionClient

    AuthenticationError = _auth_error_type()

    url = _http_address(address)
    _probe(url)
    try:
        return JobSubmissionClient(url, headers=auth_headers(token))
    except AuthenticationError as exc:
        raise JobsError(_auth_advice(url, 401 if "required" in str(exc).lower() else 403)) from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobsError(f"{url} does not answer as a Ray job server: {exc}") from exc


# The SDK logs every upload and ignored file at INFO on stderr; horde's commands say what matters.
_NOISY_LOGGERS = (
    "ray._private.runtime_env.packaging",
    "ray._private.runtime_env.working_dir",
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
)


@contextlib.contextmanager
def _quiet_sdk():
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _translated:
    """Turn the SDK's errors into JobsError with advice (and keep its INFO chatter quiet)."""

    def __init__(self, address: str, job_id: str | None) -> None:
        self._address, self._job_id = address, job_id
        self._quiet = _quiet_sdk()

    def __enter__(self) -> None:
        self._quiet.__enter__()
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._quiet.__exit__(None, None, None)
        if exc is None or isinstance(exc, JobsError):
            return False
        url = _http_address(self._address)
        if isinstance(exc, _auth_error_type()):
            raise JobsError(_auth_advice(url, 401 if "required" in str(exc).lower() else 403)) from exc
        text = str(exc)
        if self._job_id and ("404" in text or "does not exist" in text):
            raise JobsError(f"no job {self._job_id} on {url}; `horde jobs list` shows the cluster's jobs") from exc
        if "already exists" in text:
            raise JobsError(f"a job {self._job_id} already exists on {url}; choose another id") from exc
        if isinstance(exc, (RuntimeError, ConnectionError, OSError, ValueError)):
            raise JobsError(f"the job server at {url} refused the request: {text.strip()[:500]}") from exc
        return False


def _auth_advice(url: str, status_code: int) -> str:
    if status_code == 401:
        what = "requires a token and none was sent"
    else:
        what = "rejected the token"
    return (
        f"the Ray cluster at {url} {what} (token authentication). Set RAY_AUTH_TOKEN, or "
        "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token; "
        "`ray get-auth-token` on the head node prints it"
    )


def _no_bundle_advice(job_id: str, info: JobInfo, server_text: str) -> str:
    text = server_text.strip()
    if "doesn't exist" in text and "Agent for node" in text:
        return (
            f"the node that ran job {job_id} ({info.driver_node_id}) has left the cluster; "
            "its bundle went with it"
        )
    return (
        f"job {job_id} ({info.status}) left no bundle to fetch: its run wrote none, or the "
        f"cluster was restarted since. `horde jobs logs {job_id}` shows what happened "
        f"(server: {text[:200]})"
    )


def _unpack(archive: Path, dest: Path, job_id: str) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(names) != 1:
                raise JobsError(f"the archive of job {job_id} is not one bundle directory: {sorted(names)[:5]}")
            (name,) = names
            if name in ("", ".", "..") or name.startswith(".horde-fetch-"):
                raise JobsError(f"the archive of job {job_id} has no bundle directory at its top: {name!r}")
            final = dest / name
            if final.exists():
                raise JobsError(f"{final} already exists: fetched before? remove it or fetch elsewhere")
            staging = archive.parent / "x"
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python < 3.10.12: refuse anything that leaves the staging directory
                for m in tar.getmembers():
                    if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                        raise JobsError(f"the archive of job {job_id} holds an unsafe entry: {m.name}")
                tar.extractall(staging)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise JobsError(f"the bundle archive of job {job_id} is damaged: {exc}") from exc
    os.replace(staging / name, final)
    return final


def _info(d) -> JobInfo:
    def seconds(ms) -> float | None:
        return ms / 1000.0 if ms else None

    status_value = getattr(d.status, "value", d.status)
    return JobInfo(
        job_id=d.submission_id or d.job_id or "",
        status=str(status_value),
        message=d.message or "",
        entrypoint=d.entrypoint or "",
        start_time_s=seconds(d.start_time),
        end_time_s=seconds(d.end_time),
        driver_node_id=getattr(d, "driver_node_id", None) or None,
        driver_exit_code=getattr(d, "driver_exit_code", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exec"]:
        return _exec_main(argv[1:])
    print("usage: python -m horde.cluster.jobs exec --job-id ID --bundles DIR [--scenario-from-env PATH] -- CMD ...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
