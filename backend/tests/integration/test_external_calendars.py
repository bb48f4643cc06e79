"""External calendars from an ICS URL (a real local HTTP server): their busy time blocks slots and
bookings like time off; recurrence, time zones, DST, what is not busy; failures, bounds, the egress
guard, credentials, the API's rules, and a sync racing bookings."""

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from loguru import logger
from sqlalchemy import select, text, update

from app.models import Appointment, AuditEntry, CalendarBusyBlock, CalendarConnection, Role
from app.services.integrations import calendar_sync
from app.services.messaging import mailer
from app.utils.time import utcnow
from tests.assertions import assert_problem
from tests.factories import create_user, outbox
from tests.httpserver import serve
from tests.scheduling import BERLIN, URL, booking_body, create_service, create_staff, days_ahead, headers_for, local

STAFF = "/api/v1/staff"
AVAILABILITY = "/api/v1/availability"
DAY = days_ahead(8)


def ics_event(uid: str, start, end, *lines: str) -> str:
    """One VEVENT; `start`/`end` are datetimes (UTC `Z`, or floating when naive) or dates (all-day)."""

    def value(name: str, moment) -> str:
        if isinstance(moment, datetime):
            if moment.tzinfo is None:
                return f"{name}:{moment:%Y%m%dT%H%M%S}"
            if moment.tzinfo is BERLIN:
                return f"{name};TZID=Europe/Berlin:{moment:%Y%m%dT%H%M%S}"
            return f"{name}:{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}"
        return f"{name};VALUE=DATE:{moment:%Y%m%d}"

    body = [f"UID:{uid}", "DTSTAMP:20260101T000000Z", value("DTSTART", start), value("DTEND", end), *lines]
    return "BEGIN:VEVENT\r\n" + "\r\n".join(body) + "\r\nEND:VEVENT\r\n"


def ics(*events: str) -> bytes:
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n" + "".join(events) + "END:VCALENDAR\r\n").encode()


class Feed:
    """What the local ICS server serves; a test changes `body` or `status` as it goes."""

    def __init__(self) -> None:
        self.body, self.status = ics(), 200

    def respond(self, _request):
        return self.status, {"Content-Type": "text/calendar"}, self.body


@pytest.fixture
def allow_local(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")


@pytest.fixture
def feed(allow_local):
    state = Feed()
    with serve(state.respond) as server:
        state.url = f"{server.url}/calendar.ics"
        state.server = server
        yield state


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Alice Novak")


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], min_notice=0)


@pytest.fixture
async def as_staff(staff):
    return await headers_for(staff)


@pytest.fixture
async def as_customer(session):
    return await headers_for(await create_user(session))


