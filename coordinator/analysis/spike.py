"""Spikes: where a load profile jumps, and what a run's windows say about each jump.

Pure: no clock, no I/O. The input is the planned profile (horde.agents.stages.Profile, or the
workload it is built from), the run's one-second windows as the bundle stores them
(``windows.jsonl`` dicts) and the actual sends per bin (``summary["sends"]``).

What counts as a spike (``find_spikes``)
    A rise of the planned level by at least ``min_factor`` (5x) within at most
    ``max_rise_s`` (1 s): a zero-duration stage step, or a run of rising stages whose
    durations add up to no more than that. The level before the rise (``base_level``)
    must be above 0: a rise from nothing is the start of a load, and has no pre-spike
    band to recover to. The spike ends where the first fall after the rise ends (the level
    stops falling: an instant step back ends it at once, a ramp down at the ramp's end),
    or at the end of the profile when the level never falls. A later spike is looked for
    only after the previous one ended.

What is measured per spike (``analyse_spikes``)
    time_to_90_s
        How fast the generator reached the planned level: the end of the first sends bin
        b (at or after the rise began) such that bins b and b+1 both have actual sends of
        at least 0.9 x the planned sends of that bin (the profile's integral over the
        bin), counted only where the plan itself is at 90% of the peak in that bin;
        measured from ``start_s``. Its resolution is the bin (100 ms). None when that never
        happened before the spike ended (open model only: a closed model plans users, not
        sends).
    during
        The windows that overlap [start_s, end_s): requests, errors and error rate summed;
        latency p50 / p99 / max merged exactly from the window histograms when they are
        given (``quantiles: "merged"``), else the worst window's figures
        (``quantiles: "worst_window"``).
    band
        From the pre-spike windows: those that end at or before ``start_s`` and begin at
        or after the previous spike's recovery (its end, if it never recovered; the run's
        start for the first spike), leaving out the run's first window when there are
        others (connection set-up) and windows without requests. Inside the band means:
        latency p99 <= max(pre-spike window p99) x 1.5 + 1 ms, and error rate <= the
        pre-spike error rate (their errors / their requests) + 1 percentage point.
    recovery_s
        The target's recovery time: the first window starting at or after ``end_s`` from
        which 3 consecutive windows (consecutive indices, each with requests) are inside
        the band; recovery_s = that window's start - end_s (resolution: one window).
        Only windows inside the planned run (ending by the profile's end) and before the
        next spike's start count. None when it never recovered within them, or when
        there was no pre-spike window to measure a band from (``note`` says which).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from horde.agents.spec import Stage
from horde.agents.stages import Profile

MIN_FACTOR = 5.0  # a spike multiplies the level by at least this much ...
MAX_RISE_S = 1.0  # ... within at most this long
REACHED_FRACTION = 0.9  # "reached the planned level": sends at 90% of the plan
REACHED_BINS = 2  # ... for this many consecutive bins
BAND_P99_FACTOR = 1.5  # recovered: p99 <= max(pre p99) x 1.5 + 1 ms
BAND_P99_SLACK_MS = 1.0
BAND_ERROR_SLACK = 0.01  # ... and error rate <= pre error rate + 1 percentage point
RECOVERED_WINDOWS = 3  # ... for 3 consecutive windows

_EPS = 1e-9


@dataclass(frozen=True)
class SpikeSpec:
    """One planned spike. Times are seconds from the run's start instant."""

    start_s: float  # the rise begins
    end_s: float  # the level is back down (the first fall after the rise has ended)
    base_level: float  # the level just before the rise
    peak_level: float  # the level the rise reached
    factor: float  # peak_level / base_level
    rise_s: float = 0.0  # how long the rise took in the plan (0: an instant step)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def as_profile(source: Any, start_level: float | None = None) -> Profile:
    """A Profile from a Profile, a scenario Workload (``start`` + ``stages`` of
    duration/target), or a sequence of horde.agents.spec.Stage (with ``start_level``)."""
    if isinstance(source, Profile):
        return source
    if hasattr(source, "stages") and hasattr(source, "start"):  # horde.coordinator.scenario.models.Workload
        stages = [Stage(float(s.duration), float(s.target), s.name) for s in source.stages]
        return Profile(float(source.start), stages)
    stages = [
        s if isinstance(s, Stage) else Stage(float(s.duration), float(s.target), getattr(s, "name", "")) for s in source
    ]
    return Profile(float(start_level or 0.0), stages)


