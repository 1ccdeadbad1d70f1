"""The scenario's HTTP client options: `tls` and `data` (per-entry `timeout`,
`follow_redirects` and `cookies` are fields of the request entries, requests.py).

    tls:
      verify: true                  # false: no verification at all (the summary warns)
      ca: certs/ca.pem              # trust this CA (PEM) instead of the system's
      cert: certs/client.pem        # client certificate (mutual TLS), with...
      key: certs/client.key         # ...its private key (a secret: never in a bundle or log)
    data:
      accounts: data/accounts.csv                          # order cycle
      orders: {file: data/orders.jsonl, order: unique}     # unique | cycle | random

Paths are relative to the scenario file. The files are read (bounded) when the scenario is
loaded (coordinator/scenario/attachments.py), so `horde validate` reports a bad one with
its file and line, and the run ships their content to the agents.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from horde.coordinator.scenario.fields import Loc, _Model, _problems


class TlsOptions(_Model):
    verify: bool = True
    ca: str | None = Field(None, min_length=1, max_length=4096)
    cert: str | None = Field(None, min_length=1, max_length=4096)
    key: str | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _consistent(self) -> TlsOptions:
        problems: list[tuple[Loc, str]] = []
        if (self.cert is None) != (self.key is None):
            problems.append((("key",) if self.key is None else ("cert",), "give cert and key together (mutual TLS)"))
        if not self.verify and self.ca is not None:
            problems.append((("ca",), "a CA is only used with verify: true"))
        if problems:
            raise _problems(problems)
        return self


DataOrder = Literal["unique", "cycle", "random"]


class DataFile(_Model):
    file: str = Field(min_length=1, max_length=4096)
    order: DataOrder = "cycle"
    format: Literal["csv", "jsonl"] | None = None  # None: by the file's extension (.csv, else JSON lines)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"file": value} if isinstance(value, str) else value

    @property
    def kind(self) -> str:
        if self.format is not None:
            return self.format
        return "csv" if self.file.lower().endswith(".csv") else "jsonl"
