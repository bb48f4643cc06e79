"""Booking limits (`services/booking/limits.py`): per service a client's bookings per day, week and
month and the least gap between them; per staff member appointments per day; per client live future
appointments. Refused with 409 and the limit's code, whatever the concurrency."""

import asyncio
import uuid
from datetime import date, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, update

from app.models import Appointment, Role, Service, StaffProfile
from app.utils import manage_tokens
from tests.apiserver import api_process
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import URL, add_appointment, booking_body, create_service, create_staff, headers_for, local, zulu

# Generous capacity for the API processes of the concurrency tests, so that every answer is the
# booking's own (no 503 for a pool or an in-flight slot); few connections, the server is shared.
API_SETTINGS = {
    "DB_POOL_SIZE": "12",
    "DB_MAX_OVERFLOW": "0",
    "DB_POOL_TIMEOUT_SECONDS": "30",
    "MAX_IN_FLIGHT_REQUESTS": "100",
    "REQUEST_QUEUE_TIMEOUT_SECONDS": "30",
    # Bookings of one client or calendar queue behind each other's locks; on a slow machine a wait
    # can pass the default 5 s (a 503, not what these tests are about). A deadlock is still broken by
    # PostgreSQL after its deadlock_timeout (1 s), and counted, which TestNoDeadlock checks.
    "DB_LOCK_TIMEOUT_SECONDS": "60",
    "DB_STATEMENT_TIMEOUT_SECONDS": "60",
    "LOG_LEVEL": "WARNING",
}


def next_monday(weeks: int = 1) -> date:
    today = date.today()
    return today + timedelta(days=7 * weeks - today.weekday())


MONDAY = next_monday(2)
TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture
async def staff(session):
    return await create_staff(session, hours=(("08:00", "18:00"),))


@pytest.fixture
async def customer(session):
    return await create_user(session, full_name="Uma User")


@pytest.fixture
async def as_customer(customer):
    return await headers_for(customer)


async def limited_service(session, staff, *, duration=60, **limits) -> Service:
    service = await create_service(session, staff, duration=duration)
    if limits:
        await session.execute(update(Service).where(Service.id == service.id).values(**limits))
        await session.commit()
    return service


async def book(client, headers, service, staff, starts_at, **extra):
    return await client.post(URL, json=booking_body(service, staff, starts_at, **extra), headers=headers)


async def booked_count(session, **where) -> int:
    query = select(func.count()).select_from(Appointment)
    for name, value in where.items():
        query = query.where(getattr(Appointment, name) == value)
    return await session.scalar(query)


@pytest.fixture(scope="module")
def two_apis(service_urls, tmp_path_factory):
    """Two real API processes on the test database and Redis."""
    logs = tmp_path_factory.mktemp("limits")
    with (
        api_process(logs / "api-1.log", **API_SETTINGS) as first,
        api_process(logs / "api-2.log", **API_SETTINGS) as second,
    ):
        yield first, second


async def post_each(bases, requests):
    """`requests`: (headers, body) bookings, or (headers, body, path) reschedules (PATCH); sent all
    at once, alternately to each API process."""
    clients = [httpx.AsyncClient(base_url=base, timeout=120) for base in bases]

    def send(n: int, headers: dict, body: dict, path: str | None = None):
        http = clients[n % len(clients)]
        return (
            http.post(URL, json=body, headers=headers) if path is None else http.patch(path, json=body, headers=headers)
        )

    try:
        return await asyncio.gather(*(send(n, *request) for n, request in enumerate(requests)))
    finally:
        for http in clients:
            await http.aclose()