def find_spikes(
    source: Any,
    *,
    start_level: float | None = None,
    min_factor: float = MIN_FACTOR,
    max_rise_s: float = MAX_RISE_S,
) -> list[SpikeSpec]:
    """The spikes of a profile (see the module doc for the definition)."""
    profile = as_profile(source, start_level)
    segs = _segments(profile)
    n = len(segs)
    spikes: list[SpikeSpec] = []
    i = 0
    while i < n:
        t0, t1, a, b = segs[i]
        if not (b > a and t1 - t0 <= max_rise_s + _EPS):
            i += 1
            continue
        # Group consecutive rising segments while the rise stays within max_rise_s.
        j = i
        while j + 1 < n:
            _, nt1, na, nb = segs[j + 1]
            if nb > na and nt1 - t0 <= max_rise_s + _EPS:
                j += 1
            else:
                break
        base, peak = a, segs[j][3]
        if base > 0 and peak >= min_factor * base - _EPS:
            k = j + 1
            while k < n and not segs[k][3] < segs[k][2]:
                k += 1  # holds and further rises belong to the spike
            if k < n:
                while k + 1 < n and segs[k + 1][3] < segs[k + 1][2]:
                    k += 1  # one fall may take several stages (a step down, then a ramp down)
                end_s = segs[k][1]
            else:
                end_s = profile.duration_s
            spikes.append(
                SpikeSpec(
                    start_s=t0,
                    end_s=end_s,
                    base_level=base,
                    peak_level=peak,
                    factor=peak / base,
                    rise_s=segs[j][1] - t0,
                )
            )
            i = k + 1
        else:
            i += 1
    return spikes


def _segments(profile: Profile) -> list[tuple[float, float, float, float]]:
    """(start_s, end_s, from_level, to_level) per stage."""
    out = []
    t = 0.0
    level = profile.start_level
    for s in profile.stages:
        out.append((t, t + s.duration_s, level, float(s.target)))
        t += s.duration_s
        level = float(s.target)
    return out


# --- analysis -------------------------------------------------------------------------------


def analyse_spikes(
    spikes: Sequence[SpikeSpec],
    windows: Iterable[Mapping[str, Any]],
    sends_counts: Sequence[int],
    bin_s: float,
    profile: Any,
    *,
    model: str = "open",
    histograms: Mapping[int, Any] | None = None,
) -> list[dict[str, Any]]:
    """One dict per spike: time to 90%, the figures during it, its band and recovery.

    windows: window dicts (``index``, ``start_s``, ``end_s``, ``total``: Stats.to_dict()).
    sends_counts: actual sends per ``bin_s`` from the run's start (summary["sends"]).
    histograms: optional window index -> Stats (or its to_sparse() dict) of the window's
    total, to merge latency quantiles exactly instead of reporting the worst window.
    """
    prof = as_profile(profile)
    by_index = {int(w["index"]): w for w in windows}
    out: list[dict[str, Any]] = []
    floor_s = 0.0  # where the next spike's pre-spike windows may begin
    for k, spike in enumerate(spikes):
        next_start = spikes[k + 1].start_s if k + 1 < len(spikes) else math.inf
        band_windows = _pre_spike_windows(by_index, floor_s, spike.start_s)
        band = band_from_windows(band_windows)
        back_at = None
        note = ""
        if band is None:
            note = "no pre-spike window with requests to measure a band from"
        else:
            back_at = recovered_at(by_index, band, spike.end_s, min(next_start, prof.duration_s))
            if back_at is None:
                note = f"not back inside the band for {RECOVERED_WINDOWS} consecutive windows before " + (
                    "the next spike" if next_start < prof.duration_s else "the end of the run"
                )
        if model == "open":
            ttr = time_to_reach(spike, sends_counts, bin_s, prof)
        else:
            ttr = None
            note = (note + "; " if note else "") + "time to 90% is measured for the open model only"
        out.append(
            {
                "index": k,
                **spike.to_dict(),
                "time_to_90_s": ttr,
                "during": _during(by_index, spike, histograms),
                "band": band,
                "recovery_s": None if back_at is None else round(back_at - spike.end_s, 6),
                "recovered_at_s": back_at,
                "note": note,
            }
        )
        floor_s = back_at if back_at is not None else spike.end_s
    return out


def spikes_for_run(
    profile: Any,
    windows: Iterable[Mapping[str, Any]],
    sends: Mapping[str, Any],
    *,
    model: str | None = None,
    histograms: Mapping[int, Any] | None = None,
) -> list[dict[str, Any]]:
    """find_spikes + analyse_spikes for a finished run (``sends``: summary["sends"]); [] without spikes.

    profile: the scenario's Workload (its ``model`` is used when ``model`` is None), a
    Profile, or stages; model None with a Profile means the open model.
    """
    model = model or getattr(profile, "model", None) or "open"
    prof = as_profile(profile)
    spikes = find_spikes(prof)
    if not spikes:
        return []
    return analyse_spikes(
        spikes,
        windows,
        sends.get("counts", []),
        float(sends.get("bin_s", 0.1)),
        prof,
        model=model,
        histograms=histograms,
    )


