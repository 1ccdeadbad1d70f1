"""`horde report`, `horde export` and `horde compare`: offline readings of result bundles."""

from __future__ import annotations

import sys

import click

from horde.coordinator.bundle.outcome import EXIT_ERROR
from horde.coordinator.commands.common import bundle_errors, err, read_or_exit


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--html", is_flag=True, help="Render report.html into the bundle again.")
def report(bundle, html) -> None:
    """Print the text summary of a result BUNDLE (offline)."""
    from horde.coordinator.report.text import text_summary

    b = read_or_exit(bundle)
    with bundle_errors(b):
        if html:
            from horde.coordinator.report.html import write_html

            click.echo(str(write_html(b.path)))
        else:
            click.echo(text_summary(b))


@click.command()
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

    b = read_or_exit(bundle)
    if not (as_csv or hdr):
        as_csv = hdr = True
    with bundle_errors(b):
        if as_csv:
            click.echo(str(write_csv(b.path)))
        if hdr:
            click.echo(str(write_hdr_log(b.path, endpoint=endpoint, series=series)))


@click.command()
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
        err(f"error: {exc}")
        sys.exit(EXIT_ERROR)
    with bundle_errors(a, b):
        result = compare_bundles(a, b, alpha=alpha, min_effect=min_effect)
    click.echo(json.dumps(result, indent=2) if as_json else text_comparison(result))
    if html_out:
        from horde.coordinator import files
        from horde.coordinator.report.html import render_compare_html

        files.write_text(html_out, render_compare_html(a, b, comparison=result))
        err(f"wrote {html_out}")
    sys.exit(EXIT_THRESHOLDS_FAILED if result["regressed"] else EXIT_PASSED)
