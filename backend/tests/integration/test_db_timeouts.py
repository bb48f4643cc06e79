"""PostgreSQL timeouts: set on every pooled connection, and a request that runs into one answers 503
`database_timeout` (retry later) instead of a 500 or a request that hangs."""

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import timedelta

import asyncpg
import pytest
from loguru import logger
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.config import get_settings
from app.database import dispose_engine, get_engine, server_settings
from app.utils import manage_tokens
from app.utils.time import utcnow
from tests.smtp import settings_env


@pytest.fixture
async def locked_services(service_urls) -> AsyncIterator[None]:
    """The `services` table locked by another connection, as a long migration or a stuck transaction would."""
    conn = await asyncpg.connect(service_urls["database_url"])
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE services IN ACCESS EXCLUSIVE MODE")
        yield
        await transaction.rollback()
    finally:
        await conn.close()


@pytest.fixture
async def fresh_engine(app) -> AsyncIterator[None]:
    """The settings of a test apply to connections opened afterwards: start and end with a new pool."""
    await dispose_engine()
    yield
    await dispose_engine()


class TestConnectionSettings:
    async def test_every_pooled_connection_carries_the_timeouts_and_its_process_name(self, fresh_engine):
        async with get_engine().connect() as first, get_engine().connect() as second:
            for connection in (first, second):
                shown = {
                    name: await connection.scalar(text(f"SHOW {name}"))
                    for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
                }
                assert shown == {
                    "statement_timeout": "15s",
                    "lock_timeout": "5s",
                    "idle_in_transaction_session_timeout": "30s",
                }
                name = await connection.scalar(
                    text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
                )
                assert name == server_settings(get_settings())["application_name"]
                assert name.startswith("c3po-api/")

    async def test_the_settings_change_them_and_zero_turns_one_off(self, fresh_engine):
        with settings_env(DB_STATEMENT_TIMEOUT_SECONDS="2.5", DB_LOCK_TIMEOUT_SECONDS="0"):
            async with get_engine().connect() as connection:
                assert await connection.scalar(text("SHOW statement_timeout")) == "2500ms"
                assert await connection.scalar(text("SHOW lock_timeout")) == "0"

    async def test_a_transaction_left_idle_is_ended_by_the_server(self, fresh_engine):
        with settings_env(DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS="0.2"):
            connection = await get_engine().connect()
            try:
                pid = await connection.scalar(text("SELECT pg_backend_pid()"))  # and the transaction stays open
                async with get_engine().connect() as other:
                    for _ in range(100):
                        gone = not await other.scalar(
                            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                        )
                        await other.commit()  # pg_stat_activity is a snapshot per transaction
                        if gone:
                            break
                        await asyncio.sleep(0.05)
                assert gone
                with pytest.raises(DBAPIError) as error:
                    await connection.execute(text("SELECT 1"))
                assert error.value.connection_invalidated  # the pool drops it rather than hand it out
            finally:
                with suppress(DBAPIError):  # its rollback has no connection left to run on
                    await connection.close()


class TestProblems:
    async def test_a_lock_wait_past_lock_timeout_is_a_503_database_timeout(self, client, fresh_engine, locked_services):
        with settings_env(DB_LOCK_TIMEOUT_SECONDS="0.3"):
            response = await client.get("/api/v1/services")
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["Retry-After"] == "1"
        body = response.json()
        assert body["code"] == "database_timeout"
        assert "busy" in body["detail"]

    async def test_a_statement_past_statement_timeout_is_a_503_database_timeout(
        self, client, fresh_engine, locked_services
    ):
        with settings_env(DB_STATEMENT_TIMEOUT_SECONDS="0.3", DB_LOCK_TIMEOUT_SECONDS="0"):
            response = await client.get("/api/v1/services")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "database_timeout"
        assert "too long" in response.json()["detail"]

    async def test_the_pool_serves_again_once_the_lock_is_gone(self, client, fresh_engine, service_urls):
        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            with settings_env(DB_LOCK_TIMEOUT_SECONDS="0.3"):
                async with conn.transaction():
                    await conn.execute("LOCK TABLE services IN ACCESS EXCLUSIVE MODE")
                    assert (await client.get("/api/v1/services")).status_code == 503
                assert (await client.get("/api/v1/services")).status_code == 200
        finally:
            await conn.close()

    async def test_its_log_line_masks_a_token_in_the_path(self, client, fresh_engine, service_urls):
        """A manage link or feed URL is a credential: the timeout's warning names the path redacted."""
        token = manage_tokens.issue(uuid.uuid4(), uuid.uuid4(), utcnow() + timedelta(days=1))
        lines = io.StringIO()
        sink = logger.add(lines, level="WARNING", format="{message}", filter="app")
        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            with settings_env(DB_LOCK_TIMEOUT_SECONDS="0.3"):
                async with conn.transaction():
                    await conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                    answer = await client.get(f"/api/v1/manage/{token}")
        finally:
            await conn.close()
            logger.remove(sink)
        assert answer.status_code == 503, answer.text
        assert "GET /api/v1/manage/[redacted]" in lines.getvalue()
        assert token not in lines.getvalue()


class TestDeadlock:
    """A deadlock PostgreSQL breaks by rolling the request back answers 503 `transaction_conflict`.

    No route of ours takes locks out of order (test_booking_limits.py's TestNoDeadlock), so a route
    of the test's own makes one for real: it takes advisory lock A, then B, while another connection
    holds B and then asks for A. That connection waits a minute before checking for deadlocks, the
    request's own backend three seconds: so PostgreSQL rolls the request back."""

    A, B = 7_100_001, 7_100_002

    @pytest.fixture
    def deadlocking_app(self, app):
        from fastapi import FastAPI

        from app.api.db_timeouts import install_db_timeout_handlers
        from app.api.problems import install_problem_handlers

        application = FastAPI()
        install_problem_handlers(application)
        install_db_timeout_handlers(application)

        @application.post("/a-then-b")
        async def a_then_b() -> dict:
            async with get_engine().begin() as connection:
                await connection.execute(text("SET LOCAL deadlock_timeout = '3s'"))  # time to close the cycle
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.A})
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.B})
            return {"locked": "both"}

        return application

    async def waiting_for(self, connection: asyncpg.Connection, key: int) -> bool:
        query = """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
        return await connection.fetchval(query, key) > 0

    async def test_the_request_rolled_back_answers_503_and_the_other_goes_on(self, deadlocking_app, service_urls):
        from httpx import ASGITransport, AsyncClient

        other = await asyncpg.connect(service_urls["database_url"], server_settings={"deadlock_timeout": "60s"})
        try:
            await other.execute("SELECT pg_advisory_lock($1)", self.B)
            transport = ASGITransport(app=deadlocking_app)
            async with AsyncClient(transport=transport, base_url="http://testserver") as http:
                request = asyncio.create_task(http.post("/a-then-b"))
                async with asyncio.timeout(15):
                    while not await self.waiting_for(other, self.B):  # the request holds A, waits for B
                        await asyncio.sleep(0.02)
                    other_takes_a = asyncio.create_task(other.execute("SELECT pg_advisory_lock($1)", self.A))
                    response = await request
                    await other_takes_a  # granted once the request's transaction is rolled back
        finally:
            await other.close()

        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == "transaction_conflict"
        assert "undone" in response.json()["detail"]
