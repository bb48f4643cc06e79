"""`/api/v1/appointments` and `/api/v1/appointment-series`: booking, the state machine, permissions,
idempotency, calendar files, recurring series and the emails they send."""

import asyncio
import uuid
from datetime import time, timedelta

import icalendar
import pytest
from sqlalchemy import func, select, update

from app.database import get_sessionmaker
from app.errors import AppointmentChanged, SlotUnavailable
from app.models import Appointment, AppointmentSeries, AuditEntry, OutboxMessage, Role, User
from app.services.booking import appointments, booking
from app.services.demo import seed_demo
from app.services.messaging import mailer
from app.utils.time import local_to_utc, utcnow
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, outbox
from tests.scheduling import (
    BERLIN,
    URL,
    add_appointment,
    booking_body,
    create_service,
    create_staff,
    days_ahead,
    headers_for,
    local,
    zulu,
)

SERIES_URL = "/api/v1/appointment-series"


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Alice Novak")


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], name="Massage")


@pytest.fixture
async def customer(session):
    return await create_user(session, full_name="Uma User", timezone="Europe/London")


@pytest.fixture
async def as_customer(customer):
    return await headers_for(customer)


@pytest.fixture
async def as_staff(staff):
    return await headers_for(staff)


@pytest.fixture
async def as_admin(session):
    return await headers_for(await create_user(session, role=Role.admin))


@pytest.fixture
async def as_stranger(session):
    return await headers_for(await create_user(session))


DAY = days_ahead(7)
TEN = local(DAY, 10)


async def book(client, headers, service, staff, starts_at=TEN, **extra):
    return await client.post(URL, json=booking_body(service, staff, starts_at, **extra), headers=headers)


async def booked(client, headers, service, staff, starts_at=TEN, **extra) -> dict:
    response = await book(client, headers, service, staff, starts_at, **extra)
    assert response.status_code == 201, response.text
    return response.json()


async def row(session, appointment_id) -> Appointment:
    session.expire_all()
    return await session.get(Appointment, uuid.UUID(str(appointment_id)))


def calendar(message: OutboxMessage, index: int = 0) -> icalendar.Calendar:
    return icalendar.Calendar.from_ical(message.payload["attachments"][index]["content"])


def vevent(cal: icalendar.Calendar) -> icalendar.Event:
    return cal.walk("VEVENT")[0]


class TestCreate:
    async def test_books_a_free_slot(self, client, session, service, staff, customer, as_customer):
        response = await book(client, as_customer, service, staff, notes="First visit")

        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {
            "id", "series_id", "client_id", "staff_id", "service_id", "starts_at", "ends_at", "status",
            "notes", "cancellation_reason", "cancelled_by", "sequence", "session_key", "seat", "resource_id",
            "created_at", "updated_at",
        }  # fmt: skip
        assert body["session_key"] is None and body["seat"] is None
        assert body["status"] == "confirmed"
        assert body["starts_at"] == zulu(TEN) and body["ends_at"] == zulu(TEN + timedelta(hours=1))
        assert body["client_id"] == str(customer.id) and body["staff_id"] == str(staff.id)
        assert body["series_id"] is None and body["cancelled_by"] is None and body["notes"] == "First visit"
        assert body["created_at"].endswith("Z")

    async def test_pending_when_the_service_requires_confirmation(self, client, session, staff, as_customer):
        service = await create_service(session, [staff], requires_confirmation=True)

        body = await booked(client, as_customer, service, staff)

        assert body["status"] == "pending"

    async def test_blocked_range_includes_the_buffers(self, client, session, staff, as_customer):
        service = await create_service(session, [staff], buffer_before=10, buffer_after=15)

        body = await booked(client, as_customer, service, staff)

        appointment = await row(session, body["id"])
        assert appointment.blocked_from == TEN - timedelta(minutes=10)
        assert appointment.blocked_until == TEN + timedelta(minutes=75)

    @pytest.mark.parametrize(
        "starts_at",
        [local(DAY, 20), local(DAY, 10, 15), local(days_ahead(500), 10)],
        ids=["outside-hours", "off-the-grid", "beyond-max-advance"],
    )
    async def test_time_not_offered_is_422(self, client, service, staff, as_customer, starts_at):
        response = await book(client, as_customer, service, staff, starts_at)

        body = assert_problem(response, 422, "slot_not_offered")
        assert body["occurrences"] == [zulu(starts_at)]

    async def test_too_little_notice_is_422(self, client, session, staff, as_customer):
        service = await create_service(session, [staff], min_notice=10 * 24 * 60)

        assert_problem(await book(client, as_customer, service, staff), 422, "slot_not_offered")

    async def test_naive_datetime_is_422(self, client, service, staff, as_customer):
        response = await book(client, as_customer, service, staff, TEN.replace(tzinfo=None))

        assert_problem(response, 422, "validation_error")

    async def test_unknown_fields_are_refused(self, client, service, staff, as_customer):
        response = await book(client, as_customer, service, staff, status="completed")

        assert_problem(response, 422, "validation_error")

    async def test_a_taken_slot_is_409(self, client, session, service, staff, as_customer, as_stranger):
        await booked(client, as_stranger, service, staff)

        body = assert_problem(await book(client, as_customer, service, staff), 409, "slot_unavailable")

        assert body["conflicts"] == [zulu(TEN)]

    async def test_a_clash_through_the_buffers_is_409(self, client, session, staff, as_customer, as_stranger):
        service = await create_service(session, [staff], buffer_after=30)
        await booked(client, as_stranger, service, staff)

        response = await book(client, as_customer, service, staff, TEN + timedelta(hours=1))

        assert_problem(response, 409, "slot_unavailable")

    async def test_the_exclusion_constraint_is_the_guarantee(self, session, service, staff, customer):
        """Even when every check before it was passed (a race), the database refuses the second booking."""
        await add_appointment(session, customer, staff, service, TEN + timedelta(minutes=30), status="pending")
        clash = appointments.new_appointment(service, customer, staff.id, TEN)

        with pytest.raises(SlotUnavailable) as caught:
            await appointments.insert_all(session, customer, [clash])

        assert caught.value.extra["conflicts"] == [zulu(TEN)]
        await session.rollback()

    async def test_simultaneous_requests_book_once(self, client, session, service, staff):
        people = [await headers_for(await create_user(session)) for _ in range(8)]

        responses = await asyncio.gather(*(book(client, headers, service, staff) for headers in people))

        assert sorted(r.status_code for r in responses) == [201] + [409] * 7
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"slot_unavailable"}

    async def test_a_cancelled_slot_can_be_booked_again(self, client, session, service, staff, customer, as_customer):
        await add_appointment(session, customer, staff, service, TEN, status="cancelled")

        await booked(client, as_customer, service, staff)

    async def test_staff_must_provide_the_service(self, client, session, service, as_customer):
        other = await create_staff(session)

        assert_problem(await book(client, as_customer, service, other), 422, "slot_not_offered")

    async def test_unknown_or_inactive_service_is_404(self, client, session, service, staff, as_customer):
        service.is_active = False
        await session.commit()

        assert_problem(await book(client, as_customer, service, staff), 404, "not_found")

    async def test_unverified_users_cannot_book(self, client, session, service, staff):
        headers = await headers_for(await create_user(session, verified=False))

        assert_problem(await book(client, headers, service, staff), 403, "email_not_verified")

    async def test_unauthenticated_is_401(self, client, service, staff):
        assert_unauthorized(await client.post(URL, json=booking_body(service, staff, TEN)))

    async def test_writes_an_audit_entry(self, client, session, service, staff, customer, as_customer):
        body = await booked(client, as_customer, service, staff)

        entry = await session.scalar(select(AuditEntry).where(AuditEntry.entity_id == body["id"]))
        assert entry.action == "appointment.create" and entry.actor_id == customer.id
        assert entry.after["status"] == "confirmed"


