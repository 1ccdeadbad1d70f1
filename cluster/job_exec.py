"""The job's side of horde's Ray jobs, on the cluster: `python -m horde.cluster.jobs exec ...`.

A submitted job's entrypoint is this wrapper (cluster/jobs.py builds it): it runs
`python -m horde.coordinator.cli run ...` as a child process and, once the child has ended
(passed, failed, or stopped by `horde jobs stop`), exports the bundle as one tar.gz into the
Ray session's log directory of the driver's node, where `horde jobs fetch` reads it back
(cluster/jobs.py tells how a bundle travels home).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from horde.cluster.job_server import JobsError
from horde.cluster.shipping import JOB_ID_ENV
from horde.coordinator import files

BUNDLES_SUBDIR = "horde-bundles"  # under the Ray session's log directory of the driver's node
SCENARIO_ENV = "HORDE_SCENARIO_YAML"  # a scenario from outside working_dir travels here


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
    with files.replacing(final, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
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


def exec_main(argv: Sequence[str]) -> int:
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
        files.write_text(path, text)

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
