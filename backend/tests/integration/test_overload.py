"""Overload and outages are answered 503 with `Retry-After` within a bound, never queued or a 500.

Requests are held for real: a test transaction locks the `services` table, so every request
listing services waits in PostgreSQL holding its admission slot and its pooled connection.
Each wait is guarded by `asyncio.wait_for`: without the bound under test the request would hang.
"""

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from httpx import ASGITransport, AsyncClient

from app.database import dispose_engine
from app.main import create_app
from app.redis import close_redis, get_redis
from app.services.rate_limit import reset_limiter
from app.utils.security import (
    HASHING_NICENESS,
    _hash_in_thread,
    hashing_gate,
    password_hash,
    reset_hashing_gate,
    verify_password,
)
from tests.assertions import assert_problem
from tests.contract import PROBLEM, check_problem, prepare
from tests.e2e.conftest import RedisServer
from tests.factories import PASSWORD, bearer, create_user, start_session
from tests.smtp import settings_env

SERVICES = "/api/v1/services"
HANG_GUARD = 15  # seconds; far beyond every bound tested here, far below "a stalled request"


def _contract_checked(app) -> dict:
    async def hook(response) -> None:
        if response.headers.get("content-type", "").startswith(PROBLEM):
            await response.aread()
            request = response.request
            check_problem(app, request.method, request.url.path, response.status_code, response.json())

    return {"response": [hook]}


@asynccontextmanager
async def app_with(**settings: str) -> AsyncIterator[AsyncClient]:
    """A fresh app (and database pool) built with these settings; a client for it.

    Held requests wait on the test's table lock until the test lets go, however loaded the machine:
    the database's `lock_timeout` (5 s, tested in test_db_timeouts.py) is lifted past the hang guard.
    """
    with settings_env(DB_LOCK_TIMEOUT_SECONDS=str(HANG_GUARD * 2), **settings):
        await dispose_engine()
        reset_hashing_gate()
        app = create_app()
        prepare(app)
        transport = ASGITransport(app=app, client=("203.0.113.9", 50000))
        try:
            async with AsyncClient(transport=transport, base_url="http://t", event_hooks=_contract_checked(app)) as c:
                yield c
        finally:
            await dispose_engine()
            reset_hashing_gate()


@asynccontextmanager
async def services_locked(service_urls) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(service_urls["database_url"])
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE services IN ACCESS EXCLUSIVE MODE")
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


async def waiting_on_the_lock(conn: asyncpg.Connection, count: int) -> None:
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    async with asyncio.timeout(HANG_GUARD):
        while await conn.fetchval(query) < count:
            await conn.execute("SELECT pg_stat_clear_snapshot()")  # the view is a snapshot per transaction
            await asyncio.sleep(0.02)


async def answered(request) -> object:
    return await asyncio.wait_for(request, HANG_GUARD)


def assert_busy(response) -> None:
    assert_problem(response, 503, "server_busy")
    assert response.headers["retry-after"] == "1"


class TestAdmissionLimit:
    async def test_beyond_the_in_flight_limit_requests_are_turned_away_and_health_still_answers(self, service_urls):
        async with (
            app_with(MAX_IN_FLIGHT_REQUESTS="2", REQUEST_QUEUE_TIMEOUT_SECONDS="0.2") as client,
            services_locked(service_urls) as lock,
        ):
            held = [asyncio.create_task(client.get(SERVICES)) for _ in range(2)]
            await waiting_on_the_lock(lock, 2)

            assert_busy(await answered(client.get(SERVICES)))
            assert (await answered(client.get("/health"))).status_code == 200
            assert (await answered(client.get("/metrics"))).status_code == 200
            await lock.execute("COMMIT")

            assert [r.status_code for r in await answered(asyncio.gather(*held))] == [200, 200]
        assert not held[0].exception()

    async def test_a_refusal_carries_cors_headers_so_a_browser_can_read_it(self, service_urls):
        origin = "https://app.example"
        async with (
            app_with(MAX_IN_FLIGHT_REQUESTS="1", REQUEST_QUEUE_TIMEOUT_SECONDS="0.1", CORS_ORIGINS=origin) as client,
            services_locked(service_urls) as lock,
        ):
            held = asyncio.create_task(client.get(SERVICES))
            await waiting_on_the_lock(lock, 1)

            refused = await answered(client.get(SERVICES, headers={"Origin": origin}))
            assert_busy(refused)
            assert refused.headers["access-control-allow-origin"] == origin
            assert "retry-after" in refused.headers["access-control-expose-headers"].lower()
            await lock.execute("COMMIT")
            assert (await answered(held)).status_code == 200

    async def test_a_request_waits_for_a_slot_within_the_bound(self, service_urls):
        async with (
            app_with(MAX_IN_FLIGHT_REQUESTS="1", REQUEST_QUEUE_TIMEOUT_SECONDS="5") as client,
            services_locked(service_urls) as lock,
        ):
            first = asyncio.create_task(client.get(SERVICES))
            await waiting_on_the_lock(lock, 1)
            second = asyncio.create_task(client.get(SERVICES))
            await asyncio.sleep(0.1)
            await lock.execute("COMMIT")

            assert [(await answered(task)).status_code for task in (first, second)] == [200, 200]

    async def test_sign_ins_have_a_budget_of_their_own(self, session, service_urls):
        user = await create_user(session)
        async with (
            app_with(MAX_IN_FLIGHT_REQUESTS="2", REQUEST_QUEUE_TIMEOUT_SECONDS="0.2") as client,
            services_locked(service_urls) as lock,
        ):
            held = [asyncio.create_task(client.get(SERVICES)) for _ in range(2)]
            await waiting_on_the_lock(lock, 2)

            form = {"username": user.email, "password": PASSWORD}
            assert (await answered(client.post("/api/v1/auth/login", data=form))).status_code == 200
            await lock.execute("COMMIT")
            await answered(asyncio.gather(*held))