class TestBookingForSomeoneElse:
    async def test_a_user_cannot_book_for_another_user(self, client, session, service, staff, as_customer):
        other = await create_user(session)

        response = await book(client, as_customer, service, staff, client_id=str(other.id))

        assert_problem(response, 403, "forbidden")

    async def test_booking_for_oneself_by_id_is_fine(self, client, service, staff, customer, as_customer):
        body = await booked(client, as_customer, service, staff, client_id=str(customer.id))

        assert body["client_id"] == str(customer.id)

    async def test_staff_book_a_client_into_their_own_calendar(self, client, service, staff, customer, as_staff):
        body = await booked(client, as_staff, service, staff, client_id=str(customer.id))

        assert body["client_id"] == str(customer.id) and body["staff_id"] == str(staff.id)

    async def test_staff_cannot_book_clients_into_another_calendar(self, client, session, staff, customer):
        colleague = await create_staff(session)
        service = await create_service(session, [staff, colleague])

        response = await book(client, await headers_for(colleague), service, staff, client_id=str(customer.id))

        assert_problem(response, 403, "forbidden")

    async def test_admin_books_for_anyone(self, client, service, staff, customer, as_admin):
        body = await booked(client, as_admin, service, staff, client_id=str(customer.id))

        assert body["client_id"] == str(customer.id)

    async def test_unknown_client_is_404(self, client, service, staff, as_admin):
        response = await book(client, as_admin, service, staff, client_id=str(uuid.uuid4()))

        assert_problem(response, 404, "not_found")


class TestList:
    @pytest.fixture
    async def three(self, session, service, staff, customer):
        other_client = await create_user(session)
        colleague = await create_staff(session)
        mine = await add_appointment(session, customer, staff, service, TEN)
        cancelled = await add_appointment(
            session, customer, staff, service, TEN + timedelta(days=1), status="cancelled"
        )
        foreign = await add_appointment(session, other_client, colleague, service, TEN)
        return mine, cancelled, foreign, colleague

    async def test_a_client_sees_their_own(self, client, three, as_customer):
        mine, cancelled, *_ = three

        body = (await client.get(URL, headers=as_customer)).json()

        assert [item["id"] for item in body["items"]] == [str(mine.id), str(cancelled.id)]
        assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0

    async def test_staff_see_their_calendar(self, client, three):
        *_, foreign, colleague = three

        body = (await client.get(URL, headers=await headers_for(colleague))).json()

        assert [item["id"] for item in body["items"]] == [str(foreign.id)]

    async def test_admin_sees_all_and_filters(self, client, three, customer, as_admin):
        mine, cancelled, foreign, colleague = three

        everything = (await client.get(URL, headers=as_admin)).json()
        by_client = (await client.get(URL, params={"client_id": str(customer.id)}, headers=as_admin)).json()
        by_staff = (await client.get(URL, params={"staff_id": str(colleague.id)}, headers=as_admin)).json()

        assert everything["total"] == 3
        assert {item["id"] for item in by_client["items"]} == {str(mine.id), str(cancelled.id)}
        assert [item["id"] for item in by_staff["items"]] == [str(foreign.id)]

    async def test_filters_by_status_and_time(self, client, three, as_customer):
        mine, cancelled, *_ = three

        live = (await client.get(URL, params={"status": "confirmed"}, headers=as_customer)).json()
        window = {"from": (TEN + timedelta(hours=1)).isoformat(), "to": (TEN + timedelta(days=2)).isoformat()}
        later = (await client.get(URL, params=window, headers=as_customer)).json()

        assert [item["id"] for item in live["items"]] == [str(mine.id)]
        assert [item["id"] for item in later["items"]] == [str(cancelled.id)]

    async def test_paginates(self, client, three, as_customer):
        mine, cancelled, *_ = three

        body = (await client.get(URL, params={"limit": 1, "offset": 1}, headers=as_customer)).json()

        assert body["total"] == 2 and [item["id"] for item in body["items"]] == [str(cancelled.id)]

    async def test_naive_filter_is_422(self, client, as_customer):
        response = await client.get(URL, params={"from": "2026-12-01T10:00:00"}, headers=as_customer)

        assert_problem(response, 422, "validation_error")


