"""`horde submit` and `horde jobs ...`: horde runs as Ray jobs on a cluster's job server."""

from __future__ import annotations

import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR
from horde.coordinator.commands.common import err, load_or_exit

_JOBS_ADDRESS = click.option(
    "--address",
    envvar="HORDE_JOBS_ADDRESS",
    required=True,
    metavar="URL",
    help="The cluster's job server, e.g. http://HEAD:8265 (or HORDE_JOBS_ADDRESS).",
)


def _jobs_call(fn, *args, **kw):
    from horde.cluster.jobs import JobsError

    try:
        return fn(*args, **kw)
    except JobsError as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@_JOBS_ADDRESS
@click.option("--job-id", default=None, help="Choose the job id (default: horde-<scenario>-<time>).")
@click.option("--out", "out_dir", default="results", show_default=True, help="Bundle directory on the cluster.")
def submit(file, overrides, address, job_id, out_dir) -> None:
    """Submit the scenario FILE to a Ray cluster as a job; print the job id."""
    from horde.cluster.jobs import submit as submit_job

    loaded = load_or_exit(file, tuple(overrides))  # an invalid scenario fails here, before anything is sent
    user_files = tuple(r.file for r in loaded.scenario.requests if getattr(r, "user", None))  # travel with it
    click.echo(
        _jobs_call(
            submit_job,
            file,
            address=address,
            overrides=tuple(overrides),
            out_dir=out_dir,
            job_id=job_id,
            user_files=user_files,
        )
    )


@click.group()
def jobs() -> None:
    """Manage horde runs submitted as Ray jobs."""


@jobs.command("list")
@_JOBS_ADDRESS
@click.option("--all", "all_jobs", is_flag=True, help="Include jobs that were not submitted by horde.")
def jobs_list(address, all_jobs) -> None:
    from horde.cluster.jobs import list_jobs

    for j in _jobs_call(list_jobs, address, all_jobs=all_jobs):
        click.echo(f"{j.job_id:<48} {j.status:<10} {j.message or ''}")


@jobs.command("status")
@click.argument("job_id")
@_JOBS_ADDRESS
def jobs_status(job_id, address) -> None:
    from horde.cluster.jobs import status

    j = _jobs_call(status, address, job_id)
    code = "" if j.driver_exit_code is None else f" (horde exit code {j.driver_exit_code})"
    click.echo(f"{j.job_id}: {j.status}{code} {j.message or ''}".rstrip())


@jobs.command("logs")
@click.argument("job_id")
@_JOBS_ADDRESS
@click.option("--follow", "-f", is_flag=True, help="Stream the logs until the job ends.")
def jobs_logs(job_id, address, follow) -> None:
    import asyncio

    from horde.cluster.jobs import follow_logs, logs

    if not follow:
        click.echo(_jobs_call(logs, address, job_id), nl=False)
        return

    async def tail() -> None:
        async for chunk in follow_logs(address, job_id):
            click.echo(chunk, nl=False)

    _jobs_call(asyncio.run, tail())


@jobs.command("stop")
@click.argument("job_id")
@_JOBS_ADDRESS
def jobs_stop(job_id, address) -> None:
    from horde.cluster.jobs import stop

    j = _jobs_call(stop, address, job_id)
    click.echo(f"{j.job_id}: {j.status}")


@jobs.command("fetch")
@click.argument("job_id")
@_JOBS_ADDRESS
@click.option("--dest", default="results", show_default=True, type=click.Path(file_okay=False))
def jobs_fetch(job_id, address, dest) -> None:
    """Bring the job's result bundle to this machine."""
    from horde.cluster.jobs import fetch

    click.echo(str(_jobs_call(fetch, address, job_id, dest)))
