"""Availability cached per staff member and local day: any window reuses the days it covers, a
change recomputes only the days it touches, and no slot that was just taken is ever served.

Computations are counted by spying on what the service loads and caches, never by timing."""

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.models import Role
from app.services.scheduling import availability, availability_cache
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import booking_body, create_service, create_staff, days_ahead, headers_for
from tests.smtp import settings_env

AVAILABILITY = "/api/v1/availability"
ZONE = ZoneInfo("America/New_York")


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZONE)


def z(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def world(session):
    staff = await create_staff(session, timezone="America/New_York", hours=(("09:00", "12:00"),))
    service = await create_service(session, [staff], duration=60, buffer_after=30, min_notice=0)
    customer = await create_user(session)
    admin = await create_user(session, role=Role.admin)
    return staff, service, await headers_for(customer), await headers_for(admin)


@pytest.fixture
def computed(monkeypatch) -> list[set[date]]:
    """The local dates each request had to compute (one set per computation)."""
    seen: list[set[date]] = []
    write_days = availability_cache.write_days

    async def spy(days, rules, tags):
        seen.append({day for per_staff in days.values() for day in per_staff})
        await write_days(days, rules, tags)

    monkeypatch.setattr(availability_cache, "write_days", spy)
    return seen


async def starts(client, service, start: datetime, end: datetime) -> list[str]:
    params = {"service_id": str(service.id), "start": start.isoformat(), "end": end.isoformat()}
    response = await client.get(AVAILABILITY, params=params)
    assert response.status_code == 200, response.text
    return [slot["starts_at"] for slot in response.json()["slots"]]


FIRST = days_ahead(10)
WEEK = [FIRST + timedelta(days=n) for n in range(7)]


class TestDaysAreShared:
    async def test_a_window_shifted_by_a_second_reuses_every_cached_day(self, client, world, computed):
        _, service, _, _ = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        first = await starts(client, service, start, end)

        shifted = await starts(client, service, start + timedelta(seconds=1), end + timedelta(seconds=1))

        # The shifted window reaches one second into an eighth day: that day alone is computed.
        assert computed == [set(WEEK), {FIRST + timedelta(days=7)}]
        assert len(first) == 21 and shifted == first
        inside = await starts(client, service, start + timedelta(seconds=2), end - timedelta(seconds=1))
        assert len(computed) == 2 and inside == first

    async def test_a_longer_window_computes_only_the_days_it_adds(self, client, world, computed):
        _, service, _, _ = world
        await starts(client, service, local(FIRST, 0), local(FIRST + timedelta(days=3), 0))

        found = await starts(client, service, local(FIRST, 6), local(FIRST + timedelta(days=5), 0))

        assert computed == [set(WEEK[:3]), set(WEEK[3:5])] and len(found) == 15

    async def test_a_day_is_a_local_day_in_the_staff_members_zone(self, client, world):
        staff, service, _, _ = world
        await starts(client, service, local(FIRST, 0), local(FIRST + timedelta(days=2), 0))

        fields = await availability_cache.get_redis().hkeys(availability_cache.hash_key(staff.id))

        assert sorted(f.split(":")[-1] for f in fields if f.startswith("s:")) == [str(d) for d in WEEK[:2]]


class TestChangesInvalidateTheirDays:
    async def test_a_booking_recomputes_only_its_days_and_its_slot_is_gone(self, client, world, computed):
        staff, service, customer, _ = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        await starts(client, service, start, end)
        taken = local(WEEK[3], 10)
        booked = await client.post("/api/v1/appointments", json=booking_body(service, staff, taken), headers=customer)
        assert booked.status_code == 201, booked.text

        after = await starts(client, service, start, end)

        # The booked day and its neighbours (a booking's buffers may reach them), nothing else.
        assert computed[1:] == [{WEEK[2], WEEK[3], WEEK[4]}]
        assert z(taken) not in after and z(local(WEEK[3], 9)) not in after  # 09:00 + 60 min + 30 min buffer
        assert len(after) == 21 - 3  # 09:00 and 11:00 do not fit around 10:00-11:30 either
        far = await starts(client, service, local(WEEK[6], 0), local(WEEK[6], 23))
        assert computed[2:] == [] and len(far) == 3  # another day stayed cached

    async def test_a_reschedule_frees_the_old_day_and_takes_the_new_one(self, client, world, computed):
        staff, service, customer, _ = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        body = booking_body(service, staff, local(WEEK[1], 9))
        booked = (await client.post("/api/v1/appointments", json=body, headers=customer)).json()
        await starts(client, service, start, end)

        moved = await client.patch(
            f"/api/v1/appointments/{booked['id']}", json={"starts_at": local(WEEK[5], 9).isoformat()}, headers=customer
        )
        assert moved.status_code == 200, moved.text
        after = await starts(client, service, start, end)

        assert z(local(WEEK[1], 9)) in after and z(local(WEEK[5], 9)) not in after
        assert computed[-1] == {WEEK[0], WEEK[1], WEEK[2], WEEK[4], WEEK[5], WEEK[6]}

    async def test_multi_day_time_off_hides_every_day_it_covers(self, client, world, computed):
        staff, service, _, admin = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        await starts(client, service, start, end)
        block = {"starts_at": local(WEEK[2], 11).isoformat(), "ends_at": local(WEEK[4], 10).isoformat()}

        created = await client.post(f"/api/v1/staff/{staff.id}/time-off", json=block, headers=admin)
        assert created.status_code == 201, created.text
        after = await starts(client, service, start, end)

        assert {s for s in after if WEEK[2].isoformat() <= s[:10] <= WEEK[4].isoformat()} == {
            z(local(WEEK[2], 9)),
            z(local(WEEK[2], 10)),
            z(local(WEEK[4], 10)),
            z(local(WEEK[4], 11)),
        }
        assert computed[-1] == {WEEK[1], WEEK[2], WEEK[3], WEEK[4], WEEK[5]}

    async def test_an_override_changes_its_date(self, client, world, computed):
        staff, service, _, admin = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        await starts(client, service, start, end)
        override = {"date": WEEK[3].isoformat(), "intervals": [{"start": "14:00", "end": "15:00"}]}

        created = await client.post(f"/api/v1/staff/{staff.id}/overrides", json=override, headers=admin)
        assert created.status_code in (200, 201), created.text
        after = await starts(client, service, start, end)

        assert [s for s in after if s.startswith(WEEK[3].isoformat())] == [z(local(WEEK[3], 14))]
        assert computed[-1] == {WEEK[2], WEEK[3], WEEK[4]}

    async def test_new_weekly_hours_recompute_every_day(self, client, world, computed):
        staff, service, _, admin = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        await starts(client, service, start, end)
        week = {
            "timezone": "America/New_York",
            "intervals": [{"weekday": d, "start": "13:00", "end": "14:00"} for d in range(7)],
        }

        replaced = await client.put(f"/api/v1/staff/{staff.id}/schedule", json=week, headers=admin)
        assert replaced.status_code == 200, replaced.text
        after = await starts(client, service, start, end)

        assert after == [z(local(day, 13)) for day in WEEK] and computed[-1] == set(WEEK)


class TestNeverStale:
    async def test_a_booking_committed_while_another_request_computes(self, client, world, monkeypatch):
        """The request loaded its data before the booking committed, and caches it after: its
        entries are filed under the versions it read first, so the next request recomputes."""
        staff, service, customer, _ = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        loaded, release = asyncio.Event(), asyncio.Event()
        load_calendars = availability.load_calendars

        async def slow_load(*args, **kwargs):
            calendars = await load_calendars(*args, **kwargs)
            loaded.set()
            await release.wait()
            return calendars

        monkeypatch.setattr(availability, "load_calendars", slow_load)
        reader = asyncio.create_task(starts(client, service, start, end))
        await loaded.wait()
        monkeypatch.setattr(availability, "load_calendars", load_calendars)
        taken = local(WEEK[3], 10)
        booked = await client.post("/api/v1/appointments", json=booking_body(service, staff, taken), headers=customer)
        assert booked.status_code == 201, booked.text
        release.set()
        assert z(taken) in await reader  # computed before the booking: an answer of its time

        assert z(taken) not in await starts(client, service, start, end)
        assert z(taken) not in await starts(client, service, start + timedelta(seconds=1), end)

    async def test_simultaneous_reads_and_bookings_never_serve_a_taken_slot(self, client, session, world):
        staff, service, _, _ = world
        start, end = local(FIRST, 0), local(FIRST + timedelta(days=7), 0)
        customers = [await headers_for(await create_user(session)) for _ in range(len(WEEK))]
        for day, headers in zip(WEEK, customers, strict=True):
            taken = local(day, 10)
            body = booking_body(service, staff, taken)
            readers = [starts(client, service, start + timedelta(seconds=n), end) for n in range(6)]
            booked, *_ = await asyncio.gather(client.post("/api/v1/appointments", json=body, headers=headers), *readers)
            assert booked.status_code == 201, booked.text

            for shift in (0, 1, 7):
                assert z(taken) not in await starts(client, service, start + timedelta(seconds=shift), end)


class TestRateLimit:
    async def test_beyond_the_limit_per_ip_429_with_retry_after(self, client, world):
        _, service, _, _ = world
        params = {"service_id": str(service.id), "start": local(FIRST, 0).isoformat()}
        params["end"] = local(FIRST, 23).isoformat()
        with settings_env(AVAILABILITY_REQUESTS_PER_IP="3/minute"):
            answers = [await client.get(AVAILABILITY, params=params) for _ in range(4)]

        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        assert int(assert_problem(answers[3], 429, "rate_limited") and answers[3].headers["retry-after"]) >= 1

    async def test_the_limit_is_documented(self, client):
        operation = (await client.get("/openapi.json")).json()["paths"][AVAILABILITY]["get"]

        assert "429" in operation["responses"] and "Retry-After" in operation["responses"]["429"]["headers"]
