"""Python virtual users: loading and checking user code, iterations against a plain aiohttp
app (no Ray): endpoints, error classes, exception types, timeouts, cookies per user,
coordinated omission, engines."""

from __future__ import annotations

import asyncio
import textwrap
import time

import numpy as np
import pytest
from aiohttp import web

from horde.agents.data import DataExhausted
from horde.agents.samples import ErrorClass, decode_batch
from horde.agents.traffic import TrafficAgent
from horde.agents.user_client import BodyNotRead, Response
from horde.agents.users import UserCodeError, check_user_file, load_user_class
from horde.coordinator.plan import build_plan
from horde.coordinator.scenario.load import load_scenario


@pytest.fixture(autouse=True)
def _raw_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read every sample, so the agents send them raw (HORDE_SAMPLES=raw);
    tests/agents/test_agent_aggregates.py covers the default, aggregated batches."""
    monkeypatch.setenv("HORDE_SAMPLES", "raw")


# -- loading and checking -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        ("class U:\n    async def run(self, client)\n", "u.py:2: has a syntax error"),
        ("import json\nimport no_such_module_here\n", "u.py:2: failed to import: ModuleNotFoundError"),
        ("x = 1\n\ndef f():\n    return {}['k']\n\nf()\n", "u.py:4: failed to import: KeyError"),
        ("class Other:\n    pass\n", "u.py: no class 'U'; classes defined there: Other"),
        ("class U:\n    def run(self, client):\n        pass\n", "u.py:2: U.run must be `async def run(self, client)`"),
        ("class U:\n    async def run(self):\n        pass\n", "u.py:2: U.run must take (self, client)"),
        ("class U:\n    pass\n", "u.py: class U has no run method"),
        (
            "class U:\n    async def run(self, client):\n        pass\n    def on_start(self):\n        pass\n",
            "u.py:4: U.on_start must take (self, client)",
        ),
        (
            "class U:\n    def __init__(self, x):\n        pass\n    async def run(self, client):\n        pass\n",
            "U() failed: TypeError",
        ),
    ],
)
def test_user_code_problems_name_the_file_and_line(source, message):
    with pytest.raises(UserCodeError) as e:
        load_user_class("u.py", "U", source)
    assert message in str(e.value), str(e.value)
    assert "Traceback" not in str(e.value)


def test_a_good_class_loads_with_optional_hooks_and_its_hash_is_checked():
    source = "class U:\n    def on_start(self, client):\n        pass\n    async def run(self, client):\n        pass\n"
    assert load_user_class("u.py", "U", source).__name__ == "U"
    with pytest.raises(UserCodeError, match="does not match its sha256"):
        load_user_class("u.py", "U", source, sha256="0" * 64)


def test_check_user_file_reads_the_file(tmp_path):
    f = tmp_path / "u.py"
    f.write_text("class U:\n    async def run(self, client):\n        raise SystemExit\n")
    assert check_user_file(str(f), "U") == []
    assert "cannot read" in check_user_file(str(tmp_path / "missing.py"), "U")[0]
    f.write_text("import sys\nsys.exit(3)\n")  # a module that exits is a problem, not an exit
    assert "failed to import: SystemExit" in check_user_file(str(f), "U", "users/u.py")[0]


def test_a_lean_response_says_how_to_read_its_body():
    r = Response(200, 0, None, None)
    assert r.ok and r.status == 200
    with pytest.raises(BodyNotRead, match="read=True"):
        r.text  # noqa: B018
    full = Response(200, 0, b'{"a": 1}', {"X": "y"})
    assert full.json() == {"a": 1} and full.text == '{"a": 1}' and full.headers["X"] == "y"


# -- iterations against a plain aiohttp app ---------------------------------------------------


BYES: list[str | None] = []  # /bye's callers (on_stop), by session cookie


def _app() -> web.Application:
    async def login(request: web.Request) -> web.Response:
        who = (await request.json())["user"]
        resp = web.json_response({"user": who})
        resp.set_cookie("sid", who)
        return resp

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"sid": request.cookies.get("sid")})

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="late")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(text="slow")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def bye(request: web.Request) -> web.Response:
        BYES.append(request.cookies.get("sid"))
        return web.Response(text="bye")

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/me", me)
    app.router.add_get("/ok", ok)
    app.router.add_get("/hang", hang)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    app.router.add_get("/bye", bye)
    return app


def _run_agent(tmp_path, user_source: str, entry: str, workload: str, extra: str = "") -> tuple[list, dict, list]:
    """Run one agent of the scenario against the app; (samples, user_errors, endpoint names)."""
    (tmp_path / "users").mkdir(exist_ok=True)
    (tmp_path / "users" / "u.py").write_text(textwrap.dedent(user_source))
    scen = tmp_path / "s.yaml"

    async def main():
        runner = web.AppRunner(_app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        scen.write_text(
            textwrap.dedent(f"""
            name: users
            target: {url}
            requests:
              - {entry}
            workload: {workload}
            agents: 1
            """)
            + extra
        )
        plan = build_plan(load_scenario(scen).scenario, url, 2.0, agents=1)
        agent = TrafficAgent(plan.agents[0])
        out: list[bytes] = []
        try:
            await agent.run(time.time_ns(), out.append)
        finally:
            await runner.cleanup()
        return plan, out

    plan, out = asyncio.run(main())
    batches = [decode_batch(p) for p in out]
    samples = np.concatenate([b.samples for b in batches])
    errors: dict[str, int] = {}
    for b in batches:
        for k, v in b.user_errors.items():
            errors[k] = errors.get(k, 0) + v
    return samples.tolist(), errors, list(plan.endpoints)


OPEN_10 = "{model: open, start: 10, stages: [{duration: 1s, target: 10}]}"


def _by(samples, endpoints, name):
    return [s for s in samples if endpoints[s[0]] == name]


def test_each_named_request_is_an_endpoint_and_the_iteration_another(tmp_path):
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        class U:
            async def run(self, client):
                await client.get("/ok", name="first")
                await client.sleep(0.01)
                r = await client.get("/ok", read=True)
                assert r.text == "ok"
                await client.get("/missing", name="undeclared")
        """,
        '{name: shop, user: "users/u.py:U", requests: [first, "GET /ok"]}',
        OPEN_10,
    )
    assert eps == ["shop", "shop/first", "shop/GET /ok", "shop/other"]
    whole, first, unnamed, other = (_by(samples, eps, e) for e in eps)
    assert len(whole) == len(first) == len(unnamed) == len(other) == 10
    assert all(s[5] == ErrorClass.OK for s in first + unnamed)
    assert all(s[5] == ErrorClass.HTTP_4XX for s in other)  # a 404 not expected
    assert all(s[5] == ErrorClass.HTTP_4XX for s in whole)  # the iteration carries its first failure
    assert errors == {}
    # coordinated omission: the first request is due at the iteration's intended start; the
    # next one at the end of the think time, so at least 10 ms after the first one ended
    for it, f, u in zip(sorted(whole), sorted(first), sorted(unnamed)):
        assert f[1] == it[1]  # intended
        assert u[1] >= f[3] + 10_000_000  # intended >= first's end + think time
        assert it[3] >= u[3]  # the iteration ends with its last request