class TestGet:
    async def test_client_staff_and_admin_see_it(self, client, session, service, staff, customer, as_customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)

        for headers in (
            as_customer,
            await headers_for(staff),
            await headers_for(await create_user(session, role=Role.admin)),
        ):
            response = await client.get(f"{URL}/{appointment.id}", headers=headers)
            assert response.status_code == 200 and response.json()["id"] == str(appointment.id)

    async def test_unknown_id_is_404(self, client, as_customer):
        assert_problem(await client.get(f"{URL}/{uuid.uuid4()}", headers=as_customer), 404, "not_found")


class TestPermissions:
    """Broken object level authorisation: another person's appointment does not exist for you."""

    @pytest.fixture
    async def theirs(self, session, service, staff):
        return await add_appointment(session, await create_user(session), staff, service, TEN)

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("GET", "", None),
            ("GET", ".ics", None),
            ("PATCH", "", {"notes": "mine now"}),
            ("POST", "/confirm", None),
            ("POST", "/cancel", {}),
            ("POST", "/complete", None),
            ("POST", "/no-show", None),
        ],
    )
    async def test_others_get_404(self, client, session, theirs, as_customer, method, suffix, body):
        other_staff = await headers_for(await create_staff(session))

        for headers in (as_customer, other_staff):
            response = await client.request(method, f"{URL}/{theirs.id}{suffix}", json=body, headers=headers)
            assert_problem(response, 404, "not_found")
        assert (await row(session, theirs.id)).status == "confirmed"

    async def test_a_client_cannot_confirm_or_complete(self, client, session, service, staff, customer, as_customer):
        appointment = await add_appointment(session, customer, staff, service, TEN, status="pending")

        for action in ("confirm", "complete", "no-show"):
            assert_problem(await client.post(f"{URL}/{appointment.id}/{action}", headers=as_customer), 403, "forbidden")

    async def test_someone_elses_series_is_404(self, client, session, service, staff, as_customer):
        series = AppointmentSeries(
            rrule="FREQ=DAILY;COUNT=1", client_id=staff.id, staff_id=staff.id, service_id=service.id
        )
        session.add(series)
        await session.commit()

        response = await client.post(f"{SERIES_URL}/{series.id}/cancel", json={}, headers=as_customer)

        assert_problem(response, 404, "not_found")


class TestReschedule:
    async def test_moves_to_a_free_slot(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)
        new_start = local(DAY + timedelta(days=1), 14)

        response = await client.patch(
            f"{URL}/{body['id']}", json={"starts_at": new_start.isoformat()}, headers=as_customer
        )

        assert response.status_code == 200, response.text
        moved = response.json()
        assert moved["starts_at"] == zulu(new_start) and moved["ends_at"] == zulu(new_start + timedelta(hours=1))
        appointment = await row(session, body["id"])
        assert appointment.sequence == 1 and appointment.blocked_from == new_start
        actions = await session.scalars(select(AuditEntry.action).where(AuditEntry.entity_id == body["id"]))
        assert list(actions) == ["appointment.create", "appointment.reschedule"]

    async def test_may_overlap_its_own_current_range(self, client, session, staff, as_customer):
        service = await create_service(session, [staff], buffer_after=30)
        body = await booked(client, as_customer, service, staff)

        response = await client.patch(
            f"{URL}/{body['id']}", json={"starts_at": (TEN + timedelta(hours=1)).isoformat()}, headers=as_customer
        )

        assert response.status_code == 200, response.text

    async def test_into_a_taken_slot_is_409(self, client, session, service, staff, as_customer, as_stranger):
        await booked(client, as_stranger, service, staff, TEN + timedelta(hours=2))
        body = await booked(client, as_customer, service, staff)

        response = await client.patch(
            f"{URL}/{body['id']}", json={"starts_at": (TEN + timedelta(hours=2)).isoformat()}, headers=as_customer
        )

        assert_problem(response, 409, "slot_unavailable")
        assert (await row(session, body["id"])).starts_at == TEN

    async def test_outside_hours_is_422(self, client, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)

        response = await client.patch(
            f"{URL}/{body['id']}", json={"starts_at": local(DAY, 7).isoformat()}, headers=as_customer
        )

        assert_problem(response, 422, "slot_not_offered")

    async def test_a_client_inside_the_cut_off_is_409_but_staff_may(self, client, session, customer, as_customer):
        staff = await create_staff(session, timezone="UTC", hours=(("00:00", "23:30"),))
        service = await create_service(session, [staff], duration=30, min_notice=0)
        soon = (utcnow() + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
        appointment = await add_appointment(session, customer, staff, service, soon)
        later = {"starts_at": (soon + timedelta(hours=2)).isoformat()}

        refused = await client.patch(f"{URL}/{appointment.id}", json=later, headers=as_customer)
        moved = await client.patch(f"{URL}/{appointment.id}", json=later, headers=await headers_for(staff))

        assert_problem(refused, 409, "cancellation_window_closed")
        assert moved.status_code == 200, moved.text

    async def test_simultaneous_moves_into_one_slot(self, client, session, service, staff):
        moves = []
        for n in range(8):
            person = await create_user(session)
            appointment = await add_appointment(session, person, staff, service, TEN + timedelta(days=1, hours=n - 3))
            moves.append((appointment.id, await headers_for(person)))
        target = {"starts_at": local(DAY, 15).isoformat()}

        responses = await asyncio.gather(*(client.patch(f"{URL}/{i}", json=target, headers=h) for i, h in moves))

        assert sorted(r.status_code for r in responses) == [200] + [409] * 7
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"slot_unavailable"}

    async def test_to_the_same_time_changes_nothing(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)

        response = await client.patch(f"{URL}/{body['id']}", json={"starts_at": TEN.isoformat()}, headers=as_customer)

        assert response.status_code == 200 and response.json() == body
        assert len(await outbox(session, template="appointment_rescheduled")) == 0

    async def test_a_cancelled_appointment_cannot_move(self, client, session, service, staff, customer, as_customer):
        appointment = await add_appointment(session, customer, staff, service, TEN, status="cancelled")

        response = await client.patch(
            f"{URL}/{appointment.id}", json={"starts_at": local(DAY, 12).isoformat()}, headers=as_customer
        )

        assert_problem(response, 409, "invalid_transition")

    async def test_notes_alone(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)

        response = await client.patch(f"{URL}/{body['id']}", json={"notes": "Bring the forms"}, headers=as_customer)

        assert response.status_code == 200 and response.json()["notes"] == "Bring the forms"
        assert response.json()["starts_at"] == body["starts_at"]
        assert (await row(session, body["id"])).sequence == 0

    @pytest.mark.parametrize(
        "payload", [{}, {"starts_at": None}, {"starts_at": "2026-12-01T10:00:00"}, {"status": "x"}]
    )
    async def test_invalid_bodies_are_422(self, client, session, service, staff, customer, as_customer, payload):
        appointment = await add_appointment(session, customer, staff, service, TEN)

        response = await client.patch(f"{URL}/{appointment.id}", json=payload, headers=as_customer)

        assert_problem(response, 422, "validation_error")


