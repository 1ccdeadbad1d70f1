"""The horde command line. Each command parses, calls one library function, maps the outcome
to an exit code (coordinator/bundle/outcome.py)."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR, EXIT_INVALID_SCENARIO


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _load(file: str, overrides: tuple[str, ...]):
    from horde.coordinator.scenario.load import ScenarioError, load_scenario

    try:
        return load_scenario(file, overrides=overrides)
    except ScenarioError as exc:
        _err(f"invalid scenario {file}: {len(exc.problems)} problem(s)")
        for p in exc.problems:
            _err(f"  {p.path}: {p.message}")
        sys.exit(EXIT_INVALID_SCENARIO)


class _Horde(click.Group):
    """The command group: a write refused because its path is a link (coordinator/files.py)
    ends any command the same way, with the path named and exit 1."""

    def invoke(self, ctx: click.Context):
        from horde.coordinator.files import UnsafePathError

        try:
            return super().invoke(ctx)
        except UnsafePathError as exc:
            _err(f"error: {exc}")
            sys.exit(EXIT_ERROR)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A real command line cannot hold a NUL (exec takes C strings); one passed by a caller
        # would reach os.stat inside click.Path and raise ValueError: a usage error instead.
        if any("\0" in arg for arg in args):
            raise click.UsageError("an argument contains a NUL character", ctx)
        return super().parse_args(ctx, args)


def _set_file_overrides(path: str | None) -> tuple[str, ...]:
    """The overrides in a --set-file: a JSON list of KEY=VALUE texts. `horde submit` writes them
    into the job's working_dir so their values never appear on the job's command line."""
    if path is None:
        return ()
    import json

    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except (OSError, ValueError) as exc:  # the JSON error names a line and column, never the content
        _err(f"invalid --set-file {path}: {exc}")
        sys.exit(EXIT_INVALID_SCENARIO)
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        _err(f"invalid --set-file {path}: expected a JSON list of KEY=VALUE texts")
        sys.exit(EXIT_INVALID_SCENARIO)
    return tuple(items)


@click.group(cls=_Horde, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="horde", prog_name="horde")
def cli() -> None:
    """horde: distributed HTTP load generation on Ray.

    Exit codes: 0 passed, 1 error, 2 usage, 3 invalid scenario, 4 thresholds failed,
    5 aborted by a rule, 130 interrupted.
    """


@cli.command()
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
@click.option("--quiet", "-q", is_flag=True, help="No live view or progress lines; only the summary.")
@click.option(
    "--prometheus-port",
    type=int,
    default=None,
    metavar="PORT",
    help="Serve live run metrics in Prometheus format on 127.0.0.1:PORT (0: any free port).",
)
def run(file, target, overrides, set_file, out_dir, address, in_process, quiet, prometheus_port) -> None:
    """Run the scenario FILE and write a result bundle."""
    from horde.coordinator.bundle.store import read_bundle
    from horde.coordinator.report.text import text_summary
    from horde.coordinator.run.live import choose_view
    from horde.coordinator.run.session import RunError, RunOptions, run_scenario

    overrides = _set_file_overrides(set_file) + tuple(overrides) + ((f"target={target}",) if target else ())
    loaded = _load(file, overrides)
    redact = loaded.redactor.text
    view = choose_view(loaded.scenario.name, quiet=quiet, redact=redact)
    try:
        result = run_scenario(
            loaded,
            RunOptions(
                address=address,
                in_process=in_process,
                out_dir=out_dir,
                progress=view.message,
                on_window=view.window,
                prometheus_port=prometheus_port,
            ),
        )
    except RunError as exc:
        view.close()
        _err(redact(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        view.close()
        _err("interrupted before the run started")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        view.close()
        if os.environ.get("HORDE_DEBUG"):
            raise
        _err(redact(f"error: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)"))
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
        _err(f"warning: the run was not added to the history: {exc}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate(file, overrides) -> None:
    """Check the scenario FILE without running it; list every problem with its key path."""
    loaded = _load(file, tuple(overrides))
    s = loaded.scenario
    target = "embedded automaton" if s.target.is_embedded else loaded.redactor.url(s.target.url)
    click.echo(
        f"{file}: valid ({s.name}: {s.workload.model} model, {len(s.workload.stages)} stage(s), "
        f"{len(s.requests)} request(s), {len(s.thresholds)} threshold(s), target {target})"
    )


def _read(bundle):
    from horde.coordinator.bundle.store import BundleError, read_bundle

    try:
        return read_bundle(bundle)
    except BundleError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)


@contextlib.contextmanager
def _bundle_errors(*bundles):
    """A BundleError found while reading a bundle's records: exit 1 with it. Records the
    readers skipped (a damaged line of windows.jsonl, ...): a warning with their count."""
    from horde.coordinator.bundle.store import BundleError

    try:
        yield
        for b in bundles:
            if skipped := b.skipped_records():
                more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
                _err(f"warning: {b.path}: skipped {len(skipped)} damaged record(s): {'; '.join(skipped[:3])}{more}")
    except BundleError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except (ArithmeticError, ValueError) as exc:  # figures that fit the format but not arithmetic
        if os.environ.get("HORDE_DEBUG"):
            raise
        names = ", ".join(str(b.path) for b in bundles)
        _err(f"error: {names}: figures out of range: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_ERROR)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--html", is_flag=True, help="Render report.html into the bundle again.")
def report(bundle, html) -> None:
    """Print the text summary of a result BUNDLE (offline)."""
    from horde.coordinator.report.text import text_summary

    b = _read(bundle)
    with _bundle_errors(b):
        if html:
            from horde.coordinator.report.html import write_html

            click.echo(str(write_html(b.path)))
        else:
            click.echo(text_summary(b))


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--csv", "as_csv", is_flag=True, help="windows.csv: the per-second windows.")
@click.option("--hdr", is_flag=True, help="An HdrHistogram interval log (.hlog) of the windows.")
@click.option("--endpoint", default=None, help="With --hdr: one endpoint (default: all).")
@click.option(
    "--series", type=click.Choice(["latency", "service_time", "send_lag"]), default="latency", show_default=True
)
def export(bundle, as_csv, hdr, endpoint, series) -> None:
    """Write a bundle's data in other tools' formats (into the bundle); print the paths."""
    from horde.coordinator.bundle.export import write_csv, write_hdr_log

    b = _read(bundle)
    if not (as_csv or hdr):
        as_csv = hdr = True
    with _bundle_errors(b):
        if as_csv:
            click.echo(str(write_csv(b.path)))
        if hdr:
            click.echo(str(write_hdr_log(b.path, endpoint=endpoint, series=series)))


# -- Ray jobs -------------------------------------------------------------------------------

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
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@_JOBS_ADDRESS
@click.option("--job-id", default=None, help="Choose the job id (default: horde-<scenario>-<time>).")
@click.option("--out", "out_dir", default="results", show_default=True, help="Bundle directory on the cluster.")
def submit(file, overrides, address, job_id, out_dir) -> None:
    """Submit the scenario FILE to a Ray cluster as a job; print the job id."""
    from horde.cluster.jobs import submit as submit_job

    _load(file, tuple(overrides))  # an invalid scenario fails here, before anything is sent
    click.echo(
        _jobs_call(submit_job, file, address=address, overrides=tuple(overrides), out_dir=out_dir, job_id=job_id)
    )


@cli.group()
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


@cli.command()
@click.argument("baseline", type=click.Path(file_okay=False))
@click.argument("candidate", type=click.Path(file_okay=False))
@click.option("--alpha", default=0.01, show_default=True, help="Significance level of each test.")
@click.option("--min-effect", default=0.05, show_default=True, help="Smallest change that counts (0.05 = 5%).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write an HTML overlay of the two runs to this file.",
)
def compare(baseline, candidate, alpha, min_effect, as_json, html_out) -> None:
    """Compare two bundles per endpoint and stage; exit 4 if anything regressed."""
    import json

    from horde.coordinator.analysis.compare import compare_bundles, text_comparison
    from horde.coordinator.bundle.outcome import EXIT_PASSED, EXIT_THRESHOLDS_FAILED
    from horde.coordinator.bundle.store import BundleError, read_bundle

    try:
        a, b = read_bundle(baseline), read_bundle(candidate)
    except BundleError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    with _bundle_errors(a, b):
        result = compare_bundles(a, b, alpha=alpha, min_effect=min_effect)
    click.echo(json.dumps(result, indent=2) if as_json else text_comparison(result))
    if html_out:
        from horde.coordinator import files
        from horde.coordinator.report.html import render_compare_html

        files.write_text(html_out, render_compare_html(a, b, comparison=result))
        _err(f"wrote {html_out}")
    sys.exit(EXIT_THRESHOLDS_FAILED if result["regressed"] else EXIT_PASSED)


@cli.command()
@click.option(
    "--results",
    "results_dir",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The results directory whose history.sqlite3 to read.",
)
@click.option("--scenario", default=None, help="Only this scenario.")
@click.option("--limit", default=20, show_default=True)
@click.option("--metric", default="p99_latency_ms", show_default=True, help="The headline metric to track.")
@click.option("--endpoint", default=None)
def history(results_dir, scenario, limit, metric, endpoint) -> None:
    """List past runs and track their headline figures across the history."""
    from horde.coordinator.workflows.history import (
        History,
        HistoryError,
        default_history_path,
        text_history,
        text_track,
        track,
    )

    path = default_history_path(results_dir)
    if not os.path.exists(path):
        _err(f"error: no run history at {path} (runs add themselves to it)")
        sys.exit(EXIT_ERROR)
    try:
        with History(path) as h:
            click.echo(text_history(h.runs(scenario, limit=limit)))
            for s in [scenario] if scenario else h.scenarios():
                try:
                    result = track(h, s, metric, endpoint=endpoint)
                except ValueError as exc:  # an unknown --metric
                    raise click.UsageError(str(exc)) from None
                click.echo(text_track(result))
    except HistoryError as exc:  # a damaged, foreign or locked history file
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)


BENCH_GROUPS = ("health", "agents", "tools", "workflows", "database", "requests")  # workflows/bench.py ALL_GROUPS


@cli.command()
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
    loaded = _load(file, overrides)
    options = BenchOptions(
        groups=tuple(groups),
        iterations=iterations,
        duration_s=duration_s,
        warmup=warmup,
        concurrency=concurrency,
        engine=engine,
        out_dir=out_dir,
        progress=lambda line: _err(loaded.redactor.text(f"bench: {line}")),
    )
    try:
        run = run_bench(loaded.scenario, options)
    except BenchError as exc:
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if os.environ.get("HORDE_DEBUG"):
            raise
        _err(f"error: {type(exc).__name__}: {exc} (set HORDE_DEBUG=1 for the traceback)")
        sys.exit(EXIT_ERROR)
    if as_json:
        click.echo(json.dumps(loaded.redactor.strings(run.to_dict()), indent=2))
    else:
        click.echo(loaded.redactor.text(f"bench {run.scenario}: {run.target}"))
        click.echo(text_microbench(run.result))
    if run.record_error:
        _err(f"warning: the benchmark was not added to the history: {run.record_error}")
    elif run.history_id is not None:
        _err(f"recorded as run {run.history_id} in {run.history_path} (scenario bench:{run.scenario}): {run.path}")
    if run.failed:
        _err(f"error: no good answer from {', '.join(run.failed)} (not recorded)")
        sys.exit(EXIT_ERROR)


@cli.command()
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
        subject = _load(targets[0], tuple(overrides))
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
        _err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_INVALID_SCENARIO)
    except RunError as exc:  # the scenario's embedded target did not start
        _err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    except HistoryError as exc:  # --history is damaged, of another schema, or locked
        _err(redactor.text(f"error: {exc}"))
        sys.exit(EXIT_ERROR)
    sys.exit(130 if result.stop_reason == "stopped" else 0)


@cli.command()
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

    loaded = _load(file, tuple(overrides))
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
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(text_summary(_read(result.bundle)))
    click.echo("")
    if result.findings:
        click.echo("nightly: " + str(len(result.findings)) + " finding(s)")
        for f in result.findings:
            click.echo(f"  - {f}")
    else:
        click.echo("nightly: no regression, no leak, thresholds passed")
    sys.exit(result.exit_code)


@cli.command()
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

    loaded = _load(file, tuple(overrides))
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
        _err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    click.echo(format_report(report))
    if json_out:
        from horde.coordinator import files

        files.write_text(json_out, json.dumps(report.to_dict(), indent=2, default=str))
    sys.exit(EXIT_THRESHOLDS_FAILED if report.search.limited_by == "generator" else EXIT_PASSED)


@cli.command()
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


@cli.group()
def target() -> None:
    """The reference automaton (the bundled system under test)."""


@target.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--stall-every", type=float, metavar="S", help="Freeze all responses every S seconds ...")
@click.option("--stall-for", type=float, metavar="S", help="... for S seconds.")
@click.option(
    "--faults-json",
    default=None,
    metavar="JSON|@FILE",
    help="Faults in the automaton's JSON form (see docs/scenarios.md), inline or @file.",
)
def target_serve(host, port, stall_every, stall_for, faults_json) -> None:
    """Serve the automaton until Ctrl-C. Faults can be changed while it runs via its admin URL."""
    from horde.automaton.__main__ import main as automaton_main

    args = ["serve", "--host", host, "--port", str(port)]
    if faults_json is not None:
        args += ["--faults-json", faults_json]
    if stall_every is not None:
        args += ["--stall-every", str(stall_every)]
    if stall_for is not None:
        args += ["--stall-for", str(stall_for)]
    sys.exit(automaton_main(args))


def main() -> None:
    cli(prog_name="horde")


if __name__ == "__main__":
    main()