class TestClientDailyLimit:
    async def test_fifty_at_once_over_two_processes_book_exactly_three(
        self, two_apis, session, staff, customer, as_customer
    ):
        """The acceptance: 50 concurrent bookings by one client for 50 free slots of one day."""
        service = await limited_service(session, [staff], duration=10, max_bookings_per_client_day=3)
        day = MONDAY + timedelta(days=2)
        slots = [local(day, 8) + timedelta(minutes=10 * n) for n in range(50)]

        answers = await post_each(two_apis, [(as_customer, booking_body(service, staff, s)) for s in slots])

        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] * 3 + [409] * 47, [a.text for a in answers if a.status_code not in (201, 409)]
        refusals = [a.json() for a in answers if a.status_code == 409]
        assert {r["code"] for r in refusals} == {"client_daily_limit"}
        assert {(r["limit"], r["period"], r["period_start"]) for r in refusals} == {(3, "day", day.isoformat())}
        assert await booked_count(session, client_id=customer.id) == 3

    async def test_the_day_is_the_staff_members_local_day(self, client, session, customer, as_customer):
        tokyo = await create_staff(session, timezone="Asia/Tokyo", hours=(("00:00", "23:59"),))
        service = await limited_service(session, [tokyo], max_bookings_per_client_day=1)
        day = MONDAY + timedelta(days=1)
        # 23:00 UTC the day before is 08:00 in Tokyo: the same local day as 10:00 Tokyo.
        first = local(day, 8, zone=TOKYO)
        assert (await book(client, as_customer, service, tokyo, first)).status_code == 201

        problem = assert_problem(
            await book(client, as_customer, service, tokyo, local(day, 10, zone=TOKYO)), 409, "client_daily_limit"
        )
        assert problem["period_start"] == day.isoformat()
        next_day = local(day + timedelta(days=1), 1, zone=TOKYO)
        assert (await book(client, as_customer, service, tokyo, next_day)).status_code == 201

    async def test_cancelled_ones_do_not_count_and_finished_ones_do(
        self, client, session, staff, customer, as_customer
    ):
        service = await limited_service(session, [staff], max_bookings_per_client_day=2)
        day = MONDAY + timedelta(days=3)
        await add_appointment(session, customer, staff, service, local(day, 9), status="cancelled")
        await add_appointment(session, customer, staff, service, local(day, 10), status="completed")

        assert (await book(client, as_customer, service, staff, local(day, 12))).status_code == 201
        assert_problem(await book(client, as_customer, service, staff, local(day, 14)), 409, "client_daily_limit")

    async def test_other_services_do_not_count(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        other = await create_service(session, [staff], name="Other")
        day = MONDAY + timedelta(days=3)
        await add_appointment(session, customer, staff, other, local(day, 9))

        assert (await book(client, as_customer, service, staff, local(day, 12))).status_code == 201

    async def test_staff_and_admins_booking_for_a_client_are_not_held(self, client, session, staff, customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        day = MONDAY + timedelta(days=4)
        await add_appointment(session, customer, staff, service, local(day, 9))
        as_admin = await headers_for(await create_user(session, role=Role.admin))
        as_staff = await headers_for(staff)

        for headers, hour in ((as_admin, 11), (as_staff, 13)):
            response = await book(client, headers, service, staff, local(day, hour), client_id=str(customer.id))
            assert response.status_code == 201, response.text
        assert await booked_count(session, client_id=customer.id) == 3

    async def test_a_keyed_refusal_is_stored_and_replayed(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        day = MONDAY + timedelta(days=4)
        await add_appointment(session, customer, staff, service, local(day, 9))
        headers = {**as_customer, "Idempotency-Key": "limit-1"}

        first = assert_problem(await book(client, headers, service, staff, local(day, 12)), 409, "client_daily_limit")
        again = await book(client, headers, service, staff, local(day, 12))

        assert_problem(again, 409, "client_daily_limit")
        assert again.json() == first and again.headers.get("Idempotent-Replayed") == "true"

    async def test_a_limit_lifted_lets_the_client_book(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        day = MONDAY + timedelta(days=4)
        await add_appointment(session, customer, staff, service, local(day, 9))
        as_admin = await headers_for(await create_user(session, role=Role.admin))

        lifted = await client.patch(
            f"/api/v1/services/{service.id}", json={"max_bookings_per_client_day": None}, headers=as_admin
        )

        assert lifted.status_code == 200 and lifted.json()["max_bookings_per_client_day"] is None
        assert (await book(client, as_customer, service, staff, local(day, 12))).status_code == 201


class TestWeeksMonthsAndGaps:
    async def test_weekly_limit_counts_the_iso_week(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_week=2)
        for day in (MONDAY, MONDAY + timedelta(days=1)):
            assert (await book(client, as_customer, service, staff, local(day, 10))).status_code == 201

        problem = assert_problem(
            await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=6), 10)),
            409,
            "client_weekly_limit",
        )

        assert (problem["limit"], problem["period"], problem["period_start"]) == (2, "week", MONDAY.isoformat())
        assert problem["occurrences"] == [zulu(local(MONDAY + timedelta(days=6), 10))]
        next_week = local(MONDAY + timedelta(days=7), 10)
        assert (await book(client, as_customer, service, staff, next_week)).status_code == 201

    async def test_monthly_limit_counts_the_calendar_month(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_month=1)
        first = date(MONDAY.year + MONDAY.month // 12, MONDAY.month % 12 + 1, 1)  # the first of next month
        last_of_before = first - timedelta(days=1)
        assert (await book(client, as_customer, service, staff, local(last_of_before, 10))).status_code == 201
        assert (await book(client, as_customer, service, staff, local(first, 10))).status_code == 201

        problem = assert_problem(
            await book(client, as_customer, service, staff, local(first + timedelta(days=20), 10)),
            409,
            "client_monthly_limit",
        )

        assert (problem["period"], problem["period_start"]) == ("month", first.isoformat())

    async def test_the_gap_holds_both_ways(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], min_gap_minutes=120)
        day = MONDAY + timedelta(days=2)
        assert (await book(client, as_customer, service, staff, local(day, 11))).status_code == 201  # 11:00-12:00

        after = assert_problem(
            await book(client, as_customer, service, staff, local(day, 13)), 409, "booking_gap_too_short"
        )
        before = assert_problem(
            await book(client, as_customer, service, staff, local(day, 9)), 409, "booking_gap_too_short"
        )

        assert (after["limit"], after["period"]) == (120, "gap")
        assert before["occurrences"] == [zulu(local(day, 9))]
        assert (await book(client, as_customer, service, staff, local(day, 14))).status_code == 201
        assert (await book(client, as_customer, service, staff, local(day, 8))).status_code == 201  # 8-9: 2 h before 11

    async def test_the_gap_exactly_is_enough(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], min_gap_minutes=120)
        day = MONDAY + timedelta(days=2)
        await add_appointment(session, customer, staff, service, local(day, 12))  # 12:00-13:00

        assert (await book(client, as_customer, service, staff, local(day, 15))).status_code == 201
        assert (await book(client, as_customer, service, staff, local(day, 9))).status_code == 201
        assert_problem(await book(client, as_customer, service, staff, local(day, 16)), 409, "booking_gap_too_short")