class TestConfirm:
    @pytest.fixture
    async def pending(self, session, service, staff, customer):
        return await add_appointment(session, customer, staff, service, TEN, status="pending")

    async def test_its_staff_member_confirms(self, client, session, pending, as_staff):
        response = await client.post(f"{URL}/{pending.id}/confirm", headers=as_staff)

        assert response.status_code == 200 and response.json()["status"] == "confirmed"
        assert (await row(session, pending.id)).sequence == 1

    async def test_an_admin_confirms(self, client, pending, as_admin):
        response = await client.post(f"{URL}/{pending.id}/confirm", headers=as_admin)

        assert response.status_code == 200 and response.json()["status"] == "confirmed"

    async def test_confirming_twice_is_409(self, client, pending, as_staff):
        await client.post(f"{URL}/{pending.id}/confirm", headers=as_staff)

        assert_problem(await client.post(f"{URL}/{pending.id}/confirm", headers=as_staff), 409, "invalid_transition")


class TestCancel:
    async def test_the_client_cancels_and_the_slot_is_free_again(
        self, client, session, service, staff, customer, as_customer, as_stranger
    ):
        body = await booked(client, as_customer, service, staff)

        response = await client.post(
            f"{URL}/{body['id']}/cancel", json={"reason": "Feeling unwell"}, headers=as_customer
        )

        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert cancelled["status"] == "cancelled" and cancelled["cancellation_reason"] == "Feeling unwell"
        assert cancelled["cancelled_by"] == str(customer.id)
        await booked(client, as_stranger, service, staff)

    async def test_without_a_body(self, client, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)

        response = await client.post(f"{URL}/{body['id']}/cancel", headers=as_customer)

        assert response.status_code == 200 and response.json()["cancellation_reason"] is None

    async def test_a_client_past_the_cut_off_is_409_staff_may(
        self, client, session, service, staff, customer, as_customer
    ):
        appointment = await add_appointment(session, customer, staff, service, utcnow() + timedelta(hours=5))

        assert_problem(
            await client.post(f"{URL}/{appointment.id}/cancel", headers=as_customer), 409, "cancellation_window_closed"
        )
        response = await client.post(f"{URL}/{appointment.id}/cancel", headers=await headers_for(staff))
        assert response.status_code == 200 and response.json()["cancelled_by"] == str(staff.id)

    async def test_a_cancel_checked_against_a_time_moved_meanwhile_is_409(self, session, service, staff, customer):
        """The cut-off is checked on the appointment as the cancel read it; a reschedule into the
        cut-off may commit before the cancel's write (both hold the calendar lock shared). The
        write then finds a newer version and refuses, instead of cancelling inside the cut-off."""
        appointment = await add_appointment(session, customer, staff, service, utcnow() + timedelta(days=3))
        read = await session.get(Appointment, appointment.id)  # the cancel's read, before the move commits
        async with get_sessionmaker()() as other, other.begin():
            shift = timedelta(days=3) - timedelta(hours=2)  # two hours from now: inside the 24 h cut-off
            await other.execute(
                update(Appointment)
                .where(Appointment.id == appointment.id)
                .values(
                    starts_at=Appointment.starts_at - shift,
                    ends_at=Appointment.ends_at - shift,
                    blocked_from=Appointment.blocked_from - shift,
                    blocked_until=Appointment.blocked_until - shift,
                    sequence=Appointment.sequence + 1,
                )
            )
        assert read.starts_at > utcnow() + timedelta(days=2)  # what the check sees

        appointment_id = appointment.id
        with pytest.raises(AppointmentChanged):
            await booking.cancel(session, customer, appointment_id, None)
        await session.rollback()
        assert (await session.get(Appointment, appointment_id)).status == "confirmed"

    async def test_cancelling_twice_is_409(self, client, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)
        await client.post(f"{URL}/{body['id']}/cancel", headers=as_customer)

        assert_problem(await client.post(f"{URL}/{body['id']}/cancel", headers=as_customer), 409, "invalid_transition")

    async def test_concurrent_changes_compare_and_swap(self, client, session, service, staff, customer, as_admin):
        appointment = await add_appointment(session, customer, staff, service, TEN, status="pending")
        as_staff = await headers_for(staff)

        results = await asyncio.gather(
            client.post(f"{URL}/{appointment.id}/cancel", headers=as_admin),
            client.post(f"{URL}/{appointment.id}/confirm", headers=as_staff),
            client.post(f"{URL}/{appointment.id}/cancel", headers=as_staff),
        )

        statuses = sorted(r.status_code for r in results)
        final = (await row(session, appointment.id)).status
        assert statuses in ([200, 200, 409], [200, 409, 409])
        for response in results:  # cancelled already, or changed between its read and its write
            if response.status_code == 409:
                assert response.json()["code"] in ("invalid_transition", "appointment_changed")
        assert final == "cancelled" or (final == "confirmed" and statuses == [200, 409, 409])


