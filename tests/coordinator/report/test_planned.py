"""The throughput chart's planned rate comes from the scenario's stages (not from the agents'
flush-time readings, which drew it a second late and past the run's end), and each agent
loss is shaded against it, from the loss to the restoration."""

from __future__ import annotations

import re

import pytest

from horde.coordinator.bundle.schema import AlertRecord, Manifest
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.report.html import render_html
from horde.coordinator.report.planned import loss_bands, loss_intervals, planned_at, planned_points
from horde.coordinator.units import parse_duration


def _svg(page: str, title: str) -> str:
    for svg in re.findall(r'<svg class="chart".*?</svg>', page, re.S):
        if f"<title>{title}</title>" in svg:
            return svg
    raise AssertionError(f"no chart titled {title!r}")


def _planned_series(svg: str) -> list[tuple[float, float]]:
    paths = re.findall(r'<path class="data" d="([^"]*)"[^>]*data-xy="([^"]*)"[^>]*><title>planned rate</title>', svg)
    assert len(paths) == 1, "one planned-rate line with its values"
    d, xy = paths[0]
    points = [tuple(float(v) for v in pair.split(",")) for pair in xy.split()]
    assert len(d.split("L")) == len(points)  # the values are what was drawn, vertex for vertex
    return points  # type: ignore[return-value]  # pairs, by the split above


def _bands(svg: str) -> list[tuple[float, float]]:
    return [
        (float(a), float(b))
        for a, b in re.findall(r'<path class="band"[^>]*data-from-s="([^"]*)" data-to-s="([^"]*)"', svg)
    ]


def test_the_smoke_reports_planned_line_is_the_scenarios_stages(smoke_bundle):
    bundle = read_bundle(smoke_bundle)
    workload = bundle.manifest.scenario["workload"]
    expected, t = [(0.0, float(workload.get("start", 0)))], 0.0
    for stage in workload["stages"]:
        t += parse_duration(stage["duration"])
        expected.append((t, float(stage["target"])))
    # the fixture's smoke run: a 1 s ramp from 0 to 50/s, then 2 s at 50/s
    assert expected == [(0.0, 0.0), (1.0, 50.0), (3.0, 50.0)]
    assert _planned_series(_svg(render_html(bundle), "Throughput")) == expected


PLAN = {"agents": 2, "duration_s": 10.0}


def _manifest(workload: dict, ends: list[float]) -> Manifest:
    stages = [{"name": f"s{i}", "end_s": e} for i, e in enumerate(ends)]
    return Manifest.model_validate({"scenario": {"workload": workload}, "plan": {**PLAN, "stages": stages}})


@pytest.mark.parametrize(
    ("workload", "ends", "points"),
    [
        # a ramp from the start level, then a hold
        ({"start": 0, "stages": [{"target": 50}, {"target": 50}]}, [3, 10], ([0, 3, 10], [0, 50, 50])),
        # a start level other than 0
        ({"start": 20, "stages": [{"target": 80}]}, [5], ([0, 5], [20, 80])),
        # no start key: 0
        ({"stages": [{"target": 10}]}, [5], ([0, 5], [0, 10])),
        # a zero-length stage is a step at its time
        (
            {"start": 10, "stages": [{"target": 10}, {"target": 100}, {"target": 100}]},
            [4, 4, 6],
            ([0, 4, 4, 6], [10, 10, 100, 100]),
        ),
        # stages and plan that do not match: nothing rather than a wrong line
        ({"stages": [{"target": 10}]}, [5, 6], None),
        # a target that is not a number
        ({"stages": [{"target": "lots"}]}, [5], None),
        # no workload at all
        ({}, [5], None),
    ],
)
def test_planned_points(workload, ends, points):
    assert planned_points(_manifest(workload, ends)) == points


def test_no_plan_no_points():
    assert planned_points(Manifest.model_validate({"scenario": {"workload": {"stages": [{"target": 1}]}}})) is None


@pytest.mark.parametrize(
    ("t_s", "level"),
    [(-1, 0.0), (0, 10.0), (2, 10.0), (4, 100.0), (5, 100.0), (6, 50.0), (7, 0.0)],
)
def test_planned_at(t_s, level):
    # 10/s for 4 s, a step to 100/s held to 5 s, a ramp down to 50/s at 6 s, then the end
    points = ([0.0, 4.0, 4.0, 5.0, 6.0], [10.0, 10.0, 100.0, 100.0, 50.0])
    assert planned_at(points, t_s) == pytest.approx(level)


def _alert(**kw) -> AlertRecord:
    return AlertRecord.model_validate(kw)


def test_loss_intervals_pair_each_loss_with_its_restoration():
    alerts = [
        _alert(kind="agent_lost", agent=0, at_s=2.0, share="1/4"),
        _alert(kind="agent_restored", agent=1, at_s=3.0),  # another agent's: not this loss's end
        _alert(kind="agent_restored", agent=0, at_s=4.5),
        _alert(kind="agent_lost", agent=0, at_s=6.0, share="1/4"),  # lost again: its own interval
        _alert(kind="agent_restored", agent=0, at_s=7.0),
        _alert(kind="agent_lost", agent=2, at_s=8.0, share="1/4", restored_at_s=8.5),  # restored, said in the loss
        _alert(kind="agent_lost", agent=3, at_s=9.0),  # never restored; share unknown: all of it
    ]
    got = [(x.agent, x.from_s, x.to_s, x.share, x.restored) for x in loss_intervals(alerts, end_s=12.0)]
    assert got == [
        (0, 2.0, 4.5, 0.25, True),
        (0, 6.0, 7.0, 0.25, True),
        (2, 8.0, 8.5, 0.25, True),
        (3, 9.0, 12.0, 1.0, False),
    ]


def test_a_loss_band_is_the_lost_share_under_the_planned_line():
    planned = ([0.0, 4.0, 4.0, 10.0], [0.0, 40.0, 80.0, 80.0])  # a ramp, then a step
    (loss,) = loss_intervals([_alert(kind="agent_lost", agent=1, at_s=2.0, share="1/2")], end_s=10.0)
    (band,) = loss_bands([loss], planned)
    assert list(band.x) == [2.0, 4.0, 4.0, 10.0]
    assert list(band.hi) == [20.0, 40.0, 80.0, 80.0]
    assert list(band.lo) == [10.0, 20.0, 40.0, 40.0]
    (full,) = loss_bands([loss], None)  # no plan: the whole height of the interval
    assert list(full.x) == [2.0, 10.0] and not full.lo and not full.hi


def test_the_report_shades_each_loss_from_the_loss_to_the_restoration(make_bundle):
    restored = {"kind": "agent_restored", "agent": 1, "incarnation": 1, "at_s": 17}
    page = render_html(read_bundle(make_bundle(lose_agent_at_s=14, extra_alerts=[restored])))
    svg = _svg(page, "Throughput")
    assert _bands(svg) == [(14.0, 17.0)]
    assert "lost agent&#x27;s planned share" in svg or "lost agent's planned share" in svg


def test_an_unrestored_loss_is_shaded_to_the_end_and_no_loss_shades_nothing(make_bundle):
    bundle = read_bundle(make_bundle(lose_agent_at_s=14))
    last_window_end_s = max(w.end_s for w in bundle.windows())
    assert _bands(_svg(render_html(bundle), "Throughput")) == [(14.0, last_window_end_s)]
    assert _bands(_svg(render_html(read_bundle(make_bundle(lose_agent_at_s=None))), "Throughput")) == []