class TestSeries:
    async def test_every_occurrence_counts_against_the_others(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_week=1)
        daily = {"rrule": "FREQ=DAILY;COUNT=3"}

        problem = assert_problem(
            await book(client, as_customer, service, staff, local(MONDAY, 10), recurrence=daily),
            409,
            "client_weekly_limit",
        )

        assert problem["occurrences"] == [zulu(local(MONDAY + timedelta(days=n), 10)) for n in range(3)]
        assert await booked_count(session, client_id=customer.id) == 0

    async def test_a_weekly_series_within_a_weekly_limit_books(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_week=1)
        weekly = {"rrule": "FREQ=WEEKLY;COUNT=4"}

        assert (
            await book(client, as_customer, service, staff, local(MONDAY, 10), recurrence=weekly)
        ).status_code == 201
        assert await booked_count(session, client_id=customer.id) == 4

    async def test_a_later_occurrence_is_checked_not_only_the_first(
        self, client, session, staff, customer, as_customer
    ):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        third = MONDAY + timedelta(weeks=2)
        await add_appointment(session, customer, staff, service, local(third, 15))

        problem = assert_problem(
            await book(
                client, as_customer, service, staff, local(MONDAY, 10), recurrence={"rrule": "FREQ=WEEKLY;COUNT=4"}
            ),
            409,
            "client_daily_limit",
        )

        assert problem["occurrences"] == [zulu(local(third, 10))]
        assert await booked_count(session, client_id=customer.id) == 1

    async def test_the_gap_holds_between_occurrences(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], min_gap_minutes=2 * 24 * 60)

        assert_problem(
            await book(
                client, as_customer, service, staff, local(MONDAY, 10), recurrence={"rrule": "FREQ=DAILY;COUNT=2"}
            ),
            409,
            "booking_gap_too_short",
        )
        weekly = {"rrule": "FREQ=WEEKLY;COUNT=3"}
        assert (
            await book(client, as_customer, service, staff, local(MONDAY, 10), recurrence=weekly)
        ).status_code == 201