class TestComplete:
    @pytest.fixture
    async def started(self, session, service, staff, customer):
        return await add_appointment(session, customer, staff, service, utcnow() - timedelta(minutes=30))

    @pytest.mark.parametrize(("action", "status"), [("complete", "completed"), ("no-show", "no_show")])
    async def test_its_staff_member_records_the_outcome(self, client, session, started, as_staff, action, status):
        response = await client.post(f"{URL}/{started.id}/{action}", headers=as_staff)

        assert response.status_code == 200 and response.json()["status"] == status
        assert_problem(await client.post(f"{URL}/{started.id}/{action}", headers=as_staff), 409, "invalid_transition")

    @pytest.mark.parametrize("action", ["complete", "no-show"])
    async def test_not_before_the_start(self, client, session, service, staff, customer, as_staff, action):
        appointment = await add_appointment(session, customer, staff, service, TEN)

        response = await client.post(f"{URL}/{appointment.id}/{action}", headers=as_staff)

        assert_problem(response, 409, "appointment_not_started")

    async def test_a_pending_appointment_cannot_complete(self, client, session, service, staff, customer, as_admin):
        appointment = await add_appointment(
            session, customer, staff, service, utcnow() - timedelta(hours=2), status="pending"
        )

        assert_problem(
            await client.post(f"{URL}/{appointment.id}/complete", headers=as_admin), 409, "invalid_transition"
        )

    async def test_a_completed_one_cannot_be_cancelled(self, client, started, as_staff):
        await client.post(f"{URL}/{started.id}/complete", headers=as_staff)

        assert_problem(await client.post(f"{URL}/{started.id}/cancel", headers=as_staff), 409, "invalid_transition")


class TestIdempotency:
    async def test_the_same_request_twice_books_once(self, client, session, service, staff, as_customer):
        headers = {**as_customer, "Idempotency-Key": "book-1"}

        first = await book(client, headers, service, staff)
        second = await book(client, headers, service, staff)

        assert first.status_code == second.status_code == 201
        assert first.json() == second.json()
        assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 1
        assert len(await outbox(session, template="appointment_booked")) == 2

    async def test_the_same_key_with_another_body_is_422(self, client, service, staff, as_customer):
        headers = {**as_customer, "Idempotency-Key": "book-2"}
        await booked(client, headers, service, staff)

        response = await book(client, headers, service, staff, TEN + timedelta(hours=1))

        assert_problem(response, 422, "idempotency_key_reused")

    async def test_keys_belong_to_one_user(self, client, service, staff, as_customer, as_stranger):
        await booked(client, {**as_customer, "Idempotency-Key": "k"}, service, staff)

        response = await book(client, {**as_stranger, "Idempotency-Key": "k"}, service, staff)

        assert_problem(response, 409, "slot_unavailable")

    async def test_a_refusal_is_the_answer_for_that_key(self, client, session, service, staff, as_customer):
        """As at Stripe: once the change ran, its answer (even a 4xx) is what the key replays; another
        attempt (another slot) takes a new key."""
        headers = {**as_customer, "Idempotency-Key": "retry-me"}
        first = await book(client, headers, service, staff, local(DAY, 20))
        assert_problem(first, 422, "slot_not_offered")

        again = await book(client, headers, service, staff, local(DAY, 20))
        other_slot = await book(client, headers, service, staff)
        new_key = await book(client, {**as_customer, "Idempotency-Key": "next"}, service, staff)

        assert_problem(again, 422, "slot_not_offered")
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert_problem(other_slot, 422, "idempotency_key_reused")
        assert new_key.status_code == 201, new_key.text
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 1

    async def test_concurrent_duplicates_get_the_first_answer(self, client, session, service, staff, as_customer):
        headers = {**as_customer, "Idempotency-Key": "burst"}

        responses = await asyncio.gather(*(book(client, headers, service, staff) for _ in range(20)))

        assert [r.status_code for r in responses] == [201] * 20
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
        assert len({r.json()["id"] for r in responses}) == 1
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 1

    async def test_state_changes_replay_too(self, client, session, service, staff, customer, as_customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)
        headers = {**as_customer, "Idempotency-Key": "cancel-1"}

        first = await client.post(f"{URL}/{appointment.id}/cancel", json={"reason": "x"}, headers=headers)
        again = await client.post(f"{URL}/{appointment.id}/cancel", json={"reason": "x"}, headers=headers)

        assert first.status_code == again.status_code == 200 and first.json() == again.json()
        assert len(await outbox(session, template="appointment_cancelled")) == 2