async def connect(client, headers, staff, url, **extra) -> dict:
    response = await client.post(
        f"{STAFF}/{staff.id}/calendars", json={"kind": "ics", "url": url, **extra}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def synced(connection: dict) -> calendar_sync.Outcome:
    outcome = await calendar_sync.sync_connection(uuid.UUID(connection["id"]))
    assert outcome is not None
    return outcome


async def hours(client, service, staff, day: date) -> list[str]:
    """Free starts on one Berlin date, as HH:MM, from `GET /availability`."""
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


async def blocks(session, staff) -> list[tuple[datetime, datetime]]:
    staff_id = staff.id
    rows = await session.execute(
        select(CalendarBusyBlock.starts_at, CalendarBusyBlock.ends_at)
        .where(CalendarBusyBlock.staff_id == staff_id)
        .order_by(CalendarBusyBlock.starts_at)
    )
    return [(lo, hi) for lo, hi in rows]


class TestBusyTimeBlocks:
    async def test_an_event_added_removes_its_slots_and_bookings_of_them_are_refused(
        self, client, session, feed, staff, service, as_staff, as_customer
    ):
        connection = await connect(client, as_staff, staff, feed.url, name="Work")
        assert (await synced(connection)).blocks == 0
        assert "10:00" in await hours(client, service, staff, DAY)

        feed.body = ics(ics_event("meeting-1", local(DAY, 10), local(DAY, 11)))
        outcome = await synced(connection)

        assert outcome.ok and outcome.blocks == 1
        assert await blocks(session, staff) == [(local(DAY, 10), local(DAY, 11))]
        free = await hours(client, service, staff, DAY)
        assert "10:00" not in free and "09:00" in free and "11:00" in free
        single = await client.post(URL, json=booking_body(service, staff, local(DAY, 10)), headers=as_customer)
        assert_problem(single, 422, "slot_not_offered")
        series = await client.post(
            URL,
            json=booking_body(
                service, staff, local(DAY - timedelta(weeks=1), 10), recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"}
            ),
            headers=as_customer,
        )
        assert_problem(series, 422, "slot_not_offered")
        assert await session.scalar(select(Appointment.id).limit(1)) is None
        beside = await client.post(URL, json=booking_body(service, staff, local(DAY, 11)), headers=as_customer)
        assert beside.status_code == 201, beside.text

        shown = (await client.get(f"{STAFF}/{staff.id}/calendars/{connection['id']}", headers=as_staff)).json()
        assert shown["block_count"] == 1 and shown["last_error"] is None and shown["last_success_at"]

    async def test_an_event_removed_frees_its_slots_again(self, client, session, feed, staff, service, as_staff):
        feed.body = ics(ics_event("meeting-1", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)
        assert "10:00" not in await hours(client, service, staff, DAY)

        feed.body = ics()
        await synced(connection)

        assert await blocks(session, staff) == [] and "10:00" in await hours(client, service, staff, DAY)

    async def test_a_weekly_event_blocks_each_week_except_its_exdate(
        self, client, session, feed, staff, service, as_staff
    ):
        skipped = local(DAY + timedelta(weeks=2), 10)
        feed.body = ics(
            ics_event(
                "weekly",
                local(DAY, 10),
                local(DAY, 11),
                "RRULE:FREQ=WEEKLY;COUNT=4",
                f"EXDATE;TZID=Europe/Berlin:{skipped:%Y%m%dT%H%M%S}",
            )
        )
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)

        weeks = [DAY + timedelta(weeks=n) for n in range(4)]
        assert [lo for lo, _ in await blocks(session, staff)] == [local(weeks[n], 10) for n in (0, 1, 3)]
        for n, day in enumerate(weeks):
            assert ("10:00" in await hours(client, service, staff, day)) == (n == 2)

    async def test_a_moved_occurrence_blocks_its_new_time(self, client, session, feed, staff, service, as_staff):
        moved = local(DAY + timedelta(weeks=1), 10)
        feed.body = ics(
            ics_event("weekly", local(DAY, 10), local(DAY, 11), "RRULE:FREQ=WEEKLY;COUNT=2"),
            ics_event(
                "weekly",
                local(moved.date(), 14),
                local(moved.date(), 15),
                f"RECURRENCE-ID;TZID=Europe/Berlin:{moved:%Y%m%dT%H%M%S}",
            ),
        )
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)

        assert [lo for lo, _ in await blocks(session, staff)] == [local(DAY, 10), local(moved.date(), 14)]
        free = await hours(client, service, staff, moved.date())
        assert "10:00" in free and "14:00" not in free

    async def test_a_weekly_event_keeps_its_wall_time_across_a_dst_change(
        self, client, session, feed, staff, service, as_staff
    ):
        first = _day_before_dst_change()
        feed.body = ics(ics_event("weekly", local(first, 10), local(first, 11), "RRULE:FREQ=WEEKLY;COUNT=2"))
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)

        found = [lo for lo, _ in await blocks(session, staff)]
        assert [lo.astimezone(BERLIN).time() for lo in found] == [time(10), time(10)]
        utc_hours = [lo.astimezone(UTC).hour for lo in found]
        assert sorted(utc_hours) == [8, 9] and utc_hours[0] != utc_hours[1]  # 08:00Z then 09:00Z, or back
        for day in (first, first + timedelta(weeks=1)):
            free = await hours(client, service, staff, day)
            assert "10:00" not in free and "09:00" in free and "11:00" in free

    async def test_what_is_not_busy_does_not_block(self, client, session, feed, staff, service, as_staff):
        appointment_uid = f"{uuid.uuid4()}@c3po"
        feed.body = ics(
            ics_event("all-day", DAY + timedelta(days=1), DAY + timedelta(days=2)),
            ics_event("free", local(DAY, 9), local(DAY, 10), "TRANSP:TRANSPARENT"),
            ics_event(
                "declined",
                local(DAY, 11),
                local(DAY, 12),
                f"ATTENDEE;PARTSTAT=DECLINED:mailto:{staff.email.upper()}",
                "ATTENDEE;PARTSTAT=ACCEPTED:mailto:someone@example.com",
            ),
            ics_event("accepted", local(DAY, 12), local(DAY, 13), f"ATTENDEE;PARTSTAT=ACCEPTED:mailto:{staff.email}"),
            ics_event("cancelled", local(DAY, 13), local(DAY, 14), "STATUS:CANCELLED"),
            ics_event(appointment_uid, local(DAY, 14), local(DAY, 15)),
            ics_event("floating", datetime.combine(DAY, time(15)), datetime.combine(DAY, time(16))),
        )
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)

        free = await hours(client, service, staff, DAY)
        assert {"09:00", "11:00", "13:00", "14:00"} <= set(free)
        assert "12:00" not in free and "15:00" not in free  # accepted; floating = the staff member's wall time
        assert await hours(client, service, staff, DAY + timedelta(days=1)) == []  # all day, Berlin's day
        next_day = DAY + timedelta(days=1)
        assert (local(next_day, 0), local(next_day + timedelta(days=1), 0)) in await blocks(session, staff)


