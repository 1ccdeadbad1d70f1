"""Test data for requests, flows and Python users: the scenario's data files, row by row.

    data:
      accounts: {file: data/accounts.csv, order: unique}   # or cycle (the default), random

A mix entry or flow step refers to a column as `${data.accounts.user}` (in its path,
headers and body); a Python user calls `client.data("accounts")` (`DataFeeds.next`). One
row per data file is taken per request (or per flow iteration: every step of one iteration
sees the same row), so `user` and `password` of one reference come from the same row.

Orders:
- `cycle`: the whole file, each agent from its own starting row (index * rows / count), round
  and round again;
- `random`: a row drawn uniformly (the agent's seeded generator), with repetition;
- `unique`: each row at most once in the whole run. The planner deals the rows out as the
  load is dealt (row r to agent r % count; coordinator/plan.py) and an agent takes its share
  in order; when it is used up, `next` raises `DataExhausted` and the request is not sent
  (error class data_exhausted). A replacement agent (incarnation > 0) takes none of its
  predecessor's share: the lost agent may have used any part of it in requests it never
  reported, so the rest of that share goes unused rather than risk a row twice.

Every row handed out and every refusal is counted where it happens (`next`), whichever
engine, flow or Python user asked; `take_counts` gives what is new since the last batch.

Pure apart from the generator's state: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from horde.agents.spec import DataFeed

# ${data.NAME.COLUMN}: NAME a data file of the scenario, COLUMN one of its columns.
DATA_REF = re.compile(r"\$\{data\.([A-Za-z0-9_-]+)\.([^}]+)\}")


class DataExhausted(Exception):
    """A `unique` data file has no row left for this agent (error class data_exhausted)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"data file {name!r}: no unique row left (every row of this agent's share was used)")
        self.name = name


_DRAWS = 4096  # random order: row indexes drawn this many at a time (one numpy call, not one per row)


class _Feed:
    __slots__ = ("spec", "pos", "used", "exhausted", "draws", "told_used", "told_exhausted")

    def __init__(self, spec: DataFeed, start: int) -> None:
        self.spec = spec
        self.pos = start
        self.used = 0  # rows handed out
        self.exhausted = 0  # requests refused for want of a row
        self.draws: list[int] = []
        self.told_used = self.told_exhausted = 0  # what take_counts has already reported


class DataFeeds:
    """The agent's data files; `next(name)` is one row as {column: value}."""

    def __init__(
        self, feeds: Sequence[DataFeed], *, index: int = 0, count: int = 1, incarnation: int = 0, seed: int = 0
    ) -> None:
        self._feeds: dict[str, _Feed] = {}
        for f in feeds:
            start = 0
            if f.order == "cycle" and f.rows:
                start = index * len(f.rows) // max(1, count)
            elif f.order == "unique" and incarnation > 0:
                start = len(f.rows)  # see the module docstring: a replacement takes none
            self._feeds[f.name] = _Feed(f, start)
        self._rng = np.random.default_rng([seed, index, incarnation, 11])

    def __contains__(self, name: str) -> bool:
        return name in self._feeds

    def names(self) -> tuple[str, ...]:
        return tuple(self._feeds)

    def next(self, name: str) -> dict[str, str]:
        """One row of data file `name`; DataExhausted when a unique file has none left;
        KeyError naming the known files when there is no such file."""
        feed = self._feeds.get(name)
        if feed is None:
            known = ", ".join(sorted(self._feeds)) or "none"
            raise KeyError(f"no data file {name!r} in the scenario (known: {known})")
        rows = feed.spec.rows
        order = feed.spec.order
        if order == "unique":
            if feed.pos >= len(rows):
                feed.exhausted += 1
                raise DataExhausted(name)
            row = rows[feed.pos]
            feed.pos += 1
        elif not rows:
            feed.exhausted += 1
            raise DataExhausted(name)
        elif order == "random":
            if not feed.draws:
                feed.draws = self._rng.integers(len(rows), size=_DRAWS).tolist()
            row = rows[feed.draws.pop()]
        else:
            row = rows[feed.pos % len(rows)]
            feed.pos += 1
        feed.used += 1
        return dict(zip(feed.spec.columns, row))

    def rows_for(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """One row of each named file (a request's or a flow iteration's); DataExhausted if
        any is used up (rows already taken from the others stay taken)."""
        return {name: self.next(name) for name in names}

    def counts(self) -> dict[str, dict[str, int]]:
        """Per file: rows used by this agent, requests refused for want of a row, its share."""
        out = {}
        for name, f in self._feeds.items():
            out[name] = {"used": f.used, "exhausted": f.exhausted, "share": len(f.spec.rows)}
        return out

    def take_counts(self) -> dict[str, list[int]]:
        """Per file with something new: [rows handed out, refusals for want of a row] since the
        last call (each agent batch carries them: the batch field `data`, agents/samples.py)."""
        out = {}
        for name, f in self._feeds.items():
            used, exhausted = f.used - f.told_used, f.exhausted - f.told_exhausted
            if used or exhausted:
                out[name] = [used, exhausted]
                f.told_used, f.told_exhausted = f.used, f.exhausted
        return out


def refs_in(text: str) -> list[tuple[str, str]]:
    """The (file, column) pairs a text refers to."""
    return DATA_REF.findall(text)


def fill_data(text: str, rows: dict[str, dict[str, str]]) -> str:
    """`text` with every ${data.NAME.COLUMN} replaced from `rows` (one row per file)."""
    if "${data." not in text:
        return text
    return DATA_REF.sub(lambda m: rows.get(m.group(1), {}).get(m.group(2), m.group(0)), text)