class TestIcs:
    async def test_a_valid_calendar_file(self, client, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)

        response = await client.get(f"{URL}/{body['id']}.ics", headers=as_customer)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/calendar")
        assert "attachment" in response.headers["content-disposition"]
        cal = icalendar.Calendar.from_ical(response.text)
        event = vevent(cal)
        assert str(cal["METHOD"]) == "PUBLISH" and str(cal["VERSION"]) == "2.0"
        assert str(event["UID"]) == f"{body['id']}@c3po" and int(event["SEQUENCE"]) == 0
        assert event.decoded("DTSTART") == TEN and event.decoded("DTEND") == TEN + timedelta(hours=1)
        assert str(event["STATUS"]) == "CONFIRMED"
        assert "Massage" in str(event["SUMMARY"]) and "Alice Novak" in str(event["SUMMARY"])

    async def test_the_sequence_grows_with_each_change(self, client, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff)
        await client.patch(f"{URL}/{body['id']}", json={"starts_at": local(DAY, 15).isoformat()}, headers=as_customer)

        cal = icalendar.Calendar.from_ical((await client.get(f"{URL}/{body['id']}.ics", headers=as_customer)).text)

        assert int(vevent(cal)["SEQUENCE"]) == 1 and vevent(cal).decoded("DTSTART") == local(DAY, 15)


