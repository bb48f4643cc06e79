"""Pending appointments expire: past `PENDING_EXPIRY_HOURS` from booking (or once started) the
worker cancels them once, audited, with one email to each side; a confirm racing it, or a second
sweep, never makes a second outcome."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.database import get_sessionmaker, unit_of_work
from app.errors import InvalidTransition
from app.metrics import WORKER_REGISTRY
from app.models import Appointment, AppointmentSeries, AuditEntry, User
from app.services.booking import booking, expiry
from app.utils.time import utcnow
from tests.factories import create_user, outbox
from tests.integration.test_reminders import deliver, run_workers
from tests.scheduling import add_appointment, create_service, create_staff
from tests.smtp import SmtpServer, settings_env, text_part

CANCELLED = "appointment_cancelled"


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Alice Novak", locale="ru")


@pytest.fixture
async def customer(session):
    return await create_user(session, full_name="Uma User")


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], requires_confirmation=True)


async def pending(
    session, customer, staff, service, *, booked_hours_ago: float, starts_in_hours: float = 72, series_id=None
):
    """A pending appointment made `booked_hours_ago`, starting `starts_in_hours` from now."""
    starts_at = utcnow() + timedelta(hours=starts_in_hours)
    appointment = await add_appointment(
        session, customer, staff, service, starts_at, status="pending", series_id=series_id
    )
    made = utcnow() - timedelta(hours=booked_hours_ago)
    await session.execute(update(Appointment).where(Appointment.id == appointment.id).values(created_at=made))
    await session.commit()
    return appointment


async def status_of(appointment: Appointment) -> str:
    async with get_sessionmaker()() as db:
        return await db.scalar(select(Appointment.status).where(Appointment.id == appointment.id))


async def cancelled_emails(session) -> list[str]:
    return sorted(message.payload["to"] for message in await outbox(session, template=CANCELLED))


class TestSweep:
    async def test_past_the_window_it_is_cancelled_with_one_email_to_each_side(self, session, customer, staff, service):
        appointment = await pending(session, customer, staff, service, booked_hours_ago=49)
        counted = WORKER_REGISTRY.get_sample_value("c3po_pending_appointments_expired_total")

        assert await expiry.expire_pending() == 1

        assert WORKER_REGISTRY.get_sample_value("c3po_pending_appointments_expired_total") == counted + 1
        async with get_sessionmaker()() as db:
            row = await db.get(Appointment, appointment.id)
            assert row.status == "cancelled"
            assert row.cancellation_reason == "Not confirmed in time"
            assert row.cancelled_by is None
            assert row.sequence == 1
            entries = (await db.scalars(select(AuditEntry).where(AuditEntry.entity_id == str(appointment.id)))).all()
            assert [(e.action, e.actor_id) for e in entries] == [("appointment.cancel", None)]
            assert await cancelled_emails(db) == sorted([customer.email, staff.email])

    async def test_running_twice_cancels_once(self, session, customer, staff, service):
        await pending(session, customer, staff, service, booked_hours_ago=49)

        assert await expiry.expire_pending() == 1
        assert await expiry.expire_pending() == 0
        assert len(await cancelled_emails(session)) == 2

    async def test_two_sweeps_at_once_cancel_each_once(self, session, customer, staff, service):
        appointments = [
            await pending(session, customer, staff, service, booked_hours_ago=49 + i, starts_in_hours=72 + i)
            for i in range(20)
        ]

        counts = await asyncio.gather(expiry.expire_pending(), expiry.expire_pending())

        assert sum(counts) == 20
        assert {await status_of(a) for a in appointments} == {"cancelled"}
        assert len(await cancelled_emails(session)) == 40
        async with get_sessionmaker()() as db:
            audited = await db.scalar(select(func.count()).where(AuditEntry.action == "appointment.cancel"))
        assert audited == 20

    async def test_inside_the_window_or_confirmed_it_is_left_alone(self, session, customer, staff, service):
        fresh = await pending(session, customer, staff, service, booked_hours_ago=47)
        confirmed = await add_appointment(session, customer, staff, service, utcnow() + timedelta(hours=10))
        await session.execute(
            update(Appointment).where(Appointment.id == confirmed.id).values(created_at=utcnow() - timedelta(hours=100))
        )
        await session.commit()

        assert await expiry.expire_pending() == 0
        assert await status_of(fresh) == "pending"
        assert await status_of(confirmed) == "confirmed"
        assert await cancelled_emails(session) == []

    async def test_a_pending_appointment_whose_start_has_come_expires(self, session, customer, staff, service):
        started = await pending(session, customer, staff, service, booked_hours_ago=1, starts_in_hours=-0.5)

        assert await expiry.expire_pending() == 1
        assert await status_of(started) == "cancelled"

    async def test_the_window_comes_from_the_settings(self, session, customer, staff, service, set_env):
        appointment = await pending(session, customer, staff, service, booked_hours_ago=3)
        set_env(PENDING_EXPIRY_HOURS="2")

        assert await expiry.expire_pending() == 1
        assert await status_of(appointment) == "cancelled"

    async def test_a_series_expires_together_with_one_email_to_each_side(self, session, customer, staff, service):
        series = AppointmentSeries(
            rrule="FREQ=DAILY;COUNT=3", client_id=customer.id, staff_id=staff.id, service_id=service.id
        )
        session.add(series)
        await session.commit()
        occurrences = [
            await pending(session, customer, staff, service, booked_hours_ago=49, starts_in_hours=24 * (i + 3),
                          series_id=series.id)
            for i in range(3)
        ]  # fmt: skip

        assert await expiry.expire_pending() == 3

        assert {await status_of(a) for a in occurrences} == {"cancelled"}
        messages = await outbox(session, template=CANCELLED)
        assert sorted(m.payload["to"] for m in messages) == sorted([customer.email, staff.email])
        assert {len(m.payload["attachments"]) for m in messages} == {3}  # one .ics per occurrence

    async def test_the_batch_bounds_a_run(self, session, customer, staff, service):
        for i in range(3):
            await pending(session, customer, staff, service, booked_hours_ago=49, starts_in_hours=72 + i)

        assert await expiry.expire_pending(batch=2) == 2
        assert await expiry.expire_pending(batch=2) == 1


class TestConfirmRace:
    async def confirm(self, staff: User, appointment: Appointment) -> str:
        try:
            async with unit_of_work() as db:
                actor = await db.get(User, staff.id)
                await booking.confirm(db, actor, appointment.id)
        except InvalidTransition:
            return "refused"
        return "confirmed"

    async def test_a_confirm_and_the_sweep_at_once_have_exactly_one_outcome(self, session, customer, staff, service):
        for i in range(10):
            appointment = await pending(session, customer, staff, service, booked_hours_ago=49, starts_in_hours=72 + i)

            confirmed, expired = await asyncio.gather(self.confirm(staff, appointment), expiry.expire_pending())

            status = await status_of(appointment)
            assert (confirmed, expired, status) in {("confirmed", 0, "confirmed"), ("refused", 1, "cancelled")}

    async def test_a_confirm_in_progress_makes_the_sweep_pass_it_by(self, session, customer, staff, service):
        appointment = await pending(session, customer, staff, service, booked_hours_ago=49)
        async with unit_of_work() as db:
            await booking.confirm(db, await db.get(User, staff.id), appointment.id)
            assert await expiry.expire_pending() == 0  # the row is held: skipped, not waited on

        assert await status_of(appointment) == "confirmed"
        assert await expiry.expire_pending() == 0
        assert await cancelled_emails(session) == []

    async def test_once_expired_a_confirm_is_refused(self, session, customer, staff, service):
        appointment = await pending(session, customer, staff, service, booked_hours_ago=49)
        assert await expiry.expire_pending() == 1

        assert await self.confirm(staff, appointment) == "refused"


class TestWorker:
    async def test_the_worker_expires_them_and_each_side_gets_one_email(self, session, customer, staff, service, smtp):
        appointment = await pending(session, customer, staff, service, booked_hours_ago=49)

        await run_workers(2)

        assert await status_of(appointment) == "cancelled"
        emails = await deliver(smtp)
        assert sorted(m["To"] for m in emails) == sorted([customer.email, staff.email])
        assert set(smtp.count_by_message_id().values()) == {1}
        by_recipient = {m["To"]: text_part(m) for m in emails}
        assert "Not confirmed in time" in by_recipient[customer.email]
        assert "Не подтверждена вовремя" in by_recipient[staff.email]  # the staff member reads Russian
