"""Reminders sent by real worker processes (`python -m app worker`) to a real SMTP server.

Counting is conclusive once every due reminder row is settled (marked sent, or dropped) and every
outbox row is sent: a reminder is queued in the transaction that marks its row sent, and an outbox
row leaves once, so nothing can send a reminder again after that point.
"""

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta

from arq.constants import health_check_key_suffix
from sqlalchemy import func, select

from app.database import get_sessionmaker
from app.models import OutboxMessage, Reminder
from tests.e2e.conftest import Stack
from tests.factories import create_user
from tests.integration.test_reminders import book, cancel, move
from tests.smtp import settings_env

APP_WORKER = (sys.executable, "-m", "app", "worker")
DAY, HOUR = 1440, 60


async def settled() -> bool:
    """No reminder due and unsent, no email waiting in the outbox."""
    async with get_sessionmaker()() as db:
        due = await db.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(Reminder.sent_at.is_(None), Reminder.due_at <= datetime.now(UTC))
        )
        unsent = await db.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.sent_at.is_(None)))
    return due == 0 and unsent == 0


async def wait_until_settled(stack: Stack, emails: int, timeout: float) -> None:
    running = [worker for worker in stack.workers if worker.alive]
    deadline = time.monotonic() + timeout
    while len(stack.smtp.messages) < emails or not await settled():
        assert time.monotonic() < deadline, f"not settled within {timeout}s: {len(stack.smtp.messages)} emails"
        assert all(worker.alive for worker in running), [worker.log() for worker in running]
        await asyncio.sleep(0.1)


async def wait_until_running(stack: Stack, timeout: float = 30) -> None:
    """arq is up (its health-check key is written on its first poll, when the start-up job is queued)."""
    redis = stack.redis.client()
    deadline = time.monotonic() + timeout
    try:
        while not await redis.exists("arq:queue" + health_check_key_suffix):
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def reminder_recipients(stack: Stack) -> list[str]:
    assert all(str(m["Subject"]).startswith("Reminder: ") for m in stack.smtp.messages)
    assert set(stack.smtp.count_by_message_id().values()) == {1}
    return sorted(str(m["To"]) for m in stack.smtp.messages)


async def test_two_workers_send_the_24h_and_1h_reminders_once_each(stack, session):
    now = datetime.now(UTC)
    day_ahead = await create_user(session, email="day@example.org")
    hour_ahead = await create_user(session, email="hour@example.org")
    # Booked long ago: its 24-hour reminder fell due two minutes ago.
    await book(
        session, starts_at=now + timedelta(days=1, minutes=-2), booked_at=now - timedelta(days=3), client=day_ahead
    )
    # Booked half an hour ago, 50 minutes before its start: only the 1-hour reminder, due ten minutes ago.
    await book(session, starts_at=now + timedelta(minutes=50), booked_at=now - timedelta(minutes=30), client=hour_ahead)
    cancelled = await book(session, starts_at=now + timedelta(days=1, minutes=-1), booked_at=now - timedelta(days=3))
    await cancel(session, cancelled)
    moved = await book(session, starts_at=now + timedelta(days=1, minutes=-3), booked_at=now - timedelta(days=3))
    await move(session, moved, now + timedelta(days=3), now=now)

    stack.start_worker(APP_WORKER)
    stack.start_worker(APP_WORKER)  # both run the job as they start, at the same moment
    await wait_until_settled(stack, emails=2, timeout=30)
    deadline = time.monotonic() + 30
    # Both must really be up (arq polling, signals handled), not still starting; which of them runs
    # a given minute's cron job is arq's choice (its job id is per minute).
    while not all("Starting worker for" in worker.log() for worker in stack.workers):
        assert time.monotonic() < deadline and all(w.alive for w in stack.workers), [w.log() for w in stack.workers]
        await asyncio.sleep(0.1)

    assert reminder_recipients(stack) == ["day@example.org", "hour@example.org"]
    for worker in stack.workers:
        assert worker.stop() == 0


async def test_the_minute_cron_sends_a_reminder_as_it_falls_due(stack, session):
    worker = stack.start_worker(APP_WORKER)
    deadline = time.monotonic() + 30
    while "← cron:send_due_reminders" not in worker.log():  # its start-up run is over
        assert worker.alive and time.monotonic() < deadline, worker.log()
        await asyncio.sleep(0.1)
    client = await create_user(session, email="soon@example.org")
    now = datetime.now(UTC)
    await book(session, starts_at=now + timedelta(hours=1, seconds=3), booked_at=now, client=client)

    # Due in 3 s: sent by the run at the next whole minute after that.
    await wait_until_settled(stack, emails=1, timeout=75)

    assert reminder_recipients(stack) == ["soon@example.org"]
    assert worker.stop() == 0


async def test_a_worker_down_for_10_minutes_catches_up_on_return(stack, session):
    first = stack.start_worker(APP_WORKER)
    await wait_until_running(stack)
    assert first.stop() == 0  # down; these fell due meanwhile:
    now = datetime.now(UTC)
    waiting = await create_user(session, email="waiting@example.org")
    with settings_env(REMINDER_OFFSETS="[60, 5]"):
        # Its 1-hour reminder fell due 5 minutes ago; the appointment is still 55 minutes away.
        await book(session, starts_at=now + timedelta(minutes=55), booked_at=now - timedelta(hours=2), client=waiting)
        # Its 5-minute reminder fell due 7 minutes ago, but the appointment started 2 minutes ago.
        started = await book(session, starts_at=now - timedelta(minutes=2), booked_at=now - timedelta(minutes=30))

    stack.start_worker(APP_WORKER)
    await wait_until_settled(stack, emails=1, timeout=30)

    assert reminder_recipients(stack) == ["waiting@example.org"]
    async with get_sessionmaker()() as db:
        assert await db.scalar(select(func.count()).where(Reminder.appointment_id == started.id)) == 0
