"""What a run shows while it goes: a live terminal view on a TTY, plain lines otherwise.

The run hands each closed window to a view as a plain dict (`window_info`, built by run/summary.py)
and its messages (losses, alerts, warnings) as text. Views:

- `PlainView`: one line per window (CI logs, pipes).
- `RichView`: a live panel (rich) with a progress bar, the window's figures, per-agent
  health and active alerts; messages scroll above it.
- `QuietView`: nothing (``--quiet``).

Messages pass the redaction rule (coordinator/scenario/redact.py) before they are shown: the
run's own lines name the target URL, and an error may quote one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import RenderableType


Redact = Callable[[str], str]


def _no_redaction(text: str) -> str:
    return text


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f}ms" if v < 100 else f"{v:.0f}ms")


def format_line(info: dict[str, Any]) -> str:
    """The plain per-window line."""
    level = f"users {info['users']}" if info["model"] == "closed" else f"in-flight {info['in_flight']}"
    alerts = f"  ALERTS {len(info['alerts'])}" if info.get("alerts") else ""
    return (
        f"[{info['t_s']:>5}s] {info['stage']:<12} rps {info['rps']:>7}  "
        f"p50 {_ms(info['p50_ms']):>8}  p99 {_ms(info['p99_ms']):>8}  "
        f"errors {info['errors']} ({100 * info['error_rate']:.2f}%)  {level}{alerts}"
    )


class QuietView:
    def message(self, text: str) -> None:
        pass

    def window(self, info: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class PlainView:
    def __init__(self, out: TextIO | None = None, redact: Redact = _no_redaction) -> None:
        self._out = out or sys.stderr
        self._redact = redact

    def message(self, text: str) -> None:
        print(self._redact(text), file=self._out, flush=True)

    def window(self, info: dict[str, Any]) -> None:
        print(format_line(info), file=self._out, flush=True)

    def close(self) -> None:
        pass


class RichView:
    """A live panel redrawn on every window (4 times a second at most)."""

    def __init__(self, title: str, out: TextIO | None = None, redact: Redact = _no_redaction) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=out or sys.stderr)
        self._title = title
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._started = False
        self._redact = redact

    def _ensure(self) -> None:
        if not self._started:
            self._live.start()
            self._started = True

    def message(self, text: str) -> None:
        self._ensure()
        self._live.console.print(self._redact(text), markup=False, highlight=False)

    def window(self, info: dict[str, Any]) -> None:
        self._ensure()
        self._live.update(self.render(info))

    def render(self, info: dict[str, Any]):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        done = min(1.0, info["t_s"] / info["duration_s"]) if info["duration_s"] else 1.0
        head = Text.assemble(
            (f"horde {self._title}  ", "bold"),
            f"{info['t_s']}s / {info['duration_s']:g}s  ",
            (f"stage {info['stage_index'] + 1}/{info['stages']} {info['stage']}", "cyan"),
            f"  planned {info['planned']:g}{'/s' if info['model'] == 'open' else ' users'}",
        )
        bar = ProgressBar(total=1.0, completed=done, width=60)
        figures = Table.grid(padding=(0, 3))
        for _ in range(6):
            figures.add_column(justify="right")
        figures.add_row("rps", "p50", "p90", "p99", "max", "errors")
        err_style = "red" if info["errors"] else ""
        figures.add_row(
            str(info["rps"]),
            _ms(info["p50_ms"]),
            _ms(info["p90_ms"]),
            _ms(info["p99_ms"]),
            _ms(info["max_ms"]),
            Text(f"{info['errors']} ({100 * info['error_rate']:.2f}%)", style=err_style),
        )
        figures.add_row(
            Text("total", style="dim"),
            "",
            "",
            "",
            "",
            Text(f"{info['total_requests']} req, {info['total_errors']} err", style="dim"),
        )
        agents = Table(box=None, padding=(0, 2), header_style="dim")
        for col in ("agent", "users" if info["model"] == "closed" else "in-flight", "cpu", "loop lag", "rss"):
            agents.add_column(col, justify="right")
        for label, a in sorted(info["agents"].items()):
            cpu = a.get("cpu_fraction")
            lag = a.get("loop_lag_max_ms", 0.0)
            agents.add_row(
                label,
                str(a.get("users") if info["model"] == "closed" else a.get("in_flight")),
                Text("-" if cpu is None else f"{cpu:.0%}", style="red" if cpu and cpu > 0.9 else ""),
                Text(f"{lag:.1f}ms", style="red" if lag > 100 else ""),
                f"{a.get('rss_mb', 0):.0f}MB",
            )
        parts: list[RenderableType] = [head, bar, Text(""), figures, Text(""), agents]
        if info.get("lost"):
            parts.append(Text(f"lost agents so far: {info['lost']}", style="yellow"))
        for a in info.get("alerts", []):
            parts.append(Text(f"ALERT {a}", style="bold red"))
        return Group(*parts)

    def close(self) -> None:
        if self._started:
            self._live.stop()


def choose_view(
    title: str, *, quiet: bool, stream: TextIO | None = None, redact: Redact = _no_redaction
) -> QuietView | PlainView | RichView:
    """Rich on a terminal, plain lines otherwise, nothing with --quiet; `redact` cleans messages."""
    stream = stream or sys.stderr
    if quiet:
        return QuietView()
    if stream.isatty():
        try:
            return RichView(title, stream, redact)
        except ImportError:  # rich is a dependency; a broken install falls back to lines
            pass
    return PlainView(stream, redact)


Callback = Callable[[dict[str, Any]], None]
