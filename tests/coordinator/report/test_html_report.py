"""horde.coordinator.report.html: one offline page per bundle, whatever state the bundle is in."""

from __future__ import annotations

import json
import math
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.report import html as html_report
from horde.coordinator.report.html import TOTAL, build_timeline, render_compare_html, render_html, write_html

SVG_RE = re.compile(r"<svg\b.*?</svg>", re.S)
NS = "{http://www.w3.org/2000/svg}"


def chart_svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in SVG_RE.findall(page)]


def drawn_problems(svg: ET.Element) -> list[str]:
    """Why a chart draws nothing: every chart needs a data path with two finite points,
    a data rect with an area, or a dot; a no-data chart needs its message."""
    title = svg.find(f"{NS}title").text
    if svg.get("data-nodata") == "1":
        texts = [t.text for t in svg.iter(f"{NS}text") if t.text]
        return [] if texts else [f"{title}: no-data chart without a message"]
    problems, drawn = [], 0
    for el in svg.iter():
        if el.get("class") != "data":
            continue
        if el.tag == f"{NS}path":
            d = el.get("d", "")
            if re.search(r"nan|inf", d, re.I):
                problems.append(f"{title}: non-finite path data")
            pts = re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)
            if len(pts) >= 2 and all(math.isfinite(float(a)) and math.isfinite(float(b)) for a, b in pts):
                drawn += 1
        elif el.tag == f"{NS}circle" or (
            el.tag == f"{NS}rect" and float(el.get("width", 0)) * float(el.get("height", 0)) > 0
        ):
            drawn += 1
    if not drawn:
        problems.append(f"{title}: nothing drawn")
    return problems


@pytest.fixture
def synthetic(shared_bundle):
    return read_bundle(shared_bundle)


def test_report_of_a_full_run(synthetic) -> None:
    page = render_html(synthetic)
    svgs = chart_svgs(page)
    # throughput, errors, total latency, 2 percentile curves, 3 endpoints, in flight, generator CPU,
    # generator RSS, loop lag, node CPU, target CPU, target memory, target connections
    assert len(svgs) == 16
    problems = [p for svg in svgs for p in drawn_problems(svg)]
    assert not problems
    assert not [s for s in svgs if s.get("data-nodata")], "a full synthetic run has data for every chart"
    titles = [s.find(f"{NS}title").text for s in svgs]
    assert "Latency over time: checkout & pay" in titles
    # stage boundaries and alerts are marked on the time axes
    throughput = svgs[titles.index("Throughput")]
    labels = {t.text for t in throughput.iter(f"{NS}text")}
    assert {"ramp", "hold", "spike", "recover", "agent 1 lost", "warning p99(latency) < 50ms"} <= labels
    # tables: per endpoint, per stage, thresholds coloured, alerts listed
    for text in ("search &lt;q&gt;", "checkout &amp; pay", "p99.9", "recover"):
        assert text in page
    assert page.count('class="badge fail">FAIL') == 2 and page.count('class="badge pass">PASS') == 1
    assert "no batch for 3 s &lt;watchdog&gt;" in page
    assert "p99 over 10s was 61ms &amp; rising" in page


def test_text_from_the_bundle_is_escaped(synthetic) -> None:
    page = render_html(synthetic)
    for raw in ("<run>", "<q>", "<b>bundle</b>", "<x>", "<ok>", "<watchdog>"):
        assert raw not in page
    assert "synthetic &lt;b&gt;bundle&lt;/b&gt;" in page


def test_the_page_needs_nothing_from_the_network(synthetic) -> None:
    page = render_html(synthetic)
    assert "<script" not in page and "<link" not in page and "<img" not in page and "<iframe" not in page
    assert not re.search(r"""(src|href)\s*=""", page)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)


def test_every_figure_comes_from_the_bundle(synthetic) -> None:
    page = render_html(synthetic)
    s = synthetic.summary
    assert f"{s['total']['requests']:,}" in page
    p99 = s["endpoints"]["health"]["latency_ms"]["p99"]
    assert html_report.fmt_ms(p99) in page


def test_size_grows_with_windows_not_with_requests(make_bundle) -> None:
    small = render_html(read_bundle(make_bundle(rate_per_s=40, seed=1)))
    big_bundle = read_bundle(make_bundle(rate_per_s=400, seed=1))
    big = render_html(big_bundle)
    assert big_bundle.summary["total"]["requests"] >= 9 * 40 * 15
    assert len(big) / len(small) < 1.5


def test_long_runs_are_merged_into_at_most_max_points(synthetic, monkeypatch) -> None:
    monkeypatch.setattr(html_report, "MAX_POINTS", 5)
    tl = build_timeline(synthetic)
    windows = list(synthetic.windows())
    assert tl.group == math.ceil(len(windows) / 5) and len(tl.points) <= 5
    # merged quantiles are the exact quantiles of the merged windows' histograms
    first = [
        Stats.from_sparse(e)
        for item in synthetic.window_histograms()
        if item["index"] < tl.group
        for e in item["endpoints"].values()
    ]
    merged = Stats()
    for s in first:
        merged.merge(s)
    assert tl.points[0].quantiles[TOTAL]["p99"] == merged.latency.value_at_quantile(0.99) / 1e6
    assert sum(p.requests[TOTAL] for p in tl.points) == sum(w["total"]["requests"] for w in windows)
    page = render_html(synthetic)
    assert f"Each point merges {tl.group} windows" in page
    assert not [p for svg in chart_svgs(page) for p in drawn_problems(svg)]


