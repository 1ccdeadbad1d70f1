"""Requests as the lean engine sends them: which templates it can serve, and their bytes.

Pure: no I/O. A template is encoded once, at engine construction (agents/fast_http.py);
`supports()` is also what ``engine: auto`` asks per request entry.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from horde.agents.spec import RequestTemplate

# Sent unless the template sets them; the same as the aiohttp engine sends (less "br",
# which aiohttp adds only when a brotli package is installed).
DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("User-Agent", "horde"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),
)

# Framing is the engine's job; a template that sets these goes to the aiohttp engine.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # aiohttp sends Content-Length: 0 for these
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def unsupported_reason(template: RequestTemplate) -> str | None:
    """Why the fast engine cannot serve `template`, or None when it can."""
    if template.body is not None and not isinstance(template.body, (bytes, bytearray)):
        return "body is not bytes"
    if not template.method or not set(template.method) <= _TOKEN_CHARS:
        return f"method {template.method!r} is not an HTTP token"
    if not template.url.isascii() or any(c in template.url for c in " \r\n\t"):
        return "URL has non-ASCII or whitespace characters (needs aiohttp's URL encoding)"
    try:
        url = urlsplit(template.url)
        url.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        return f"bad URL: {exc}"
    if url.scheme not in ("http", "https"):
        return f"scheme {url.scheme!r} (only http and https)"
    if not url.hostname:
        return "URL has no host"
    if url.username is not None or url.password is not None:
        return "credentials in the URL"
    for name, value in template.headers:
        if not name or not set(name) <= _TOKEN_CHARS:
            return f"header name {name!r} is not an HTTP token"
        if any(c in value for c in "\r\n\0"):
            return f"header {name!r} value has CR, LF or NUL"
        lname = name.lower()
        if lname in _FRAMING_HEADERS:
            return f"header {name!r} (framing is set by the engine)"
        if lname == "connection" and value.strip().lower() not in ("close", "keep-alive"):
            return f"Connection: {value!r}"
    return None


def supports(template: RequestTemplate) -> bool:
    """True when the fast engine can serve `template` (used for ``engine: auto``)."""
    return unsupported_reason(template) is None


def encode_request(template: RequestTemplate) -> bytes:
    """The complete wire bytes of `template`'s request (which must be supported)."""
    url = urlsplit(template.url)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    default_port = 443 if url.scheme == "https" else 80
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if url.port is not None and url.port != default_port:
        host = f"{host}:{url.port}"
    given = {name.lower() for name, _ in template.headers}
    lines = [f"{template.method} {target} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in DEFAULT_HEADERS if name.lower() not in given)
    lines.extend(f"{name}: {value}" for name, value in template.headers)
    body = bytes(template.body) if template.body is not None else b""
    if template.body is not None or template.method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}")
        if template.body is not None and "content-type" not in given:
            lines.append("Content-Type: application/octet-stream")  # as aiohttp does for bytes
    if "connection" not in given:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
