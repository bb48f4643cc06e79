"""Group sessions: a service of `capacity` > 1 seats that many clients in one staff time slot —
seats never overbooked, the session's time still blocked for everything else, seats freed by
cancelling, moved by rescheduling, booked by series, counted by availability, listed for its staff
member, and every attendee emailed and reminded."""

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

import app.redis
from app.models import Appointment, Role, TimeOff
from app.services.messaging import reminders
from app.services.messaging.worker import attempt_delivery
from app.utils import manage_tokens
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import URL, booking_body, create_service, create_staff, days_ahead, headers_for, zulu
from tests.smtp import SmtpServer, settings_env

SEATS = 4
DAY = days_ahead(7)
AVAILABILITY = "/api/v1/availability"


def at(day, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


TEN = at(DAY, 10)


@pytest.fixture
async def staff(session):
    return await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),), full_name="Yara Yoga")


async def with_capacity(session, service, capacity: int):
    service.capacity = capacity
    await session.commit()
    return service


@pytest.fixture
async def yoga(session, staff):
    service = await create_service(session, [staff], name="Yoga class")
    return await with_capacity(session, service, SEATS)


@pytest.fixture
async def massage(session, staff):
    return await create_service(session, [staff], name="Massage")


@pytest.fixture
async def as_admin(session):
    return await headers_for(await create_user(session, role=Role.admin))


@pytest.fixture
async def as_staff(staff):
    return await headers_for(staff)


async def people(session, count: int) -> list[tuple]:
    users = [await create_user(session, full_name=f"Client {n}") for n in range(count)]
    return [(user, await headers_for(user)) for user in users]


async def book(client, headers, service, staff, starts_at=TEN, **extra):
    return await client.post(URL, json=booking_body(service, staff, starts_at, **extra), headers=headers)


async def seat(client, headers, service, staff, starts_at=TEN, **extra) -> dict:
    response = await book(client, headers, service, staff, starts_at, **extra)
    assert response.status_code == 201, response.text
    return response.json()


async def live_seats(session, service) -> int:
    query = select(func.count()).where(
        Appointment.service_id == service.id, Appointment.status.in_(("pending", "confirmed"))
    )
    return await session.scalar(query)


async def slots(client, service, day=DAY) -> dict[str, dict]:
    params = {"service_id": str(service.id), "start": zulu(at(day, 0)), "end": zulu(at(day + timedelta(days=1), 0))}
    response = await client.get(AVAILABILITY, params=params)
    assert response.status_code == 200, response.text
    return {slot["starts_at"]: slot for slot in response.json()["slots"]}


class TestCapacity:
    async def test_admins_set_it_on_create_and_update_and_everyone_reads_it(self, client, staff, as_admin):
        body = {"name": "Pilates", "duration_minutes": 60, "staff_ids": [str(staff.id)], "capacity": 12}
        created = await client.post("/api/v1/services", json=body, headers=as_admin)
        assert created.status_code == 201, created.text
        assert created.json()["capacity"] == 12
        service_id = created.json()["id"]

        changed = await client.patch(f"/api/v1/services/{service_id}", json={"capacity": 3}, headers=as_admin)

        assert changed.json()["capacity"] == 3
        assert (await client.get(f"/api/v1/services/{service_id}")).json()["capacity"] == 3

    async def test_one_by_default(self, client, staff, as_admin):
        body = {"name": "Haircut", "duration_minutes": 30}
        assert (await client.post("/api/v1/services", json=body, headers=as_admin)).json()["capacity"] == 1

    @pytest.mark.parametrize("capacity", [0, 1001, -1, "3", 2.5])
    async def test_bounded_from_1_to_1000(self, client, as_admin, capacity):
        body = {"name": "Pilates", "duration_minutes": 60, "capacity": capacity}
        assert_problem(await client.post("/api/v1/services", json=body, headers=as_admin), 422, "validation_error")

    async def test_lowering_it_keeps_the_seats_taken_and_the_session_is_full(
        self, client, session, yoga, staff, as_admin
    ):
        attendees = await people(session, 4)
        for _, headers in attendees[:3]:
            await seat(client, headers, yoga, staff)

        await client.patch(f"/api/v1/services/{yoga.id}", json={"capacity": 2}, headers=as_admin)

        assert await live_seats(session, yoga) == 3
        assert_problem(await book(client, attendees[3][1], yoga, staff), 409, "session_full")
        assert zulu(TEN) not in await slots(client, yoga)


