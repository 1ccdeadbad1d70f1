"""`horde bench`, `horde monitor`, `horde nightly` and `horde stress`: the workflows that run
more than one measurement and judge them together."""

from __future__ import annotations

import os
import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR, EXIT_INVALID_SCENARIO
from horde.coordinator.commands.common import err, load_or_exit, read_or_exit

BENCH_GROUPS = ("health", "agents", "tools", "workflows", "database", "requests")  # workflows/bench.py ALL_GROUPS


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--target", metavar="URL", help="Benchmark this service instead of the scenario's target.")
@click.option(
    "--group",
    "groups",
    multiple=True,
    type=click.Choice(BENCH_GROUPS),
    help="Operation group (repeatable; default: the automaton's groups for an embedded target, "
    "the scenario's requests for a URL).",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Timed requests per operation (default 200; with --duration, at most this many).",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds of timing per operation.",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Untimed requests per operation first."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Requests in flight (a closed loop each).",
)
@click.option("--engine", type=click.Choice(["aiohttp", "fast"]), default="aiohttp", show_default=True)
@click.option(
    "--out",
    "--results",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Results directory for the result file and history.sqlite3 (default: the scenario's output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    file, overrides, target, groups, iterations, duration_s, warmup, concurrency, engine, out_dir, as_json
) -> None:
    """Time each operation of the scenario FILE's target on its own (mean, median, p95, p99 with
    intervals) and add the result to the run history."""
    import json

    from horde.coordinator.workflows.bench import BenchError, BenchOptions, run_bench
    from horde.coordinator.workflows.microbench import text_microbench

    overrides = tuple(overrides) + ((f"target={target}",) if target else ())
    loaded = load_or_exit(file, overrides)
    options = BenchOptions(
        groups=tuple(groups),
        iterations=iterations,
        duration_s=duration_s,
        warmup=warmup,
        concurrency=concurrency,
        engine=engine,
        out_dir=out_dir,
        progress=lambda line: err(loaded.redactor.text(f"bench: {line}")),
    )
    try:
        run = run_bench(loaded.scenario, options)
    except BenchError as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if os.environ.get("HORDE_DEBUG"):
            raise
        err(f"error: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_ERROR)
    if as_json:
        click.echo(json.dumps(loaded.redactor.strings(run.to_dict()), indent=2))
    else:
        click.echo(loaded.redactor.text(f"bench {run.scenario}: {run.target}"))
        click.echo(text_microbench(run.result))
    if run.record_error:
        err(f"warning: the benchmark was not added to the history: {run.record_error}")
    elif run.history_id is not None:
        err(f"recorded as run {run.history_id} in {run.history_path} (scenario bench:{run.scenario}): {run.path}")
    if run.failed:
        err(f"error: no good answer from {', '.join(run.failed)} (not recorded)")
        sys.exit(EXIT_ERROR)


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--duration", type=float, default=None, help="Seconds to run (default: until Ctrl-C).")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between probe rounds.")
@click.option(
    "--history",
    "history_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="History file (default: <scenario output>/history.sqlite3).",
)
@click.option("--webhook", default=None, metavar="URL", help="POST every alert event here as JSON.")
@click.option("--prometheus-port", type=int, default=None, help="Serve live metrics on this port.")
@click.option("--prometheus-host", default="127.0.0.1", show_default=True)
@click.option("--snapshot", default=None, type=click.Path(dir_okay=False), help="JSON snapshot written each interval.")
def monitor(
    targets, overrides, duration, interval, history_path, webhook, prometheus_port, prometheus_host, snapshot
) -> None:
    """Monitor TARGETS (a scenario file, or URLs) with low-rate probes, alerts and a history."""
    from horde.coordinator.judge.alerts import AlertRuleError
    from horde.coordinator.run.target import RunError
    from horde.coordinator.scenario.redact import Redactor
    from horde.coordinator.workflows.history import HistoryError, default_history_path
    from horde.coordinator.workflows.monitor import run_monitor, stop_on_signals

    redactor = Redactor()
    if len(targets) == 1 and not targets[0].startswith(("http://", "https://")):
        subject = load_or_exit(targets[0], tuple(overrides))
        default_dir = subject.scenario.output
        redactor = subject.redactor
    else:
        subject = list(targets)
        default_dir = "results"
    try:
        with stop_on_signals() as stop:
            result = run_monitor(
                subject,
                history_path=history_path or default_history_path(default_dir),
                duration_s=duration,
                interval_s=interval,
                webhook_url=webhook,
                prometheus_port=prometheus_port,
                prometheus_host=prometheus_host,
                snapshot_path=snapshot,
                stop_event=stop,
                progress=lambda line: click.echo(redactor.text(line)),
            )
    except (AlertRuleError, ValueError) as exc:
        err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_INVALID_SCENARIO)
    except RunError as exc:  # the scenario's embedded target did not start
        err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    except HistoryError as exc:  # --history is damaged, of another schema, or locked
        err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    sys.exit(130 if result.stop_reason == "stopped" else 0)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--history",
    "history_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory that keeps the nights' bundles and history.sqlite3.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--address",
    envvar="HORDE_RAY_ADDRESS",
    default=None,
    help="A Ray address (HEAD:6379, auto) to run attached, or a job server URL "
    "(http://HEAD:8265) to submit the night as a Ray job and fetch its bundle.",
)
@click.option("--quiet", "-q", is_flag=True)
def nightly(file, history_dir, overrides, address, quiet) -> None:
    """Run a soak scenario, add it to the history, judge it against earlier nights.

    Exit codes: 0 fine, 4 thresholds failed, 6 regression, 7 memory leak, 1 error.
    """
    from horde.coordinator.report.text import text_summary
    from horde.coordinator.run.session import RunError
    from horde.coordinator.workflows.history import HistoryError
    from horde.coordinator.workflows.nightly import run_nightly

    loaded = load_or_exit(file, tuple(overrides))
    progress = None if quiet else (lambda line: click.echo(loaded.redactor.text(line), err=True))
    jobs_address = None
    if address and address.startswith(("http://", "https://")):
        jobs_address, address = address, None
    try:
        result = run_nightly(
            loaded,
            history_dir=history_dir,
            address=address,
            jobs_address=jobs_address,
            overrides=tuple(overrides),
            progress=progress,
        )
    except (RunError, HistoryError) as exc:  # HistoryError: --history is damaged, foreign or locked
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(text_summary(read_or_exit(result.bundle)))
    click.echo("")
    if result.findings:
        click.echo("nightly: " + str(len(result.findings)) + " finding(s)")
        for f in result.findings:
            click.echo(f"  - {f}")
    else:
        click.echo("nightly: no regression, no leak, thresholds passed")
    sys.exit(result.exit_code)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--start", type=float, default=None, help="First level (default: the scenario's staircase).")
@click.option("--step", type=float, default=None, help="Level increase per step.")
@click.option("--max", "max_level", type=float, default=None, help="Highest level to try.")
@click.option("--hold", "hold_s", type=float, default=None, help="Seconds at each level.")
@click.option(
    "--break",
    "break_rules",
    multiple=True,
    metavar="EXPR",
    help='A breaking rule, e.g. "error_rate > 5%" (repeatable; default: the abort thresholds).',
)
@click.option("--no-recovery", is_flag=True, help="Skip the recovery-from-overload run.")
@click.option("--recovery-level", type=float, default=None)
@click.option("--recovery-seconds", "recovery_s", type=float, default=None)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@click.option("--address", envvar="HORDE_RAY_ADDRESS", default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None)
@click.option("--quiet", "-q", is_flag=True)
def stress(
    file,
    overrides,
    start,
    step,
    max_level,
    hold_s,
    break_rules,
    no_recovery,
    recovery_level,
    recovery_s,
    json_out,
    address,
    out_dir,
    quiet,
) -> None:
    """Find the breaking point (a staircase of levels), then time the recovery from overload.

    Exit codes: 0 the search finished (a breaking level found, or the maximum held),
    4 inconclusive (the generator ran out of capacity first), 1 error.
    """
    import json

    from horde.coordinator.bundle.outcome import EXIT_PASSED, EXIT_THRESHOLDS_FAILED
    from horde.coordinator.run.session import RunError, RunOptions
    from horde.coordinator.workflows.stress import StressPlan, format_report, run_stress

    loaded = load_or_exit(file, tuple(overrides))
    plan = StressPlan(
        start=start,
        step=step,
        max_level=max_level,
        hold_s=hold_s,
        break_rules=tuple(break_rules),
        recovery=not no_recovery,
        recovery_level=recovery_level,
        recovery_s=recovery_s,
    )
    progress = None if quiet else (lambda line: click.echo(loaded.redactor.text(line), err=True))
    try:
        report = run_stress(loaded, plan, RunOptions(address=address, out_dir=out_dir, progress=progress))
    except (RunError, ValueError) as exc:
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(format_report(report))
    if json_out:
        from horde.coordinator import files

        files.write_text(json_out, json.dumps(report.to_dict(), indent=2, default=str))
    sys.exit(EXIT_THRESHOLDS_FAILED if report.search.limited_by == "generator" else EXIT_PASSED)
