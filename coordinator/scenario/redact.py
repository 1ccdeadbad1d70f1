"""The one redaction rule: secrets never reach a bundle, a log, a message or a job's command line.

What is replaced by "***" (docs/security.md, "What is redacted"):

- URL userinfo, user and password both: ``http://bob:pw@h/`` -> ``http://***@h/``;
- the value of every query parameter whose name looks secret (token, key, secret,
  password, passwd, auth, signature, sig, session, credential; any case, part of a name);
- the value of the headers Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key
  and of every header (or mapping key) whose name contains token, secret, password or key;
- every `${ENV}` value interpolated into the scenario, wherever it lands, also inside a
  longer string. A value shorter than MIN_SCRUB_CHARS is replaced only where it is a whole
  string: scrubbing "1" out of every figure would make the output unreadable, and such a
  value is still hidden at its own key path (load.py treats that path as a secret).

`Redactor` applies all of it to text (`text`) or to JSON-like data (`value`); the functions
below it are the parts. Pure: no I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from horde.coordinator.scenario.models import (
    _SENSITIVE_NAME,
    REDACTED,
    SENSITIVE_HEADERS,
    Loc,
)

MIN_SCRUB_CHARS = 4
_SECRET_QUERY = re.compile(r"token|key|secret|password|passwd|auth|signature|sig|session|credential", re.IGNORECASE)
# A URL inside free text: scheme://, then up to whitespace, a quote or a bracket, less any
# punctuation that ends the sentence around it ("... (http://h/m: HTTP 404)").
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:)\]]")
_URL_KEYS = frozenset({"url", "path", "target", "metrics", "webhook", "webhook_url", "source"})


def _sensitive_header(name: Any) -> bool:
    return isinstance(name, str) and (name.lower() in SENSITIVE_HEADERS or bool(_SENSITIVE_NAME.search(name)))


sensitive_header = _sensitive_header


def secret_query_name(name: str) -> bool:
    return bool(_SECRET_QUERY.search(unquote_plus(name)))


def _redact_query(query: str) -> str:
    parts = []
    for piece in query.split("&"):
        name, eq, _value = piece.partition("=")
        parts.append(f"{name}={REDACTED}" if eq and secret_query_name(name) else piece)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """The URL with its userinfo and secret-looking query values replaced (also a bare path)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all (an unbalanced '[' in the host): leave the text
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = _redact_query(parts.query) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {name: REDACTED if _sensitive_header(name) else value for name, value in headers.items()}


@dataclass(frozen=True)
class Redactor:
    """The rule, with the `${ENV}` values of one scenario (none: URL and header rules only)."""

    secrets: frozenset[str] = frozenset()

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        return cls(frozenset(v for v in values if isinstance(v, str) and v and v != REDACTED))

    def merged(self, other: Redactor) -> Redactor:
        return Redactor(self.secrets | other.secrets)

    def text(self, text: str) -> str:
        """Free text (a message, a log line, a command line) with every secret replaced."""
        if not isinstance(text, str):
            return text
        if text in self.secrets:
            return REDACTED
        out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= MIN_SCRUB_CHARS:
                out = out.replace(secret, REDACTED)
        return out

    def url(self, url: str) -> str:
        return self.text(redact_url(url))

    def value(self, data: Any) -> Any:
        """A deep copy of JSON-like data with every string scrubbed and secret-named keys hidden
        (scenario data, where a key is a header or body field name the user chose)."""
        return self._walk(data, None, by_name=True)

    def strings(self, data: Any) -> Any:
        """A deep copy of JSON-like data with every string scrubbed; key names are horde's own
        here (an alert's "key" is no secret), so they hide nothing."""
        return self._walk(data, None, by_name=False)

    def _walk(self, node: Any, key: Any, *, by_name: bool) -> Any:
        if isinstance(node, str):
            if by_name and _sensitive_header(key):
                return REDACTED
            if isinstance(key, str) and key.lower() in _URL_KEYS:
                return self.url(node)
            return self.text(node)
        if isinstance(node, Mapping):
            return {k: self._walk(v, k, by_name=by_name) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self._walk(v, None, by_name=by_name) for v in node]
        return node


# Scenario data (load.py): the secrets' key paths as well as the rule.
def _is_secret(loc: Loc, secrets: set[Loc]) -> bool:
    if any(loc[: len(s)] == s for s in secrets):
        return True
    return len(loc) >= 2 and _sensitive_header(loc[-1]) and "headers" in loc[:-1]


def redact(
    data: Mapping[str, Any],
    secrets: set[Loc] | frozenset[Loc] = frozenset(),
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """A deep copy of scenario data with secrets replaced by "***".

    Replaced: values at the `secrets` key paths (those that held a `${...}` reference), then
    the rule over everything (`Redactor.value`): header values and keys whose name is
    sensitive (request and flow-step headers, body fields alike), URL userinfo and secret
    query values (target, metrics, paths), and `${ENV}` values wherever they landed.
    """
    out = copy.deepcopy(dict(data))
    for loc in sorted(secrets, key=len):
        node: Any = out
        try:
            for part in loc[:-1]:
                node = node[part]
            if loc:
                node[loc[-1]] = REDACTED
        except (KeyError, IndexError, TypeError):
            continue  # an override replaced the structure around it
    result: dict[str, Any] = (redactor or Redactor()).value(out)
    return result


def _redact_url(url: str) -> str:
    return redact_url(url)
