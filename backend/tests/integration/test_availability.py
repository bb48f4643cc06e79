"""`GET /api/v1/availability` end to end: rows straight into PostgreSQL, answers through HTTP.

DST cases use next year's change dates, found from the zone data, so they stay in the future.
"""

import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update

from app.database import unit_of_work
from app.models import Appointment, DateOverride, Role, Service, TimeOff, User, WeeklyInterval
from app.redis import get_redis
from app.services.scheduling import availability, availability_cache
from app.utils.time import fixed_offset
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import add_appointment, create_service, create_staff

URL = "/api/v1/availability"
NEW_YORK, BERLIN = "America/New_York", "Europe/Berlin"
NEXT_YEAR = datetime.now(UTC).year + 1


def clock_change(zone: str, month: int, year: int = NEXT_YEAR) -> date:
    """The day of `month` on which the zone's clocks change."""
    day = date(year, month, 1)
    while fixed_offset(day, ZoneInfo(zone)) is not None:
        day += timedelta(days=1)
    return day


def utc(day: date, hh_mm: str) -> str:
    return f"{day.isoformat()}T{hh_mm}:00Z"


async def make_staff(session, zone: str = "UTC", *spans: str, weekdays=range(7)) -> User:
    """A staff member working `spans` ("09:00-17:00", ...) local time in `zone` on `weekdays`."""
    hours = [tuple(span.split("-")) for span in spans or ("09:00-17:00",)]
    return await create_staff(session, timezone=zone, hours=hours, weekdays=weekdays)


async def make_service(session, *staff: User, minutes=60, before=0, after=0, notice=0, advance=730, active=True):
    service = await create_service(
        session,
        staff,
        name=f"Service {uuid.uuid4().hex[:6]}",
        duration=minutes,
        buffer_before=before,
        buffer_after=after,
        min_notice=notice,
        max_advance=advance,
    )
    if not active:
        service.is_active = False
        await session.commit()
    return service


async def book(service: Service, staff: User, starts_at: datetime, status: str = "confirmed") -> Appointment:
    """Insert a booking the way the booking service does: one unit of work, versions bumped after commit."""
    async with unit_of_work() as db:
        client = await create_user(db)
        appointment = await add_appointment(db, client, staff, service, starts_at, status=status, commit=False)
        await db.flush()
        availability.invalidate_after_commit(db, staff.id)
    return appointment


async def slots(client, service: Service, start, end, **params) -> list[dict]:
    response = await client.get(URL, params={"service_id": str(service.id), "start": start, "end": end, **params})
    assert response.status_code == 200, response.text
    return response.json()["slots"]


def starts(found: list[dict]) -> list[str]:
    return [slot["starts_at"] for slot in found]