def _day_before_dst_change() -> date:
    """A day less than a week before Berlin's next clock change, at least a week from today."""
    day = days_ahead(7)
    while local(day + timedelta(weeks=1), 10).utcoffset() == local(day, 10).utcoffset():
        day += timedelta(days=1)
    return day


class TestFailures:
    async def test_a_failing_calendar_keeps_its_blocks_shows_its_error_and_alerts_once(
        self, client, session, feed, staff, service, as_staff
    ):
        admin = await create_user(session, role=Role.admin)
        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url, name="Work")
        await synced(connection)
        good = (await client.get(f"{STAFF}/{staff.id}/calendars/{connection['id']}", headers=as_staff)).json()

        feed.status = 500
        for _ in range(2):
            assert not (await synced(connection)).ok
        shown = (await client.get(f"{STAFF}/{staff.id}/calendars/{connection['id']}", headers=as_staff)).json()
        assert shown["last_error"] == "the server answered HTTP 500" and shown["consecutive_failures"] == 2
        assert shown["last_success_at"] == good["last_success_at"] and shown["block_count"] == 1
        assert shown["last_attempt_at"] > good["last_attempt_at"]
        assert "10:00" not in await hours(client, service, staff, DAY)
        assert await outbox(session, template=calendar_sync.ALERT_TEMPLATE) == []

        await synced(connection)  # the third in a row
        await synced(connection)  # a fourth alerts no more
        alerts = await outbox(session, template=calendar_sync.ALERT_TEMPLATE)
        assert sorted(m.payload["to"] for m in alerts) == sorted([staff.email, admin.email])
        assert alerts[0].payload["context"]["failures"] == 3
        for locale in ("en", "ru"):  # what the worker will send, rendered from the queued rows
            rendered = mailer.render(alerts[0].payload["template"], locale, alerts[0].payload["context"])
            assert "Work" in rendered.subject and "HTTP 500" in rendered.text and "HTTP 500" in rendered.html

        feed.status = 200
        assert (await synced(connection)).ok
        shown = (await client.get(f"{STAFF}/{staff.id}/calendars/{connection['id']}", headers=as_staff)).json()
        assert shown["consecutive_failures"] == 0 and shown["last_error"] is None

    async def test_a_calendar_that_is_not_icalendar_fails_readably(self, client, session, feed, staff, as_staff):
        feed.body = b"<html>not a calendar</html>"
        connection = await connect(client, as_staff, staff, feed.url)
        outcome = await synced(connection)
        assert not outcome.ok and outcome.error.startswith("not an iCalendar document")

    async def test_an_oversize_calendar_is_refused_and_the_blocks_stay(
        self, client, session, feed, set_env, staff, service, as_staff
    ):
        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)
        set_env(CALENDAR_MAX_BYTES="2048")
        feed.body = ics(*(ics_event(f"e{n}", local(DAY, 12), local(DAY, 13)) for n in range(40)))
        assert len(feed.body) > 2048

        outcome = await synced(connection)

        assert not outcome.ok and "CALENDAR_MAX_BYTES" in outcome.error
        assert await blocks(session, staff) == [(local(DAY, 10), local(DAY, 11))]

    async def test_too_many_occurrences_are_refused_and_the_blocks_stay(
        self, client, session, feed, set_env, staff, service, as_staff
    ):
        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)
        set_env(CALENDAR_MAX_EVENTS="50")
        feed.body = ics(ics_event("hourly", local(DAY, 12), local(DAY, 13), "RRULE:FREQ=HOURLY"))

        outcome = await synced(connection)

        assert not outcome.ok and "more than 50 events" in outcome.error and "CALENDAR_MAX_EVENTS" in outcome.error
        assert await blocks(session, staff) == [(local(DAY, 10), local(DAY, 11))]

    async def test_a_private_address_is_refused_with_the_default_allow_list(
        self, client, session, monkeypatch, set_env, staff, as_staff
    ):
        from app.config import get_settings

        monkeypatch.delenv("EGRESS_ALLOWED_NETWORKS", raising=False)  # the default (set_env clears the cache after)
        get_settings.cache_clear()
        assert get_settings().egress_allowed_networks is None and get_settings().environment == "test"
        with serve() as server:
            literal = await client.post(
                f"{STAFF}/{staff.id}/calendars", json={"kind": "ics", "url": f"{server.url}/c.ics"}, headers=as_staff
            )
            assert_problem(literal, 422, "invalid_calendar_url")
            connection = await connect(client, as_staff, staff, f"http://localhost:{server.port}/c.ics")
            outcome = await synced(connection)
        assert not outcome.ok and outcome.error.startswith("refused:") and "not a public address" in outcome.error
        assert server.requests == []


