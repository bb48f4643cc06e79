"""Reminders: rows written with the appointment, claimed by the cron job, delivered to a real SMTP
server exactly once per kind; never for cancelled, moved or started appointments.

The job takes the current time as a parameter (`send_due(now=...)`), so "24 hours before",
"a worker down for 10 minutes" and "two workers at once" are exact instead of slept through.
"""

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select, update

from app.database import get_sessionmaker, unit_of_work
from app.models import Appointment, AppointmentStatus, OutboxMessage, Reminder, Role, Service, User
from app.services.messaging import reminders
from app.services.messaging.worker import WorkerSettings, attempt_delivery
from tests.factories import create_user
from tests.integration.test_email import run_workers as run_email_workers
from tests.smtp import SmtpServer, settings_env, text_part

DAY, HOUR = 1440, 60
# Whole minutes, far from now: every due time below is exact and none is due by the real clock.
T0 = datetime(2030, 6, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


async def book(
    session,
    *,
    starts_at: datetime,
    booked_at: datetime,
    client: User | None = None,
    status: AppointmentStatus = AppointmentStatus.confirmed,
    minutes: int = 30,
) -> Appointment:
    """An appointment inserted directly, with the reminders a booking made at `booked_at` writes."""
    client = client or await create_user(session)
    staff = await create_user(session, role=Role.staff, full_name="Dr. Staff")
    service = Service(name="Consultation", duration_minutes=minutes)
    session.add(service)
    await session.flush()
    appointment = Appointment(
        client_id=client.id,
        staff_id=staff.id,
        service_id=service.id,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=minutes),
        blocked_from=starts_at,
        blocked_until=starts_at + timedelta(minutes=minutes),
        status=status.value,
    )
    session.add(appointment)
    await session.flush()
    await reminders.schedule(session, appointment, now=booked_at)
    await session.commit()
    return appointment


async def move(session, appointment: Appointment, starts_at: datetime, *, now: datetime) -> None:
    """What a reschedule does to the row and its reminders."""
    appointment.starts_at, appointment.ends_at = starts_at, starts_at + timedelta(minutes=30)
    appointment.blocked_from, appointment.blocked_until = appointment.starts_at, appointment.ends_at
    await session.flush()
    await reminders.schedule(session, appointment, now=now)
    await session.commit()


async def cancel(session, appointment: Appointment) -> None:
    appointment.status = AppointmentStatus.cancelled.value
    await reminders.cancel(session, appointment)
    await session.commit()


async def rows(appointment: Appointment) -> dict[int, Reminder]:
    async with get_sessionmaker()() as db:
        found = await db.scalars(select(Reminder).where(Reminder.appointment_id == appointment.id))
        return {row.offset_minutes: row for row in found}


async def deliver(smtp: SmtpServer) -> list[EmailMessage]:
    """Deliver every queued email the way the worker does, then what the SMTP server holds."""
    while await attempt_delivery(due_within=timedelta(days=1)) is not None:
        pass
    return smtp.messages


async def reminder_emails(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in await deliver(smtp) if str(m["Subject"]).startswith(("Reminder: ", "Напоминание: "))]


def at(appointment: Appointment, minutes_before: int) -> datetime:
    return appointment.starts_at - timedelta(minutes=minutes_before)