def test_exceptions_are_user_errors_counted_by_type_and_fail_marks_the_iteration(tmp_path):
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        class U:
            def __init__(self):
                self.n = 0

            async def run(self, client):
                self.n += 1
                await client.get("/ok", name="a")
                if self.n % 3 == 0:
                    {}["missing"]
                if self.n % 3 == 1:
                    client.fail("not what I wanted")
        """,
        '{name: shop, user: "users/u.py:U", requests: [a]}',
        "{model: closed, start: 1, stages: [{duration: 1s, target: 1}], think_time: 50ms}",
    )
    whole = _by(samples, eps, "shop")
    n = len(whole)
    assert n >= 6
    classes = [s[5] for s in sorted(whole, key=lambda s: s[1])]
    # one user, one object: its own state counts 1, 2, 3, ...
    assert classes[:6] == [ErrorClass.USER_ERROR, ErrorClass.OK, ErrorClass.USER_ERROR] * 2
    assert errors == {"KeyError": n // 3, "client.fail": (n + 2) // 3}
    assert all(s[5] == ErrorClass.OK for s in _by(samples, eps, "shop/a"))


def test_an_iteration_that_never_returns_is_cut_off_as_a_timeout(tmp_path):
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        import asyncio

        class U:
            async def run(self, client):
                await asyncio.sleep(3600)
        """,
        '{name: stuck, user: "users/u.py:U", timeout: 200ms}',
        "{model: open, start: 5, stages: [{duration: 1s, target: 5}]}",
    )
    whole = _by(samples, eps, "stuck")
    assert len(whole) == 5 and all(s[5] == ErrorClass.TIMEOUT for s in whole)
    assert all(190_000_000 <= s[3] - s[1] < 2_000_000_000 for s in whole)  # cut off at ~200 ms
    assert errors == {}


def test_two_closed_model_users_keep_separate_sessions(tmp_path):
    BYES.clear()
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        import itertools
        _ids = itertools.count()

        class U:
            async def on_start(self, client):
                self.me = f"user-{next(_ids)}"
                await client.post("/login", json={"user": self.me}, name="login")

            async def run(self, client):
                r = await client.get("/me", name="me")
                assert r.json()["sid"] == self.me, (r.json(), self.me)
                await client.sleep(0.02)

            async def on_stop(self, client):
                await client.get("/bye")
        """,
        '{name: acct, user: "users/u.py:U", requests: [login, me]}',
        "{model: closed, start: 2, stages: [{duration: 1s, target: 2}]}",
    )
    assert errors == {}
    assert len(_by(samples, eps, "acct/login")) == 2  # on_start once per user
    me = _by(samples, eps, "acct/me")
    assert len(me) >= 10 and all(s[5] == ErrorClass.OK for s in me)
    assert all(s[5] == ErrorClass.OK for s in _by(samples, eps, "acct"))
    assert sorted(BYES) == ["user-0", "user-1"]  # on_stop once per user, with its own session


def test_reading_a_lean_response_is_a_user_error_named_by_type(tmp_path):
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        class U:
            async def run(self, client):
                r = await client.get("/ok")
                r.json()
        """,
        '{name: lean, user: "users/u.py:U"}',
        "{model: open, start: 4, stages: [{duration: 1s, target: 4}]}",
    )
    assert errors == {"BodyNotRead": 4}