class TestApi:
    async def test_only_the_staff_member_or_an_admin_manages_their_calendars(
        self, client, session, feed, staff, as_staff, as_customer
    ):
        other = await headers_for(await create_staff(session))
        admin = await headers_for(await create_user(session, role=Role.admin))
        connection = await connect(client, admin, staff, feed.url)
        base = f"{STAFF}/{staff.id}/calendars"

        for headers in (other, as_customer):
            assert_problem(await client.get(base, headers=headers), 403, "forbidden")
            assert_problem(await client.get(f"{base}/{connection['id']}", headers=headers), 403, "forbidden")
            assert_problem(await client.post(f"{base}/{connection['id']}/sync", headers=headers), 403, "forbidden")
        listed = (await client.get(base, headers=as_staff)).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == connection["id"]
        assert_problem(await client.get(f"{base}/{uuid.uuid4()}", headers=as_staff), 404, "not_found")

    async def test_bad_inputs_have_stable_codes(self, client, session, feed, set_env, staff, as_staff):
        base = f"{STAFF}/{staff.id}/calendars"
        cases = [
            ({"kind": "ics", "url": "ftp://example.com/c.ics"}, 422, "invalid_calendar_url"),
            ({"kind": "ics", "url": "https://user:pw@example.com/c.ics"}, 422, "invalid_calendar_url"),
            ({"kind": "ics", "url": "https://example.com/c.ics", "password": "x"}, 422, "invalid_calendar_credentials"),
            (
                {"kind": "caldav", "url": "https://example.com/dav/", "username": "a"},
                422,
                "invalid_calendar_credentials",
            ),
            ({"kind": "ics", "url": "https://example.com/" + "a" * 2100}, 422, "validation_error"),
            ({"kind": "exchange", "url": "https://example.com/"}, 422, "validation_error"),
        ]
        for body, status, code in cases:
            assert_problem(await client.post(base, json=body, headers=as_staff), status, code)

        set_env(CALENDAR_CONNECTIONS_PER_STAFF="1")
        await connect(client, as_staff, staff, feed.url)
        assert_problem(
            await client.post(base, json={"kind": "ics", "url": feed.url}, headers=as_staff), 409, "too_many_calendars"
        )

    async def test_turning_off_or_deleting_frees_the_time(self, client, session, feed, staff, service, as_staff):
        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)
        item = f"{STAFF}/{staff.id}/calendars/{connection['id']}"

        off = await client.patch(item, json={"is_active": False}, headers=as_staff)
        assert off.status_code == 200 and off.json()["block_count"] == 0
        assert "10:00" in await hours(client, service, staff, DAY)
        assert await calendar_sync.sync_connection(uuid.UUID(connection["id"])) is None  # inactive: not synced
        assert_problem(await client.post(f"{item}/sync", headers=as_staff), 409, "calendar_inactive")

        await client.patch(item, json={"is_active": True}, headers=as_staff)
        await synced(connection)
        assert "10:00" not in await hours(client, service, staff, DAY)
        assert (await client.delete(item, headers=as_staff)).status_code == 204
        assert "10:00" in await hours(client, service, staff, DAY)
        assert await blocks(session, staff) == []
        actions = await session.scalars(
            select(AuditEntry.action).where(AuditEntry.entity_id == connection["id"]).order_by(AuditEntry.id)
        )
        assert list(actions) == ["calendar.connect", "calendar.update", "calendar.update", "calendar.disconnect"]

    async def test_sync_now_queues_a_job_and_the_worker_runs_it(self, client, session, feed, staff, as_staff):
        from arq.connections import ArqRedis

        from app.services.messaging.outbox import get_arq_pool
        from app.services.messaging.worker import sync_calendar

        connection = await connect(client, as_staff, staff, feed.url)
        pool: ArqRedis = await get_arq_pool()
        await pool.delete("arq:queue")
        response = await client.post(f"{STAFF}/{staff.id}/calendars/{connection['id']}/sync", headers=as_staff)
        assert response.status_code == 202 and response.json()["id"] == connection["id"]
        jobs = await pool.queued_jobs()
        assert [(job.function, job.args) for job in jobs] == [(calendar_sync.SYNC_JOB, (connection["id"],))]

        assert await sync_calendar({}, connection["id"]) == "ok"
        assert len(feed.server.requests) == 1

    async def test_credentials_never_leave_in_answers_or_logs(self, client, session, allow_local, staff, as_staff):
        secret = "hunter2-calendar-password"
        logged: list[str] = []
        sink = logger.add(lambda line: logged.append(str(line)), level="DEBUG", format="{message} {extra}")
        try:
            with serve(lambda _r: (401, {}, b"")) as server:
                body = {"kind": "caldav", "url": f"{server.url}/dav/", "username": "anna", "password": secret}
                created = await client.post(f"{STAFF}/{staff.id}/calendars", json=body, headers=as_staff)
                assert created.status_code == 201
                outcome = await synced(created.json())
                sent = server.requests[0].headers["authorization"]
            listed = await client.get(f"{STAFF}/{staff.id}/calendars", headers=as_staff)
        finally:
            logger.remove(sink)
        assert not outcome.ok and outcome.error == "the server answered HTTP 401"
        assert created.json()["has_password"] is True and "password" not in created.json()
        for text_ in (created.text, listed.text, "\n".join(logged)):
            assert secret not in text_ and sent.split()[1] not in text_
        stored = await session.scalar(select(CalendarConnection.password_encrypted))
        assert stored and secret not in stored
        audit = await session.scalars(select(AuditEntry))
        assert all(secret not in str(entry.after) for entry in audit)