class TestRecurring:
    async def test_books_a_weekly_series(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff, recurrence={"rrule": "FREQ=WEEKLY;INTERVAL=1;COUNT=6"})

        assert body["series_id"] and body["starts_at"] == zulu(TEN)
        rows = (await session.scalars(select(Appointment).order_by(Appointment.starts_at))).all()
        assert [r.starts_at for r in rows] == [local(DAY + timedelta(weeks=n), 10) for n in range(6)]
        assert {str(r.series_id) for r in rows} == {body["series_id"]}
        listed = await client.get(URL, params={"series_id": body["series_id"]}, headers=as_customer)
        assert listed.json()["total"] == 6

    async def test_keeps_the_local_time_across_a_dst_change(self, client, session, service, staff, as_customer):
        first_day = _days_before_next_dst_change(weeks=2)
        start = local(first_day, 10)

        await booked(client, as_customer, service, staff, start, recurrence={"rrule": "FREQ=WEEKLY;COUNT=4"})

        rows = (await session.scalars(select(Appointment).order_by(Appointment.starts_at))).all()
        local_times = {r.starts_at.astimezone(start.tzinfo).time() for r in rows}
        offsets = {r.starts_at.astimezone(start.tzinfo).utcoffset() for r in rows}
        assert local_times == {start.time()} and len(offsets) == 2  # same wall time, both sides of the change

    async def test_a_wall_time_the_clocks_skip_refuses_the_series(self, client, session, customer, as_customer):
        staff = await create_staff(session, hours=(("00:00", "06:00"),))
        service = await create_service(session, [staff], duration=30)
        days = (days_ahead(n) for n in range(14, 400))
        gap_day = next(day for day in days if local_to_utc(day, time(2, 30), BERLIN) is None)

        first = local(gap_day - timedelta(weeks=1), 2, 30)

        response = await book(client, as_customer, service, staff, first, recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"})

        body = assert_problem(response, 422, "slot_not_offered")
        assert len(body["occurrences"]) == 1 and body["occurrences"][0].startswith(gap_day.isoformat())
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 0

    @pytest.mark.parametrize(
        ("rrule", "count", "step"),
        [
            ("FREQ=DAILY;INTERVAL=2;COUNT=3", 3, timedelta(days=2)),
            (f"FREQ=DAILY;UNTIL={(DAY + timedelta(days=3)):%Y%m%d}", 4, timedelta(days=1)),
            (
                f"FREQ=WEEKLY;UNTIL={zulu(TEN + timedelta(weeks=2)).replace('-', '').replace(':', '')}",
                3,
                timedelta(weeks=1),
            ),
        ],
    )
    async def test_interval_count_and_until(self, client, session, service, staff, as_customer, rrule, count, step):
        await booked(client, as_customer, service, staff, recurrence={"rrule": rrule})

        starts = (await session.scalars(select(Appointment.starts_at).order_by(Appointment.starts_at))).all()
        assert starts == [TEN + n * step for n in range(count)]

    async def test_monthly(self, client, session, service, staff, as_customer):
        await booked(client, as_customer, service, staff, recurrence={"rrule": "FREQ=MONTHLY;COUNT=3"})

        starts = (await session.scalars(select(Appointment.starts_at).order_by(Appointment.starts_at))).all()
        locals_ = [s.astimezone(TEN.tzinfo) for s in starts]
        assert len(starts) == 3 and {(t.day, t.hour) for t in locals_} == {(DAY.day, 10)}
        assert locals_[0].month != locals_[1].month != locals_[2].month

    @pytest.mark.parametrize(
        "rrule",
        [
            "FREQ=YEARLY;COUNT=2",
            "FREQ=WEEKLY;COUNT=53",
            "FREQ=WEEKLY",
            "FREQ=WEEKLY;COUNT=2;UNTIL=20301231",
            "FREQ=WEEKLY;COUNT=2;BYDAY=MO",
            "FREQ=DAILY;UNTIL=20991231",
            "FREQ=DAILY;COUNT=0",
            "FREQ=DAILY;UNTIL=2030",
            "nonsense",
        ],
    )
    async def test_unsupported_rules_are_422(self, client, session, service, staff, as_customer, rrule):
        response = await book(client, as_customer, service, staff, recurrence={"rrule": rrule})

        assert_problem(response, 422, "invalid_recurrence")
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 0

    async def test_all_or_nothing_with_the_clashes_listed(
        self, client, session, service, staff, as_customer, as_stranger
    ):
        third, fifth = TEN + timedelta(weeks=2), TEN + timedelta(weeks=4)
        await booked(client, as_stranger, service, staff, third)
        await booked(client, as_stranger, service, staff, fifth)

        response = await book(client, as_customer, service, staff, recurrence={"rrule": "FREQ=WEEKLY;COUNT=6"})

        body = assert_problem(response, 409, "slot_unavailable")
        assert body["conflicts"] == [zulu(third), zulu(fifth)]
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 2
        assert await session.scalar(select(func.count()).select_from(AppointmentSeries)) == 0

    async def test_an_occurrence_outside_the_hours_refuses_the_series(self, client, session, customer, as_customer):
        staff = await create_staff(session, weekdays=[DAY.weekday()])
        service = await create_service(session, [staff])

        response = await book(client, as_customer, service, staff, recurrence={"rrule": "FREQ=DAILY;COUNT=3"})

        body = assert_problem(response, 422, "slot_not_offered")
        assert body["occurrences"] == [zulu(TEN + timedelta(days=1)), zulu(TEN + timedelta(days=2))]
        assert await session.scalar(select(func.count()).select_from(Appointment)) == 0

    async def test_cancel_from_an_occurrence_on(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff, recurrence={"rrule": "FREQ=WEEKLY;COUNT=6"})
        third = TEN + timedelta(weeks=2)

        response = await client.post(
            f"{SERIES_URL}/{body['series_id']}/cancel", json={"from": third.isoformat()}, headers=as_customer
        )

        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["series_id"] == body["series_id"]
        assert [a["starts_at"] for a in answer["appointments"]] == [zulu(third + timedelta(weeks=n)) for n in range(4)]
        statuses = (await session.scalars(select(Appointment.status).order_by(Appointment.starts_at))).all()
        assert statuses == ["confirmed"] * 2 + ["cancelled"] * 4
        emails = await outbox(session, template="appointment_cancelled")
        assert len(emails) == 2 and all(len(m.payload["attachments"]) == 4 for m in emails)
        assert {str(calendar(emails[0], n)["METHOD"]) for n in range(4)} == {"CANCEL"}

    async def test_cancel_the_whole_series_by_its_staff_member(self, client, session, service, staff, as_customer):
        body = await booked(client, as_customer, service, staff, recurrence={"rrule": "FREQ=DAILY;COUNT=3"})

        response = await client.post(f"{SERIES_URL}/{body['series_id']}/cancel", headers=await headers_for(staff))

        assert response.status_code == 200 and len(response.json()["appointments"]) == 3

    async def test_a_client_cannot_cancel_inside_the_cut_off(
        self, client, session, service, staff, customer, as_customer
    ):
        series = AppointmentSeries(
            rrule="FREQ=DAILY;COUNT=2", client_id=customer.id, staff_id=staff.id, service_id=service.id
        )
        session.add(series)
        await session.commit()
        await add_appointment(session, customer, staff, service, utcnow() + timedelta(hours=3), series_id=series.id)

        response = await client.post(f"{SERIES_URL}/{series.id}/cancel", json={}, headers=as_customer)

        assert_problem(response, 409, "cancellation_window_closed")

    async def test_one_email_per_party_with_an_invite_per_occurrence(
        self, client, session, service, staff, as_customer
    ):
        await booked(client, as_customer, service, staff, recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"})

        emails = await outbox(session, template="appointment_booked")

        assert len(emails) == 2
        for message in emails:
            uids = {str(vevent(calendar(message, n))["UID"]) for n in range(3)}
            assert len(uids) == 3 and message.payload["context"]["count"] == 3


def _days_before_next_dst_change(weeks: int):
    """A date `weeks` before Berlin's next clock change (at least a week from today)."""
    day = days_ahead(7)
    offset = local(day, 10).utcoffset()
    while local(day + timedelta(weeks=weeks), 10).utcoffset() == offset:
        day += timedelta(days=1)
    return day


class TestBookingEmails:
    @pytest.fixture
    async def russian_staff(self, session):
        return await create_staff(session, locale="ru", user_timezone="Europe/Moscow", full_name="Борис Иванов")

    @pytest.fixture
    async def russian_service(self, session, russian_staff):
        return await create_service(session, [russian_staff], name="Массаж")

    async def test_booked_goes_to_both_in_their_language_and_zone(
        self, client, session, russian_service, russian_staff, customer, as_customer
    ):
        await booked(client, as_customer, russian_service, russian_staff)

        to_client, to_staff = (
            (await outbox(session, to=customer.email))[0],
            (await outbox(session, to=russian_staff.email))[0],
        )
        assert to_client.payload["template"] == to_staff.payload["template"] == "appointment_booked"
        assert to_client.payload["locale"] == "en" and to_staff.payload["locale"] == "ru"
        assert "09:00–10:00 (Europe/London)" in to_client.payload["context"]["when"]  # 10:00 Berlin
        assert "12:00–13:00 (Europe/Moscow)" in to_staff.payload["context"]["when"]
        assert mailer.render("appointment_booked", "en", to_client.payload["context"]).subject.startswith("Booked: ")
        assert mailer.render("appointment_booked", "ru", to_staff.payload["context"]).subject.startswith(
            "Забронировано: "
        )
        for message in (to_client, to_staff):
            attachment = message.payload["attachments"][0]
            assert attachment["mime_type"] == "text/calendar; method=REQUEST"
            cal = calendar(message)
            assert str(cal["METHOD"]) == "REQUEST" and str(vevent(cal)["STATUS"]) == "CONFIRMED"
            assert int(vevent(cal)["SEQUENCE"]) == 0

    async def test_pending_is_tentative(self, client, session, staff, as_customer):
        service = await create_service(session, [staff], requires_confirmation=True)
        await booked(client, as_customer, service, staff)

        message = (await outbox(session, template="appointment_booked"))[0]

        assert str(vevent(calendar(message))["STATUS"]) == "TENTATIVE"

    async def test_each_change_mails_both_with_a_growing_sequence(self, client, session, staff, customer, as_customer):
        service = await create_service(session, [staff], requires_confirmation=True)
        body = await booked(client, as_customer, service, staff)
        as_staff = await headers_for(staff)

        await client.post(f"{URL}/{body['id']}/confirm", headers=as_staff)
        await client.patch(f"{URL}/{body['id']}", json={"starts_at": local(DAY, 15).isoformat()}, headers=as_customer)
        await client.post(f"{URL}/{body['id']}/cancel", json={"reason": "Ill"}, headers=as_customer)

        expected = [
            ("appointment_confirmed", "REQUEST", "CONFIRMED", 1, "Confirmed: "),
            ("appointment_rescheduled", "REQUEST", "CONFIRMED", 2, "Rescheduled: "),
            ("appointment_cancelled", "CANCEL", "CANCELLED", 3, "Cancelled: "),
        ]
        for template, method, status, sequence, subject in expected:
            messages = await outbox(session, template=template)
            assert {m.payload["to"] for m in messages} == {customer.email, staff.email}
            for message in messages:
                cal = calendar(message)
                assert (str(cal["METHOD"]), str(vevent(cal)["STATUS"])) == (method, status)
                assert int(vevent(cal)["SEQUENCE"]) == sequence
                assert str(vevent(cal)["UID"]) == f"{body['id']}@c3po"
                rendered = mailer.render(template, message.payload["locale"], message.payload["context"])
                assert rendered.subject.startswith(subject)
        rescheduled = (await outbox(session, to=customer.email, template="appointment_rescheduled"))[0]
        assert "09:00–10:00" in rescheduled.payload["context"]["previous_when"]
        cancelled = (await outbox(session, to=customer.email, template="appointment_cancelled"))[0]
        assert "Ill" in mailer.render("appointment_cancelled", "en", cancelled.payload["context"]).text

    async def test_every_template_renders_in_russian(
        self, client, session, russian_service, russian_staff, as_customer
    ):
        body = await booked(
            client, as_customer, russian_service, russian_staff, recurrence={"rrule": "FREQ=DAILY;COUNT=2"}
        )
        await client.post(f"{SERIES_URL}/{body['series_id']}/cancel", json={}, headers=as_customer)

        for template, subject in (("appointment_booked", "Забронировано: "), ("appointment_cancelled", "Отменено: ")):
            message = (await outbox(session, to=russian_staff.email, template=template))[0]
            rendered = mailer.render(template, "ru", message.payload["context"])
            assert rendered.subject.startswith(subject) and "2 записи" in rendered.text
            assert "Массаж" in rendered.html

    async def test_a_rolled_back_booking_sends_nothing(self, client, session, service, staff, as_customer, as_stranger):
        await booked(client, as_stranger, service, staff)
        before = len(await outbox(session))

        assert_problem(await book(client, as_customer, service, staff), 409, "slot_unavailable")

        assert len(await outbox(session)) == before


class TestGdpr:
    async def test_erasure_cancels_future_appointments_and_tells_the_staff(
        self, client, session, service, staff, customer, as_customer
    ):
        future = await add_appointment(session, customer, staff, service, TEN)
        past = await add_appointment(session, customer, staff, service, utcnow() - timedelta(days=2))
        email, staff_email, future_id, past_id = customer.email, staff.email, future.id, past.id

        assert (await client.delete("/api/v1/users/me", headers=as_customer)).status_code == 204

        assert (await row(session, future_id)).status == "cancelled"
        assert (await row(session, past_id)).status == "confirmed"
        emails = await outbox(session, template="appointment_cancelled")
        assert [m.payload["to"] for m in emails] == [staff_email]
        assert not await outbox(session, to=email, template="appointment_cancelled")

    async def test_export_includes_appointments(self, client, session, service, staff, customer, as_customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)

        body = (await client.get("/api/v1/users/me/export", headers=as_customer)).json()

        assert [a["id"] for a in body["appointments"]] == [str(appointment.id)]
        assert body["appointments"][0]["starts_at"] == zulu(TEN)


class TestDemoBookings:
    async def test_seeding_books_through_the_rules_once(self, session):
        for _ in range(2):
            await seed_demo(session)
            await session.commit()

        user = await session.scalar(select(User).where(User.email == "user@example.com"))
        rows = (await session.scalars(select(Appointment).where(Appointment.client_id == user.id))).all()
        assert len(rows) == 3 + 4
        assert sorted(r.status for r in rows).count("pending") == 1  # the massage awaits its therapist
        assert len({r.series_id for r in rows if r.series_id}) == 1
        assert all(r.starts_at > utcnow() for r in rows)
        assert len(await outbox(session, template="appointment_booked")) == 2 * 4