class TestRequest:
    async def test_answer_shape(self, client, session):
        staff = await make_staff(session, BERLIN, "09:00-11:00")
        service = await make_service(session, staff)
        day = date(NEXT_YEAR, 7, 1)

        response = await client.get(
            URL, params={"service_id": str(service.id), "start": utc(day, "00:00"), "end": utc(day, "12:00")}
        )

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "start": utc(day, "00:00"),
            "end": utc(day, "12:00"),
            "slots": [
                {"staff_id": str(staff.id), "starts_at": utc(day, "07:00"), "ends_at": utc(day, "08:00")},
                {"staff_id": str(staff.id), "starts_at": utc(day, "08:00"), "ends_at": utc(day, "09:00")},
            ],
        }

    @pytest.mark.parametrize(
        ("start", "end", "tz", "status", "code"),
        [
            ("2027-07-01T00:00:00", "2027-07-02T00:00:00Z", None, 422, "validation_error"),
            ("2027-07-01T00:00:00Z", "2027-07-02T00:00:00", None, 422, "validation_error"),
            ("2027-07-01", "2027-07-02", None, 422, "validation_error"),
            ("2027-07-01", "2027-07-02", "Europe/Atlantis", 422, "validation_error"),
            ("yesterday", "2027-07-02T00:00:00Z", None, 422, "validation_error"),
            ("2027-07-02T00:00:00Z", "2027-07-02T00:00:00Z", None, 422, "invalid_window"),
            ("2027-07-03T00:00:00Z", "2027-07-02T00:00:00Z", None, 422, "invalid_window"),
            ("2027-07-01T00:00:00Z", "2027-09-01T00:00:01Z", None, 422, "window_too_large"),
        ],
    )
    async def test_bad_windows(self, client, session, start, end, tz, status, code):
        service = await make_service(session)
        params = {"service_id": str(service.id), "start": start, "end": end} | ({"tz": tz} if tz else {})

        assert_problem(await client.get(URL, params=params), status, code)

    async def test_sixty_two_days_is_fine(self, client, session):
        service = await make_service(session)

        assert await slots(client, service, "2027-07-01", "2027-09-01", tz="UTC") == []

    async def test_missing_service_id(self, client):
        response = await client.get(URL, params={"start": "2027-07-01", "end": "2027-07-02", "tz": "UTC"})

        assert assert_problem(response, 422, "validation_error")["errors"][0]["loc"] == ["query", "service_id"]

    async def test_unknown_service(self, client):
        params = {"service_id": str(uuid.uuid4()), "start": "2027-07-01", "end": "2027-07-02", "tz": "UTC"}

        assert_problem(await client.get(URL, params=params), 404, "not_found")

    async def test_inactive_service(self, client, session):
        staff = await make_staff(session)
        service = await make_service(session, staff, active=False)
        params = {"service_id": str(service.id), "start": "2027-07-01", "end": "2027-07-02", "tz": "UTC"}

        assert_problem(await client.get(URL, params=params), 404, "not_found")

    async def test_staff_member_who_does_not_offer_the_service(self, client, session):
        service = await make_service(session, await make_staff(session))
        other = await make_staff(session)
        params = {"service_id": str(service.id), "start": "2027-07-01", "end": "2027-07-02", "tz": "UTC"}

        assert_problem(await client.get(URL, params={**params, "staff_id": str(other.id)}), 404, "not_found")

    async def test_documented_for_code_generators(self, client):
        operation = (await client.get("/openapi.json")).json()["paths"][URL]["get"]

        assert operation["operationId"] == "availability-list"
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Availability"
        }
        assert {"404", "422"} <= set(operation["responses"])
        assert [p["name"] for p in operation["parameters"]] == ["service_id", "start", "end", "staff_id", "tz"]

    async def test_public(self, client, session):
        service = await make_service(session, await make_staff(session))

        assert await slots(client, service, "2027-07-01", "2027-07-02", tz="UTC")


class TestDaylightSaving:
    @pytest.mark.parametrize(
        ("zone", "month", "before", "after"),
        [
            (NEW_YORK, 3, ("14:00", "19:00"), ("13:00", "18:00")),  # EST -> EDT
            (NEW_YORK, 11, ("13:00", "18:00"), ("14:00", "19:00")),  # EDT -> EST
            (BERLIN, 3, ("08:00", "13:00"), ("07:00", "12:00")),  # CET -> CEST
            (BERLIN, 10, ("07:00", "12:00"), ("08:00", "13:00")),  # CEST -> CET
        ],
    )
    async def test_morning_and_afternoon_hours_stay_put(self, client, session, zone, month, before, after):
        staff = await make_staff(session, zone, "09:00-10:00", "14:00-15:00")
        service = await make_service(session, staff)
        day = clock_change(zone, month)
        eve = day - timedelta(days=1)

        found = await slots(client, service, eve.isoformat(), (day + timedelta(days=1)).isoformat(), tz=zone)

        assert starts(found) == [utc(eve, before[0]), utc(eve, before[1]), utc(day, after[0]), utc(day, after[1])]
        assert [s["starts_at_local"][11:16] for s in found] == ["09:00", "14:00", "09:00", "14:00"]

    @pytest.mark.parametrize("zone", [NEW_YORK, BERLIN])
    async def test_the_missing_hour_is_never_offered(self, client, session, zone):
        staff = await make_staff(session, zone, "00:00-05:00")
        service = await make_service(session, staff, minutes=30)
        day = clock_change(zone, 3)

        found = await slots(client, service, day.isoformat(), (day + timedelta(days=1)).isoformat(), tz=zone)

        local = [s["starts_at_local"][11:16] for s in found]
        assert local == ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30", "04:00", "04:30"]

    async def test_a_slot_ending_inside_the_gap_ends_an_hour_later_on_the_new_time(self, client, session):
        staff = await make_staff(session, NEW_YORK, "00:30-04:00")
        service = await make_service(session, staff)
        day = clock_change(NEW_YORK, 3)

        found = await slots(client, service, day.isoformat(), (day + timedelta(days=1)).isoformat(), tz=NEW_YORK)

        assert [(s["starts_at_local"], s["ends_at_local"]) for s in found] == [
            (f"{day}T00:30:00-05:00", f"{day}T01:30:00-05:00"),
            (f"{day}T01:30:00-05:00", f"{day}T03:30:00-04:00"),
        ]

    async def test_the_repeated_hour_is_offered_once(self, client, session):
        staff = await make_staff(session, NEW_YORK, "00:00-03:00")
        service = await make_service(session, staff)
        day = clock_change(NEW_YORK, 11)

        found = await slots(client, service, day.isoformat(), (day + timedelta(days=1)).isoformat(), tz=NEW_YORK)

        # 01:00 happens twice; it is offered on its first occurrence (summer time) only.
        assert starts(found) == [utc(day, "04:00"), utc(day, "05:00"), utc(day, "07:00")]
        assert [s["starts_at_local"] for s in found] == [
            f"{day}T00:00:00-04:00",
            f"{day}T01:00:00-04:00",
            f"{day}T02:00:00-05:00",
        ]

    async def test_a_client_in_another_zone(self, client, session):
        staff = await make_staff(session, BERLIN, "09:00-10:00", "14:00-15:00")
        service = await make_service(session, staff)
        day = clock_change(NEW_YORK, 3)  # New York has moved its clocks, Berlin not yet

        found = await slots(client, service, day.isoformat(), (day + timedelta(days=1)).isoformat(), tz=NEW_YORK)

        # The New York day runs 05:00Z-04:00Z; Berlin (still UTC+1) opens at 08:00Z and 13:00Z.
        assert starts(found) == [utc(day, "08:00"), utc(day, "13:00")]
        assert [s["starts_at_local"] for s in found] == [f"{day}T04:00:00-04:00", f"{day}T09:00:00-04:00"]
        assert [s["ends_at_local"] for s in found] == [f"{day}T05:00:00-04:00", f"{day}T10:00:00-04:00"]

    async def test_plain_dates_are_the_clients_midnights(self, client, session):
        staff = await make_staff(session, "UTC", "00:00-23:00")
        service = await make_service(session, staff)
        day = clock_change(NEW_YORK, 3)

        params = {"service_id": str(service.id), "start": day.isoformat(), "end": utc(day, "12:00"), "tz": NEW_YORK}

        response = await client.get(URL, params=params)

        body = response.json()
        assert (body["start"], body["end"]) == (utc(day, "05:00"), utc(day, "12:00"))
        assert starts(body["slots"]) == [utc(day, f"{h:02}:00") for h in range(5, 12)]


