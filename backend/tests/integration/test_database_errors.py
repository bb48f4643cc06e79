"""Which database failures are an outage (503 `database_unavailable`), told apart on real errors."""

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.api.dependency_errors import database_down
from app.database import get_engine, to_async_url
from tests.smtp import free_port


async def test_a_refused_connection_is_an_outage_wrapped_or_not():
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(OSError) as raw:
        await asyncpg.connect(url, timeout=2)
    assert database_down(raw.value)

    engine = create_async_engine(to_async_url(url))
    try:
        with pytest.raises(Exception) as through_sqlalchemy:
            async with engine.connect():
                pass
        assert database_down(through_sqlalchemy.value)
    finally:
        await engine.dispose()


async def test_a_connection_terminated_by_the_server_is_an_outage(app):
    async with get_engine().connect() as victim, get_engine().connect() as admin:
        pid = await victim.scalar(text("SELECT pg_backend_pid()"))
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as terminated:
            await victim.execute(text("SELECT 1"))
    assert database_down(terminated.value)


async def test_a_statement_timeout_or_a_bug_is_not_an_outage(app):
    async with get_engine().connect() as connection:
        await connection.execute(text("SET statement_timeout = 10"))
        with pytest.raises(DBAPIError) as cancelled:
            await connection.execute(text("SELECT pg_sleep(1)"))
    assert not database_down(cancelled.value)
    async with get_engine().connect() as connection:
        with pytest.raises(DBAPIError) as bad_sql:
            await connection.execute(text("SELECT * FROM no_such_table"))
    assert not database_down(bad_sql.value)


def test_an_oserror_of_our_own_is_not_an_outage():
    try:
        raise TimeoutError("our own asyncio.timeout")
    except TimeoutError as ours:
        assert not database_down(ours)