def time_to_reach(
    spike: SpikeSpec,
    sends_counts: Sequence[int],
    bin_s: float,
    profile: Profile,
    fraction: float = REACHED_FRACTION,
    bins: int = REACHED_BINS,
) -> float | None:
    """Seconds from the spike's start to the end of the first of `bins` consecutive bins
    with actual sends >= fraction x planned, where the plan is at `fraction` of the peak."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    first = int(math.floor(spike.start_s / bin_s + _EPS))
    last = int(math.ceil(spike.end_s / bin_s - _EPS))  # bins [first, last) overlap the spike
    need = fraction * spike.peak_level * bin_s

    def ok(b: int) -> bool:
        if b >= last:
            return False
        planned = profile.cumulative((b + 1) * bin_s) - profile.cumulative(b * bin_s)
        actual = sends_counts[b] if 0 <= b < len(sends_counts) else 0
        return planned >= need * (1 - 1e-6) and actual >= fraction * planned * (1 - 1e-9)

    run = 0
    for b in range(first, last):
        run = run + 1 if ok(b) else 0
        if run == bins:
            start_bin = b - bins + 1
            return round(max(0.0, (start_bin + 1) * bin_s - spike.start_s), 6)
    return None


def _p99_ms(w: Mapping[str, Any]) -> float | None:
    return ((w.get("total") or {}).get("latency_ms") or {}).get("p99")


def _requests(w: Mapping[str, Any]) -> int:
    return int((w.get("total") or {}).get("requests") or 0)


def _errors(w: Mapping[str, Any]) -> int:
    return int((w.get("total") or {}).get("errors") or 0)


def _pre_spike_windows(by_index: Mapping[int, Mapping[str, Any]], floor_s: float, start_s: float) -> list:
    ws = [
        w
        for _, w in sorted(by_index.items())
        if w["end_s"] <= start_s + _EPS
        and w["start_s"] >= floor_s - _EPS
        and _requests(w) > 0
        and _p99_ms(w) is not None
    ]
    if len(ws) > 1 and int(ws[0]["index"]) == 0:
        ws = ws[1:]  # the run's first window: connections being set up
    return ws


def band_from_windows(ws: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The band (see the module doc) from window dicts; None without windows."""
    if not ws:
        return None
    requests = sum(_requests(w) for w in ws)
    errors = sum(_errors(w) for w in ws)
    p99_max = max(float(_p99_ms(w)) for w in ws)  # type: ignore[arg-type]  # band windows have latency
    error_rate = errors / requests
    return {
        "windows": [int(ws[0]["index"]), int(ws[-1]["index"])],
        "requests": requests,
        "p99_ms_max": p99_max,
        "error_rate": error_rate,
        "p99_limit_ms": p99_max * BAND_P99_FACTOR + BAND_P99_SLACK_MS,
        "error_rate_limit": error_rate + BAND_ERROR_SLACK,
    }


def in_band(w: Mapping[str, Any] | None, band: Mapping[str, Any]) -> bool:
    """A window is inside the band when it has requests, its p99 and its error rate are in."""
    if w is None or _requests(w) == 0:
        return False
    p99 = _p99_ms(w)
    if p99 is None or p99 > band["p99_limit_ms"] + _EPS:
        return False
    return _errors(w) / _requests(w) <= band["error_rate_limit"] + _EPS


def recovered_at(
    by_index: Mapping[int, Mapping[str, Any]], band: Mapping[str, Any], end_s: float, until_s: float
) -> float | None:
    """Start of the first window at or after end_s that opens RECOVERED_WINDOWS consecutive
    in-band windows, all ending by until_s; None when there is none. by_index: window
    index -> window dict."""
    if not by_index:
        return None
    candidates = sorted(i for i, w in by_index.items() if w["start_s"] >= end_s - _EPS)
    for i in candidates:
        run = [by_index.get(i + d) for d in range(RECOVERED_WINDOWS)]
        if any(w is None or w["end_s"] > until_s + _EPS for w in run):
            if by_index[i]["end_s"] > until_s + _EPS:
                break
            continue
        if all(in_band(w, band) for w in run):
            return float(by_index[i]["start_s"])
    return None


def _during(
    by_index: Mapping[int, Mapping[str, Any]], spike: SpikeSpec, histograms: Mapping[int, Any] | None
) -> dict[str, Any]:
    ws = [
        w
        for _, w in sorted(by_index.items())
        if w["start_s"] < spike.end_s - _EPS and w["end_s"] > spike.start_s + _EPS
    ]
    requests = sum(_requests(w) for w in ws)
    errors = sum(_errors(w) for w in ws)
    out: dict[str, Any] = {
        "windows": [int(ws[0]["index"]), int(ws[-1]["index"])] if ws else None,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
    }
    if histograms is not None and ws and all(int(w["index"]) in histograms for w in ws):
        from horde.coordinator.measure.aggregate import Stats

        merged = Stats()
        for w in ws:
            h = histograms[int(w["index"])]
            merged.merge(h if isinstance(h, Stats) else Stats.from_sparse(h))
        lat = merged.latency
        q = lat.quantiles((0.5, 0.99)) if lat.count else {0.5: None, 0.99: None}
        out.update(
            latency_p50_ms=_ms(q[0.5]),
            latency_p99_ms=_ms(q[0.99]),
            latency_max_ms=_ms(lat.max_ns),
            quantiles="merged",
        )
    else:
        lats = [(w.get("total") or {}).get("latency_ms") or {} for w in ws if _requests(w)]

        def worst(key: str) -> float | None:
            vals = [x[key] for x in lats if x.get(key) is not None]
            return max(vals) if vals else None

        out.update(
            latency_p50_ms=worst("p50"),
            latency_p99_ms=worst("p99"),
            latency_max_ms=worst("max"),
            quantiles="worst_window",
        )
    return out


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)
