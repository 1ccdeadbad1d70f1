"""bench/truth.py's rows and tables: each generator against the target's two truths.

Two truths per generator run, both of the same requests:
- the *handler* truth: the target's handler times (bench/peers/delay_target.py), what the
  target's own code spent; it leaves out the target's reading, parsing and writing, which
  every client sees;
- the *wire* truth: request-to-response times on loopback from the kernel's packet stamps
  (bench/peers/wire_truth.py): what a client that adds nothing would measure, so a
  generator's distance to it is its own addition (its send lateness, its read, its
  histogram's resolution).

Distances are in ms (figure minus truth), ratios are figure over truth; over several runs
the medians per generator and measure are printed too. The histogram line puts the wire
truth's own values through horde's histogram: how much of a distance is the resolution of
a reported quantile (HdrHistogram's convention: the highest value of the bucket).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QS = (0.5, 0.9, 0.99)
KEYS = ("p50", "p90", "p99")


def quantiles_ms(values_ns: list[int] | np.ndarray) -> dict[str, float] | None:
    """p50 / p90 / p99 / max of `values_ns`, in ms (None when empty): the value of rank
    ceil(q n), as horde's histogram ranks (inverted CDF), without its buckets."""
    a = np.asarray(values_ns, dtype=np.float64)
    if a.size == 0:
        return None
    out = {f"p{int(q * 100)}": float(np.quantile(a, q, method="inverted_cdf")) / 1e6 for q in QS}
    out["max"] = float(a.max()) / 1e6
    return out


@dataclass
class Row:
    case: str  # "known delay" or "stall"
    generator: str
    measure: str = ""  # "latency" (from the intended send) or "service" (from the send)
    figures: dict[str, float] | None = None
    truth: dict[str, float] | None = None  # the target's handler times
    note: str = ""
    wire: dict[str, float] | None = None  # the target's request-to-response times on loopback
    run: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self, key: str, wire: bool = False) -> float | None:
        truth = self.wire if wire else self.truth
        if self.figures is None or truth is None or not truth.get(key):
            return None
        return self.figures[key] / truth[key]

    def distance(self, key: str, wire: bool = True) -> float | None:
        """The generator's figure minus the truth's, ms."""
        truth = self.wire if wire else self.truth
        if self.figures is None or truth is None:
            return None
        return self.figures[key] - truth[key]


def _f(value: float | None, spec: str) -> str:
    """`value` formatted with `spec`; "-" right-aligned to the spec's width when None."""
    if value is None:
        width = "".join(c for c in spec.lstrip("+").split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 1))
    return format(value, spec)


def format_table(rows: list[Row]) -> str:
    """One line per row: figures, distance/ratio to the handler truth, distances to the wire truth."""
    head = (
        f"{'case':<12} {'generator':<30} {'measure':<8} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>6}"
        f" {'p50-h':>6} {'p90/h':>6} {'p99/h':>6} {'max/h':>6}"
        f" {'p50-w':>6} {'p90-w':>6} {'p99-w':>6} {'p99/w':>6}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        f = r.figures or {}
        lines.append(
            f"{r.case:<12} {r.generator:<30} {r.measure:<8} {_f(f.get('p50'), '7.2f')} {_f(f.get('p90'), '7.2f')}"
            f" {_f(f.get('p99'), '7.2f')} {_f(f.get('max'), '6.1f')} {_f(r.distance('p50', False), '+6.2f')}"
            f" {_f(r.ratio('p90'), '6.3f')} {_f(r.ratio('p99'), '6.3f')} {_f(r.ratio('max'), '6.2f')}"
            f" {_f(r.distance('p50'), '+6.2f')} {_f(r.distance('p90'), '+6.2f')} {_f(r.distance('p99'), '+6.2f')}"
            f" {_f(r.ratio('p99', True), '6.3f')}  {r.note}"
        )
    return "\n".join(lines)


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def medians_table(rows: list[Row]) -> str:
    """Per generator and measure of the known-delay case, the medians over runs of the
    distances (ms) to both truths and of the p99 ratios."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.case == "known delay" and r.figures is not None:
            groups.setdefault((r.generator, r.measure), []).append(r)
    if not groups:
        return ""
    head = (
        f"{'medians over runs':<30} {'measure':<8} {'runs':>4}"
        f" {'p50-h':>6} {'p90-h':>6} {'p99-h':>6} {'p99/h':>6} {'p50-w':>6} {'p90-w':>6} {'p99-w':>6} {'p99/w':>6}"
    )
    lines = [head, "-" * len(head)]
    for (gen, measure), rs in groups.items():
        cells = [_median([r.distance(k, False) for r in rs]) for k in KEYS]
        cells.append(_median([r.ratio("p99") for r in rs]))
        cells += [_median([r.distance(k) for r in rs]) for k in KEYS]
        cells.append(_median([r.ratio("p99", True) for r in rs]))
        specs = ("+6.2f", "+6.2f", "+6.2f", "6.3f") * 2
        lines.append(f"{gen:<30} {measure:<8} {len(rs):>4} " + " ".join(_f(c, s) for c, s in zip(cells, specs)))
    return "\n".join(lines)


def truth_lines(rows: list[Row]) -> str:
    """The truths each row was compared with, once per (case, generator, run)."""
    seen, lines = set(), []
    for r in rows:
        key = (r.case, r.generator.split(" ")[0], r.run)
        if r.truth is None or key in seen:
            continue
        seen.add(key)
        lines.append(f"  truth for {r.case} / {key[1]} run {r.run + 1}: handler {_q(r.truth)}")
        if r.wire is not None:
            outside = "  ".join(f"{k} {r.wire[k] - r.truth[k]:+.3f}" for k in KEYS)
            lines.append(f"    wire    {_q(r.wire)}  (wire - handler: {outside})")
    return "\n".join(lines)


def _q(t: dict[str, float]) -> str:
    return f"p50 {t['p50']:.3f}  p90 {t['p90']:.3f}  p99 {t['p99']:.3f}  max {t['max']:.1f} ms"


def histogram_lines(rows: list[Row], quantile_of: Any) -> str:
    """The wire truth's values through horde's histogram (`quantile_of(values_ns, q) -> ns`)
    minus their exact quantile, ms: the part of a horde distance that is the reported
    bucket value, per known-delay run."""
    seen, lines = set(), []
    for r in rows:
        values = r.extra.get("wire_ns")
        key = (r.generator, r.run)
        if r.case != "known delay" or not values or key in seen:
            continue
        seen.add(key)
        exact = quantiles_ms(values)
        assert exact is not None
        diffs = "  ".join(f"{k} {quantile_of(values, q) / 1e6 - exact[k]:+.3f}" for k, q in zip(KEYS, QS))
        lines.append(f"  horde's histogram on the wire truth of {r.generator} run {r.run + 1}: {diffs} ms")
    return "\n".join(lines)


def ray_vs_in_process(rows: list[Row]) -> str:
    """horde through Ray over horde in-process, per run and measure."""
    by = {(r.generator, r.measure, r.run): r for r in rows if r.case == "known delay" and r.figures}
    lines = []
    for run in sorted({k[2] for k in by}):
        for measure in ("latency", "service"):
            ray, local = by.get(("horde-ray", measure, run)), by.get(("horde-in-process", measure, run))
            if ray and local and ray.figures and local.figures:
                lines.append(
                    f"  horde Ray / in-process, run {run + 1}, {measure}:"
                    + "".join(f"  {k} {ray.figures[k] / local.figures[k]:.3f}" for k in KEYS)
                )
    return "\n".join(lines)
