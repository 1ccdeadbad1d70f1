"""Durations, percentages and byte sizes as people write them in scenarios and on the CLI.

    parse_duration(30) == 30.0             a number is seconds
    parse_duration("250ms") == 0.25        units: ns, us (or µs), ms, s, m, h
    parse_duration("1h30m") == 5400.0      units combine, largest first (Go style)
    parse_percent("1.5%") == 0.015         a number or a "%"-less string is a fraction
    parse_size("64KiB") == 65536           B, kB/KB/MB/GB (x1000), KiB/MiB/GiB (x1024)

Everything here is pure; errors are ValueError with a message fit to show a user as is.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_PLAIN_NUMBER = re.compile(rf"[+-]?{_NUMBER}(?:[eE][+-]?\d+)?")

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


def _is_number(value: object) -> bool:
    # bool is an int subclass, and `timeout: true` is a mistake, not one second.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as "250ms", "1.5s", "1h30m"."""
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(
            f"expected a duration such as 30s, 250ms or 1m30s, got {type(value).__name__}"
        )
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def _parse_duration_text(text: str) -> float:
    s = text.strip()
    if _PLAIN_NUMBER.fullmatch(s):
        return float(s)  # "30" from ${ENV} interpolation: seconds, like the number 30
    pos = 0
    total = 0.0
    last_scale = math.inf
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"invalid duration {text!r}: expected a number with a unit "
                "(ns, us, ms, s, m, h) such as 30s, 250ms or 1m30s"
            )
        scale = _DURATION_UNITS_S[m.group(2)]
        if scale >= last_scale:
            raise ValueError(
                f"invalid duration {text!r}: units must go from largest to smallest, once each"
            )
        last_scale = scale
        total += float(m.group(1)) * scale
        pos = m.end()
    if pos == 0:
        raise ValueError("invalid duration '': expected a number with a unit such as 30s")
    return total


def format_duration(seconds: float) -> str:
    """A short human form that parse_duration reads back (to within rounding)."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{_trim(seconds * 1e6, 3)}us"
    if seconds < 1:
        return f"{_trim(seconds * 1e3, 3)}ms"
    if seconds < 60:
        return f"{_trim(seconds, 3)}s"
    whole = round(seconds, 3)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{int(hours)}h")
    if minutes:
        parts.append(f"{int(minutes)}m")
    if secs:
        parts.append(f"{_trim(secs, 3)}s")
    return "".join(parts)


def _trim(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_percent(value: object) -> float:
    """A fraction from "1.5%" (0.015), a number (taken as a fraction) or a numeric string."""
    if _is_number(value):
        fraction = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        s = value.strip()
        is_percent = s.endswith("%")
        number = s[:-1].strip() if is_percent else s
        if not _PLAIN_NUMBER.fullmatch(number):
            raise ValueError(f"invalid percentage {value!r}: expected e.g. 1.5% or 0.015")
        fraction = float(number) / 100 if is_percent else float(number)
    else:
        raise ValueError(f"expected a percentage such as 1.5%, got {type(value).__name__}")
    if math.isnan(fraction) or fraction < 0:
        raise ValueError(f"percentage must not be negative, got {value!r}")
    return fraction


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "512", "64KiB", "10MB" (unit case-insensitive)."""
    if _is_number(value):
        number, scale = float(value), 1  # type: ignore[arg-type]
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        unit = m.group(2).lower() if m else ""
        if m is None or (unit and unit not in _SIZE_UNITS):
            raise ValueError(
                f"invalid size {value!r}: expected bytes or a unit B, kB, MB, GB, KiB, MiB, GiB"
            )
        number, scale = float(m.group(1)), _SIZE_UNITS.get(unit, 1)
    else:
        raise ValueError(f"expected a size such as 64KiB, got {type(value).__name__}")
    if number < 0 or math.isnan(number) or math.isinf(number):
        raise ValueError(f"size must be a finite, non-negative number, got {value!r}")
    return int(round(number * scale))


def format_size(nbytes: int) -> str:
    """Binary units, e.g. 65536 -> "64KiB"; exact below 1 KiB."""
    if nbytes < 1024:
        return f"{nbytes}B"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{_trim(nbytes / scale, 2)}{unit}"
    raise AssertionError("unreachable")