class TestBookingSeats:
    async def test_seats_share_the_session_and_take_the_lowest_free_numbers(self, client, session, yoga, staff):
        booked = [await seat(client, headers, yoga, staff) for _, headers in await people(session, SEATS)]

        assert len({b["session_key"] for b in booked}) == 1 and booked[0]["session_key"] is not None
        assert [b["seat"] for b in booked] == list(range(1, SEATS + 1))
        assert {b["starts_at"] for b in booked} == {zulu(TEN)}

    async def test_a_full_session_is_409_session_full_naming_its_start(self, client, session, yoga, staff):
        attendees = await people(session, SEATS + 1)
        for _, headers in attendees[:SEATS]:
            await seat(client, headers, yoga, staff)

        body = assert_problem(await book(client, attendees[-1][1], yoga, staff), 409, "session_full")

        assert body["full"] == [zulu(TEN)]
        assert await live_seats(session, yoga) == SEATS

    async def test_a_second_seat_for_the_same_client_is_409_already_booked(self, client, session, yoga, staff):
        [(_, headers)] = await people(session, 1)
        await seat(client, headers, yoga, staff)

        body = assert_problem(await book(client, headers, yoga, staff), 409, "already_booked")

        assert body["occurrences"] == [zulu(TEN)]
        assert await live_seats(session, yoga) == 1

    async def test_another_service_overlapping_a_session_is_409(self, client, session, yoga, massage, staff):
        (_, first), (_, second) = await people(session, 2)
        await seat(client, first, yoga, staff)

        refused = await book(client, second, massage, staff, TEN + timedelta(minutes=30))

        assert_problem(refused, 409, "slot_unavailable")

    async def test_a_seat_overlapping_another_booking_is_409(self, client, session, yoga, massage, staff):
        (_, first), (_, second) = await people(session, 2)
        await seat(client, first, massage, staff)

        assert_problem(await book(client, second, yoga, staff), 409, "slot_unavailable")

    async def test_after_the_duration_changed_a_seat_cannot_join_the_old_session(
        self, client, session, yoga, staff, as_admin
    ):
        (_, first), (_, second) = await people(session, 2)
        await seat(client, first, yoga, staff)
        await client.patch(f"/api/v1/services/{yoga.id}", json={"duration_minutes": 90}, headers=as_admin)

        assert_problem(await book(client, second, yoga, staff), 409, "slot_unavailable")

    async def test_time_off_still_refuses_a_session_with_seats_left(self, client, session, yoga, staff):
        (_, first), (_, second) = await people(session, 2)
        await seat(client, first, yoga, staff)
        session.add(TimeOff(staff_id=staff.id, starts_at=TEN, ends_at=TEN + timedelta(hours=1)))
        await session.commit()

        assert_problem(await book(client, second, yoga, staff), 422, "slot_not_offered")

    async def test_a_cancelled_seat_is_free_again(self, client, session, yoga, staff):
        attendees = await people(session, SEATS + 1)
        booked = [await seat(client, headers, yoga, staff) for _, headers in attendees[:SEATS]]
        assert zulu(TEN) not in await slots(client, yoga)

        cancelled = await client.post(f"{URL}/{booked[1]['id']}/cancel", headers=attendees[1][1])
        assert cancelled.status_code == 200, cancelled.text

        assert (await slots(client, yoga))[zulu(TEN)]["seats_left"] == 1
        again = await seat(client, attendees[-1][1], yoga, staff)
        assert again["seat"] == booked[1]["seat"] and again["session_key"] == booked[0]["session_key"]
        assert await live_seats(session, yoga) == SEATS

    async def test_a_reschedule_moves_the_seat_into_another_session(self, client, session, yoga, staff):
        (_, first), (_, second) = await people(session, 2)
        there = await seat(client, first, yoga, staff, TEN + timedelta(hours=2))
        moving = await seat(client, second, yoga, staff)

        moved = await client.patch(
            f"{URL}/{moving['id']}", json={"starts_at": zulu(TEN + timedelta(hours=2))}, headers=second
        )

        assert moved.status_code == 200, moved.text
        assert moved.json()["session_key"] == there["session_key"] and moved.json()["seat"] == 2
        assert (await slots(client, yoga))[zulu(TEN)]["seats_left"] == SEATS

    async def test_a_reschedule_into_a_full_session_is_409(self, client, session, yoga, staff):
        attendees = await people(session, SEATS + 1)
        for _, headers in attendees[:SEATS]:
            await seat(client, headers, yoga, staff, TEN + timedelta(hours=2))
        moving = await seat(client, attendees[-1][1], yoga, staff)

        refused = await client.patch(
            f"{URL}/{moving['id']}", json={"starts_at": zulu(TEN + timedelta(hours=2))}, headers=attendees[-1][1]
        )

        assert_problem(refused, 409, "session_full")


