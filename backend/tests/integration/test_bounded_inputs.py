"""Strict, bounded inputs: the requests that used to hang a process or answer 500 now answer 4xx,
lax parsing is gone, and /health keeps answering while such requests arrive."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from app.models import Role, User
from app.utils.time import utcnow
from tests.apiserver import api_process
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import URL, booking_body, create_service, create_staff, headers_for

YEAR_9999 = datetime(9999, 12, 28, 10, tzinfo=UTC)
SERIES = [f"FREQ={freq};COUNT=3" for freq in ("MONTHLY", "DAILY", "WEEKLY")]


@pytest.fixture
async def calendar(session):
    staff = await create_staff(session)
    service = await create_service(session, [staff], max_advance=60)
    client = await create_user(session)
    return service, staff, await headers_for(client)


class TestFormerHangs:
    """A MONTHLY series late in 9999 looped for ever in the event loop; DAILY and WEEKLY answered 500."""

    @pytest.mark.parametrize("rrule", SERIES)
    async def test_a_series_in_the_year_9999_is_422(self, client, calendar, rrule):
        service, staff, headers = calendar
        body = booking_body(service, staff, YEAR_9999, recurrence={"rrule": rrule})

        problem = assert_problem(await client.post(URL, json=body, headers=headers), 422, "validation_error")

        assert problem["errors"][0]["type"] == "datetime_out_of_range"

    @pytest.mark.parametrize("rrule", [*SERIES, "FREQ=MONTHLY;UNTIL=21991231"])
    async def test_a_series_beyond_max_advance_is_refused_before_expansion(self, client, calendar, rrule):
        service, staff, headers = calendar
        starts_at = datetime(2199, 12, 28, 10, tzinfo=UTC)  # inside the bounds, far past the 60 days
        body = booking_body(service, staff, starts_at, recurrence={"rrule": rrule})

        problem = assert_problem(await client.post(URL, json=body, headers=headers), 422, "slot_not_offered")

        assert problem["occurrences"] == ["2199-12-28T10:00:00Z"]

    async def test_a_series_that_runs_past_max_advance_names_the_first_beyond(self, client, calendar):
        service, staff, headers = calendar
        first = (utcnow() + timedelta(days=40)).replace(hour=10, minute=0, second=0, microsecond=0)
        body = booking_body(service, staff, first, recurrence={"rrule": "FREQ=MONTHLY;COUNT=52"})

        problem = assert_problem(await client.post(URL, json=body, headers=headers), 422, "slot_not_offered")

        assert len(problem["occurrences"]) == 1 and problem["occurrences"][0] > first.isoformat()[:10]

    async def test_a_single_booking_beyond_max_advance_is_422(self, client, calendar):
        service, staff, headers = calendar
        body = booking_body(service, staff, datetime(2199, 12, 31, 23, tzinfo=UTC))

        assert_problem(await client.post(URL, json=body, headers=headers), 422, "slot_not_offered")

    @pytest.mark.parametrize("end", ["9999-12-31T00:00:00Z", "9999-12-31"])
    async def test_an_availability_window_at_the_end_of_time_is_422(self, client, calendar, end):
        service, _, _ = calendar
        query = {"service_id": str(service.id), "start": "9999-12-01T00:00:00Z", "end": end, "tz": "UTC"}

        assert_problem(await client.get("/api/v1/availability", params=query), 422, "validation_error")

    async def test_a_list_filter_at_year_1_is_422(self, client, calendar):
        _, _, headers = calendar
        response = await client.get(URL, params={"from": "0001-01-01T00:00:00Z"}, headers=headers)

        assert_problem(response, 422, "validation_error")

    async def test_an_offset_past_the_bound_is_422(self, client, calendar):
        _, _, headers = calendar
        response = await client.get(URL, params={"offset": str(10**30)}, headers=headers)

        assert_problem(response, 422, "validation_error")


class TestStrictTypes:
    @pytest.mark.parametrize("value", ["0.5", "1700000000", "tomorrow"])
    async def test_a_number_is_not_a_datetime_in_a_query(self, client, calendar, value):
        _, _, headers = calendar

        assert_problem(await client.get(URL, params={"to": value}, headers=headers), 422, "validation_error")

    async def test_iso_datetimes_and_plain_integers_still_work(self, client, calendar):
        _, _, headers = calendar
        params = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00+01:00", "limit": "10"}

        response = await client.get(URL, params=params, headers=headers)

        assert response.status_code == 200, response.text
        assert response.json()["limit"] == 10

    @pytest.mark.parametrize("value", ["10.0", "+10", " 10", "1e1"])
    async def test_a_limit_is_digits_only(self, client, calendar, value):
        _, _, headers = calendar

        assert_problem(await client.get(URL, params={"limit": value}, headers=headers), 422, "validation_error")

    @pytest.mark.parametrize("value", ["0", "1", "yes", "off"])
    async def test_a_query_flag_is_true_or_false(self, client, value):
        response = await client.get("/api/v1/services", params={"include_inactive": value})

        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "change",
        [
            {"requires_confirmation": 0},
            {"is_active": "false"},
            {"duration_minutes": "30"},
            {"duration_minutes": 30.0},
            {"duration_minutes": True},
            {"name": None},
            {"price": True},
            {"price": "1e2"},
            {"description": 5},
        ],
    )
    async def test_a_body_takes_json_types_only(self, client, session, calendar, change):
        service, _, _ = calendar
        admin = await headers_for(await create_user(session, role=Role.admin))

        response = await client.patch(f"/api/v1/services/{service.id}", json=change, headers=admin)

        assert_problem(response, 422, "validation_error")

    async def test_null_only_where_nullable(self, client, calendar):
        _, _, headers = calendar

        assert_problem(
            await client.patch("/api/v1/users/me", json={"timezone": None}, headers=headers), 422, "validation_error"
        )
        cleared = await client.patch("/api/v1/users/me", json={"phone": None}, headers=headers)
        assert cleared.status_code == 200 and cleared.json()["phone"] is None

    async def test_a_body_that_is_not_utf8_is_a_documented_422(self, client, calendar):
        _, _, headers = calendar
        headers = {**headers, "Content-Type": "application/json"}

        response = await client.patch("/api/v1/users/me", content=b'{"full_name": "\xff\xfe"}', headers=headers)

        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["type"] == "json_invalid"


async def test_health_answers_while_former_hangs_arrive(session, service_urls, tmp_path):
    """Many of the formerly hanging requests at once against a real API process; /health meanwhile."""
    staff = await create_staff(session)
    service = await create_service(session, [staff], max_advance=60)
    headers = await headers_for(await create_user(session))
    bodies = [
        booking_body(service, staff, start, recurrence={"rrule": rrule})
        for start in (YEAR_9999, datetime(2199, 12, 28, 10, tzinfo=UTC))
        for rrule in SERIES
    ]
    with api_process(tmp_path / "api.log") as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            started = time.perf_counter()
            bookings = asyncio.gather(*(http.post(URL, json=body, headers=headers) for body in bodies * 4))
            task = asyncio.ensure_future(bookings)
            health_times: list[float] = []
            while not task.done() or not health_times:
                before = time.perf_counter()
                health = await http.get("/health")
                health_times.append(time.perf_counter() - before)
                assert health.status_code == 200
                await asyncio.sleep(0.01)
            answers = await asyncio.wait_for(task, 60)
    print(
        f"{len(answers)} former hangs answered in {time.perf_counter() - started:.2f} s; "
        f"{len(health_times)} /health calls meanwhile, slowest {max(health_times, default=0) * 1000:.1f} ms"
    )
    assert sorted({a.status_code for a in answers}) == [422]


class TestTrimmedTexts:
    """Names are kept without surrounding spaces, but the length bound is the one the schema states,
    counted as sent: 200 characters and a space used to pass as 200 once trimmed (schemathesis saw it)."""

    @pytest.mark.parametrize("name", ["a" * 200 + " ", " " + "a" * 200])
    async def test_a_name_over_the_bound_before_trimming_is_422(self, client, name):
        body = {"email": "long.name@example.com", "password": "a long enough password", "full_name": name}

        problem = assert_problem(await client.post("/api/v1/auth/register", json=body), 422, "validation_error")

        assert problem["errors"][0]["type"] == "string_too_long"

    async def test_a_name_of_spaces_is_422_and_surrounding_spaces_go(self, client, session):
        blank = {"email": "blank.name@example.com", "password": "a long enough password", "full_name": "   "}
        problem = assert_problem(await client.post("/api/v1/auth/register", json=blank), 422, "validation_error")
        assert problem["errors"][0]["type"] == "string_too_short"

        spaced = {"email": "spaced.name@example.com", "password": "a long enough password", "full_name": "  Ada  "}
        assert (await client.post("/api/v1/auth/register", json=spaced)).status_code == 202
        names = await session.scalars(select(User.full_name).where(User.email == "spaced.name@example.com"))
        assert list(names) == ["Ada"]