class TestWorker:
    async def test_due_connections_are_claimed_by_one_worker_each(self, client, session, feed, staff, as_staff):
        for _ in range(4):
            await connect(client, as_staff, staff, feed.url)

        first, second = await asyncio.gather(calendar_sync.claim_due(3), calendar_sync.claim_due(3))

        assert len(first) + len(second) == 4 and not set(first) & set(second)
        assert await calendar_sync.claim_due(10) == []  # all claimed

    async def test_a_deactivated_staff_members_calendars_are_not_synced(self, client, session, feed, staff, as_staff):
        await connect(client, as_staff, staff, feed.url)
        staff.is_active = False
        await session.commit()

        assert await calendar_sync.claim_due(10) == []

        staff.is_active = True
        await session.commit()
        assert len(await calendar_sync.claim_due(10)) == 1

    async def test_a_zone_change_makes_the_calendars_due_at_once(self, client, session, feed, staff, as_staff):
        await connect(client, as_staff, staff, feed.url)
        assert len(await calendar_sync.claim_due(10)) == 1
        await session.execute(update(CalendarConnection).values(next_sync_at=utcnow() + timedelta(hours=1)))
        await session.execute(update(CalendarConnection).values(claimed_until=None))
        await session.commit()
        assert await calendar_sync.claim_due(10) == []

        week = {"intervals": [{"weekday": 0, "start": "09:00", "end": "17:00"}]}
        same = await client.put(
            f"{STAFF}/{staff.id}/schedule", json={"timezone": "Europe/Berlin", **week}, headers=as_staff
        )
        assert same.status_code == 200, same.text
        assert await calendar_sync.claim_due(10) == []  # the same zone: nothing to read again
        moved = await client.put(
            f"{STAFF}/{staff.id}/schedule", json={"timezone": "Asia/Tokyo", **week}, headers=as_staff
        )
        assert moved.status_code == 200, moved.text
        assert len(await calendar_sync.claim_due(10)) == 1

    async def test_the_cron_syncs_what_is_due_and_not_again_before_its_interval(
        self, client, session, feed, staff, as_staff
    ):
        from app.services.messaging.worker import sync_due_calendars

        await connect(client, as_staff, staff, feed.url)
        assert await sync_due_calendars({}) == 1
        assert await sync_due_calendars({}) == 0
        session.expire_all()
        row = await session.scalar(select(CalendarConnection))
        assert row.last_success_at is not None and row.claimed_until is None
        assert timedelta(minutes=9) < row.next_sync_at - row.last_success_at <= timedelta(minutes=10, seconds=5)


