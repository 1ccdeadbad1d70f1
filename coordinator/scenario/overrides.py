"""`--set KEY=VALUE` overrides of a scenario: parsed, bounded and applied to its data.

Pure: no I/O (coordinator/scenario/load.py reads the file and applies them).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from horde.coordinator.scenario.fields import format_loc
from horde.coordinator.scenario.models import REDACTED, Loc
from horde.coordinator.scenario.redact import _sensitive_header
from horde.coordinator.scenario.safe_yaml import yaml_value


def describe_kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# Overrides: bounded so that a key and its value nest no deeper than a file may
# (MAX_SET_KEY_PARTS + the value's own MAX_DEPTH).
MAX_SET_KEY_CHARS = 256
MAX_SET_KEY_PARTS = 16
MAX_SET_VALUE_CHARS = 65536
_OVERRIDE_KEY = re.compile(r"\.?([^.\[\]=\s]+)|\[(\d+)\]")


def override_label(text: str) -> str:
    key, sep, _ = text.partition("=")
    if sep and sensitive_key_text(key):
        text = f"{key}={REDACTED}"
    if not text.isprintable():  # a control character would act on the terminal it is printed to
        text = text.encode("unicode_escape").decode("ascii")
    return f"--set {text}" if len(text) <= 100 else f"--set {text[:97]}..."


def sensitive_key_text(key: str) -> bool:
    parts = [part for part in re.split(r"[.\[\]]", key.strip()) if part]
    return bool(parts) and _sensitive_header(parts[-1])


def parse_override(text: str) -> tuple[Loc, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError("expected KEY=VALUE, e.g. workload.stages[0].target=10")
    key = key.strip()
    if len(key) > MAX_SET_KEY_CHARS:
        raise ValueError(f"the key is longer than {MAX_SET_KEY_CHARS} characters")
    if len(raw) > MAX_SET_VALUE_CHARS:
        raise ValueError(f"the value is longer than {MAX_SET_VALUE_CHARS} characters")
    loc: list[str | int] = []
    pos = 0
    while pos < len(key):
        m = _OVERRIDE_KEY.match(key, pos)
        if (
            m is None
            or (pos == 0 and (not m.group(1) or key.startswith(".")))
            or (pos > 0 and m.group(1) and key[pos] != ".")
        ):
            raise ValueError(
                f"invalid key {key!r} at character {pos + 1}: expected dotted names with [index], "
                "e.g. workload.stages[0].target"
            )
        loc.append(m.group(1) if m.group(1) else int(m.group(2)))
        pos = m.end()
    if not loc:
        raise ValueError("empty key: expected KEY=VALUE, e.g. workload.stages[0].target=10")
    if len(loc) > MAX_SET_KEY_PARTS:
        raise ValueError(f"the key is {len(loc)} levels deep; at most {MAX_SET_KEY_PARTS}")
    try:
        value = yaml_value(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"the value is not valid YAML: {problem}") from None
    return tuple(loc), value


def set_path(data: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = data
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        here = format_loc(loc[:depth]) or "the top level"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ValueError(f"{here} is {describe_kind(node)}, not a list: cannot use [{part}]")
            if part > len(node):
                raise ValueError(
                    f"index [{part}] is out of range: {here} has {len(node)} entries (use [{len(node)}] to append)"
                )
            if part == len(node):
                node.append(None if last else ([] if isinstance(loc[depth + 1], int) else {}))
        else:
            if not isinstance(node, dict):
                raise ValueError(f"{here} is {describe_kind(node)}, not a mapping: cannot set {part!r} in it")
            if part not in node and not last:
                node[part] = [] if isinstance(loc[depth + 1], int) else {}
        if last:
            node[part] = value
        else:
            node = node[part]
