"""`horde run`, `horde validate` and `horde schema`: a scenario run and the checks of a scenario file."""

from __future__ import annotations

import os
import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR, EXIT_INVALID_SCENARIO
from horde.coordinator.commands.common import err, load_or_exit, set_file_overrides


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--target", metavar="URL", help="Send the load here instead of the scenario's target.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario key, e.g. workload.stages[0].target=50 (repeatable).",
)
@click.option(
    "--set-file",
    "set_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A JSON list of KEY=VALUE overrides, applied before --set (how `horde submit` passes them).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory for the result bundle.")
@click.option(
    "--address",
    envvar="HORDE_RAY_ADDRESS",
    metavar="ADDR",
    help="Attach to this Ray cluster instead of starting an embedded one.",
)
@click.option("--in-process", is_flag=True, help="Run agents in this process without Ray (debugging, baselines).")
@click.option(
    "--embedded",
    is_flag=True,
    help="Start an embedded Ray for this run even when the warm Ray of `horde up` is up.",
)
@click.option("--quiet", "-q", is_flag=True, help="No live view or progress lines; only the summary.")
@click.option(
    "--prometheus-port",
    type=int,
    default=None,
    metavar="PORT",
    help="Serve live run metrics in Prometheus format on 127.0.0.1:PORT (0: any free port).",
)
def run(file, target, overrides, set_file, out_dir, address, in_process, embedded, quiet, prometheus_port) -> None:
    """Run the scenario FILE and write a result bundle.

    Without --address it attaches to the warm Ray of `horde up` when that is up (and says so),
    else it starts an embedded Ray for the run.
    """
    from horde.coordinator.run.fleet import ClusterStarting
    from horde.coordinator.run.options import RunOptions

    overrides = set_file_overrides(set_file) + tuple(overrides) + ((f"target={target}",) if target else ())
    warm = None
    if not (address or in_process or embedded or os.environ.get("RAY_ADDRESS")):  # RAY_ADDRESS: inside a Ray job
        from horde.coordinator.commands.up import warm_address

        warm = warm_address()
    options = RunOptions(address=address or warm, warm=warm is not None, in_process=in_process, out_dir=out_dir)
    # Ray starts (or is attached to) on a thread, while the rest of the run is imported and the
    # target starts: its start is mostly waiting on its own processes. Attaching (the warm Ray,
    # --address) starts nothing that a bad scenario would have to wait for, so it begins before
    # the scenario is read; an embedded Ray only once the scenario is valid.
    attach = bool(options.address or os.environ.get("RAY_ADDRESS")) and not in_process
    starting = ClusterStarting(options) if attach else None
    try:
        loaded = load_or_exit(file, overrides)
    except BaseException:
        if starting is not None:
            starting.close()
        raise
    starting = starting or ClusterStarting(options)
    try:
        from horde.coordinator.run.live import choose_view
        from horde.coordinator.run.session import run_scenario  # noqa: F401  (imported while Ray starts)
    except BaseException:
        starting.close()
        raise
    redact = loaded.redactor.text
    view = choose_view(loaded.scenario.name, quiet=quiet, redact=redact)
    options.progress, options.on_window, options.prometheus_port = view.message, view.window, prometheus_port
    _run(loaded, options, starting, view, redact)


def _run(loaded, options, starting, view, redact) -> None:
    from horde.coordinator.bundle.store import read_bundle
    from horde.coordinator.report.text import text_summary
    from horde.coordinator.run.session import RunError, run_scenario

    try:
        result = run_scenario(loaded, options, cluster_starting=starting)
    except RunError as exc:
        view.close()
        err(redact(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        view.close()
        err("interrupted before the run started")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        view.close()
        if os.environ.get("HORDE_DEBUG"):
            raise
        err(redact(f"error: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)"))
        sys.exit(EXIT_ERROR)
    view.close()
    click.echo(redact(text_summary(read_bundle(result.bundle))))
    _record_history(result.bundle)
    sys.exit(result.exit_code)


def _record_history(bundle) -> None:
    """Add the bundle to the results directory's run history; a failure is a warning only."""
    try:
        from horde.coordinator.workflows.history import record_bundle

        record_bundle(bundle)
    except Exception as exc:  # the run itself succeeded; never fail it for the history
        err(f"warning: the run was not added to the history: {exc}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate(file, overrides) -> None:
    """Check the scenario FILE without running it; list every problem with its key path."""
    loaded = load_or_exit(file, tuple(overrides))
    s = loaded.scenario
    _check_users_or_exit(file, s)
    target = "embedded automaton" if s.target.is_embedded else loaded.redactor.url(s.target.url)
    click.echo(
        f"{file}: valid ({s.name}: {s.workload.model} model, {len(s.workload.stages)} stage(s), "
        f"{len(s.requests)} request(s), {len(s.thresholds)} threshold(s), target {target})"
    )


def _check_users_or_exit(file, scenario) -> None:
    """Import each Python user's class in a subprocess; every problem with its file and line."""
    from horde.coordinator.scenario.user_code import check_user_code
    from horde.coordinator.scenario.users import UserEntry

    users = [(i, r) for i, r in enumerate(scenario.requests) if isinstance(r, UserEntry)]
    problems = check_user_code(users) if users else []
    if problems:
        err(f"invalid scenario {file}: {len(problems)} problem(s)")
        for where, message in problems:
            err(f"  {where}: {message}")
        sys.exit(EXIT_INVALID_SCENARIO)


@click.command()
@click.option(
    "--bundle",
    "bundle_schema",
    is_flag=True,
    help="The result bundle's records instead (manifest, summary, window, alert; docs/bundle-format.md).",
)
def schema(bundle_schema: bool) -> None:
    """Print the JSON Schema of scenario files (for editors), or with --bundle of a result bundle's files."""
    import json

    if bundle_schema:
        from horde.coordinator.bundle.schema import bundle_json_schema

        click.echo(json.dumps(bundle_json_schema(), indent=2))
        return
    from horde.coordinator.scenario.models import scenario_json_schema

    click.echo(json.dumps(scenario_json_schema(), indent=2))