class TestConcurrency:
    async def test_a_sync_racing_bookings_never_leaves_a_booking_inside_a_block_it_did_not_see(
        self, client, session, feed, staff, service, as_staff
    ):
        """The sync writes blocks under the calendar lock held alone; bookings hold it shared and read
        the blocks after taking it. So every booking overlapping a block was committed before the
        sync wrote it (the sync lists those), and every later one was refused."""
        connection = await connect(client, as_staff, staff, feed.url)
        await synced(connection)
        days = [DAY + timedelta(days=n) for n in range(6)]
        feed.body = ics(*(ics_event(f"m{n}", local(day, 10), local(day, 12)) for n, day in enumerate(days)))
        customers = [await headers_for(await create_user(session)) for _ in range(6)]

        async def book(n: int):
            await asyncio.sleep(0.01 * n)
            return await client.post(URL, json=booking_body(service, staff, local(days[n], 10)), headers=customers[n])

        results = await asyncio.gather(synced(connection), *(book(n) for n in range(6)))
        outcome, answers = results[0], results[1:]

        assert outcome.ok and outcome.blocks == 6
        assert all(a.status_code in (201, 409, 422) for a in answers), [a.text for a in answers]
        booked = {uuid.UUID(a.json()["id"]) for a in answers if a.status_code == 201}
        inside = await session.scalars(
            text(
                "SELECT a.id FROM appointments a JOIN calendar_busy_blocks b ON b.staff_id = a.staff_id"
                " AND a.starts_at < b.ends_at AND a.ends_at > b.starts_at"
            )
        )
        assert set(inside) == booked <= set(outcome.covered)
        later = await client.post(URL, json=booking_body(service, staff, local(days[0], 11)), headers=customers[0])
        assert later.status_code in (409, 422)