class TestReschedule:
    async def test_a_move_is_checked_without_the_moved_appointment(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1, min_gap_minutes=60)
        monday = await book(client, as_customer, service, staff, local(MONDAY, 10))
        tuesday = await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=1), 10))
        tuesday_id = tuesday.json()["id"]

        same_day = await client.patch(
            f"{URL}/{tuesday_id}",
            json={"starts_at": local(MONDAY + timedelta(days=1), 12).isoformat()},
            headers=as_customer,
        )
        onto_monday = await client.patch(
            f"{URL}/{tuesday_id}", json={"starts_at": local(MONDAY, 15).isoformat()}, headers=as_customer
        )

        assert monday.status_code == 201 and same_day.status_code == 200, same_day.text
        assert_problem(onto_monday, 409, "client_daily_limit")

    async def test_a_manage_link_move_is_held_like_the_client(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        await book(client, as_customer, service, staff, local(MONDAY, 10))
        tuesday = (await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=1), 10))).json()
        ends_at = datetime.fromisoformat(tuesday["ends_at"])
        token = manage_tokens.issue(uuid.UUID(tuesday["id"]), customer.id, ends_at, manage_tokens.EVERY_ACTION)

        moved = await client.post(
            f"/api/v1/manage/{token}/reschedule", json={"starts_at": local(MONDAY, 15).isoformat()}
        )

        assert_problem(moved, 409, "client_daily_limit")

    async def test_its_staff_member_may_move_it_past_a_limit(self, client, session, staff, customer, as_customer):
        service = await limited_service(session, [staff], max_bookings_per_client_day=1)
        await book(client, as_customer, service, staff, local(MONDAY, 10))
        tuesday = (await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=1), 10))).json()

        moved = await client.patch(
            f"{URL}/{tuesday['id']}",
            json={"starts_at": local(MONDAY, 15).isoformat()},
            headers=await headers_for(staff),
        )

        assert moved.status_code == 200, moved.text

    async def test_a_move_onto_a_full_staff_day_is_refused(self, client, session, staff, customer, as_customer):
        await client.put(
            f"/api/v1/staff/{staff.id}/limits", json={"max_appointments_per_day": 1}, headers=await headers_for(staff)
        )
        service = await create_service(session, [staff])
        other = await create_user(session)
        await add_appointment(session, other, staff, service, local(MONDAY, 9))
        mine = (await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=1), 10))).json()

        moved = await client.patch(
            f"{URL}/{mine['id']}", json={"starts_at": local(MONDAY, 15).isoformat()}, headers=as_customer
        )

        problem = assert_problem(moved, 409, "staff_daily_limit")
        assert (problem["limit"], problem["period_start"]) == (1, MONDAY.isoformat())


