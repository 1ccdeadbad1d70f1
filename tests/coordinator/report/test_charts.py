"""horde.coordinator.report.charts: round ticks, and SVG that draws what it is given (or says why not)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from horde.coordinator.report import charts
from horde.coordinator.report.charts import Axis, HLine, Layer, Marker, Series

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", d)]


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (0, 50, [0, 10, 20, 30, 40, 50]),  # a round maximum is its own top tick
        (0, 47.3, [0, 10, 20, 30, 40, 50]),  # ... otherwise the next round number
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (0, 12.5, [0, 2.5, 5, 7.5, 10, 12.5]),  # 2.5 steps are allowed on value axes
        (0, 0.003, [0, 0.001, 0.002, 0.003]),
        (5, 5, [5, 6, 7, 8, 9, 10]),  # a flat series still gets an axis
        (0, 180_000, [0, 50_000, 100_000, 150_000, 200_000]),
    ],
)
def test_linear_ticks_are_round_numbers(lo, hi, expected) -> None:
    ticks, dlo, dhi = charts.linear_ticks(lo, hi)
    assert ticks == pytest.approx(expected)
    assert dlo == ticks[0] and dhi == ticks[-1]


@pytest.mark.parametrize(
    "lo, hi, max_ticks, expected",
    [
        (1.3, 870, 12, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]),  # 1-2-5 when there is room
        (1.3, 870, 5, [1, 10, 100, 1000]),  # decades only in a short chart
        (0.004, 3, 14, [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]),
        (0.004, 3, 12, [0.001, 0.01, 0.1, 1, 10]),  # 13 ticks would be too many
        (20, 20, 12, [20, 50]),  # one value: still a range
    ],
)
def test_log_ticks(lo, hi, max_ticks, expected) -> None:
    ticks, dlo, dhi = charts.log_ticks(lo, hi, max_ticks=max_ticks)
    assert ticks == pytest.approx(expected)
    assert dlo <= lo and dhi >= hi


@pytest.mark.parametrize(
    "v, text",
    [
        (0, "0"),
        (0.25, "0.25"),
        (5, "5"),
        (2.5, "2.5"),
        (1500, "1500"),
        (15000, "15k"),
        (2_000_000, "2M"),
        (0.0005, "0.0005"),
    ],
)
def test_tick_labels(v, text) -> None:
    assert charts.fmt_number(v) == text


@pytest.mark.parametrize("span_s, unit", [(10, "s"), (300, "s"), (301, "min"), (4 * 3600, "min"), (6 * 3600, "h")])
def test_time_unit_by_span(span_s, unit) -> None:
    assert charts.time_unit(span_s)[1] == unit


def test_time_axis_ticks_are_whole_minutes_for_a_long_run() -> None:
    svg = charts.line_chart(
        [Series("a", [0, 1800], [1, 2], "#000")],
        title="t",
        x_axis=Axis("elapsed", time=True, lo=0, hi=1800),
        y_axis=Axis("y"),
    )
    root = parse(svg)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "elapsed (min)" in labels
    assert {"0", "10", "20", "30"} <= set(labels)


def test_line_chart_draws_each_series_inside_the_plot() -> None:
    svg = charts.line_chart(
        [
            Series("p50", [0, 1, 2, 3], [1, 2, 3, 2], "#111"),
            Series("p99 <b>", [0, 1, 2, 3], [5, 6, 9, 7], "#222", dash=True),
        ],
        title="Latency & more",
        x_axis=Axis("elapsed", time=True),
        y_axis=Axis("latency (ms)"),
        markers=[Marker(0, "ramp"), Marker(2, "abort: <rule>", "critical")],
        hlines=[HLine(8, "limit")],
    )
    root = parse(svg)  # well-formed XML: every label was escaped
    assert root.get("class") == "chart"
    paths = [p for p in root.iter(f"{SVG}path") if p.get("class") == "data"]
    assert len(paths) == 2
    for p in paths:
        pts = path_points(p.get("d"))
        assert len(pts) == 4
        assert all(58 <= x <= 640 and 0 <= y <= 280 for x, y in pts)
    assert "p99 &lt;b&gt;" in svg and "abort: &lt;rule&gt;" in svg
    assert any(line.get("class") == "marker" for line in root.iter(f"{SVG}line"))


def test_missing_values_break_the_line_and_a_lone_point_is_a_dot() -> None:
    s = Series("a", [0, 1, 2, 3, 4, 5], [1, None, 2, 3, math.nan, 4], "#000")
    root = parse(charts.line_chart([s], title="t", x_axis=Axis(), y_axis=Axis()))
    data = [e for e in root.iter() if e.get("class") == "data"]
    assert sorted(e.tag.replace(SVG, "") for e in data) == ["circle", "circle", "path"]
    assert "nan" not in ET.tostring(root, encoding="unicode").lower()


def test_log_axis_leaves_out_non_positive_values() -> None:
    root = parse(
        charts.line_chart(
            [Series("a", [0, 1, 2], [0, 10, 100], "#000")], title="t", x_axis=Axis(), y_axis=Axis(log=True)
        )
    )
    (path,) = [p for p in root.iter(f"{SVG}path") if p.get("class") == "data"]
    assert len(path_points(path.get("d"))) == 2


@pytest.mark.parametrize(
    "series",
    [[], [Series("a", [], [], "#000")], [Series("a", [1, 2], [None, None], "#000")]],
)
def test_nothing_to_draw_says_so(series) -> None:
    svg = charts.line_chart(series, title="t", x_axis=Axis(), y_axis=Axis(), empty_message="no requests <yet>")
    root = parse(svg)
    assert root.get("data-nodata") == "1"
    assert "no requests &lt;yet&gt;" in svg


def test_stacked_chart_stacks_and_skips_zero_layers() -> None:
    layers = [Layer("timeout", [1, 0, 2], "#f00"), Layer("reset", [0, 0, 0], "#0f0"), Layer("5xx", [2, 1, 1], "#00f")]
    root = parse(
        charts.stacked_chart([0, 1, 2], [1, 1, 1], layers, title="errors", x_axis=Axis(time=True), y_axis=Axis())
    )
    paths = [p for p in root.iter(f"{SVG}path") if p.get("class") == "data"]
    assert [p.find(f"{SVG}title").text for p in paths] == ["timeout", "5xx"]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "reset" not in texts


def test_stacked_chart_of_zeros_draws_a_baseline_and_a_message() -> None:
    svg = charts.stacked_chart(
        [0, 1],
        [1, 1],
        [Layer("timeout", [0, 0], "#f00")],
        title="errors",
        x_axis=Axis(time=True),
        y_axis=Axis(),
        zero_message="no errors",
    )
    root = parse(svg)
    assert root.get("data-nodata") is None
    assert [p for p in root.iter(f"{SVG}path") if p.get("class") == "data"]
    assert "no errors" in svg


def test_percentile_chart_maps_quantiles_to_one_over_one_minus_q() -> None:
    assert charts.percentile_x(0.0) == 1
    assert charts.percentile_x(0.99) == pytest.approx(100)
    qs = [0.0, 0.5, 0.9, 0.99, 0.999]
    svg = charts.percentile_chart([Series("latency", qs, [1, 2, 4, 8, 16], "#000")], title="p", y_axis=Axis("ms"))
    root = parse(svg)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert [x for x in labels if x and x.endswith("%")] == ["0%", "90%", "99%", "99.9%"]
    (path,) = [p for p in root.iter(f"{SVG}path") if p.get("class") == "data"]
    xs = [x for x, _ in path_points(path.get("d"))]
    # equal steps in log(1 / (1 - q)): 0.9 -> 0.99 -> 0.999 are evenly spaced
    assert xs[3] - xs[2] == pytest.approx(xs[4] - xs[3], abs=0.2)


def test_identical_charts_share_clip_ids_and_different_ones_do_not() -> None:
    a = charts.line_chart([Series("a", [0, 1], [1, 2], "#000")], title="t", x_axis=Axis(), y_axis=Axis())
    b = charts.line_chart([Series("a", [0, 1], [1, 3], "#000")], title="t", x_axis=Axis(), y_axis=Axis())
    ids = [re.search(r'clipPath id="([^"]+)"', s).group(1) for s in (a, a, b)]
    assert ids[0] == ids[1] != ids[2]