class TestBusyTime:
    DAY = date(NEXT_YEAR, 7, 1)

    async def window(self, client, service, **params):
        return starts(await slots(client, service, utc(self.DAY, "00:00"), utc(self.DAY, "23:00"), **params))

    async def test_buffers_on_both_sides(self, client, session):
        staff = await make_staff(session, "UTC", "08:00-16:00")
        existing = await make_service(session, staff, before=15, after=15)
        await book(existing, staff, datetime.fromisoformat(utc(self.DAY, "11:00")))  # blocks 10:45-12:15
        service = await make_service(session, staff, minutes=30, before=10, after=10)

        found = await self.window(client, service)

        assert utc(self.DAY, "10:00") in found  # ends 10:30, its buffer 10:40
        assert utc(self.DAY, "10:30") not in found and utc(self.DAY, "12:00") not in found
        assert utc(self.DAY, "12:30") in found  # its buffer starts 12:20
        assert not [s for s in found if utc(self.DAY, "10:30") <= s <= utc(self.DAY, "12:00")]

    @pytest.mark.parametrize(("status", "blocks"), [("pending", True), ("confirmed", True), ("cancelled", False)])
    async def test_only_live_bookings_block(self, client, session, status, blocks):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff)
        await book(service, staff, datetime.fromisoformat(utc(self.DAY, "10:00")), status=status)

        assert (utc(self.DAY, "10:00") not in await self.window(client, service)) is blocks

    async def test_completed_and_no_show_do_not_block(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff)
        await book(service, staff, datetime.fromisoformat(utc(self.DAY, "09:00")), status="completed")
        await book(service, staff, datetime.fromisoformat(utc(self.DAY, "10:00")), status="no_show")

        assert await self.window(client, service) == [utc(self.DAY, h) for h in ("09:00", "10:00", "11:00")]

    async def test_a_booking_for_another_service_blocks_too(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        other = await make_service(session, staff, minutes=90)
        service = await make_service(session, staff)
        await book(other, staff, datetime.fromisoformat(utc(self.DAY, "09:00")))

        assert await self.window(client, service) == [utc(self.DAY, "11:00")]

    async def test_time_off(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-13:00")
        service = await make_service(session, staff)
        session.add(
            TimeOff(
                staff_id=staff.id,
                starts_at=datetime.fromisoformat(utc(self.DAY, "09:30")),
                ends_at=datetime.fromisoformat(utc(self.DAY, "11:00")),
            )
        )
        await session.commit()

        assert await self.window(client, service) == [utc(self.DAY, "11:00"), utc(self.DAY, "12:00")]

    async def test_overrides_replace_a_day_and_an_empty_one_closes_it(self, client, session):
        staff = await make_staff(session, BERLIN, "09:00-11:00")
        service = await make_service(session, staff)
        first, second = self.DAY, self.DAY + timedelta(days=1)
        session.add(DateOverride(staff_id=staff.id, date=first, intervals=[{"start": "18:00", "end": "19:00"}]))
        session.add(DateOverride(staff_id=staff.id, date=second, intervals=[]))
        await session.commit()
        end = (self.DAY + timedelta(days=3)).isoformat()

        found = await slots(client, service, first.isoformat(), end, tz=BERLIN)

        third = second + timedelta(days=1)
        assert starts(found) == [utc(first, "16:00"), utc(third, "07:00"), utc(third, "08:00")]


class TestPolicies:
    async def test_min_notice(self, client, session):
        staff = await make_staff(session, "UTC", "00:00-23:59")
        service = await make_service(session, staff, minutes=15, notice=180)
        before = datetime.now(UTC)

        found = await slots(client, service, before.isoformat(), (before + timedelta(days=1)).isoformat())

        first = datetime.fromisoformat(found[0]["starts_at"])
        assert first >= before + timedelta(minutes=180)
        assert first < datetime.now(UTC) + timedelta(minutes=180 + 31)  # 23:30 is the last start of a day

    async def test_max_advance(self, client, session):
        staff = await make_staff(session, "UTC", "00:00-23:59")
        service = await make_service(session, staff, minutes=30, advance=2)
        before = datetime.now(UTC)

        found = await slots(client, service, before.isoformat(), (before + timedelta(days=5)).isoformat())

        last = datetime.fromisoformat(found[-1]["starts_at"])
        assert before + timedelta(days=2) - timedelta(hours=2) < last < datetime.now(UTC) + timedelta(days=2)


class TestStaff:
    DAY = date(NEXT_YEAR, 7, 1)

    async def test_everyone_offering_the_service_or_one_of_them(self, client, session):
        alice = await make_staff(session, BERLIN, "09:00-11:00")
        bob = await make_staff(session, NEW_YORK, "03:00-05:00")  # the same hours in UTC in July
        service = await make_service(session, alice, bob)
        start, end = utc(self.DAY, "00:00"), utc(self.DAY, "23:00")

        everyone = await slots(client, service, start, end)
        only_bob = await slots(client, service, start, end, staff_id=str(bob.id))

        first, second = sorted([str(alice.id), str(bob.id)])
        assert [(s["starts_at"], s["staff_id"]) for s in everyone] == [
            (utc(self.DAY, "07:00"), first),
            (utc(self.DAY, "07:00"), second),
            (utc(self.DAY, "08:00"), first),
            (utc(self.DAY, "08:00"), second),
        ]
        assert [(s["starts_at"], s["staff_id"]) for s in only_bob] == [
            (utc(self.DAY, "07:00"), str(bob.id)),
            (utc(self.DAY, "08:00"), str(bob.id)),
        ]

    async def test_deactivated_staff_are_not_offered(self, client, session):
        alice = await make_staff(session, "UTC", "09:00-10:00")
        bob = await make_staff(session, "UTC", "09:00-10:00")
        service = await make_service(session, alice, bob)
        await session.execute(update(User).where(User.id == bob.id).values(is_active=False))
        await session.commit()

        found = await slots(client, service, utc(self.DAY, "00:00"), utc(self.DAY, "23:00"))

        assert [s["staff_id"] for s in found] == [str(alice.id)]

    async def test_staff_without_a_profile_use_their_account_zone(self, client, session):
        staff = await create_user(session, role=Role.staff, timezone=BERLIN)
        session.add(
            WeeklyInterval(staff_id=staff.id, weekday=self.DAY.weekday(), start_time=time(9), end_time=time(10))
        )
        await session.commit()
        service = await make_service(session, staff)

        found = await slots(client, service, utc(self.DAY, "00:00"), utc(self.DAY, "23:00"))

        assert starts(found) == [utc(self.DAY, "07:00")]


class TestCache:
    DAY = date(NEXT_YEAR, 7, 1)

    async def test_a_slot_just_booked_is_never_offered_again(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff)
        start, end = utc(self.DAY, "00:00"), utc(self.DAY, "23:00")
        assert utc(self.DAY, "10:00") in starts(await slots(client, service, start, end))

        await book(service, staff, datetime.fromisoformat(utc(self.DAY, "10:00")))

        assert starts(await slots(client, service, start, end)) == [utc(self.DAY, "09:00"), utc(self.DAY, "11:00")]

    async def test_answers_are_cached_until_a_change_is_announced(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff)
        start, end = utc(self.DAY, "00:00"), utc(self.DAY, "23:00")
        first = await slots(client, service, start, end)
        # A change nobody announces (not how the app writes) is not seen while the answer is cached ...
        session.add(
            TimeOff(staff_id=staff.id, starts_at=datetime.fromisoformat(start), ends_at=datetime.fromisoformat(end))
        )
        await session.commit()
        assert await slots(client, service, start, end) == first

        await availability.bump_versions(staff.id)

        assert await slots(client, service, start, end) == []  # ... and is once the version moves on

    async def test_a_rolled_back_change_does_not_bump(self, session):
        staff = await make_staff(session)
        with pytest.raises(RuntimeError):
            async with unit_of_work() as db:
                availability.invalidate_after_commit(db, staff.id)
                raise RuntimeError("boom")

        assert await get_redis().exists(availability_cache.hash_key(staff.id)) == 0

    async def test_cached_answers_per_staff_filter_and_zone(self, client, session):
        staff = await make_staff(session, "UTC", "09:00-10:00")
        service = await make_service(session, staff)
        day = self.DAY.isoformat()
        end = (self.DAY + timedelta(days=1)).isoformat()

        utc_day = await slots(client, service, day, end, tz="UTC")
        tokyo_day = await slots(client, service, day, end, tz="Asia/Tokyo")

        assert utc_day[0]["starts_at_local"] == f"{day}T09:00:00+00:00"
        assert tokyo_day[0]["starts_at_local"] == f"{day}T18:00:00+09:00"


class TestBookingChecks:
    """`is_offered` / `unoffered_starts`: what the booking service asks before it writes."""

    DAY = date(NEXT_YEAR, 7, 1)

    def at(self, hh_mm: str, day: date | None = None) -> datetime:
        return datetime.fromisoformat(utc(day or self.DAY, hh_mm))

    async def test_offered_starts_only(self, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff)

        assert await availability.is_offered(session, service, staff.id, self.at("10:00"))
        assert not await availability.is_offered(session, service, staff.id, self.at("10:30"))
        assert not await availability.is_offered(session, service, staff.id, self.at("12:00"))
        assert not await availability.is_offered(
            session, service, staff.id, self.at("10:00") + timedelta(microseconds=1)
        )

    async def test_a_booking_being_moved_does_not_block_itself(self, session):
        staff = await make_staff(session, "UTC", "09:00-12:00")
        service = await make_service(session, staff, after=30)
        booked = await book(service, staff, self.at("10:00"))

        assert not await availability.is_offered(session, service, staff.id, self.at("10:00"))
        assert await availability.is_offered(
            session, service, staff.id, self.at("10:00"), exclude_appointment=booked.id
        )

    async def test_staff_who_do_not_offer_the_service(self, session):
        service = await make_service(session, await make_staff(session, "UTC", "09:00-12:00"))
        other = await make_staff(session, "UTC", "09:00-12:00")

        assert not await availability.is_offered(session, service, other.id, self.at("10:00"))

    async def test_a_series_is_checked_in_one_go(self, session):
        staff = await make_staff(session, "UTC", "09:00-12:00", weekdays=[self.DAY.weekday()])
        service = await make_service(session, staff)
        weekly = [self.at("10:00") + timedelta(weeks=n) for n in range(52)]
        await book(service, staff, weekly[30])
        session.add(DateOverride(staff_id=staff.id, date=weekly[40].date(), intervals=[]))
        await session.commit()

        assert await availability.unoffered_starts(session, service, staff.id, weekly) == [weekly[30], weekly[40]]
        assert await availability.unoffered_starts(session, service, staff.id, []) == []

    async def test_find_slots_uncached(self, session):
        staff = await make_staff(session, "UTC", "09:00-11:00")
        service = await make_service(session, staff)

        found = await availability.find_slots(session, service.id, self.at("00:00"), self.at("23:00"))

        assert [s.starts_at for s in found] == [self.at("09:00"), self.at("10:00")]