def test_an_interrupted_run_without_summary_still_reports(make_bundle) -> None:
    path = make_bundle(finish=False)
    assert path.name.endswith(".incomplete")
    bundle = read_bundle(path)
    assert bundle.summary is None
    page = render_html(bundle)
    assert "did not finish" in page and "incomplete bundle" in page
    assert ">running<" not in page  # a killed coordinator's manifest still says "running"
    assert "health" in page  # per-endpoint figures merged from the windows
    assert not [p for svg in chart_svgs(page) for p in drawn_problems(svg)]


def test_a_bundle_with_nothing_but_a_manifest(make_bundle, tmp_path) -> None:
    src = make_bundle()
    bare = tmp_path / "bare"
    bare.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    (bare / "manifest.json").write_text(json.dumps({"scenario": manifest["scenario"], "outcome": "running"}))
    page = render_html(read_bundle(bare))
    svgs = chart_svgs(page)
    assert svgs and all(s.get("data-nodata") == "1" for s in svgs)
    assert not [p for svg in svgs for p in drawn_problems(svg)]


def test_zero_requests(make_bundle) -> None:
    page = render_html(read_bundle(make_bundle(rate_per_s=0, lose_agent_at_s=None)))
    svgs = chart_svgs(page)
    assert not [p for svg in svgs for p in drawn_problems(svg)]
    assert "no requests completed" in page


def test_torn_files_do_not_break_the_report(make_bundle) -> None:
    path = make_bundle()
    with open(path / "windows.jsonl", "a") as f:
        f.write('{"index": 99, "start_s": 99.0, "end')  # a coordinator killed mid-line
    (path / "histograms.msgpack").write_bytes(b"\xc1garbage")
    with open(path / "alerts.jsonl", "a") as f:
        f.write('{"kind": "alert", "at_s": "soon"}\n')
    page = render_html(read_bundle(path))
    assert not [p for svg in chart_svgs(page) for p in drawn_problems(svg)]


def test_closed_model_shows_users(make_bundle) -> None:
    page = render_html(read_bundle(make_bundle(closed=True)))
    assert "active users" in page and "planned users" in page


def test_write_html_puts_report_into_the_bundle(make_bundle) -> None:
    path = make_bundle()
    out = write_html(path)
    assert out == path / "report.html"
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_compare_overlays_two_runs(make_bundle) -> None:
    a = read_bundle(make_bundle(seed=1))
    b = read_bundle(make_bundle(seed=2, rate_per_s=90))
    page = render_compare_html(a, b)
    svgs = chart_svgs(page)
    assert len(svgs) == 3
    assert not [p for svg in svgs for p in drawn_problems(svg)]
    legend = {t.text for svg in svgs for t in svg.iter(f"{NS}text")}
    assert {"A p99", "B p99", "A latency", "B service time"} <= legend
    assert "search &lt;q&gt;" in page
    assert re.search(r'class="delta-(up|down)">[+-]\d+\.\d%', page)


def test_compare_shows_statistical_verdicts_when_given(make_bundle) -> None:
    a = read_bundle(make_bundle(seed=1))
    b = read_bundle(make_bundle(seed=2))
    metric = {
        "metric": "latency_p99",
        "base": 120.5,
        "candidate": 180.25,
        "effect": 1.496,
        "effect_kind": "ratio",
        "ci": [1.2, 1.8],
        "p_value": 0.0004,
        "verdict": "regression",
        "test": "bootstrap quantile ratio",
    }
    comparison = {
        "regressions": ["endpoint search <q>: latency_p99"],
        "improvements": [],
        "warnings": ["base <run> warning"],
        "settings": {"alpha": 0.01, "min_effect": 0.05},
        "scopes": [
            {
                "endpoint": "search <q>",
                "stage": None,
                "label": "endpoint search <q>",
                "verdict": "regression",
                "metrics": {"latency_p99": metric},
            },
            {"endpoint": None, "stage": "hold", "label": "stage hold", "verdict": "no change", "metrics": {}},
        ],
    }
    page = render_compare_html(a, b, comparison)
    assert "<h2>Verdict</h2>" in page
    assert "endpoint search &lt;q&gt;: latency_p99" in page and "base &lt;run&gt; warning" in page
    assert "×1.496 [1.200, 1.800]" in page and 'class="badge fail">regression' in page
    assert ">stage hold</th>" not in page  # per-stage detail stays in the JSON
    assert "<h2>Verdict</h2>" not in render_compare_html(a, b)


def test_compare_with_an_unfinished_run(make_bundle) -> None:
    a = read_bundle(make_bundle())
    b = read_bundle(make_bundle(finish=False))
    page = render_compare_html(a, b)
    assert "incomplete" in page
    assert not [p for svg in chart_svgs(page) for p in drawn_problems(svg)]


def test_real_bundle(smoke_bundle, tmp_path) -> None:
    """A bundle a real run wrote (scenarios/smoke.yaml, shortened, agents in-process) renders too."""
    copy = tmp_path / "smoke"
    shutil.copytree(smoke_bundle, copy)
    bundle = read_bundle(copy)
    assert bundle.complete and bundle.summary.total.requests > 0 and len(bundle.summary.endpoints) == 7
    page = render_html(bundle)
    assert not [p for svg in chart_svgs(page) for p in drawn_problems(svg)]


def test_the_templates_ship_in_the_wheel() -> None:
    """report/html.py loads its templates with jinja2.PackageLoader: every file under
    templates/ must be package data of horde.coordinator.report in pyproject.toml."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    repo = Path(__file__).resolve().parents[3]
    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["horde.coordinator.report"]
    templates = repo / "coordinator" / "report" / "templates"
    files = [p.relative_to(templates.parent).as_posix() for p in templates.rglob("*") if p.is_file()]
    assert {"templates/report.html", "templates/compare.html", "templates/style.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []
