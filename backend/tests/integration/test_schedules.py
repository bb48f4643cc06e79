"""`/api/v1/staff/{id}/schedule`, `/overrides` and `/time-off`: a staff member's calendar."""

import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from app.models import Appointment, AuditEntry, Role, Service, StaffProfile, TimeOff, WeeklyInterval
from app.services.scheduling.availability_cache import staff_version
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, start_session

STAFF = "/api/v1/staff"
AVAILABILITY = "/api/v1/availability"
BERLIN = ZoneInfo("Europe/Berlin")
WEEK = [
    {"weekday": 0, "start": "09:00", "end": "12:00"},
    {"weekday": 0, "start": "13:00", "end": "15:00"},
    {"weekday": 2, "start": "10:00", "end": "11:00"},
]


def next_monday(weeks_ahead: int = 2) -> date:
    day = date.today() + timedelta(weeks=weeks_ahead)
    return day - timedelta(days=day.weekday())


def berlin(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=BERLIN).astimezone(UTC)


@pytest.fixture
async def staff(session):
    return await create_user(session, role=Role.staff, timezone="Europe/Berlin")


@pytest.fixture
async def staff_headers(staff):
    return (await start_session(staff)).headers


@pytest.fixture
async def admin_headers(session):
    return (await start_session(await create_user(session, role=Role.admin))).headers


@pytest.fixture
async def service(session, staff):
    row = Service(name="Consultation", duration_minutes=60, min_notice_minutes=0, max_advance_days=365, staff=[staff])
    session.add(row)
    await session.commit()
    return row


async def local_slot_hours(client, service, staff, day: date) -> list[str]:
    """The free starts on one Berlin date, as local HH:MM, as `GET /availability` offers them."""
    start = datetime.combine(day, time(0), tzinfo=BERLIN)
    params = {
        "service_id": str(service.id),
        "staff_id": str(staff.id),
        "start": start.isoformat(),
        "end": (start + timedelta(days=1)).isoformat(),
    }
    response = await client.get(AVAILABILITY, params=params)
    assert response.status_code == 200, response.text
    return [f"{datetime.fromisoformat(s['starts_at']).astimezone(BERLIN):%H:%M}" for s in response.json()["slots"]]


async def put_schedule(client, staff, headers, intervals=WEEK, timezone="Europe/Berlin"):
    return await client.put(
        f"{STAFF}/{staff.id}/schedule", json={"timezone": timezone, "intervals": intervals}, headers=headers
    )


async def audit_actions(session, staff) -> list[str]:
    rows = await session.scalars(
        select(AuditEntry).where(AuditEntry.entity_id == str(staff.id)).order_by(AuditEntry.id)
    )
    return [row.action for row in rows]


# A fixed id (no row has it): xdist workers must collect the same test ids.
MISSING_ID = "00000000-0000-4000-8000-00000000dead"
CALENDAR_ROUTES = [
    ("GET", "/schedule", None),
    ("PUT", "/schedule", {"timezone": "UTC", "intervals": []}),
    ("GET", "/time-off", None),
    ("POST", "/time-off", {"starts_at": "2030-01-01T10:00:00Z", "ends_at": "2030-01-01T12:00:00Z"}),
    ("DELETE", f"/time-off/{MISSING_ID}", None),
    ("GET", "/overrides", None),
    ("POST", "/overrides", {"date": "2030-01-01", "intervals": []}),
    ("DELETE", f"/overrides/{MISSING_ID}", None),
]


class TestCalendarPermissions:
    @pytest.mark.parametrize(("method", "path", "body"), CALENDAR_ROUTES)
    async def test_anonymous_is_unauthorized(self, client, staff, method, path, body):
        assert_unauthorized(await client.request(method, f"{STAFF}/{staff.id}{path}", json=body))

    @pytest.mark.parametrize("role", [Role.user, Role.staff])
    @pytest.mark.parametrize(("method", "path", "body"), CALENDAR_ROUTES)
    async def test_someone_else_is_forbidden(self, client, session, staff, role, method, path, body):
        headers = (await start_session(await create_user(session, role=role))).headers

        response = await client.request(method, f"{STAFF}/{staff.id}{path}", json=body, headers=headers)

        assert_problem(response, 403, "forbidden")
        assert await session.scalar(select(StaffProfile)) is None
        assert await session.scalar(select(TimeOff)) is None

    @pytest.mark.parametrize(("method", "path", "body"), CALENDAR_ROUTES)
    async def test_not_a_staff_member_is_not_found(self, client, session, admin_headers, method, path, body):
        client_user = await create_user(session, role=Role.user)
        former = await create_user(session, role=Role.staff, active=False)
        for user_id in (client_user.id, former.id, uuid.uuid4()):
            response = await client.request(method, f"{STAFF}/{user_id}{path}", json=body, headers=admin_headers)
            assert_problem(response, 404, "not_found")

    async def test_staff_member_and_admin_may(self, client, staff, staff_headers, admin_headers):
        assert (await put_schedule(client, staff, staff_headers)).status_code == 200
        assert (await put_schedule(client, staff, admin_headers, intervals=[])).status_code == 200


