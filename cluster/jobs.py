"""horde runs as Ray jobs: submit, list, status, logs, stop, and fetch the result bundle.

Two sides:

- *Client* (this machine): every function here talks to the cluster's job server, the
  dashboard's HTTP port (8265), through `ray.job_submission.JobSubmissionClient`. Keep that
  port private (ray-config.yaml; reach it with `ray dashboard ray-config.yaml`). The address,
  token and error plumbing is cluster/job_server.py.
- *Job* (on the cluster, cluster/job_exec.py): a submitted job's entrypoint is
  `python -m horde.cluster.jobs exec ...`, which runs `python -m horde.coordinator.cli run ...`
  as a child process (plain `python -m`, so no console script is needed on the cluster; the
  job's working_dir is the repository and is the driver's current directory) and, once the
  child has ended -- passed, failed, or stopped by `horde jobs stop` -- exports the bundle
  for `fetch`.

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
`/tmp/checkout.yaml`), and the `--set` overrides (a JSON list, read by `horde run --set-file`),
travel as files in the job's working_dir upload, `.horde-jobs/<job id>/<name>` and
`.horde-jobs/<job id>/overrides.json`: written there (mode 0600) just for the upload and
removed right after it. The dashboard and the job list show a job's entrypoint, metadata
and runtime_env, so none of them carries a scenario's content or a `--set` value (the rule
is docs/security.md's; the job server's older `HORDE_SCENARIO_YAML` route is still read by
`exec --scenario-from-env`). Each such job uploads its own working_dir package. A scenario's
`${ENV}` references are resolved on the cluster, from the job's environment
(`runtime_env_extra={"env_vars": {...}}`; those values are visible to anyone who can read
the job's info on the dashboard).

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
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# The job's side and the job server's plumbing live beside this module; their public names
# are importable from here too.
from horde.cluster.job_exec import (
    BUNDLES_SUBDIR,
    SCENARIO_ENV,
    exec_main,
    export_bundle_for_fetch,
    find_bundle,
    ray_logs_dir,
)
from horde.cluster.job_prepare import (
    _JOB_ID_RE as _JOB_ID_RE,  # tests check the id rule through this module
)
from horde.cluster.job_prepare import (
    JOB_PREFIX,
    STOP_GRACE_S,
    _job_files,
    build_runtime_env,
    job_entrypoint,
    new_job_id,
    prepare_job,
)
from horde.cluster.job_prepare import (
    PreparedJob as PreparedJob,
)
from horde.cluster.job_prepare import (
    _shipped_with as _shipped_with,  # tests check the upload rule through this module
)
from horde.cluster.job_server import (
    PROBE_TIMEOUT_S,
    TERMINAL,
    JobInfo,
    JobsError,
    _auth_advice,
    _client,
    _http_address,
    _info,
    _quiet_sdk,
    _translated,
    auth_headers,
)
from horde.cluster.shipping import horde_py_module
from horde.coordinator import files

__all__ = [
    "BUNDLES_SUBDIR",
    "PROBE_TIMEOUT_S",
    "SCENARIO_ENV",
    "STOP_GRACE_S",
    "TERMINAL",
    "JobInfo",
    "JobsError",
    "auth_headers",
    "build_runtime_env",
    "export_bundle_for_fetch",
    "fetch",
    "find_bundle",
    "follow_logs",
    "job_entrypoint",
    "list_jobs",
    "logs",
    "new_job_id",
    "prepare_job",
    "ray_logs_dir",
    "status",
    "stop",
    "submit",
]


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
    user_files: Sequence[str] = (),
) -> str:
    """Submit `horde run SCENARIO --set-file ... --out OUT_DIR/<job id>` as a Ray job; return its id.

    `working_dir` (default: this checkout, or the current directory for a wheel install) is
    shipped as the job's working_dir and the `horde` package as a py_module; horde's
    dependencies must already be installed on the cluster's nodes (ray-config.yaml does it).
    `out_dir` is relative to the job's working directory on the driver's node, or absolute.
    The scenario is not validated here: run `horde validate` first; a job with an invalid
    scenario fails with exit code 3 and says why in its logs.
    """
    job = prepare_job(
        scenario_path,
        overrides=overrides,
        out_dir=out_dir,
        working_dir=working_dir,
        runtime_env_extra=runtime_env_extra,
        job_id=job_id,
        user_files=user_files,
    )
    client = _client(address, token)
    runtime_env = dict(job.runtime_env)
    with _translated(address, job.job_id), horde_py_module() as horde_dir:
        # horde travels as a py_module, so nodes need only Ray and horde's dependencies
        runtime_env["py_modules"] = [horde_dir, *runtime_env.get("py_modules", [])]
        with _job_files(Path(runtime_env["working_dir"]), job.files):  # the upload happens in submit_job
            return client.submit_job(
                entrypoint=job.entrypoint, submission_id=job.job_id, runtime_env=runtime_env, metadata=job.metadata
            )


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
    params: dict[str, str | int] = {
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
                with files.replacing(archive, "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
        except requests.RequestException as exc:
            where = _http_address(address)
            raise JobsError(f"could not download the bundle of job {job_id} from {where}: {exc}") from exc
        return _unpack(archive, dest, job_id)


def _no_bundle_advice(job_id: str, info: JobInfo, server_text: str) -> str:
    text = server_text.strip()
    if "doesn't exist" in text and "Agent for node" in text:
        return f"the node that ran job {job_id} ({info.driver_node_id}) has left the cluster; its bundle went with it"
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
    os.replace(staging / name, files.refuse_link(final))
    return final


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exec"]:
        return exec_main(argv[1:])
    print(
        "usage: python -m horde.cluster.jobs exec --job-id ID --bundles DIR [--scenario-from-env PATH] -- CMD ...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
