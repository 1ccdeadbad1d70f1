"""The report in a real browser: headless Chromium loads report.html from disk, draws every
chart, logs no error and asks the network for nothing. Skipped when Chromium is missing."""

from __future__ import annotations

from pathlib import Path

from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.report.charts import Axis, Series, line_chart
from horde.coordinator.report.html import render_compare_html, write_html

BROKEN_CHARTS = {
    "empty path": '<path class="data" d="" stroke="#000"/>',
    "NaN path": '<path class="data" d="M10,10LNaN,NaN" stroke="#000"/>',
    "no data elements": '<line x1="0" y1="0" x2="100" y2="0" stroke="#000"/>',
    "data off the chart": '<path class="data" d="M5000,5000L5100,5100" stroke="#000"/>',
    "zero-size rect": '<rect class="data" x="10" y="10" width="0" height="0"/>',
}


def _broken_svg(title: str, inner: str) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 200" width="400" height="200">'
        f"<title>{title}</title>{inner}</svg>"
    )


def assert_clean(check, page: Path) -> None:
    assert check.console_errors == [], check.console_errors
    assert check.requests == [page.resolve().as_uri()], f"network requests besides the page: {check.requests}"
    problems = {c["title"]: c["problems"] for c in check.charts if c["problems"]}
    assert not problems, problems


def test_report_renders_in_chromium(browser, make_bundle, tmp_path) -> None:
    page = write_html(make_bundle())
    shot = tmp_path / "report.png"
    check = browser.check(page, shot)
    assert_clean(check, page)
    assert len(check.charts) == 16 and all(c["drawn"] > 0 and not c["nodata"] for c in check.charts)
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unfinished_run_renders_in_chromium(browser, make_bundle, tmp_path) -> None:
    page = write_html(make_bundle(finish=False))
    check = browser.check(page, tmp_path / "incomplete.png")
    assert_clean(check, page)


def test_compare_renders_in_chromium(browser, make_bundle, tmp_path) -> None:
    a = read_bundle(make_bundle(seed=1))
    b = read_bundle(make_bundle(seed=2, rate_per_s=90))
    page = tmp_path / "compare.html"
    page.write_text(render_compare_html(a, b))
    check = browser.check(page, tmp_path / "compare.png")
    assert_clean(check, page)
    assert len(check.charts) == 3


def test_checker_flags_broken_charts(browser, tmp_path) -> None:
    good = line_chart([Series("ok", [0, 1, 2], [1, 3, 2], "#000")], title="good", x_axis=Axis(), y_axis=Axis())
    body = good + "".join(_broken_svg(name, inner) for name, inner in BROKEN_CHARTS.items())
    body += _broken_svg("no-data without a message", "").replace('class="chart"', 'class="chart" data-nodata="1"')
    page = tmp_path / "broken.html"
    page.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}"
        "<script>console.error('boom')</script></body></html>"
    )
    check = browser.check(page)
    flagged = {c["title"]: c["problems"] for c in check.charts}
    assert flagged.pop("good") == []
    assert set(flagged) == {*BROKEN_CHARTS, "no-data without a message"}
    assert all(flagged.values()), flagged
    assert "NaN" in " ".join(flagged["NaN path"])
    assert any("boom" in e for e in check.console_errors)


def test_checker_sees_network_requests(browser, tmp_path) -> None:
    page = tmp_path / "fetching.html"
    page.write_text("<!DOCTYPE html><html><body><img src='http://127.0.0.1:9/x.png'></body></html>")
    check = browser.check(page)
    assert "http://127.0.0.1:9/x.png" in check.requests
