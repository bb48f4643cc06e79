"""Issue 6, item 4: the rules around one staff member's calendar (API.md), one request at a time.
The races themselves are in tests/e2e/test_calendar_concurrency.py."""

import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from app.models import Appointment, AuditEntry, Reminder, Role, User, live_status_sql
from app.services.booking import cancellation
from app.services.scheduling.availability_engine import StaffCalendar, within_hours
from tests.assertions import assert_problem
from tests.factories import create_user, outbox
from tests.scheduling import URL, add_appointment, create_service, create_staff, days_ahead, headers_for, zulu

USERS = "/api/v1/users"
SERVICES = "/api/v1/services"


def utc(day, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


@pytest.fixture
async def staff(session):
    return await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], requires_confirmation=True)


@pytest.fixture
async def customer(session):
    return await create_user(session)


@pytest.fixture
async def as_admin(session):
    return await headers_for(await create_user(session, role=Role.admin))


async def booked(session, customer, staff, service, days: int = 5, hour: int = 10, status: str = "confirmed"):
    return await add_appointment(session, customer, staff, service, utc(days_ahead(days), hour), status=status)


async def status_of(session, appointment) -> str:
    query = select(Appointment.status).where(Appointment.id == appointment.id)
    return await session.scalar(query.execution_options(populate_existing=True))


class TestStaffHasBookings:
    @pytest.mark.parametrize("method, body", [("PATCH", {"role": "user"}), ("DELETE", None)])
    async def test_demoting_or_deactivating_is_refused_listing_them(
        self, client, session, staff, service, customer, as_admin, method, body
    ):
        later = await booked(session, customer, staff, service, days=6)
        sooner = await booked(session, customer, staff, service, days=5, status="pending")
        await booked(session, customer, staff, service, days=-2)  # past: does not count

        response = await client.request(method, f"{USERS}/{staff.id}", json=body, headers=as_admin)

        problem = assert_problem(response, 409, "staff_has_bookings")
        assert [a["id"] for a in problem["conflicting_appointments"]] == [str(sooner.id), str(later.id)]
        assert problem["conflicting_appointments"][0]["starts_at"] == zulu(sooner.starts_at)
        assert problem["conflicting_total"] == 2
        await session.refresh(staff)
        assert staff.role == Role.staff.value and staff.is_active

    async def test_the_list_is_bounded(self, client, session, staff, service, customer, as_admin, monkeypatch):
        monkeypatch.setattr(cancellation, "MAX_LISTED", 2)
        for day in (5, 6, 7):
            await booked(session, customer, staff, service, days=day)

        response = await client.patch(f"{USERS}/{staff.id}", json={"role": "user"}, headers=as_admin)

        problem = assert_problem(response, 409, "staff_has_bookings")
        assert len(problem["conflicting_appointments"]) == 2 and problem["conflicting_total"] == 3

    async def test_cancel_future_cancels_them_with_emails(self, client, session, staff, service, customer, as_admin):
        appointment = await booked(session, customer, staff, service)
        session.add(Reminder(appointment_id=appointment.id, offset_minutes=60, due_at=appointment.starts_at))
        await session.commit()

        response = await client.delete(f"{USERS}/{staff.id}?cancel_future=true", headers=as_admin)

        assert response.status_code == 204, response.text
        assert await status_of(session, appointment) == "cancelled"
        assert len(await outbox(session, to=customer.email, template="appointment_cancelled")) == 1
        reminders = await session.scalars(select(Reminder).where(Reminder.appointment_id == appointment.id))
        assert list(reminders) == []
        actions = await session.scalars(select(AuditEntry.action).where(AuditEntry.entity_id == str(appointment.id)))
        assert "appointment.cancel" in list(actions)

    async def test_a_staff_member_without_future_bookings_is_demoted(self, client, session, staff, as_admin):
        response = await client.patch(f"{USERS}/{staff.id}", json={"role": "user"}, headers=as_admin)

        assert response.status_code == 200 and response.json()["role"] == "user"

    async def test_other_edits_of_a_busy_staff_member_pass(self, client, session, staff, service, customer, as_admin):
        await booked(session, customer, staff, service)

        response = await client.patch(f"{USERS}/{staff.id}", json={"full_name": "New Name"}, headers=as_admin)

        assert response.status_code == 200, response.text


class TestCurrentRole:
    async def test_a_demoted_staff_member_cannot_confirm_with_an_old_token(
        self, client, session, staff, service, customer
    ):
        appointment = await booked(session, customer, staff, service, status="pending")
        headers = await headers_for(staff)
        # The role changes behind the token's back (no session revocation): the token still says staff.
        await session.execute(update(User).where(User.id == staff.id).values(role=Role.user.value))
        await session.commit()

        for action in ("confirm", "cancel"):
            response = await client.post(f"{URL}/{appointment.id}/{action}", headers=headers)
            assert response.status_code in (403, 404), response.text
        assert await status_of(session, appointment) == "pending"


