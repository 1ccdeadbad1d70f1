"""YAML for scenarios with bounds: what a hostile or broken file can make the loader do.

yaml.SafeLoader builds nothing but plain data, but it still lets a small file grow without
bound (aliases to aliases: "billion laughs"), build a cycle (an alias inside its own anchor),
nest deep enough to exhaust the stack, and hold integers with more digits than Python will
convert. The loader here refuses each of those while composing, with the position:

- nesting deeper than MAX_DEPTH levels;
- a document whose alias-expanded size exceeds MAX_NODES nodes (the size is counted per
  node as it is composed, an alias adding its anchor's whole size, so the check costs
  time linear in the file whatever the expansion would be);
- an alias to its own enclosing anchor (a cycle);
- integers of more than MAX_INT_DIGITS digits (kept as `HugeNumber` for `value_problems`,
  which names the key path).

`value_problems` then walks the data and names, by key path, every string holding a control
character (tab, line feed and carriage return allowed), every integer beyond +-(2^63 - 1)
and every float that is not finite. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MAX_DEPTH = 64  # nesting levels of mappings and lists
MAX_NODES = 250_000  # scalars, mappings and lists after alias expansion
MAX_INT_DIGITS = 19  # digits of an integer literal (2^63 has 19)
MAX_INT = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 (but tab, LF, CR), DEL, C1

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class HugeNumber:
    """An integer literal too long to convert: kept as text so the key path can be named."""

    text: str

    def __repr__(self) -> str:
        return f"<integer of {len(self.text)} characters>"


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader without timestamps (a date-like value stays its text), noting duplicate
    keys, and bounded as the module says."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, yaml.Mark]] = []
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> alias-expanded size, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark  # yaml.error.Mark (or the C extension's, which the stubs keep apart)
        if isinstance(event, yaml.AliasEvent):
            anchored = self.anchors.get(event.anchor)
            if anchored is not None and id(anchored) not in self._sizes:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to its own enclosing anchor", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes.get(id(child), 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
            if size > MAX_NODES:
                raise ComposerError(
                    None,
                    None,
                    f"the document expands to more than {MAX_NODES} values (aliases included)",
                    mark,
                )
            self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.duplicate_keys.append((key_node.value, key_node.start_mark))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        digits = re.sub(r"[^0-9a-fA-F]", "", str(node.value))
        if len(digits) > MAX_INT_DIGITS:
            return HugeNumber(str(node.value))
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # a malformed literal the resolver let through
            raise ConstructorError(None, None, f"invalid integer: {exc}", node.start_mark) from None


BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def value_problems(data: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every control character, out-of-range integer and non-finite float in data, by key path."""
    problems: list[tuple[Loc, str]] = []
    stack: list[tuple[Any, Loc]] = [(data, loc)]
    while stack:
        node, here = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and (m := _CONTROL.search(key)):
                    problems.append((here, f"key {key[:40]!r} holds control character {m.group()!r}"))
                stack.append((value, (*here, key)))
        elif isinstance(node, list):
            stack.extend((value, (*here, i)) for i, value in enumerate(node))
        elif isinstance(node, str) and (m := _CONTROL.search(node)):
            problems.append((here, f"holds control character {m.group()!r} at character {m.start() + 1}"))
        elif isinstance(node, HugeNumber) or (
            isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INT
        ):
            problems.append((here, "integer out of range: at most 2^63 - 1 (9223372036854775807) either way"))
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append((here, f"must be a finite number, got {node!r}"))
    return sorted(problems, key=lambda p: str(p[0]))


_CONTROL_TEXT = _CONTROL  # the same characters, searched in the raw text for a position


def yaml_value(text: str) -> Any:
    """One YAML value (a `--set` value), under the same bounds; raises yaml.YAMLError."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> tuple[Any, list[tuple[str, str]], bool]:
    """(data, problems as (where, message), whether it parsed). `where` is FILE:LINE:COL when
    the position is known; duplicate keys are problems of a document that parsed."""
    if m := _CONTROL_TEXT.search(text):
        line = text.count("\n", 0, m.start()) + 1
        column = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        return None, [(f"{source}:{line}:{column}", f"control character {m.group()!r} is not allowed")], False
    try:
        loader = BoundedLoader(text)  # the reader checks every character here, before parsing
    except yaml.YAMLError as exc:
        return None, [(source, f"invalid YAML: {exc}")], False
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        message = ", ".join(part for part in (exc.context, exc.problem) if part)
        return None, [(where, message or "invalid YAML")], False
    except yaml.YAMLError as exc:
        return None, [(source, f"invalid YAML: {exc}")], False
    finally:
        loader.dispose()
    duplicates = [
        (f"{source}:{mark.line + 1}:{mark.column + 1}", f"duplicate key {key!r}") for key, mark in loader.duplicate_keys
    ]
    return data, duplicates, True
