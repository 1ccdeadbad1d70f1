"""Redaction of scenario data: secrets never reach a bundle, a log or a message."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from horde.coordinator.scenario.models import (
    _SENSITIVE_NAME,
    REDACTED,
    SENSITIVE_HEADERS,
    Loc,
)


# Redaction.
def _sensitive_header(name: Any) -> bool:
    return isinstance(name, str) and (name.lower() in SENSITIVE_HEADERS or bool(_SENSITIVE_NAME.search(name)))


def _is_secret(loc: Loc, secrets: set[Loc]) -> bool:
    if any(loc[: len(s)] == s for s in secrets):
        return True
    return len(loc) >= 4 and loc[0] == "requests" and loc[2] == "headers" and _sensitive_header(loc[3])


def redact(data: Mapping[str, Any], secrets: set[Loc] | frozenset[Loc] = frozenset()) -> dict[str, Any]:
    """A deep copy of scenario data with secrets replaced by "***".

    Replaced: values at the `secrets` key paths, header values whose name is sensitive
    (Authorization, Cookie, ... or containing token/secret/password/key), and a password
    in the target URL.
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
    requests = out.get("requests")
    for entry in requests if isinstance(requests, list) else ():
        headers = entry.get("headers") if isinstance(entry, dict) else None
        if isinstance(headers, dict):
            for name in headers:
                if _sensitive_header(name):
                    headers[name] = REDACTED
    target = out.get("target")
    if isinstance(target, str):
        out["target"] = _redact_url(target)
    elif isinstance(target, dict):
        for key in ("url", "metrics"):
            if isinstance(target.get(key), str):
                target[key] = _redact_url(target[key])
    return out


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))