class TestSchedule:
    async def test_a_new_staff_member_has_no_hours_in_their_own_zone(self, client, staff, staff_headers):
        response = await client.get(f"{STAFF}/{staff.id}/schedule", headers=staff_headers)

        assert response.status_code == 200
        assert response.json() == {"timezone": "Europe/Berlin", "intervals": []}

    async def test_put_answers_and_stores_the_week_sorted(self, client, session, staff, staff_headers):
        response = await put_schedule(client, staff, staff_headers, list(reversed(WEEK)), "America/New_York")

        assert response.status_code == 200, response.text
        week = {"timezone": "America/New_York", "intervals": WEEK}
        assert response.json() == {**week, "conflicting_appointments": []}
        assert (await client.get(f"{STAFF}/{staff.id}/schedule", headers=staff_headers)).json() == week
        profile = await session.get(StaffProfile, staff.id)
        assert profile.timezone == "America/New_York"
        assert (await client.get(f"{STAFF}/{staff.id}")).json()["timezone"] == "America/New_York"

    async def test_put_replaces_the_whole_week(self, client, session, staff, staff_headers):
        await put_schedule(client, staff, staff_headers)
        friday = [{"weekday": 4, "start": "08:30", "end": "17:45"}]

        response = await put_schedule(client, staff, staff_headers, friday)

        assert response.json()["intervals"] == friday
        rows = (await session.scalars(select(WeeklyInterval).where(WeeklyInterval.staff_id == staff.id))).all()
        assert [(r.weekday, r.start_time, r.end_time) for r in rows] == [(4, time(8, 30), time(17, 45))]

    async def test_an_empty_week_clears_every_hour(self, client, staff, staff_headers):
        await put_schedule(client, staff, staff_headers)
        assert (await put_schedule(client, staff, staff_headers, [])).json()["intervals"] == []

    @pytest.mark.parametrize(
        "intervals",
        [
            [{"weekday": 0, "start": "09:00", "end": "12:00"}, {"weekday": 0, "start": "11:59", "end": "13:00"}],
            [{"weekday": 3, "start": "09:00", "end": "17:00"}, {"weekday": 3, "start": "10:00", "end": "11:00"}],
            [
                {"weekday": 1, "start": "14:00", "end": "16:00"},
                {"weekday": 1, "start": "08:00", "end": "09:00"},
                {"weekday": 1, "start": "15:00", "end": "18:00"},
            ],
            [{"weekday": 5, "start": "09:00", "end": "10:00"}, {"weekday": 5, "start": "09:00", "end": "10:00"}],
        ],
    )
    async def test_overlapping_intervals_of_one_weekday(self, client, session, staff, staff_headers, intervals):
        await put_schedule(client, staff, staff_headers)

        response = await put_schedule(client, staff, staff_headers, intervals)

        assert_problem(response, 422, "overlapping_intervals")
        assert (await client.get(f"{STAFF}/{staff.id}/schedule", headers=staff_headers)).json()["intervals"] == WEEK

    async def test_same_hours_on_different_days_and_touching_intervals_are_fine(self, client, staff, staff_headers):
        intervals = [
            {"weekday": 0, "start": "09:00", "end": "12:00"},
            {"weekday": 0, "start": "12:00", "end": "13:00"},
            {"weekday": 1, "start": "09:00", "end": "12:00"},
        ]
        response = await put_schedule(client, staff, staff_headers, intervals)
        assert response.status_code == 200 and response.json()["intervals"] == intervals

    @pytest.mark.parametrize(("start", "end"), [("12:00", "09:00"), ("09:00", "09:00")])
    async def test_an_interval_must_end_after_it_starts(self, client, staff, staff_headers, start, end):
        response = await put_schedule(client, staff, staff_headers, [{"weekday": 0, "start": start, "end": end}])
        assert_problem(response, 422, "invalid_interval")

    @pytest.mark.parametrize(
        "interval",
        [
            {"weekday": 7, "start": "09:00", "end": "10:00"},
            {"weekday": -1, "start": "09:00", "end": "10:00"},
            {"weekday": 0, "start": "9:00", "end": "10:00"},
            {"weekday": 0, "start": "09:00", "end": "24:00"},
            {"weekday": 0, "start": "09:00:00", "end": "10:00"},
            {"weekday": 0, "start": "09:00"},
            {"weekday": 0, "start": "09:00", "end": "10:00", "note": "x"},
        ],
    )
    async def test_malformed_intervals(self, client, staff, staff_headers, interval):
        assert_problem(await put_schedule(client, staff, staff_headers, [interval]), 422, "validation_error")

    @pytest.mark.parametrize("timezone", ["Mars/Olympus", "CET+1", "", "europe/berlin"])
    async def test_unknown_time_zone(self, client, staff, staff_headers, timezone):
        response = await put_schedule(client, staff, staff_headers, timezone=timezone)
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "timezone"]

    async def test_a_change_bumps_availability_and_is_audited(self, client, session, staff, staff_headers):
        await put_schedule(client, staff, staff_headers)
        await put_schedule(client, staff, staff_headers, WEEK[:1], "UTC")

        assert await staff_version(staff.id) == "2"
        first, second = (
            await session.scalars(select(AuditEntry).where(AuditEntry.action == "schedule.replace").order_by("id"))
        ).all()
        assert (first.actor_id, first.entity_type, first.entity_id) == (staff.id, "schedule", str(staff.id))
        assert first.before == {"intervals": []} and first.after == {"intervals": WEEK}
        assert second.before == {"timezone": "Europe/Berlin", "intervals": WEEK}
        assert second.after == {"timezone": "UTC", "intervals": WEEK[:1]}

    async def test_availability_follows_the_weekly_hours_in_the_staff_zone(
        self, client, session, staff, staff_headers, service
    ):
        monday = next_monday()
        assert await local_slot_hours(client, service, staff, monday) == []

        await put_schedule(client, staff, staff_headers)

        assert await local_slot_hours(client, service, staff, monday) == ["09:00", "10:00", "11:00", "13:00", "14:00"]
        assert await local_slot_hours(client, service, staff, monday + timedelta(days=1)) == []
        assert await local_slot_hours(client, service, staff, monday + timedelta(days=2)) == ["10:00"]