class TestAvailability:
    async def test_a_fresh_slot_has_every_seat_and_a_session_what_is_left(self, client, session, yoga, staff):
        for _, headers in await people(session, 3):
            await seat(client, headers, yoga, staff)

        found = await slots(client, yoga)

        assert found[zulu(TEN)]["seats_left"] == SEATS - 3
        assert found[zulu(at(DAY, 9))]["seats_left"] == SEATS
        assert set(found) == {zulu(at(DAY, hour)) for hour in range(8, 18)}

    async def test_a_full_session_is_not_offered(self, client, session, yoga, staff):
        for _, headers in await people(session, SEATS):
            await seat(client, headers, yoga, staff)

        assert zulu(TEN) not in await slots(client, yoga)

    async def test_other_services_see_the_session_as_busy(self, client, session, yoga, massage, staff):
        [(_, headers)] = await people(session, 1)
        await seat(client, headers, yoga, staff)

        found = await slots(client, massage)

        assert zulu(TEN) not in found and zulu(at(DAY, 9)) in found
        assert all("seats_left" not in slot for slot in found.values())

    async def test_without_redis_the_seats_come_from_the_database(self, client, session, yoga, staff, monkeypatch):
        [(_, headers)] = await people(session, 1)
        await seat(client, headers, yoga, staff)
        dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
        monkeypatch.setattr(app.redis, "_client", dead)
        try:
            found = await slots(client, yoga)
        finally:
            await dead.aclose()

        assert found[zulu(TEN)]["seats_left"] == SEATS - 1 and found[zulu(at(DAY, 9))]["seats_left"] == SEATS

    async def test_a_manage_link_offers_a_seat_the_sessions_with_seats_left(self, client, session, yoga, staff):
        (mover, first), (_, second) = await people(session, 2)
        mine = await seat(client, first, yoga, staff)
        await seat(client, second, yoga, staff, at(DAY, 12))
        token = manage_tokens.issue(uuid.UUID(mine["id"]), mover.id, TEN + timedelta(hours=1))
        params = {"start": zulu(at(DAY, 0)), "end": zulu(at(DAY + timedelta(days=1), 0))}

        response = await client.get(f"/api/v1/manage/{token}/availability", params=params)

        assert response.status_code == 200, response.text
        found = {slot["starts_at"]: slot["seats_left"] for slot in response.json()["slots"]}
        assert found[zulu(at(DAY, 12))] == SEATS - 1 and found[zulu(at(DAY, 9))] == SEATS
        assert len(found) == 10


