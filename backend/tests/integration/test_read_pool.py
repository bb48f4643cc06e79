"""The read pool behind `database.fetch_row`: bounded, a connection back only after a clean use."""

import asyncio

import pytest

import app.database
from app.database import fetch_row
from app.errors import ServerBusy
from app.read_pool import ReadPool
from tests.smtp import settings_env

PID = "SELECT pg_backend_pid()"


@pytest.fixture
async def pool(service_urls):
    pool = ReadPool(service_urls["database_url"], size=1, timeout=0.2, server_settings={})
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def one_read_connection(service_urls, monkeypatch):
    """`fetch_row`'s own pool, one connection large."""
    monkeypatch.setattr(app.database, "READ_POOL_SIZE", 1)
    with settings_env(DB_POOL_TIMEOUT_SECONDS="0.3"):
        await app.database.dispose_engine()
        try:
            yield
        finally:
            await app.database.dispose_engine()


class TestReadPool:
    async def test_a_clean_use_hands_the_same_connection_out_again(self, pool):
        first = await pool.acquire()
        pid = await first.fetchval(PID)
        pool.release(first, reusable=True)

        again = await pool.acquire()
        assert again is first and await again.fetchval(PID) == pid
        pool.release(again, reusable=True)

    async def test_beyond_its_size_a_caller_waits_within_the_bound(self, pool):
        held = await pool.acquire()
        with pytest.raises(ServerBusy):
            await pool.acquire()
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.05)
        pool.release(held, reusable=True)
        assert await asyncio.wait_for(waiting, 1) is held
        pool.release(held, reusable=True)

    async def test_a_connection_after_a_failed_use_is_closed_and_replaced(self, pool):
        used = await pool.acquire()
        pid = await used.fetchval(PID)
        pool.release(used, reusable=False)
        assert used.is_closed()

        fresh = await pool.acquire()
        assert await fresh.fetchval(PID) != pid
        pool.release(fresh, reusable=True)

    async def test_expiring_closes_the_idle_connections(self, pool):
        connection = await pool.acquire()
        pool.release(connection, reusable=True)
        pool.expire()
        assert connection.is_closed()
        fresh = await pool.acquire()
        assert fresh is not connection
        pool.release(fresh, reusable=True)


class TestFetchRow:
    async def test_a_cancelled_read_gives_its_slot_back_and_its_connection_is_not_reused(self, one_read_connection):
        before = await fetch_row(PID)
        slow = asyncio.create_task(fetch_row("SELECT pg_backend_pid(), pg_sleep(30)"))
        await asyncio.sleep(0.3)  # under way
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

        after = await asyncio.wait_for(fetch_row(PID), 5)  # the one slot is free again
        assert after[0] != before[0]  # on a new connection: the cancelled one may still be busy

    async def test_every_read_connection_busy_is_the_engine_pool_answer(self, one_read_connection):
        slow = asyncio.create_task(fetch_row("SELECT pg_sleep(1)"))
        await asyncio.sleep(0.1)
        try:
            with pytest.raises(app.database.PoolTimeout):  # answered 503 server_busy, like the engine's pool
                await fetch_row(PID)
        finally:
            await slow