class TestOverrides:
    async def test_create_list_and_replace(self, client, session, staff, staff_headers):
        url = f"{STAFF}/{staff.id}/overrides"
        day = next_monday()

        first = [{"start": "15:00", "end": "16:00"}]
        second = [{"start": "18:00", "end": "19:30"}, {"start": "07:00", "end": "08:00"}]

        created = await client.post(url, json={"date": str(day), "intervals": first}, headers=staff_headers)
        replaced = await client.post(url, json={"date": str(day), "intervals": second}, headers=staff_headers)

        assert created.status_code == 201, created.text
        assert replaced.status_code == 200, replaced.text
        override = {
            "id": created.json()["id"],
            "date": str(day),
            "intervals": [{"start": "07:00", "end": "08:00"}, {"start": "18:00", "end": "19:30"}],
        }
        assert replaced.json() == {**override, "conflicting_appointments": []}
        listed = (await client.get(url, headers=staff_headers)).json()
        assert listed == {"items": [override], "total": 1, "limit": 50, "offset": 0}
        assert await audit_actions(session, staff) == ["override.create", "override.replace"]

    async def test_list_by_date_range(self, client, staff, staff_headers):
        url = f"{STAFF}/{staff.id}/overrides"
        for day in ("2030-01-01", "2030-01-05", "2030-01-09"):
            assert (
                await client.post(url, json={"date": day, "intervals": []}, headers=staff_headers)
            ).status_code == 201

        body = (await client.get(url, params={"from": "2030-01-02", "to": "2030-01-09"}, headers=staff_headers)).json()

        assert [o["date"] for o in body["items"]] == ["2030-01-05", "2030-01-09"] and body["total"] == 2

    async def test_an_override_replaces_the_weekly_hours_of_that_date(
        self, client, session, staff, staff_headers, service
    ):
        await put_schedule(client, staff, staff_headers)
        monday = next_monday()
        extra = {"date": str(monday), "intervals": [{"start": "17:00", "end": "19:00"}]}

        response = await client.post(f"{STAFF}/{staff.id}/overrides", json=extra, headers=staff_headers)

        assert response.status_code == 201
        assert await local_slot_hours(client, service, staff, monday) == ["17:00", "18:00"]
        following = monday + timedelta(weeks=1)
        assert await local_slot_hours(client, service, staff, following) == [
            "09:00",
            "10:00",
            "11:00",
            "13:00",
            "14:00",
        ]

    async def test_an_empty_list_closes_the_day_and_deleting_reopens_it(
        self, client, session, staff, staff_headers, service
    ):
        await put_schedule(client, staff, staff_headers)
        monday = next_monday()
        url = f"{STAFF}/{staff.id}/overrides"

        created = await client.post(url, json={"date": str(monday), "intervals": []}, headers=staff_headers)
        assert created.json()["intervals"] == []
        assert await local_slot_hours(client, service, staff, monday) == []

        deleted = await client.delete(f"{url}/{created.json()['id']}", headers=staff_headers)
        assert deleted.status_code == 204
        assert await local_slot_hours(client, service, staff, monday) == ["09:00", "10:00", "11:00", "13:00", "14:00"]
        assert (await client.get(url, headers=staff_headers)).json()["total"] == 0
        assert await audit_actions(session, staff) == ["schedule.replace", "override.create", "override.delete"]

    async def test_an_override_for_a_staff_member_without_hours_opens_a_one_off_slot(
        self, client, session, staff, staff_headers, service
    ):
        monday = next_monday()
        body = {"date": str(monday), "intervals": [{"start": "20:00", "end": "21:00"}]}

        await client.post(f"{STAFF}/{staff.id}/overrides", json=body, headers=staff_headers)

        assert await local_slot_hours(client, service, staff, monday) == ["20:00"]
        assert (await session.get(StaffProfile, staff.id)).timezone == "Europe/Berlin"

    @pytest.mark.parametrize(
        ("intervals", "code"),
        [
            ([{"start": "10:00", "end": "09:00"}], "invalid_interval"),
            ([{"start": "09:00", "end": "11:00"}, {"start": "10:00", "end": "12:00"}], "overlapping_intervals"),
            ([{"start": "25:00", "end": "26:00"}], "validation_error"),
        ],
    )
    async def test_invalid_intervals(self, client, session, staff, staff_headers, intervals, code):
        body = {"date": "2030-01-01", "intervals": intervals}
        assert_problem(await client.post(f"{STAFF}/{staff.id}/overrides", json=body, headers=staff_headers), 422, code)
        assert await audit_actions(session, staff) == []

    @pytest.mark.parametrize("day", ["2030-02-30", "01.01.2030", None])
    async def test_invalid_date(self, client, staff, staff_headers, day):
        body = {"date": day, "intervals": []}
        response = await client.post(f"{STAFF}/{staff.id}/overrides", json=body, headers=staff_headers)
        assert_problem(response, 422, "validation_error")

    async def test_deleting_someone_elses_or_an_unknown_override(self, client, session, staff, staff_headers):
        other = await create_user(session, role=Role.staff)
        other_headers = (await start_session(other)).headers
        theirs = await client.post(
            f"{STAFF}/{other.id}/overrides", json={"date": "2030-01-01", "intervals": []}, headers=other_headers
        )

        for override_id in (theirs.json()["id"], uuid.uuid4()):
            response = await client.delete(f"{STAFF}/{staff.id}/overrides/{override_id}", headers=staff_headers)
            assert_problem(response, 404, "not_found")
        assert (await client.get(f"{STAFF}/{other.id}/overrides", headers=other_headers)).json()["total"] == 1


