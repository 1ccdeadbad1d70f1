"""Python user entries: a mix entry whose iterations are a class's `run` (docs/python-users.md).

    requests:
      - name: checkout
        user: users/shop.py:Checkout     # FILE:CLASS, the file relative to the scenario file
        weight: 2
        requests: [login, browse, "GET /health"]   # the request names run() uses
        timeout: 30s                     # an iteration still running is cut off (default: `timeout`)

The endpoint table is known before the run: the iteration is endpoint `checkout`, each
declared request name `checkout/<name>` (a request without name= is known by
"METHOD /path"), and every other request `checkout/other`. So histograms stay exact, the
coordinator's tables stay bounded whatever names the code makes up, and thresholds can
scope to `checkout/login` at load time.

The file's text is read by the loader (scenario/load.py) and kept on the entry (`code`):
it is what every agent loads and what the manifest records with its sha256.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, PrivateAttr, field_validator

from horde.coordinator.scenario.fields import MAX_WEIGHT, Duration, Name, _Model, _problems, _unique_name_problems

MAX_USER_REQUESTS = 64  # declared request names per user entry
OTHER = "other"  # the endpoint of requests not declared
_USER_REF = re.compile(r"^(?P<file>[^:\n]+\.py):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")
# A request name: a name (letters, digits, _ . -), or "METHOD /path" for one sent without name=.
_REQUEST_NAME = r"^([A-Za-z0-9_.-]+|(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /[!-~]*)$"


@dataclass(frozen=True)
class UserCode:
    """A user file as the loader read it."""

    path: str  # as the scenario names it (messages, tracebacks, the manifest)
    resolved: str  # the absolute path it was read from
    source: str
    sha256: str


class UserEntry(_Model):
    """A Python virtual user in the request mix."""

    name: Name
    user: str
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    requests: list[Annotated[str, Field(pattern=_REQUEST_NAME, max_length=200)]] = Field(
        [], max_length=MAX_USER_REQUESTS
    )
    timeout: Duration | None = Field(None, gt=0)
    _code: UserCode | None = PrivateAttr(None)

    @field_validator("user")
    @classmethod
    def _file_and_class(cls, value: str) -> str:
        if not _USER_REF.match(value):
            raise ValueError("expected FILE.py:CLASS, e.g. users/shop.py:Checkout (the file relative to the scenario)")
        return value

    @field_validator("requests")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        problems = _unique_name_problems(names, "requests")
        reserved = f"{OTHER!r} is the endpoint of undeclared requests"
        problems += [((i,), reserved) for i, n in enumerate(names) if n == OTHER]
        if problems:
            raise _problems(problems)
        return names

    @property
    def file(self) -> str:
        return self.user.rpartition(":")[0]

    @property
    def class_name(self) -> str:
        return self.user.rpartition(":")[2]

    @property
    def code(self) -> UserCode | None:
        """The file's text, once the loader has read it (None for a scenario parsed from text)."""
        return self._code

    def with_code(self, code: UserCode) -> None:
        self._code = code

    def endpoint_names(self) -> list[str]:
        """The sub-endpoints this entry adds: each declared request, then `other`."""
        return [f"{self.name}/{n}" for n in self.requests] + [f"{self.name}/{OTHER}"]