class TestStaffDailyLimit:
    async def test_set_and_read_by_the_staff_member_or_an_admin(self, client, session, staff):
        path = f"/api/v1/staff/{staff.id}/limits"
        as_staff = await headers_for(staff)

        assert (await client.get(path, headers=as_staff)).json() == {"max_appointments_per_day": None}
        saved = await client.put(path, json={"max_appointments_per_day": 8}, headers=as_staff)
        as_admin = await headers_for(await create_user(session, role=Role.admin))
        assert saved.status_code == 200 and saved.json() == {"max_appointments_per_day": 8}
        assert (await client.get(path, headers=as_admin)).json() == {"max_appointments_per_day": 8}
        stranger = await headers_for(await create_user(session))
        assert_problem(await client.put(path, json={"max_appointments_per_day": 1}, headers=stranger), 403, "forbidden")
        assert_problem(
            await client.put(path, json={"max_appointments_per_day": 0}, headers=as_staff), 422, "validation_error"
        )
        lifted = await client.put(path, json={"max_appointments_per_day": None}, headers=as_admin)
        assert lifted.json() == {"max_appointments_per_day": None}

    async def test_a_staff_member_without_a_profile_gets_one(self, client, session):
        staff = await create_user(session, role=Role.staff)

        saved = await client.put(
            f"/api/v1/staff/{staff.id}/limits", json={"max_appointments_per_day": 3}, headers=await headers_for(staff)
        )

        assert saved.json() == {"max_appointments_per_day": 3}

    async def test_many_clients_at_once_fill_the_day_exactly(self, client, session, staff):
        await client.put(
            f"/api/v1/staff/{staff.id}/limits", json={"max_appointments_per_day": 3}, headers=await headers_for(staff)
        )
        service = await create_service(session, [staff], duration=15)
        day = MONDAY + timedelta(days=2)
        people = [await headers_for(await create_user(session)) for _ in range(20)]

        answers = await asyncio.gather(
            *(book(client, h, service, staff, local(day, 9) + timedelta(minutes=15 * n)) for n, h in enumerate(people))
        )

        assert sorted(a.status_code for a in answers) == [201] * 3 + [409] * 17
        assert {a.json()["code"] for a in answers if a.status_code == 409} == {"staff_daily_limit"}
        assert await booked_count(session, staff_id=staff.id) == 3
        next_day = await book(client, people[0], service, staff, local(day + timedelta(days=1), 9))
        assert next_day.status_code == 201


class TestLiveLimit:
    async def test_a_client_holds_at_most_so_many_upcoming(
        self, client, session, set_env, staff, customer, as_customer
    ):
        set_env(MAX_LIVE_APPOINTMENTS_PER_CLIENT="2")
        service = await create_service(session, [staff])
        other = await create_service(session, [staff], name="Other")
        first = await book(client, as_customer, service, staff, local(MONDAY, 10))
        await book(client, as_customer, other, staff, local(MONDAY + timedelta(days=1), 10))

        problem = assert_problem(
            await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=2), 10)),
            409,
            "client_live_limit",
        )
        cancelled = await client.post(f"{URL}/{first.json()['id']}/cancel", json={}, headers=as_customer)

        assert (problem["limit"], problem["period"]) == (2, "future")
        assert cancelled.status_code == 200
        assert (
            await book(client, as_customer, service, staff, local(MONDAY + timedelta(days=2), 10))
        ).status_code == 201

    async def test_a_series_counts_each_occurrence(self, client, session, set_env, staff, customer, as_customer):
        set_env(MAX_LIVE_APPOINTMENTS_PER_CLIENT="3")
        service = await create_service(session, [staff])

        problem = assert_problem(
            await book(
                client, as_customer, service, staff, local(MONDAY, 10), recurrence={"rrule": "FREQ=WEEKLY;COUNT=4"}
            ),
            409,
            "client_live_limit",
        )

        assert len(problem["occurrences"]) == 4
        assert await booked_count(session, client_id=customer.id) == 0