class TestDataRights:
    async def test_the_export_lists_connections_without_the_password(
        self, client, session, feed, staff, service, as_staff
    ):
        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url, name="Work")
        await synced(connection)
        body = {"kind": "caldav", "url": feed.url, "username": "anna", "password": "export-secret-pw"}
        assert (await client.post(f"{STAFF}/{staff.id}/calendars", json=body, headers=as_staff)).status_code == 201

        response = await client.get("/api/v1/users/me/export", headers=as_staff)

        assert response.status_code == 200 and "export-secret-pw" not in response.text
        ics_part, dav_part = response.json()["calendar_connections"]
        assert (ics_part["kind"], ics_part["url"], ics_part["name"], ics_part["block_count"]) == (
            "ics",
            feed.url,
            "Work",
            1,
        )
        assert ics_part["last_success_at"] and ics_part["busy_blocks"] == [
            {
                "starts_at": local(DAY, 10).astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "ends_at": local(DAY, 11).astimezone(UTC).isoformat().replace("+00:00", "Z"),
            }
        ]
        assert dav_part["username"] == "anna" and dav_part["has_password"] and "password" not in dav_part

    async def test_erasure_deletes_connections_credentials_and_blocks(self, client, session, feed, staff, as_staff):
        from tests.privacy import traces_of

        feed.body = ics(ics_event("meeting", local(DAY, 10), local(DAY, 11)))
        body = {"kind": "caldav", "url": feed.url, "username": "anna-erased", "password": "erase-secret-pw"}
        created = await client.post(f"{STAFF}/{staff.id}/calendars", json=body, headers=as_staff)
        assert created.status_code == 201
        sealed = await session.scalar(select(CalendarConnection.password_encrypted))
        assert await traces_of(session, "anna-erased", sealed, feed.url)

        assert (await client.delete("/api/v1/users/me", headers=as_staff)).status_code == 204

        assert await traces_of(session, "anna-erased", sealed, feed.url) == []
        assert await session.scalar(select(CalendarConnection.id)) is None
        assert await session.scalar(select(CalendarBusyBlock.id)) is None


class TestAdminPanel:
    async def test_admins_see_connections_with_their_sync_state_and_no_secrets(
        self, client, session, feed, staff, service, as_staff
    ):
        from tests.integration.test_admin import panel_login, post, signed_in_admin

        feed.url = feed.url + "?secret=private-feed-token"
        connection = await connect(client, as_staff, staff, feed.url, name="Work")
        await synced(connection)
        feed.status = 503
        await synced(connection)

        assert (await client.get("/admin/calendar-connection/list")).status_code in (302, 303)  # anonymous
        await panel_login(client, staff.email)
        assert (await client.get("/admin/calendar-connection/list")).status_code in (302, 303, 403)  # staff
        await signed_in_admin(client, session)
        listed = await client.get("/admin/calendar-connection/list")
        details = await client.get(f"/admin/calendar-connection/details/{connection['id']}")

        assert listed.status_code == 200 and details.status_code == 200
        for page in (listed.text, details.text):
            assert "Work" in page and "the server answered HTTP 503" in page and "127.0.0.1" in page
            assert "private-feed-token" not in page
        assert "Sync now" in details.text
        queued = await post(client, f"/admin/calendar-connection/sync/{connection['id']}", {})
        assert "done=sync" in queued.headers["location"]
        missing = await post(client, f"/admin/calendar-connection/sync/{uuid.uuid4()}", {})
        assert "not_found" in missing.headers["location"]


class TestMetrics:
    async def test_syncs_count_by_outcome_failures_by_reason_and_alerts_once(
        self, client, session, feed, set_env, staff, as_staff
    ):
        from prometheus_client import generate_latest

        from app.metrics import WORKER_REGISTRY
        from tests.metrics import delta, parse

        def samples():
            return parse(generate_latest(WORKER_REGISTRY).decode())

        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", CALENDAR_ALERT_FAILURES="2")
        connection = await connect(client, as_staff, staff, feed.url)
        before = samples()
        await synced(connection)
        feed.status = 404
        for _ in range(3):
            await synced(connection)
        feed.status, feed.body = 200, b"garbage"
        await synced(connection)

        after = samples()
        assert delta(before, after, "c3po_calendar_syncs_total", outcome="ok") == 1
        assert delta(before, after, "c3po_calendar_syncs_total", outcome="failed") == 4
        assert delta(before, after, "c3po_calendar_sync_failures_total", reason="status") == 3
        assert delta(before, after, "c3po_calendar_sync_failures_total", reason="unreadable") == 1
        assert delta(before, after, "c3po_calendar_sync_alerts_total") == 1

    async def test_the_api_registry_does_not_serve_the_worker_series(self, client):
        response = await client.get("/metrics")
        assert response.status_code == 200 and "c3po_calendar_syncs_total" not in response.text


