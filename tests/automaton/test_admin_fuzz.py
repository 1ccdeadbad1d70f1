"""The admin endpoint answers every malformed request with 400, 401, 404 or 405, never a 5xx.

A real automaton process (its admin site on 127.0.0.1) gets raw requests over a socket, so
the bytes can be anything a client could send: methods, paths, header names and values
(non-ASCII, huge, missing or wrong token), bodies (nested, huge, not JSON, wrong types,
invalid UTF-8). Afterwards the automaton still runs and a valid request still works.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from horde.automaton.admin import ADMIN_MAX_BODY_BYTES
from horde.automaton.launch import AutomatonProcess, start_automaton

pytestmark = [pytest.mark.slow]

TOKEN = "fuzz-admin-token"
MALFORMED = {400, 401, 404, 405}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def automaton() -> Iterator[AutomatonProcess]:
    with start_automaton(admin_token=TOKEN) as proc:
        yield proc


def _send(admin_url: str, raw: bytes, timeout_s: float = 10.0) -> int:
    """Send one raw request; the status code of the answer (0: the server closed without one)."""
    where = urlsplit(admin_url)
    assert where.hostname == "127.0.0.1" and where.port is not None
    with socket.create_connection((where.hostname, where.port), timeout=timeout_s) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole (huge) request went out
        head = b""
        while b"\r\n" not in head:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"HTTP/1."):
        return 0
    return int(head.split(b" ", 2)[1])


def _request(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


_VALID = b"Bearer " + TOKEN.encode()
_token_chars = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='()<>@,;:\\"/[]?={}')
_tokens = st.text(_token_chars, min_size=1, max_size=20).map(str.encode)
_no_crlf = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_utf8 = st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b""))
_huge = st.integers(9_000, 100_000).map(lambda n: b"v" * n)
# Each one_of picks its branches about evenly: the well-formed ones are listed more than once
# so that most requests get past aiohttp's parser and reach the router, the token and the body.
_methods = st.sampled_from([b"GET", b"PUT", b"PUT", b"POST", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS"]) | _tokens
_paths = st.one_of(
    st.sampled_from([b"/admin/faults", b"/admin/faults", b"/admin/faults/", b"/admin", b"/", b"/admin/faults?x=%ff"]),
    st.sampled_from([b"/admin/%00", b"/admin/\xc3\xa9", b"/admin/faults#x", b"*", b"http://127.0.0.1/admin/faults"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda t: b"/" + t.encode()),
    st.binary(min_size=1, max_size=200).map(
        lambda b: b"/" + b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    ),
)
_auth = st.one_of(
    st.sampled_from([_VALID, _VALID, _VALID, None, b"Bearer wrong", b"Basic dXNlcjpwYXNz", b"Bearer", b""]),
    _utf8.map(lambda v: b"Bearer " + v),
    _no_crlf,
    _huge.map(lambda v: b"Bearer " + v),
    st.sampled_from(
        ["Bearer jeton-é".encode("latin-1"), "Bearer \u00e9\u2603".encode(), _VALID + b"\xff", _VALID + b" "]
    ),
)
_header_names = st.one_of(
    st.sampled_from([b"Content-Type", b"Expect", b"Accept", b"Cookie", b"X-Forwarded-For", b"Authorization", b"Host"]),
    _tokens,
    st.binary(min_size=1, max_size=40).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b":", b"") or b"X"
    ),
)
_header_values = st.one_of(
    st.sampled_from([b"application/json", b"100-continue", b"text/plain; charset=latin-1", b"", b"x" * 100]),
    st.sampled_from([b"1", b"close", b"gzip", b"*/*"]),
    _utf8,
    _no_crlf,
    _huge,
)
_headers = st.lists(st.tuples(_header_names, _header_values), max_size=2)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_bodies = st.one_of(
    st.none(),
    st.just(b"{}"),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["error_rate", "latency", "max_connections", "stall", "leak_per_request"]), _json, max_size=3
    ).map(lambda v: json.dumps(v).encode()),
    st.builds(_nested, st.integers(1, 200_000), st.sampled_from(["list", "dict"])),
    st.binary(max_size=500),
    st.just(b"\xff\xfe{\x80}"),
    st.just(b"NaN"),
    st.just(b"1" * 5000),
    st.integers(ADMIN_MAX_BODY_BYTES - 10, 4 * ADMIN_MAX_BODY_BYTES).map(lambda n: b"[" + b"0," * (n // 2) + b"0]"),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(method=_methods, path=_paths, auth=_auth, headers=_headers, body=_bodies)
def test_every_malformed_request_gets_a_4xx(automaton, method, path, auth, headers, body):
    all_headers = ([(b"Authorization", auth)] if auth is not None else []) + headers
    status = _send(automaton.admin_url, _request(method, path, all_headers, body))
    assert status != 0, "the admin site closed the connection without an answer"
    event(f"status {status}")  # --hypothesis-show-statistics: which answers the fuzz reached
    assert status < 500, f"{status} for {method!r} {path[:60]!r}"
    # A 200 only for a request that was in fact valid: the token, and a read or a valid PUT.
    if status == 200:
        assert auth == _VALID and path.split(b"?")[0] in (b"/admin/faults", b"http://127.0.0.1/admin/faults")
    else:
        assert status in MALFORMED, f"{status} for {method!r} {path[:60]!r}"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=_bodies.filter(lambda b: b is not None), content_type=st.sampled_from([None, b"application/json", b"\xff"]))
def test_every_body_the_token_lets_in_gets_200_or_400(automaton, body, content_type):
    # The request is otherwise well-formed, so the body itself is what the endpoint judges.
    headers = [(b"Authorization", _VALID)] + ([(b"Content-Type", content_type)] if content_type else [])
    status = _send(automaton.admin_url, _request(b"PUT", b"/admin/faults", headers, body))
    event(f"status {status}")
    assert status in (200, 400), f"{status} for a body of {len(body)} bytes: {body[:80]!r}"
    if status == 200:
        _send(automaton.admin_url, _request(b"PUT", b"/admin/faults", headers, b"{}"))  # no faults for the next


@pytest.mark.parametrize(
    "headers, body, expected",
    [
        # Found by hand before the fuzz test: both gave 500.
        ([(b"Authorization", "Bearer jeton-é".encode())], None, 401),
        ([(b"Authorization", "Bearer jeton-é".encode("latin-1"))], None, 401),
        # 20,000 and 10,000 levels in 40 and 60 KB: under the size bound, over the recursion limit.
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], _nested(20_000, "list"), 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], _nested(10_000, "dict"), 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], b"[" + b"0," * ADMIN_MAX_BODY_BYTES + b"0]", 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], b'{"error_rate": "\xff"}', 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode()), (b"Expect", b"magic")], b"{}", 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], b'{"error_rate": "lots"}', 400),
        ([(b"Authorization", b"Bearer " + TOKEN.encode())], b"[1, 2]", 400),
    ],
)
def test_the_known_bad_requests_get_their_4xx(automaton, headers, body, expected):
    assert _send(automaton.admin_url, _request(b"PUT", b"/admin/faults", headers, body)) == expected


def test_the_automaton_stays_up_and_valid_requests_still_work(automaton):
    # Runs after the fuzz test in file order; on its own it still checks a clean start.
    for _ in range(20):
        _send(
            automaton.admin_url,
            _request(b"PUT", b"/admin/faults", [(b"Authorization", _VALID)], _nested(10_000, "dict")),
        )
    assert automaton.process.poll() is None
    auth = {"Authorization": f"Bearer {TOKEN}"}
    put = urllib.request.Request(
        automaton.admin_url + "/admin/faults",
        data=json.dumps({"error_rate": 0.25}).encode(),
        method="PUT",
        headers=auth,
    )
    with _NO_PROXY.open(put, timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["error_rate"] == 0.25
    with _NO_PROXY.open(
        urllib.request.Request(automaton.admin_url + "/admin/faults", headers=auth), timeout=10
    ) as resp:
        assert resp.status == 200 and json.loads(resp.read())["error_rate"] == 0.25
    clear = urllib.request.Request(automaton.admin_url + "/admin/faults", data=b"{}", method="PUT", headers=auth)
    with _NO_PROXY.open(clear, timeout=10) as resp:
        assert resp.status == 200
    with _NO_PROXY.open(automaton.url + "/health", timeout=10) as resp:
        assert resp.status == 200