async def book(session, staff, service, starts_at, minutes=60, status="confirmed") -> Appointment:
    client_user = await create_user(session)
    row = Appointment(
        client_id=client_user.id,
        staff_id=staff.id,
        service_id=service.id,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=minutes),
        blocked_from=starts_at,
        blocked_until=starts_at + timedelta(minutes=minutes),
        status=status,
    )
    session.add(row)
    await session.commit()
    return row


class TestTimeOff:
    async def test_create_answers_in_utc_and_lists_the_bookings_it_covers(
        self, client, session, staff, staff_headers, service
    ):
        monday = next_monday()
        inside = await book(session, staff, service, berlin(monday, 10))
        pending = await book(session, staff, service, berlin(monday, 11, 30), status="pending")
        await book(session, staff, service, berlin(monday, 9), status="confirmed")  # ends as the block starts
        await book(session, staff, service, berlin(monday, 10, 30), status="cancelled")
        other_staff = await create_user(session, role=Role.staff)
        await book(session, other_staff, service, berlin(monday, 10))
        body = {
            "starts_at": berlin(monday, 10).astimezone(BERLIN).isoformat(),
            "ends_at": berlin(monday, 12).astimezone(BERLIN).isoformat(),
            "reason": "Dentist",
        }

        response = await client.post(f"{STAFF}/{staff.id}/time-off", json=body, headers=staff_headers)

        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["time_off"] == {
            "id": answer["time_off"]["id"],
            "staff_id": str(staff.id),
            "starts_at": berlin(monday, 10).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ends_at": berlin(monday, 12).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": "Dentist",
            "created_at": answer["time_off"]["created_at"],
        }
        assert [(a["id"], a["status"]) for a in answer["conflicting_appointments"]] == [
            (str(inside.id), "confirmed"),
            (str(pending.id), "pending"),
        ]
        assert set(answer["conflicting_appointments"][0]) == {
            "id", "client_id", "service_id", "starts_at", "ends_at", "status"
        }  # fmt: skip
        assert (await session.get(Appointment, inside.id)).status == "confirmed"  # not cancelled

    async def test_time_off_removes_slots_and_deleting_it_brings_them_back(
        self, client, session, staff, staff_headers, service
    ):
        await put_schedule(client, staff, staff_headers)
        monday = next_monday()
        block = {"starts_at": berlin(monday, 10).isoformat(), "ends_at": berlin(monday, 13, 30).isoformat()}

        created = await client.post(f"{STAFF}/{staff.id}/time-off", json=block, headers=staff_headers)

        assert created.json()["conflicting_appointments"] == []
        assert await local_slot_hours(client, service, staff, monday) == ["09:00", "14:00"]
        block_id = created.json()["time_off"]["id"]
        deleted = await client.delete(f"{STAFF}/{staff.id}/time-off/{block_id}", headers=staff_headers)
        assert deleted.status_code == 204
        assert await local_slot_hours(client, service, staff, monday) == ["09:00", "10:00", "11:00", "13:00", "14:00"]
        assert await audit_actions(session, staff) == ["schedule.replace", "time_off.create", "time_off.delete"]

    async def test_list_by_range_earliest_first(self, client, staff, admin_headers):
        url = f"{STAFF}/{staff.id}/time-off"
        for day in (9, 1, 5):
            block = {"starts_at": f"2030-01-{day:02}T08:00:00Z", "ends_at": f"2030-01-{day:02}T18:00:00Z"}
            assert (await client.post(url, json=block, headers=admin_headers)).status_code == 201

        everything = (await client.get(url, headers=admin_headers)).json()
        window = {"from": "2030-01-01T18:00:00Z", "to": "2030-01-09T08:00:01Z"}
        some = (await client.get(url, params=window, headers=admin_headers)).json()

        assert [b["starts_at"][:10] for b in everything["items"]] == ["2030-01-01", "2030-01-05", "2030-01-09"]
        assert [b["starts_at"][:10] for b in some["items"]] == ["2030-01-05", "2030-01-09"] and some["total"] == 2

    @pytest.mark.parametrize(
        ("starts_at", "ends_at", "code"),
        [
            ("2030-01-01T12:00:00Z", "2030-01-01T10:00:00Z", "invalid_interval"),
            ("2030-01-01T12:00:00+02:00", "2030-01-01T10:00:00Z", "invalid_interval"),
            ("2030-01-01T10:00:00Z", "2030-01-01T10:00:00Z", "invalid_interval"),
            ("2030-01-01T10:00:00", "2030-01-01T12:00:00Z", "validation_error"),
            ("2030-01-01T10:00:00Z", "2030-01-01T12:00:00", "validation_error"),
            ("tomorrow", "2030-01-01T12:00:00Z", "validation_error"),
        ],
    )
    async def test_invalid_blocks(self, client, session, staff, staff_headers, starts_at, ends_at, code):
        body = {"starts_at": starts_at, "ends_at": ends_at}
        assert_problem(await client.post(f"{STAFF}/{staff.id}/time-off", json=body, headers=staff_headers), 422, code)
        assert await session.scalar(select(TimeOff)) is None

    async def test_naive_filter_is_refused(self, client, staff, staff_headers):
        naive = {"from": "2030-01-01T00:00:00"}
        response = await client.get(f"{STAFF}/{staff.id}/time-off", params=naive, headers=staff_headers)
        assert_problem(response, 422, "validation_error")

    async def test_deleting_someone_elses_or_an_unknown_block(self, client, session, staff, staff_headers):
        other = await create_user(session, role=Role.staff)
        new_year = datetime(2030, 1, 1, tzinfo=UTC)
        session.add(TimeOff(staff_id=other.id, starts_at=new_year, ends_at=new_year + timedelta(days=1)))
        await session.commit()
        theirs = await session.scalar(select(TimeOff))

        for block_id in (theirs.id, uuid.uuid4()):
            response = await client.delete(f"{STAFF}/{staff.id}/time-off/{block_id}", headers=staff_headers)
            assert_problem(response, 404, "not_found")
        assert await session.scalar(select(TimeOff)) is not None
