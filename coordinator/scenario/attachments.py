"""The files a scenario names (`tls` certificates, `data` files), read once by the coordinator.

Paths are relative to the scenario file (load.py reads them; this module parses). Every
file is bounded (size, rows, columns, cell length) and must be a regular file; every
problem names the key path and the file, and the line for a data file
(`data.accounts.file: accounts.csv:3: 3 fields, the header has 2`). What is read travels
to the agents inside their AgentSpecs (coordinator/plan.py): nodes need not hold the files.

Data files:
- CSV (`.csv`, or `format: csv`): the first row names the columns; every row has as many
  fields. UTF-8, a BOM allowed.
- JSON lines (anything else, or `format: jsonl`): one JSON object per non-blank line, each
  with the first one's keys; a value that is not a string is kept as its JSON text.

A key file's content is a secret: it lives only in the agents' TlsSpec (kept out of reprs)
and never enters the manifest, the summary or a message.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from horde.agents.spec import DEFAULT_TLS, TlsSpec
from horde.coordinator.scenario.requests import data_refs

MAX_PEM_BYTES = 1024 * 1024
MAX_DATA_FILE_BYTES = 16 * 1024 * 1024  # per file; the rows travel in every agent's spec
MAX_DATA_TOTAL_BYTES = 32 * 1024 * 1024
MAX_DATA_ROWS = 1_000_000
MAX_DATA_COLUMNS = 64
MAX_CELL_CHARS = 4096


@dataclass(frozen=True)
class DataTable:
    name: str
    file: str  # as given in the scenario
    order: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...] = field(repr=False)
    sha256: str = ""


@dataclass(frozen=True)
class Attachments:
    tls: TlsSpec = DEFAULT_TLS
    data: tuple[DataTable, ...] = ()

    def describe(self) -> dict:
        """For the manifest: the data files and whether TLS verification is on (no content)."""
        return {
            "tls_verify": self.tls.verify,
            "tls_ca": self.tls.ca_pem is not None,
            "tls_client_cert": self.tls.cert_pem is not None,
            "data": [
                {
                    "name": t.name,
                    "file": t.file,
                    "order": t.order,
                    "rows": len(t.rows),
                    "columns": list(t.columns),
                    "sha256": t.sha256,
                }
                for t in self.data
            ],
        }


class AttachmentError(Exception):
    """Problems with the files a scenario names: (key path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


# read(path relative to the scenario file, byte limit) -> the bytes; OSError or ValueError
# with a reason (load.py's reader: a regular file, at most the limit).
ReadFile = Callable[[str, int], bytes]


def read_attachments(scenario, read: ReadFile) -> Attachments:
    """Read what `scenario` names through `read`; AttachmentError lists every problem. Pure
    but for what `read` does."""
    problems: list[tuple[str, str]] = []

    def pem(key: str, rel: str | None) -> str | None:
        if rel is None:
            return None
        try:
            text = read(rel, MAX_PEM_BYTES).decode("ascii")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problems.append((f"tls.{key}", f"{rel}: cannot read: {_reason(exc)}"))
            return None
        if "-----BEGIN " not in text:
            problems.append((f"tls.{key}", f"{rel}: not PEM (no '-----BEGIN' line)"))
            return None
        return text

    t = scenario.tls
    tls = TlsSpec(verify=t.verify, ca_pem=pem("ca", t.ca), cert_pem=pem("cert", t.cert), key_pem=pem("key", t.key))
    tables = []
    total = 0
    for name, spec in scenario.data.items():
        where = f"data.{name}.file"
        try:
            raw = read(spec.file, MAX_DATA_FILE_BYTES)
        except (OSError, ValueError) as exc:
            problems.append((where, f"{spec.file}: cannot read: {_reason(exc)}"))
            continue
        total += len(raw)
        try:
            columns, rows = (_csv_rows if spec.kind == "csv" else _jsonl_rows)(raw)
        except ValueError as exc:
            problems.append((where, f"{spec.file}:{exc}"))
            continue
        tables.append(DataTable(name, spec.file, spec.order, columns, rows, hashlib.sha256(raw).hexdigest()))
    if total > MAX_DATA_TOTAL_BYTES:
        problems.append(("data", f"the data files hold {total} bytes together; at most {MAX_DATA_TOTAL_BYTES}"))
    columns_of = {t.name: set(t.columns) for t in tables}
    for i, request in enumerate(scenario.requests):
        for loc, name, column in data_refs(request):
            if name in columns_of and column not in columns_of[name]:
                path = ".".join([f"requests[{i}]", *(f"flow[{x}]" if isinstance(x, int) else x for x in loc[1:])])
                known = ", ".join(sorted(columns_of[name]))
                problems.append((path, f"${{data.{name}.{column}}}: {name} has no column {column!r} ({known})"))
    if problems:
        raise AttachmentError(problems)
    return Attachments(tls=tls, data=tuple(tables))


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


def _check_columns(columns: list[str], line: int) -> tuple[str, ...]:
    if not columns:
        raise ValueError(f"{line}: no columns")
    if len(columns) > MAX_DATA_COLUMNS:
        raise ValueError(f"{line}: {len(columns)} columns, at most {MAX_DATA_COLUMNS}")
    seen = set()
    for c in columns:
        if not c or "}" in c or len(c) > 64:
            raise ValueError(f"{line}: column name {c[:64]!r} must be 1-64 characters without '}}'")
        if c in seen:
            raise ValueError(f"{line}: column {c!r} twice")
        seen.add(c)
    return tuple(columns)


def _check_row(row: tuple[str, ...], line: int, n_rows: int) -> None:
    if n_rows >= MAX_DATA_ROWS:
        raise ValueError(f"{line}: more than {MAX_DATA_ROWS} rows, the limit")
    for cell in row:
        if len(cell) > MAX_CELL_CHARS:
            raise ValueError(f"{line}: a value of {len(cell)} characters, at most {MAX_CELL_CHARS}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{line}: not UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def _csv_rows(raw: bytes) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    reader = csv.reader(_text(raw).splitlines(keepends=True))
    rows: list[tuple[str, ...]] = []
    columns: tuple[str, ...] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue  # a blank line
            if columns is None:
                columns = _check_columns([f.strip() for f in fields], line)
                continue
            if len(fields) != len(columns):
                n = len(fields)
                raise ValueError(f"{line}: {n} field{'' if n == 1 else 's'}, the header has {len(columns)}")
            row = tuple(fields)
            _check_row(row, line, len(rows))
            rows.append(row)
    except csv.Error as exc:
        raise ValueError(f"{reader.line_num}: {exc}") from None
    if columns is None:
        raise ValueError("1: empty (expected a header row naming the columns)")
    if not rows:
        raise ValueError(f"{reader.line_num}: no rows after the header")
    return columns, tuple(rows)


def _jsonl_rows(raw: bytes) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    rows: list[tuple[str, ...]] = []
    columns: tuple[str, ...] | None = None
    for line, text in enumerate(_text(raw).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{line}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{line}: expected a JSON object, got {type(doc).__name__}")
        if columns is None:
            columns = _check_columns(list(doc), line)
        elif tuple(doc) != columns and set(doc) != set(columns):
            missing = sorted(set(columns) - set(doc))
            extra = sorted(set(doc) - set(columns))
            raise ValueError(f"{line}: keys differ from line 1's (missing {missing}, extra {extra})")
        row = tuple(v if isinstance(v, str) else json.dumps(v) for v in (doc[c] for c in columns))
        _check_row(row, line, len(rows))
        rows.append(row)
    if columns is None:
        raise ValueError("1: empty (expected one JSON object per line)")
    return columns, tuple(rows)