def test_plain_requests_in_user_code_go_through_the_lean_engine(tmp_path):
    """The same user with engine: aiohttp and with the default: the lean engine serves the
    plain GETs (its agent reports it among its engines)."""
    source = """
        class U:
            async def run(self, client):
                await client.get("/ok", name="a")
        """
    entry = '{name: u, user: "users/u.py:U", requests: [a]}'
    samples, _, eps = _run_agent(tmp_path, source, entry, OPEN_10)
    assert len(_by(samples, eps, "u/a")) == 10

    from horde.agents.users import UserRunner

    seen = {}
    real_open = UserRunner.open

    async def spy(self):
        await real_open(self)
        seen["fast"] = self._fast

    UserRunner.open = spy  # type: ignore[method-assign]
    try:
        _run_agent(tmp_path, source, entry, OPEN_10)
        assert seen["fast"] is not None and len(seen["fast"]._prepared) == 1  # one pre-encoded GET
        _run_agent(tmp_path, source, entry, OPEN_10, extra="engine: aiohttp\n")
        assert seen["fast"] is None
    finally:
        UserRunner.open = real_open  # type: ignore[method-assign]


def test_open_model_arrivals_reuse_pooled_user_objects(tmp_path):
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        class U:
            async def on_start(self, client):
                await client.get("/ok", name="start")

            async def run(self, client):
                await client.get("/ok", name="a")
        """,
        '{name: u, user: "users/u.py:U", requests: [start, a]}',
        OPEN_10,
    )
    # one arrival at a time: every iteration ran on the same free slot's object, so
    # on_start ran once, not once per arrival
    assert len(_by(samples, eps, "u")) == len(_by(samples, eps, "u/a")) == 10
    assert len(_by(samples, eps, "u/start")) == 1


def test_client_data_takes_rows_and_an_exhausted_feed_is_its_own_class(tmp_path, monkeypatch):
    """client.data() with a fake feed (agents/data.py's DataFeeds.next is wired in at merge)."""
    from horde.agents.users import UserRunner

    rows = iter([{"user": "ann"}, {"user": "bob"}])
    asked: list[str] = []

    def feed(name: str) -> dict[str, str]:
        asked.append(name)
        try:
            return next(rows)
        except StopIteration:
            raise DataExhausted(name) from None

    class WithData(UserRunner):
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "data": feed})

    monkeypatch.setattr("horde.agents.users.UserRunner", WithData)  # the agent imports it when it builds
    samples, errors, eps = _run_agent(
        tmp_path,
        """
        class U:
            async def run(self, client):
                row = client.data("accounts")
                await client.post("/login", json=row, name="login")
        """,
        '{name: u, user: "users/u.py:U", requests: [login]}',
        "{model: open, start: 4, stages: [{duration: 1s, target: 4}]}",
    )
    assert asked == ["accounts"] * 4
    classes = sorted(s[5] for s in _by(samples, eps, "u"))
    assert classes == [ErrorClass.OK] * 2 + [ErrorClass.DATA_EXHAUSTED] * 2
    assert len(_by(samples, eps, "u/login")) == 2 and errors == {}


def test_a_fenced_user_runner_sends_nothing_more():
    """After the lease lapsed (abort_all), user code's next request ends its iteration
    unrecorded and never reaches the target."""
    import hashlib

    from horde.agents.spec import Limits, UserTemplate
    from horde.agents.users import UserRunner

    source = "class U:\n    async def run(self, client):\n        await client.get('/ok', name='a')\n"
    hits: list[str] = []

    async def main() -> list[tuple]:
        async def ok(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/ok", ok)
        server = web.AppRunner(app)
        await server.setup()
        site = web.TCPSite(server, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        t = UserTemplate(
            name="u",
            path="u.py",
            class_name="U",
            source=source,
            sha256=hashlib.sha256(source.encode()).hexdigest(),
            endpoint=0,
            base_url=url,
            requests=(("a", 1),),
            other=2,
        )
        records: list[tuple] = []

        async def sleep_until(t_ns: int) -> bool:
            return True

        runner = UserRunner(
            (t,),
            record=lambda *r: records.append(r),
            clock_ns=time.monotonic_ns,
            sleep_until=sleep_until,
            max_connections=4,
            timeout_s=5.0,
            connect_timeout_s=1.0,
            limits=Limits(),
        )
        await runner.open()
        try:
            await runner.iterate(t, 0, time.monotonic_ns())
            runner.abort_all()
            await runner.iterate(t, 0, time.monotonic_ns())
        finally:
            await runner.close()
            await server.cleanup()
        return records

    records = asyncio.run(main())
    assert [r[0] for r in records] == [1, 0]  # the request and its iteration, before the fence only
    assert hits == ["/ok"]