class TestServiceFields:
    async def test_limits_are_set_read_and_bounded(self, client, session, staff):
        as_admin = await headers_for(await create_user(session, role=Role.admin))
        body = {
            "name": "Lesson",
            "duration_minutes": 60,
            "staff_ids": [str(staff.id)],
            "max_bookings_per_client_day": 1,
            "max_bookings_per_client_week": 3,
            "max_bookings_per_client_month": 8,
            "min_gap_minutes": 720,
        }

        created = await client.post("/api/v1/services", json=body, headers=as_admin)

        assert created.status_code == 201, created.text
        assert {k: created.json()[k] for k in body if k.startswith(("max_", "min_gap"))} == {
            k: v for k, v in body.items() if k.startswith(("max_", "min_gap"))
        }
        for field, value in (("max_bookings_per_client_week", 0), ("min_gap_minutes", 525601)):
            refused = await client.patch(
                f"/api/v1/services/{created.json()['id']}", json={field: value}, headers=as_admin
            )
            assert_problem(refused, 422, "validation_error")
        kept = await client.patch(
            f"/api/v1/services/{created.json()['id']}", json={"name": "Lessons"}, headers=as_admin
        )
        assert kept.json()["min_gap_minutes"] == 720


class TestNoDeadlock:
    async def test_crossing_bookings_never_deadlock(self, two_apis, session, service_urls):
        """Clients A and B book staff X and Y at once, A in one order and B in the other, and move
        earlier bookings meanwhile; every one takes a client lock and an exclusive calendar lock.
        All go through, and PostgreSQL never had to break a deadlock (a path taking the locks out
        of order, a reschedule locking the calendar before the client say, deadlocks here)."""
        x, y = [await create_staff(session, hours=(("08:00", "18:00"),)) for _ in range(2)]
        for member in (x, y):
            await session.execute(
                update(StaffProfile).where(StaffProfile.user_id == member.id).values(max_appointments_per_day=100)
            )
        await session.commit()
        service = await limited_service(session, [x, y], duration=10, max_bookings_per_client_day=100)
        a, b = await create_user(session), await create_user(session)
        as_a, as_b = await headers_for(a), await headers_for(b)
        day, later = MONDAY + timedelta(days=3), MONDAY + timedelta(days=4)
        slot = [local(day, 8) + timedelta(minutes=10 * n) for n in range(60)]
        later_slot = [local(later, 8) + timedelta(minutes=10 * n) for n in range(60)]
        requests = []
        for n in range(12):
            requests += [
                (as_a, booking_body(service, x, slot[4 * n])),
                (as_b, booking_body(service, y, slot[4 * n + 1])),
                (as_a, booking_body(service, y, slot[4 * n + 2])),
                (as_b, booking_body(service, x, slot[4 * n + 3])),
            ]
        for n, (who, headers, staff) in enumerate([(a, as_a, x), (b, as_b, y), (a, as_a, y), (b, as_b, x)] * 3):
            earlier = await add_appointment(session, who, staff, service, later_slot[2 * n])
            requests.insert(4 * n + 2, (headers, {"starts_at": zulu(later_slot[2 * n + 1])}, f"{URL}/{earlier.id}"))
        database = urlsplit(service_urls["database_url"]).path.strip("/")
        before = await deadlocks(service_urls["admin_database_url"], database)

        answers = await post_each(two_apis, requests)

        assert sorted(a.status_code for a in answers) == [200] * 12 + [201] * 48, {
            a.text for a in answers if a.status_code not in (200, 201)
        }
        await asyncio.sleep(1.5)  # cumulative statistics are flushed about once a second
        assert await deadlocks(service_urls["admin_database_url"], database) == before
        assert await booked_count(session, client_id=a.id) == await booked_count(session, client_id=b.id) == 30


async def deadlocks(admin_url: str, database: str) -> int:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        return await connection.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = $1", database)
    finally:
        await connection.close()