class TestChangedDuringSync:
    async def test_a_fetch_for_a_url_changed_meanwhile_is_not_stored(
        self, client, session, feed, staff, service, as_staff
    ):
        """The PATCH lands between the claim and the store: the old calendar's events must not be
        written, and the connection stays due for the new URL."""
        feed.body = ics(ics_event("old", local(DAY, 10), local(DAY, 11)))
        connection = await connect(client, as_staff, staff, feed.url)
        claimed = await calendar_sync.claim(uuid.UUID(connection["id"]))
        changed = await client.patch(
            f"{STAFF}/{staff.id}/calendars/{connection['id']}", json={"url": feed.url + "?v=2"}, headers=as_staff
        )
        assert changed.status_code == 200

        outcome = await calendar_sync.sync_claimed(claimed)

        assert not outcome.ok and "changed or removed" in outcome.error
        assert await blocks(session, staff) == []
        assert (await synced(connection)).ok and len(await blocks(session, staff)) == 1


class TestPushRefused:
    async def test_a_refused_write_fails_the_sync_and_keeps_the_blocks(
        self, client, session, allow_local, staff, service, as_staff, as_customer
    ):
        multistatus = (
            b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            b"</d:multistatus>"
        )

        def respond(request):
            if request.method == "REPORT":
                return 207, {"Content-Type": "application/xml"}, multistatus
            return 403, {}, b""

        with serve(respond) as server:
            body = {"kind": "caldav", "url": f"{server.url}/dav/", "username": "a", "password": "b"}
            created = await client.post(
                f"{STAFF}/{staff.id}/calendars", json={**body, "push_appointments": True}, headers=as_staff
            )
            booked = await client.post(URL, json=booking_body(service, staff, local(DAY, 14)), headers=as_customer)
            assert booked.status_code == 201
            outcome = await synced(created.json())
            methods = [r.method for r in server.requests]

        assert methods == ["REPORT", "PUT"]
        assert not outcome.ok and outcome.error == (
            f"pushing appointments failed: PUT {booked.json()['id']}@c3po: the server answered HTTP 403"
        )


class TestPatchRules:
    async def test_patches_keep_the_credential_rules(self, client, session, feed, staff, as_staff):
        ics_item = f"{STAFF}/{staff.id}/calendars/{(await connect(client, as_staff, staff, feed.url))['id']}"
        for body in ({"password": "x"}, {"push_appointments": True}, {"username": "a"}):
            assert_problem(
                await client.patch(ics_item, json=body, headers=as_staff), 422, "invalid_calendar_credentials"
            )
        assert_problem(
            await client.patch(ics_item, json={"url": "file:///etc/passwd"}, headers=as_staff),
            422,
            "invalid_calendar_url",
        )
        renamed = await client.patch(ics_item, json={"name": "Home", "username": None}, headers=as_staff)
        assert renamed.status_code == 200 and renamed.json()["name"] == "Home"

        dav = await client.post(
            f"{STAFF}/{staff.id}/calendars", json={"kind": "caldav", "url": feed.url}, headers=as_staff
        )
        dav_item = f"{STAFF}/{staff.id}/calendars/{dav.json()['id']}"
        assert_problem(
            await client.patch(dav_item, json={"username": "a"}, headers=as_staff), 422, "invalid_calendar_credentials"
        )
        both = await client.patch(dav_item, json={"username": "a", "password": "b"}, headers=as_staff)
        assert both.status_code == 200 and both.json()["has_password"] and both.json()["username"] == "a"
        assert (await client.patch(dav_item, json={"push_appointments": True}, headers=as_staff)).status_code == 200


class TestKeyRotation:
    async def test_a_password_sealed_under_a_dropped_key_fails_readably(
        self, client, session, feed, staff, as_staff, deploy_keys
    ):
        body = {"kind": "caldav", "url": feed.url, "username": "anna", "password": "sealed-under-the-old-key"}
        created = await client.post(f"{STAFF}/{staff.id}/calendars", json=body, headers=as_staff)
        assert created.status_code == 201
        deploy_keys("an-entirely-new-secret-key-0123456789abcdef")

        outcome = await synced(created.json())

        assert not outcome.ok and outcome.error.startswith("the stored password can no longer be opened")
        assert feed.server.requests == []
