"""The worker process under faults: killed mid-delivery, Redis or the SMTP server gone for 30 s.

Each email must arrive exactly once. Once every row is marked sent nothing can send it again
(a send needs the row's lock and an empty `sent_at`), so counting at that point is conclusive.
"""

import asyncio
import inspect
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
from arq.constants import health_check_key_suffix, result_key_prefix
from sqlalchemy import func, select

from app.database import get_sessionmaker, unit_of_work
from app.models import OutboxMessage
from app.services.messaging.outbox import job_id, queue_email
from app.services.messaging.worker import supervise
from tests.e2e.conftest import ARQ_CLI, Stack
from tests.smtp import settings_env

OUTAGE_SECONDS = 30
# A bound on what includes a worker process starting (imports, connections): far more than it takes,
# even on a loaded machine, and still a bound (a hang fails).
STARTING = 90
CONTEXT = {"full_name": "Ada", "link": "https://app.test/verify-email?token=t", "expires_hours": 48}


async def queue(count: int) -> list[int]:
    """Commit emails the way requests do, each in its own transaction, handed to arq after the commit."""
    ids = []
    for i in range(count):
        async with unit_of_work() as db:
            row = await queue_email(
                db, to=f"user{i}@example.com", template="verify_email", locale="en", context=CONTEXT
            )
        ids.append(row.id)
    return ids


async def rows() -> list[OutboxMessage]:
    async with get_sessionmaker()() as db:
        return list((await db.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `check` (plain or async) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (await result if inspect.isawaitable(result := check()) else result):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


async def all_sent() -> bool:
    async with get_sessionmaker()() as db:
        unsent = select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
        return await db.scalar(unsent) == 0


def assert_each_once(stack: Stack, ids: list[int]) -> None:
    counts = stack.smtp.count_by_message_id()
    assert sorted(counts.values()) == [1] * len(ids), counts
    recipients = sorted(str(message["To"]) for message in stack.smtp.messages)
    assert len(recipients) == len(ids)


async def ride_out(stack: Stack, started: float, worker) -> None:
    """Keep the outage going until OUTAGE_SECONDS have passed, checking the worker stays up."""
    while time.monotonic() - started < OUTAGE_SECONDS:
        assert worker.alive, worker.log()
        await asyncio.sleep(0.5)
    assert worker.alive, worker.log()


async def test_the_plain_arq_command_runs_the_worker(stack):
    worker = stack.start_worker(ARQ_CLI)
    ids = await queue(3)

    await stack.smtp.wait_for(3)
    await eventually(all_sent, 10, "all rows marked sent")

    assert_each_once(stack, ids)
    assert worker.stop() == 0


async def test_a_worker_killed_in_mid_delivery_is_replaced_and_nothing_is_lost_or_doubled(stack):
    stack.smtp.hold()  # the server keeps each message waiting for its final 250
    first = stack.start_worker()
    ids = await queue(5)
    await eventually(lambda: stack.smtp.mailbox.held >= 1, STARTING, "a delivery in progress")
    assert not any(row.sent_at for row in await rows())

    first.kill()
    await eventually(lambda: stack.smtp.mailbox.held == 0, 10, "the server to drop the dead sender")
    assert stack.smtp.messages == []
    stack.smtp.release()
    stack.start_worker()

    await stack.smtp.wait_for(5, timeout=30)
    await eventually(all_sent, 10, "all rows marked sent")
    assert_each_once(stack, ids)


async def test_the_worker_rides_out_a_redis_outage(stack):
    worker = stack.start_worker()
    before = await queue(1)
    await stack.smtp.wait_for(1)

    stack.redis.stop()
    started = time.monotonic()
    during = await queue(5)  # the hand-off to arq fails; the rows wait in Postgres
    await stack.smtp.wait_for(6, timeout=OUTAGE_SECONDS - 5)  # the relay delivers from Postgres meanwhile
    await ride_out(stack, started, worker)
    stack.redis.start()

    redis = stack.redis.client()
    try:
        await eventually(lambda: redis.exists("arq:queue" + health_check_key_suffix), 30, "arq back on Redis")
        after = await queue(1)
        await stack.smtp.wait_for(7, timeout=20)
        result = result_key_prefix + job_id(after[0])
        await eventually(lambda: redis.exists(result), 20, "the new email's job run by arq")
    finally:
        await redis.aclose()
    await eventually(all_sent, 10, "all rows marked sent")
    assert_each_once(stack, before + during + after)
    assert worker.alive


async def test_the_worker_rides_out_an_smtp_outage(stack):
    worker = stack.start_worker()
    stack.smtp.stop()
    started = time.monotonic()
    ids = await queue(5)

    async def all_failed_at_least_twice() -> bool:
        return all(row.attempts >= 2 for row in await rows())

    await eventually(all_failed_at_least_twice, STARTING, "retries while the server is down")
    await ride_out(stack, started, worker)
    assert not any(row.failed_at or row.sent_at for row in await rows())
    stack.smtp.start()

    await stack.smtp.wait_for(5, timeout=20)
    await eventually(all_sent, 10, "all rows marked sent")
    assert_each_once(stack, ids)
    assert all(row.last_error for row in await rows())


async def test_the_supervisor_starts_arq_again_once_redis_is_back(stack):
    """The same supervisor in this process, with a short outage: arq restarts, the relay bridges the gap."""
    health_key = "arq:queue" + health_check_key_suffix
    stop = asyncio.Event()
    with settings_env(OUTBOX_RELAY_SECONDS="0.5"):
        supervisor = asyncio.create_task(supervise(stop))
        redis = stack.redis.client()
        try:
            await eventually(lambda: redis.exists(health_key), 10, "arq running")
            stack.redis.stop()
            during = await queue(2)
            await stack.smtp.wait_for(2, timeout=10)
            assert not supervisor.done()
            stack.redis.start()
            await eventually(lambda: redis.exists(health_key), 15, "arq running again")
            after = await queue(1)
            await eventually(lambda: redis.exists(result_key_prefix + job_id(after[0])), 10, "its job run by arq")
        finally:
            stop.set()
            await asyncio.wait_for(supervisor, 30)
            await redis.aclose()
    await eventually(all_sent, 10, "all rows marked sent")
    assert_each_once(stack, during + after)


async def test_the_worker_holds_no_transaction_while_the_smtp_server_stalls(stack, service_urls):
    stack.smtp.hold()
    worker = stack.start_worker()
    ids = await queue(3)
    await eventually(lambda: stack.smtp.mailbox.held >= 1, STARTING, "a delivery in progress")

    conn = await asyncpg.connect(service_urls["database_url"])
    try:
        for _ in range(10):  # a few looks while the server keeps the sends waiting
            states = await conn.fetch(
                "SELECT state, clock_timestamp() - xact_start AS open_for FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'c3po-worker/%'"
            )
            assert states, "the worker has no connection to the database"
            # A claim or a mark is a transaction of a few milliseconds; a send is held for seconds.
            held = [row for row in states if row["open_for"] is not None and row["open_for"] > timedelta(seconds=0.5)]
            assert not held, states
            claimed = await conn.fetchval("SELECT count(*) FROM outbox WHERE claimed_until > now()")
            assert claimed >= 1  # the claims were committed before the sends began
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert stack.smtp.mailbox.held >= 1

    stack.smtp.release()
    await stack.smtp.wait_for(3, timeout=30)
    await eventually(all_sent, 10, "all rows marked sent")
    assert_each_once(stack, ids)
    assert worker.stop() == 0