class TestServiceHasBookings:
    async def test_deactivating_is_refused_then_cancels_with_cancel_future(
        self, client, session, staff, service, customer, as_admin
    ):
        appointment = await booked(session, customer, staff, service)

        refused = await client.delete(f"{SERVICES}/{service.id}", headers=as_admin)
        problem = assert_problem(refused, 409, "service_has_bookings")
        assert [a["id"] for a in problem["conflicting_appointments"]] == [str(appointment.id)]
        patched = await client.patch(f"{SERVICES}/{service.id}", json={"is_active": False}, headers=as_admin)
        assert_problem(patched, 409, "service_has_bookings")

        response = await client.delete(f"{SERVICES}/{service.id}?cancel_future=true", headers=as_admin)
        assert response.status_code == 204, response.text
        assert await status_of(session, appointment) == "cancelled"
        assert len(await outbox(session, to=staff.email, template="appointment_cancelled")) == 1

    async def test_removing_a_provider_with_bookings(self, client, session, staff, service, customer, as_admin):
        other = await create_staff(session, timezone="UTC")
        await client.patch(
            f"{SERVICES}/{service.id}", json={"staff_ids": [str(staff.id), str(other.id)]}, headers=as_admin
        )
        appointment = await booked(session, customer, staff, service)

        without_other = await client.patch(
            f"{SERVICES}/{service.id}", json={"staff_ids": [str(staff.id)]}, headers=as_admin
        )
        assert without_other.status_code == 200, without_other.text
        url = f"{SERVICES}/{service.id}"
        assert_problem(await client.patch(url, json={"staff_ids": []}, headers=as_admin), 409, "service_has_bookings")

        response = await client.patch(f"{url}?cancel_future=true", json={"staff_ids": []}, headers=as_admin)
        assert response.status_code == 200 and response.json()["staff_ids"] == []
        assert await status_of(session, appointment) == "cancelled"


class TestReschedule:
    async def test_a_stale_sequence_is_appointment_changed(self, client, session, staff, service, customer):
        appointment = await booked(session, customer, staff, service)
        headers = await headers_for(customer)
        url = f"{URL}/{appointment.id}"
        moved = await client.patch(
            url, json={"starts_at": zulu(utc(days_ahead(5), 12)), "sequence": 0}, headers=headers
        )
        assert moved.status_code == 200 and moved.json()["sequence"] == 1

        stale = await client.patch(
            url, json={"starts_at": zulu(utc(days_ahead(5), 14)), "sequence": 0}, headers=headers
        )

        assert_problem(stale, 409, "appointment_changed")
        assert len(await outbox(session, to=customer.email, template="appointment_rescheduled")) == 1

    async def test_sequence_alone_is_refused(self, client, session, staff, service, customer):
        appointment = await booked(session, customer, staff, service)

        response = await client.patch(
            f"{URL}/{appointment.id}", json={"sequence": 0}, headers=await headers_for(customer)
        )

        assert_problem(response, 422, "validation_error")

    async def test_a_client_cannot_move_into_the_cut_off(self, client, session, staff, service, customer):
        appointment = await booked(session, customer, staff, service)
        soon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=5)

        response = await client.patch(
            f"{URL}/{appointment.id}", json={"starts_at": zulu(soon)}, headers=await headers_for(customer)
        )

        problem = assert_problem(response, 409, "cancellation_window_closed")
        assert problem["new_start"] == zulu(soon)

    async def test_its_staff_member_may(self, client, session, customer):
        staff = await create_staff(session, timezone="UTC", hours=(("00:00", "23:59"),))
        service = await create_service(session, [staff], duration=30)
        appointment = await booked(session, customer, staff, service)
        soon = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=5)

        response = await client.patch(
            f"{URL}/{appointment.id}", json={"starts_at": zulu(soon)}, headers=await headers_for(staff)
        )

        assert response.status_code == 200, response.text


class TestHoursChangesListBookings:
    async def test_schedule_lists_live_future_bookings_outside_the_new_hours(
        self, client, session, staff, service, customer
    ):
        morning = await booked(session, customer, staff, service, hour=9)
        afternoon = await booked(session, customer, staff, service, hour=15)
        await booked(session, customer, staff, service, hour=10, status="cancelled")
        week = [{"weekday": d, "start": "12:00", "end": "14:00"} for d in range(7)]
        week += [{"weekday": d, "start": "14:00", "end": "18:00"} for d in range(7)]

        response = await client.put(
            f"/api/v1/staff/{staff.id}/schedule",
            json={"timezone": "UTC", "intervals": week},
            headers=await headers_for(staff),
        )

        assert response.status_code == 200, response.text
        assert [a["id"] for a in response.json()["conflicting_appointments"]] == [str(morning.id)]
        assert str(afternoon.id) not in response.text

    async def test_override_lists_that_dates_bookings_outside_its_hours(
        self, client, session, staff, service, customer
    ):
        that_day = await booked(session, customer, staff, service, days=5, hour=9)
        await booked(session, customer, staff, service, days=6, hour=9)

        response = await client.post(
            f"/api/v1/staff/{staff.id}/overrides",
            json={"date": str(days_ahead(5)), "intervals": []},
            headers=await headers_for(staff),
        )

        assert response.status_code == 201, response.text
        assert [a["id"] for a in response.json()["conflicting_appointments"]] == [str(that_day.id)]


class TestOneDefinitionOfLive:
    def test_the_sql_text_is_built_from_the_constant(self):
        assert live_status_sql("a.status") == "a.status IN ('pending', 'confirmed')"
        constraint = next(c for c in Appointment.__table__.constraints if c.name == "no_double_booking")
        assert str(constraint.where) == live_status_sql()

    def test_within_hours_joins_touching_intervals(self):
        day = days_ahead(3)
        weekly = {day.weekday(): [(time(9), time(12)), (time(12), time(17))]}
        calendar = StaffCalendar(staff_id=uuid.uuid4(), zone=ZoneInfo("UTC"), weekly=weekly)

        assert within_hours(calendar, utc(day, 11), utc(day, 13))
        assert not within_hours(calendar, utc(day, 16), utc(day, 18))
        calendar.overrides[day] = []
        assert not within_hours(calendar, utc(day, 10), utc(day, 11))
