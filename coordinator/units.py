"""Durations, percentages and byte sizes as people write them in scenarios and on the CLI.

The table and parsers live in horde.automaton.units (the bottom layer: the automaton's
fault model reads the same units and must not import the coordinator); this module is
the coordinator's name for them, so scenario models, thresholds and alert rules read
every unit through one table.

    parse_duration(30) == 30.0             a number is seconds
    parse_duration("250ms") == 0.25        units: ns, us (or µs), ms, s, m, h
    parse_duration("1h30m") == 5400.0      units combine, largest first (Go style)
    parse_percent("1.5%") == 0.015         a number or a "%"-less string is a fraction
    parse_size("64KiB") == 65536           B, kB/KB/MB/GB (x1000), KiB/MiB/GiB (x1024)
"""

from __future__ import annotations

from horde.automaton.units import (
    DURATION_SCHEMA,
    DURATION_UNITS_S,
    SIZE_UNITS_BYTES,
    Duration,
    Percent,
    Size,
    duration_unit_s,
    format_duration,
    format_size,
    parse_duration,
    parse_percent,
    parse_size,
    size_unit_bytes,
)

__all__ = [
    "DURATION_SCHEMA",
    "DURATION_UNITS_S",
    "SIZE_UNITS_BYTES",
    "Duration",
    "Percent",
    "Size",
    "duration_unit_s",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_percent",
    "parse_size",
    "size_unit_bytes",
]
