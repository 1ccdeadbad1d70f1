"""The HTTP client options, engine by engine, against plain aiohttp servers: TLS (verify,
ca, mutual TLS), cookies per virtual user, per-request timeouts, redirects, data rows."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from horde.agents.aiohttp_engine import AiohttpEngine
from horde.agents.data import DataExhausted, DataFeeds, fill_data
from horde.agents.flows import FlowRunner
from horde.agents.http import make_engine
from horde.agents.samples import ErrorClass
from horde.agents.spec import DataFeed, FlowStepTemplate, FlowTemplate, RequestTemplate, TlsSpec
from tests.agents.tls_certs import make_certs

OK, TLS, TIMEOUT = ErrorClass.OK, ErrorClass.TLS, ErrorClass.TIMEOUT
CERTS = make_certs()


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return web.Response(text="late")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/hello")

    async def login(request: web.Request) -> web.Response:
        resp = web.Response(text="in")
        resp.set_cookie("session", request.query["user"])
        return resp

    async def me(request: web.Request) -> web.Response:
        return web.Response(text=request.cookies.get("session", "-"))

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    app.router.add_get("/login", login)
    app.router.add_get("/me", me)
    return app


async def _serve(ssl_context=None) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"


def _templates(base: str, *paths: str, **kw) -> list[RequestTemplate]:
    return [RequestTemplate(name=f"r{i}", method="GET", url=base + p, **kw) for i, p in enumerate(paths)]


async def _one(engine_name: str, base: str, tls: TlsSpec, path: str = "/hello") -> tuple[int, int, int]:
    engine = make_engine(
        engine_name, _templates(base, path), max_connections=2, timeout_s=5, connect_timeout_s=2, tls=tls
    )
    await engine.open()
    try:
        return await engine.request(0)
    finally:
        await engine.close()


# ---------------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
@pytest.mark.parametrize(
    "self_signed, tls, expected",
    [
        (True, TlsSpec(), TLS),  # verification on, an unknown issuer: tls, not connect
        (True, TlsSpec(verify=False), OK),  # verification off
        (True, TlsSpec(ca_pem=CERTS.self_signed_pem), OK),  # the self-signed certificate as the CA
        (False, TlsSpec(ca_pem=CERTS.ca_pem), OK),  # a private CA that signed the server's certificate
        (False, TlsSpec(ca_pem=CERTS.self_signed_pem), TLS),  # a CA that did not
    ],
)
def test_tls_verification_in_both_engines(engine, self_signed, tls, expected):
    async def main():
        runner, base = await _serve(CERTS.server_context(self_signed=self_signed))
        try:
            return await _one(engine, base, tls)
        finally:
            await runner.cleanup()

    status, _, err = asyncio.run(main())
    assert err == expected
    assert status == (200 if expected == OK else 0)


@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
def test_mutual_tls(engine):
    with_cert = TlsSpec(ca_pem=CERTS.ca_pem, cert_pem=CERTS.client_pem, key_pem=CERTS.client_key_pem)
    without = TlsSpec(ca_pem=CERTS.ca_pem)

    async def main():
        runner, base = await _serve(CERTS.server_context(require_client_cert=True))
        try:
            return await _one(engine, base, with_cert), await _one(engine, base, without)
        finally:
            await runner.cleanup()

    good, refused = asyncio.run(main())
    assert good[0] == 200 and good[2] == OK
    # Under TLS 1.3 the server refuses a missing certificate after the client's handshake
    # ended: the client learns it on its first read, as a TLS alert (or, racing, a reset).
    assert refused[0] == 0 and refused[2] in (TLS, ErrorClass.RESET)


def test_the_client_key_is_kept_out_of_reprs():
    spec = TlsSpec(cert_pem=CERTS.client_pem, key_pem=CERTS.client_key_pem)
    assert "PRIVATE KEY" not in repr(spec)


# ------------------------------------------------------------------------------ cookies


def test_each_virtual_user_has_its_own_cookie_jar_and_no_user_keeps_none():
    async def main():
        runner, base = await _serve()
        engine = AiohttpEngine(
            _templates(base, "/login?user=ann", "/login?user=bob", "/me"),
            max_connections=4,
            timeout_s=5,
            connect_timeout_s=2,
        )
        await engine.open()
        seen = {}
        try:
            await engine.request(0, user=0)  # user 0 logs in as ann
            await engine.request(1, user=1)  # user 1 as bob
            await engine.request(0)  # an open-model arrival logs in as ann: kept nowhere
            for user in (0, 1, -1):
                seen[user] = await _body(engine, base, user)
            engine.end_user(0)  # user 0 leaves: a new user in its slot starts fresh
            seen["new0"] = await _body(engine, base, 0)
        finally:
            await engine.close()
            await runner.cleanup()
        return seen

    assert asyncio.run(main()) == {0: "ann", 1: "bob", -1: "-", "new0": "-"}


async def _body(engine: AiohttpEngine, base: str, user: int) -> str:
    # the engine counts bytes only; read the session's answer through the same jar
    session = engine._session if user < 0 else engine._user_session(user)
    assert session is not None
    async with session.get(base + "/me") as resp:
        return await resp.text()


# --------------------------------------------------------------------- timeout, redirects


def test_a_per_entry_timeout_overrides_the_scenarios_on_aiohttp():
    async def main():
        runner, base = await _serve()
        templates = [
            RequestTemplate(name="short", method="GET", url=base + "/slow?s=0.5", timeout_s=0.1),
            RequestTemplate(name="default", method="GET", url=base + "/slow?s=0.5"),
        ]
        engine = AiohttpEngine(templates, max_connections=4, timeout_s=5, connect_timeout_s=2)
        await engine.open()
        try:
            t0 = time.monotonic()
            short = await engine.request(0)
            took_s = time.monotonic() - t0
            default = await engine.request(1)
        finally:
            await engine.close()
            await runner.cleanup()
        return short, took_s, default

    short, took_s, default = asyncio.run(main())
    assert short[2] == TIMEOUT and took_s < 0.45
    assert default == (200, 4, OK)


def test_the_scenario_timeout_on_the_lean_engine():
    async def main():
        runner, base = await _serve()
        engine = make_engine(
            "fast", _templates(base, "/slow?s=0.5"), max_connections=2, timeout_s=0.1, connect_timeout_s=1
        )
        await engine.open()
        try:
            return await engine.request(0)
        finally:
            await engine.close()
            await runner.cleanup()

    assert asyncio.run(main())[2] == TIMEOUT


@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
def test_redirects_are_not_followed_by_default(engine):
    async def main():
        runner, base = await _serve()
        try:
            return await _one(engine, base, TlsSpec(), "/moved")
        finally:
            await runner.cleanup()

    assert asyncio.run(main())[0] == 302


def test_follow_redirects_on_aiohttp():
    async def main():
        runner, base = await _serve()
        engine = AiohttpEngine(
            _templates(base, "/moved", follow_redirects=True), max_connections=2, timeout_s=5, connect_timeout_s=2
        )
        await engine.open()
        try:
            return await engine.request(0)
        finally:
            await engine.close()
            await runner.cleanup()

    assert asyncio.run(main()) == (200, 5, OK)


def test_flow_steps_take_their_own_timeout_redirects_and_tls():
    async def main():
        runner, base = await _serve(CERTS.server_context())
        t0 = time.monotonic_ns()
        flows = FlowRunner(
            max_connections=2,
            timeout_s=5,
            connect_timeout_s=2,
            clock_ns=lambda: time.monotonic_ns() - t0,
            tls=TlsSpec(ca_pem=CERTS.ca_pem),
        )
        await flows.open()
        flow = FlowTemplate(
            name="f",
            endpoint=0,
            steps=(
                FlowStepTemplate(
                    "go", "GET", base + "/moved", endpoint=1, follow_redirects=True, expect=frozenset({200})
                ),
                FlowStepTemplate("stay", "GET", base + "/moved", endpoint=2, expect=frozenset({302})),
                FlowStepTemplate("slow", "GET", base + "/slow?s=0.5", endpoint=3, timeout_s=0.1),
            ),
        )
        records: list[tuple] = []

        async def sleep_until(t_ns: int) -> bool:
            return True

        try:
            await flows.run(flow, 0, lambda *r: records.append(r), sleep_until)
        finally:
            await flows.close()
            await runner.cleanup()
        return records

    records = asyncio.run(main())
    assert [(r[0], r[3], r[5]) for r in records] == [(1, 200, OK), (2, 302, OK), (3, 0, TIMEOUT), (0, 0, TIMEOUT)]


# --------------------------------------------------------------------------------- data


def _feed(order: str, n: int = 4, name: str = "acc") -> DataFeed:
    return DataFeed(name, order, ("user", "pw"), tuple((f"u{i}", f"p{i}") for i in range(n)), n)


def test_unique_rows_run_out_with_data_exhausted():
    feeds = DataFeeds([_feed("unique", 3)])
    assert [feeds.next("acc")["user"] for _ in range(3)] == ["u0", "u1", "u2"]
    with pytest.raises(DataExhausted):
        feeds.next("acc")
    assert feeds.counts() == {"acc": {"used": 3, "exhausted": 1, "share": 3}}


def test_rows_are_counted_where_they_are_taken_and_reported_once():
    feeds = DataFeeds([_feed("unique", 3), _feed("cycle", name="c"), _feed("random", name="r")], seed=5)
    assert feeds.take_counts() == {}  # nothing taken, nothing to report
    feeds.next("acc"), feeds.next("c"), feeds.next("c")
    assert feeds.take_counts() == {"acc": [1, 0], "c": [2, 0]}
    assert feeds.take_counts() == {}  # since the last call: none
    for _ in range(4):
        try:
            feeds.rows_for(["acc", "r"])  # r is drawn only while acc has a row
        except DataExhausted:
            pass
    assert feeds.take_counts() == {"acc": [2, 2], "r": [2, 0]}
    assert feeds.counts()["acc"] == {"used": 3, "exhausted": 2, "share": 3}  # the totals are unchanged


def test_a_replacement_agent_takes_none_of_its_predecessors_unique_rows():
    feeds = DataFeeds([_feed("unique"), _feed("cycle", name="c")], index=0, count=1, incarnation=1)
    with pytest.raises(DataExhausted):
        feeds.next("acc")
    assert feeds.next("c")["user"] == "u0"  # the other orders do not depend on what was used


def test_cycle_starts_each_agent_at_its_own_row_and_wraps():
    feeds = DataFeeds([_feed("cycle")], index=1, count=2)
    assert [feeds.next("acc")["user"] for _ in range(5)] == ["u2", "u3", "u0", "u1", "u2"]


def test_random_rows_are_drawn_from_the_file_and_seeded():
    a = DataFeeds([_feed("random", 50)], seed=3)
    b = DataFeeds([_feed("random", 50)], seed=3)
    draws = [a.next("acc")["user"] for _ in range(200)]
    assert draws == [b.next("acc")["user"] for _ in range(200)]
    assert len(set(draws)) > 25  # not one row again and again


def test_unknown_data_file_names_the_known_ones():
    with pytest.raises(KeyError, match="known: acc"):
        DataFeeds([_feed("cycle")]).next("accounts")


def test_fill_data_takes_one_row_per_file():
    rows = {"acc": {"user": "ann", "pw": "x"}}
    assert fill_data("/u/${data.acc.user}?p=${data.acc.pw}&q=${data.other.k}", rows) == "/u/ann?p=x&q=${data.other.k}"


def test_aiohttp_sends_data_rows_and_stops_when_unique_rows_run_out():
    seen: list[str] = []

    async def main():
        async def echo(request: web.Request) -> web.Response:
            seen.append(request.match_info["user"] + "/" + request.headers["X-Pw"])
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/u/{user}", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        t = RequestTemplate(
            name="u",
            method="GET",
            url=base + "/u/${data.acc.user}",
            headers=(("X-Pw", "${data.acc.pw}"),),
            data=("acc",),
        )
        engine = AiohttpEngine(
            [t], max_connections=2, timeout_s=5, connect_timeout_s=2, data=DataFeeds([_feed("unique", 2)])
        )
        await engine.open()
        try:
            return [await engine.request(0) for _ in range(3)]
        finally:
            await engine.close()
            await runner.cleanup()

    got = asyncio.run(main())
    assert [g[2] for g in got] == [OK, OK, ErrorClass.DATA_EXHAUSTED]
    assert seen == ["u0/p0", "u1/p1"]  # the exhausted request was never sent