class TestSeries:
    RULE = {"rrule": "FREQ=WEEKLY;COUNT=3"}

    async def test_each_occurrence_is_a_seat_of_its_own_session(self, client, session, yoga, staff):
        (_, first), (_, second) = await people(session, 2)
        await seat(client, first, yoga, staff, TEN + timedelta(weeks=1))

        answer = await seat(client, second, yoga, staff, recurrence=self.RULE)

        rows = (
            await session.scalars(select(Appointment).where(Appointment.series_id == uuid.UUID(answer["series_id"])))
        ).all()
        assert len({row.session_key for row in rows}) == 3
        assert sorted(row.seat for row in rows) == [1, 1, 2]

    async def test_full_occurrences_are_listed_and_nothing_is_booked(self, client, session, yoga, staff):
        attendees = await people(session, SEATS + 1)
        for _, headers in attendees[:SEATS]:
            await seat(client, headers, yoga, staff, TEN + timedelta(weeks=2))

        body = assert_problem(
            await book(client, attendees[-1][1], yoga, staff, recurrence=self.RULE), 409, "session_full"
        )

        assert body["full"] == [zulu(TEN + timedelta(weeks=2))]
        assert await live_seats(session, yoga) == SEATS


class TestAttendees:
    async def test_its_staff_member_and_admins_see_every_live_seat(
        self, client, session, yoga, staff, as_staff, as_admin
    ):
        attendees = await people(session, 3)
        booked = [await seat(client, headers, yoga, staff) for _, headers in attendees]
        await client.post(f"{URL}/{booked[2]['id']}/cancel", headers=attendees[2][1])

        for headers in (as_staff, as_admin):
            response = await client.get(f"{URL}/{booked[0]['id']}/attendees", headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["capacity"] == SEATS and body["seats_taken"] == 2
            assert body["session_key"] == booked[0]["session_key"]
            assert [(a["appointment_id"], a["seat"]) for a in body["attendees"]] == [
                (booked[0]["id"], 1),
                (booked[1]["id"], 2),
            ]
            assert body["attendees"][0]["email"] == attendees[0][0].email
            assert body["attendees"][0]["full_name"] == "Client 0"
            assert body["attendees"][0]["status"] == "confirmed"

    async def test_an_attendee_is_403_and_anyone_else_404(self, client, session, yoga, staff):
        [(_, headers)] = await people(session, 1)
        booked = await seat(client, headers, yoga, staff)
        other_staff = await headers_for(await create_staff(session))
        stranger = await headers_for(await create_user(session))

        assert_problem(await client.get(f"{URL}/{booked['id']}/attendees", headers=headers), 403, "forbidden")
        for other in (other_staff, stranger):
            assert_problem(await client.get(f"{URL}/{booked['id']}/attendees", headers=other), 404, "not_found")
        assert_problem(await client.get(f"{URL}/{uuid.uuid4()}/attendees", headers=headers), 404, "not_found")

    async def test_an_appointment_that_is_not_a_seat_lists_itself(self, client, session, massage, staff, as_staff):
        [(user, headers)] = await people(session, 1)
        booked = await seat(client, headers, massage, staff)

        body = (await client.get(f"{URL}/{booked['id']}/attendees", headers=as_staff)).json()

        assert body["session_key"] is None and body["capacity"] == 1
        assert [(a["client_id"], a["seat"]) for a in body["attendees"]] == [(str(user.id), None)]


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


async def deliver(smtp: SmtpServer) -> list:
    while await attempt_delivery(due_within=timedelta(days=1)) is not None:
        pass
    return smtp.messages


def subjects_to(messages, email: str) -> list[str]:
    return sorted(str(m["Subject"]).split(":")[0] for m in messages if str(m["To"]) == email)


class TestEmails:
    async def test_every_attendee_and_the_staff_member_are_emailed_and_attendees_reminded(
        self, client, session, staff, as_staff, smtp
    ):
        service = await create_service(session, [staff], name="Yoga class", requires_confirmation=True)
        await with_capacity(session, service, SEATS)
        attendees = await people(session, 3)
        booked = [await seat(client, headers, service, staff) for _, headers in attendees]
        for appointment in booked:
            confirmed = await client.post(f"{URL}/{appointment['id']}/confirm", headers=as_staff)
            assert confirmed.status_code == 200, confirmed.text
        await reminders.send_due(now=TEN - timedelta(minutes=60))

        messages = await deliver(smtp)

        for user, _ in attendees:
            assert subjects_to(messages, user.email) == ["Booked", "Confirmed", "Reminder"]
        staff_subjects = subjects_to(messages, staff.email)
        assert len(staff_subjects) == 6 and len(set(staff_subjects)) == 2
