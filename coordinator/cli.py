"""The horde command line. Each command parses, calls one library function, maps the outcome
to an exit code (coordinator/outcome.py)."""

from __future__ import annotations

import os
import sys

import click

from coordinator.outcome import EXIT_ERROR, EXIT_INVALID_SCENARIO


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _load(file: str, overrides: tuple[str, ...]):
    from coordinator.scenario import ScenarioError, load_scenario

    try:
        return load_scenario(file, overrides=overrides)
    except ScenarioError as exc:
        _err(f"invalid scenario {file}: {len(exc.problems)} problem(s)")
        for p in exc.problems:
            _err(f"  {p.path}: {p.message}")
        sys.exit(EXIT_INVALID_SCENARIO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="horde", prog_name="horde")
def cli() -> None:
    """horde: distributed HTTP load generation on Ray.

    Exit codes: 0 passed, 1 error, 2 usage, 3 invalid scenario, 4 thresholds failed,
    5 aborted by a rule, 130 interrupted.
    """


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--target", metavar="URL", help="Send the load here instead of the scenario's target.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario key, e.g. workload.stages[0].target=50 (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Directory for the result bundle.")
@click.option("--address", envvar="HORDE_RAY_ADDRESS", metavar="ADDR",
              help="Attach to this Ray cluster instead of starting an embedded one.")
@click.option("--in-process", is_flag=True, help="Run agents in this process without Ray (debugging, baselines).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines; only the summary.")
def run(file, target, overrides, out_dir, address, in_process, quiet) -> None:
    """Run the scenario FILE and write a result bundle."""
    from coordinator.bundle import read_bundle
    from coordinator.report import text_summary
    from coordinator.run import RunError, RunOptions, run_scenario

    overrides = tuple(overrides) + ((f"target={target}",) if target else ())
    loaded = _load(file, overrides)
    progress = None if quiet else (lambda line: click.echo(line, err=True))
    try:
        result = run_scenario(loaded, RunOptions(address=address, in_process=in_process, out_dir=out_dir, progress=progress))
    except RunError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _err("interrupted before the run started")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if os.environ.get("HORDE_DEBUG"):
            raise
        _err(f"error: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_ERROR)
    click.echo(text_summary(read_bundle(result.bundle)))
    sys.exit(result.exit_code)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate(file, overrides) -> None:
    """Check the scenario FILE without running it; list every problem with its key path."""
    loaded = _load(file, tuple(overrides))
    s = loaded.scenario
    target = "embedded automaton" if s.target.is_embedded else s.target.url
    click.echo(
        f"{file}: valid ({s.name}: {s.workload.model} model, {len(s.workload.stages)} stage(s), "
        f"{len(s.requests)} request(s), {len(s.thresholds)} threshold(s), target {target})"
    )


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
def report(bundle) -> None:
    """Print the text summary of a result BUNDLE (offline)."""
    from coordinator.bundle import BundleError, read_bundle
    from coordinator.report import text_summary

    try:
        b = read_bundle(bundle)
    except BundleError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(text_summary(b))


@cli.group()
def target() -> None:
    """The reference automaton (the bundled system under test)."""


@target.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--stall-every", type=float, metavar="S", help="Freeze all responses every S seconds ...")
@click.option("--stall-for", type=float, metavar="S", help="... for S seconds.")
def target_serve(host, port, stall_every, stall_for) -> None:
    """Serve the automaton until Ctrl-C."""
    from automaton.__main__ import main as automaton_main

    args = ["serve", "--host", host, "--port", str(port)]
    if stall_every is not None:
        args += ["--stall-every", str(stall_every)]
    if stall_for is not None:
        args += ["--stall-for", str(stall_for)]
    sys.exit(automaton_main(args))


def main() -> None:
    cli(prog_name="horde")


if __name__ == "__main__":
    main()