class TestConnectionPool:
    async def test_an_exhausted_pool_answers_server_busy_after_the_pool_timeout(self, service_urls):
        # pool_size 1 plus 1 overflow: two connections.
        pool = {"DB_POOL_SIZE": "1", "DB_MAX_OVERFLOW": "1", "DB_POOL_TIMEOUT_SECONDS": "0.3"}
        async with (
            app_with(**pool, MAX_IN_FLIGHT_REQUESTS="50") as client,
            services_locked(service_urls) as lock,
        ):
            held = [asyncio.create_task(client.get(SERVICES)) for _ in range(2)]
            await waiting_on_the_lock(lock, 2)

            assert_busy(await answered(client.get(SERVICES)))
            await lock.execute("COMMIT")

            assert [r.status_code for r in await answered(asyncio.gather(*held))] == [200, 200]


class TestPasswordHashing:
    async def test_a_sign_in_beyond_the_hashing_queue_is_turned_away_at_once(self, session, service_urls):
        user = await create_user(session)
        form = {"username": user.email, "password": PASSWORD}
        settings = {"PASSWORD_HASH_CONCURRENCY": "1", "PASSWORD_HASH_MAX_WAITING": "1"}
        async with app_with(**settings, PASSWORD_HASH_QUEUE_TIMEOUT_SECONDS="30") as client:
            gate = hashing_gate()
            await gate.acquire()  # one hash running
            waiting = asyncio.create_task(gate.acquire())  # and one queued: the queue is full
            await asyncio.sleep(0)

            assert_busy(await answered(client.post("/api/v1/auth/login", data=form)))
            gate.release()
            await answered(waiting)
            gate.release()

            assert (await answered(client.post("/api/v1/auth/login", data=form))).status_code == 200

    async def test_hashing_runs_at_the_lowest_cpu_priority_off_the_event_loop(self, service_urls):
        def where() -> tuple[int, int]:
            return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        async with app_with(PASSWORD_HASH_CONCURRENCY="2"):
            thread, niceness = await answered(_hash_in_thread(where))
            assert await answered(verify_password(PASSWORD, password_hash.hash(PASSWORD))) == (True, None)
        assert thread != threading.get_native_id()  # not the loop's thread
        assert niceness == HASHING_NICENESS == 19  # a contended core goes to the event loop first
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < niceness  # the loop's own is untouched


@asynccontextmanager
async def app_redis_at(url: str, **settings: str) -> AsyncIterator[None]:
    """The app's Redis clients (and the rate limiter's) made anew for `url`, and again after."""
    with settings_env(REDIS_URL=url, **settings):
        await close_redis()
        reset_limiter()
        try:
            yield
        finally:
            await close_redis()
            reset_limiter()


class TestRedisOutage:
    @pytest.fixture
    async def own_redis(self, app) -> AsyncIterator[RedisServer]:
        server = RedisServer().start()
        try:
            async with app_redis_at(server.url):
                yield server
        finally:
            server.stop()

    async def test_requests_that_need_redis_answer_redis_unavailable_then_recover(self, client, session, own_redis):
        user = await create_user(session)
        me = bearer((await start_session(user)).access_token)
        own_redis.stop()
        await close_redis()

        login = await client.post("/api/v1/auth/login", data={"username": user.email, "password": PASSWORD})
        assert_problem(login, 503, "redis_unavailable")
        assert int(login.headers["retry-after"]) >= 1
        assert (await client.get("/health")).status_code == 200

        own_redis.start()
        login = await client.post("/api/v1/auth/login", data={"username": user.email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        assert (await client.get("/api/v1/users/me", headers=me)).status_code == 200


class TestSilentRedis:
    """A Redis that takes connections and never answers (a hung node, a black-holed route): each
    command gives up after `REDIS_TIMEOUT_SECONDS`, and the request answers 503, not hangs."""

    @pytest.fixture
    async def silent_redis(self, app) -> AsyncIterator[str]:
        held: list[asyncio.StreamWriter] = []

        async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with app_redis_at(f"redis://127.0.0.1:{port}/0", REDIS_TIMEOUT_SECONDS="0.3"):
                yield f"127.0.0.1:{port}"
        finally:
            for writer in held:
                writer.close()
            server.close()

    async def test_the_setting_bounds_every_command_and_the_request_answers_503(self, client, session, silent_redis):
        user = await create_user(session)
        assert get_redis().connection_pool.connection_kwargs["socket_timeout"] == 0.3

        login = client.post("/api/v1/auth/login", data={"username": user.email, "password": PASSWORD})
        answer = await asyncio.wait_for(login, HANG_GUARD)

        assert_problem(answer, 503, "redis_unavailable")