class TestSchedule:
    async def test_one_row_per_offset_due_before_the_start(self, session):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        found = await rows(appointment)
        assert sorted(found) == [HOUR, DAY]
        assert found[DAY].due_at == T0 - timedelta(days=1)
        assert found[HOUR].due_at == T0 - timedelta(hours=1)
        assert all(row.sent_at is None for row in found.values())

    async def test_a_reminder_already_due_at_booking_is_not_created(self, session):
        booked_2h_before = await book(session, starts_at=T0, booked_at=T0 - timedelta(hours=2))
        booked_30min_before = await book(
            session, starts_at=T0 + timedelta(hours=1), booked_at=T0 + timedelta(minutes=30)
        )
        assert sorted(await rows(booked_2h_before)) == [HOUR]
        assert await rows(booked_30min_before) == {}

    async def test_offsets_come_from_the_settings(self, session):
        with settings_env(REMINDER_OFFSETS="[30, 10, 10, 0]"):
            appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=1))
        assert sorted(await rows(appointment)) == [10, 30]

    async def test_a_move_replaces_the_unsent_rows(self, session):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        await move(session, appointment, T0 + timedelta(days=2), now=T0 - timedelta(days=2))
        found = await rows(appointment)
        assert {k: v.due_at for k, v in found.items()} == {
            DAY: T0 + timedelta(days=1),
            HOUR: T0 + timedelta(days=2, hours=-1),
        }

    async def test_scheduling_again_for_the_same_start_keeps_what_was_sent(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        assert await reminders.send_due(now=at(appointment, DAY)) == 1

        await reminders.schedule(session, appointment, now=T0 - timedelta(days=2))  # e.g. on confirmation
        await session.commit()

        assert (await rows(appointment))[DAY].sent_at is not None
        assert await reminders.send_due(now=at(appointment, DAY)) == 0

    async def test_cancel_drops_the_unsent_rows(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        await reminders.send_due(now=at(appointment, DAY))
        await cancel(session, appointment)
        assert list(await rows(appointment)) == [DAY]  # the one sent stays, as a record

    async def test_scheduling_an_appointment_that_is_not_live_drops_its_rows(self, session):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        appointment.status = AppointmentStatus.completed.value
        await reminders.schedule(session, appointment, now=T0 - timedelta(days=3))
        await session.commit()
        assert await rows(appointment) == {}


class TestSending:
    async def test_the_24h_and_1h_reminders_each_arrive_once(self, session, smtp):
        client = await create_user(session, email="ada@example.org", full_name="Ada Lovelace")
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3), client=client)

        sent = [await reminders.send_due(now=at(appointment, DAY) - timedelta(minutes=1))]  # not yet due
        for now in (at(appointment, DAY), at(appointment, DAY) + timedelta(minutes=1)):
            sent.append(await reminders.send_due(now=now))
        for now in (at(appointment, HOUR), at(appointment, HOUR) + timedelta(minutes=1), T0 - timedelta(minutes=1)):
            sent.append(await reminders.send_due(now=now))

        assert sent == [0, 1, 0, 1, 0, 0]
        emails = await reminder_emails(smtp)
        assert len(emails) == 2
        assert sorted(smtp.count_by_message_id().values()) == [1, 1]
        assert {str(m["To"]) for m in emails} == {"ada@example.org"}
        assert all(str(m["Subject"]).startswith("Reminder: Consultation with Dr. Staff, ") for m in emails)
        assert all(row.sent_at is not None for row in (await rows(appointment)).values())

    async def test_in_the_recipients_language_and_time_zone(self, session, smtp):
        client = await create_user(session, locale="ru", timezone="Asia/Tokyo", full_name="Анна")
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3), client=client)

        await reminders.send_due(now=at(appointment, HOUR))

        [email] = await reminder_emails(smtp)
        # 09:00 UTC on Monday 3 June 2030 is 18:00 in Tokyo.
        assert (
            str(email["Subject"]) == "Напоминание: Consultation, Dr. Staff, пн, 3 июня 2030, 18:00–18:30 (Asia/Tokyo)"
        )
        body = text_part(email)
        assert "Здравствуйте, Анна!" in body
        assert f"/appointments/{appointment.id}" in body

    async def test_none_for_a_cancelled_appointment(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        await cancel(session, appointment)

        for minutes in (DAY, HOUR):
            assert await reminders.send_due(now=at(appointment, minutes)) == 0
        assert await reminder_emails(smtp) == []

    async def test_none_for_an_appointment_cancelled_without_dropping_its_rows(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        await session.execute(update(Appointment).values(status="cancelled").where(Appointment.id == appointment.id))
        await session.commit()

        assert await reminders.send_due(now=at(appointment, DAY)) == 0
        assert DAY not in await rows(appointment)  # dropped by the job, never to be looked at again
        assert await reminder_emails(smtp) == []

    async def test_a_moved_appointment_is_reminded_at_its_new_time_only(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        old_start, new_start = T0, T0 + timedelta(hours=5)
        await move(session, appointment, new_start, now=T0 - timedelta(days=2))

        sent = {}
        for label, now in {
            "old 24h": old_start - timedelta(days=1),
            "new 24h": new_start - timedelta(days=1),
            "old 1h": old_start - timedelta(hours=1),
            "new 1h": new_start - timedelta(hours=1),
        }.items():
            sent[label] = await reminders.send_due(now=now)

        assert sent == {"old 24h": 0, "new 24h": 1, "old 1h": 0, "new 1h": 1}
        emails = await reminder_emails(smtp)
        assert len(emails) == 2
        assert all("14:00–14:30 (UTC)" in str(m["Subject"]) for m in emails)

    async def test_moved_after_its_24h_reminder_it_gets_one_for_the_new_time(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        assert await reminders.send_due(now=at(appointment, DAY)) == 1
        new_start = T0 + timedelta(days=3)
        await move(session, appointment, new_start, now=at(appointment, DAY) + timedelta(hours=1))

        assert await reminders.send_due(now=new_start - timedelta(days=1)) == 1
        assert await reminders.send_due(now=new_start - timedelta(hours=1)) == 1
        assert len(await reminder_emails(smtp)) == 3  # the old 24h one had left before the move

    async def test_none_once_the_client_account_is_closed(self, session, smtp):
        client = await create_user(session)
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3), client=client)
        client.is_active = False
        await session.commit()

        assert await reminders.send_due(now=at(appointment, DAY)) == 0
        assert await reminder_emails(smtp) == []


class TestConcurrency:
    async def test_two_job_runs_at_once_send_one_reminder_per_kind(self, session, smtp, monkeypatch):
        monkeypatch.setattr(reminders, "BATCH", 7)  # many small batches, interleaved between the runs
        client = await create_user(session)
        appointments = [
            await book(session, starts_at=T0 + timedelta(minutes=i), booked_at=T0 - timedelta(days=3), client=client)
            for i in range(30)
        ]
        last = appointments[-1]

        counts = await asyncio.gather(*(reminders.send_due(now=at(last, DAY)) for _ in range(2)))
        assert sum(counts) == 30
        counts = await asyncio.gather(*(reminders.send_due(now=at(last, HOUR)) for _ in range(2)))
        assert sum(counts) == 30

        async with get_sessionmaker()() as db:
            queued = await db.scalar(select(func.count()).select_from(OutboxMessage))
        assert queued == 60
        assert len(await reminder_emails(smtp)) == 60
        assert set(smtp.count_by_message_id().values()) == {1}

    async def test_an_appointment_being_moved_is_left_for_the_next_run(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))
        async with unit_of_work() as moving:
            # The reschedule's UPDATE holds the row; the job must neither wait nor send the old time.
            await moving.execute(
                update(Appointment).values(starts_at=T0 + timedelta(days=1), ends_at=T0 + timedelta(days=1, minutes=30),
                                           blocked_from=T0 + timedelta(days=1),
                                           blocked_until=T0 + timedelta(days=1, minutes=30))
                .where(Appointment.id == appointment.id)
            )  # fmt: skip
            assert await reminders.send_due(now=at(appointment, HOUR)) == 0
            assert (await rows(appointment))[HOUR].sent_at is None
            moved = await moving.get(Appointment, appointment.id)
            await reminders.schedule(moving, moved, now=at(appointment, HOUR))

        assert await reminders.send_due(now=at(appointment, HOUR)) == 0
        assert await reminders.send_due(now=T0 + timedelta(days=1, hours=-1)) == 1
        assert len(await reminder_emails(smtp)) == 1


class TestCatchUp:
    async def test_a_worker_down_for_10_minutes_catches_up_without_reminding_started_appointments(self, session, smtp):
        down, back = T0, T0 + timedelta(minutes=10)
        with settings_env(REMINDER_OFFSETS="[60, 5]"):
            booked = T0 - timedelta(hours=3)
            due_while_down = await book(session, starts_at=T0 + timedelta(minutes=63), booked_at=booked)
            started_while_down = await book(session, starts_at=T0 + timedelta(minutes=8), booked_at=booked)
            later = await book(session, starts_at=T0 + timedelta(minutes=30), booked_at=booked)

        assert await reminders.send_due(now=down) == 2  # the 60-minute ones of the last two, in time
        assert await reminders.send_due(now=back) == 1

        emails = await reminder_emails(smtp)
        assert len(emails) == 3
        assert (await rows(due_while_down))[60].sent_at == back
        assert 5 not in await rows(started_while_down)  # dropped, not sent: it had started
        assert (await rows(later))[5].sent_at is None  # not due yet
        assert await reminders.send_due(now=at(later, 5)) == 1

    async def test_after_a_long_outage_only_the_closest_reminder_is_sent(self, session, smtp):
        appointment = await book(session, starts_at=T0, booked_at=T0 - timedelta(days=3))

        assert await reminders.send_due(now=T0 - timedelta(minutes=30)) == 1

        [email] = await reminder_emails(smtp)
        found = await rows(appointment)
        assert list(found) == [HOUR]
        assert found[HOUR].sent_at is not None


def fresh_cron_jobs():
    """The cron's schedule state lives on the job: start it anew, as a new process does."""
    jobs = [copy.copy(job) for job in WorkerSettings.cron_jobs]
    for job in jobs:
        job.next_run = None
    return jobs


async def run_workers(count: int) -> None:
    """`count` arq workers as configured, side by side, each until the queue is empty."""
    await run_email_workers(count, cron_jobs=fresh_cron_jobs())


class TestWorker:
    async def test_the_worker_runs_the_job_when_it_starts(self, session, smtp):
        now = datetime.now(UTC)
        appointment = await book(session, starts_at=now + timedelta(minutes=50), booked_at=now - timedelta(minutes=30))

        await run_workers(2)

        assert len(await reminder_emails(smtp)) == 1
        assert (await rows(appointment))[HOUR].sent_at is not None
