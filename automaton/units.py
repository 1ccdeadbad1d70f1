"""Durations, percentages and byte sizes as people write them: the one unit table.

    parse_duration(30) == 30.0             a number is seconds
    parse_duration("250ms") == 0.25        units: ns, us (or µs), ms, s, m, h
    parse_duration("1h30m") == 5400.0      units combine, largest first (Go style)
    parse_percent("1.5%") == 0.015         a number or a "%"-less string is a fraction
    parse_size("64KiB") == 65536           B, kB/KB/MB/GB (x1000), KiB/MiB/GiB (x1024)

It lives at the bottom of the layers (the automaton's fault model reads these units, and
the automaton imports nothing of the coordinator); horde.coordinator.units re-exports it,
and the scenario models, thresholds and alert rules all read units through it. `Duration`,
`Percent` and `Size` are the pydantic field types (validation and JSON schema) built on
the parsers.

Everything here is pure; errors are ValueError with a message fit to show a user as is.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

DURATION_UNITS_S = {
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

SIZE_UNITS_BYTES = {  # lower case: units are read case-insensitively
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
        seconds = float(value)  # type: ignore[arg-type]  # _is_number checked it
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"expected a duration such as 30s, 250ms or 1m30s, got {type(value).__name__}")
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
        scale = DURATION_UNITS_S[m.group(2)]
        if scale >= last_scale:
            raise ValueError(f"invalid duration {text!r}: units must go from largest to smallest, once each")
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
        fraction = float(value)  # type: ignore[arg-type]  # _is_number checked it
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
        number, scale = float(value), 1  # type: ignore[arg-type]  # _is_number checked it
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value.strip())
        unit = m.group(2).lower() if m else ""
        if m is None or (unit and unit not in SIZE_UNITS_BYTES):
            raise ValueError(f"invalid size {value!r}: expected bytes or a unit B, kB, MB, GB, KiB, MiB, GiB")
        number, scale = float(m.group(1)), SIZE_UNITS_BYTES.get(unit, 1)
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


def duration_unit_s(unit: str) -> float | None:
    """Seconds in one `unit` ("ms" -> 0.001); None for a unit that is not a duration's."""
    return DURATION_UNITS_S.get(unit)


def size_unit_bytes(unit: str) -> int | None:
    """Bytes in one `unit` ("MiB" -> 1048576, case-insensitive); None for a unit that is not a size's."""
    return SIZE_UNITS_BYTES.get(unit.lower())


# --- pydantic field types -------------------------------------------------------------------

DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "description": "seconds"},
        {
            "type": "string",
            "pattern": r"^\s*([0-9.]+(ns|us|µs|ms|s|m|h))+\s*$|^\s*[0-9.]+\s*$",
            "examples": ["250ms", "30s", "1m30s"],
        },
    ]
}


def _at_most_one(fraction: float) -> float:
    if fraction > 1:
        raise ValueError(f"must be at most 100%, got {fraction * 100:g}%")
    return fraction


# Seconds as a float; written as a number of seconds or "250ms", "1m30s".
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
# A fraction 0..1; written as 0.05 or "5%".
Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    AfterValidator(_at_most_one),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1, "description": "a fraction"},
                {"type": "string", "pattern": r"^\s*[0-9.]+\s*%?\s*$", "examples": ["5%", "0.5%"]},
            ]
        }
    ),
]
# Bytes as an int; written as a number of bytes or "10KB", "64KiB", "1GiB".
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "description": "bytes"},
                {"type": "string", "examples": ["10KB", "64KiB", "1GiB"]},
            ]
        }
    ),
]
