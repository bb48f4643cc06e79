"""External calendars from a real CalDAV server (Radicale, started by the test): events put there
block slots after a sync, recurring ones each week, across a DST change; a wrong password fails
readably and keeps the blocks; the password never leaves the server."""

import uuid
from datetime import UTC, time, timedelta

import pytest

from app.services.integrations import calendar_sync
from tests.caldav import Radicale, radicale
from tests.factories import create_user
from tests.integration.test_external_calendars import (
    DAY,
    STAFF,
    _day_before_dst_change,
    blocks,
    hours,
    ics,
    ics_event,
)
from tests.scheduling import BERLIN, URL, booking_body, create_service, create_staff, headers_for, local


@pytest.fixture(scope="module")
def dav(tmp_path_factory) -> Radicale:
    with radicale(tmp_path_factory.mktemp("radicale")) as server:
        yield server


@pytest.fixture
def calendar_url(dav, set_env) -> str:
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
    return dav.calendar(f"work-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def staff(session):
    return await create_staff(session)


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], min_notice=0)


@pytest.fixture
async def as_staff(staff):
    return await headers_for(staff)


async def connect(client, headers, staff, url, dav: Radicale, password: str | None = None) -> dict:
    body = {"kind": "caldav", "url": url, "username": dav.user, "password": password or dav.password}
    response = await client.post(f"{STAFF}/{staff.id}/calendars", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def sync(connection: dict) -> calendar_sync.Outcome:
    outcome = await calendar_sync.sync_connection(uuid.UUID(connection["id"]))
    assert outcome is not None
    return outcome


class TestCalDav:
    async def test_an_event_put_on_the_server_blocks_its_slots_after_a_sync(
        self, client, session, dav, calendar_url, staff, service, as_staff
    ):
        connection = await connect(client, as_staff, staff, calendar_url, dav)
        assert (await sync(connection)).blocks == 0
        assert "10:00" in await hours(client, service, staff, DAY)

        dav.put(calendar_url, "meeting", ics(ics_event("meeting", local(DAY, 10), local(DAY, 11))).decode())
        far = DAY + timedelta(days=500)  # beyond the booking horizon: not asked for, not stored
        dav.put(calendar_url, "far", ics(ics_event("far", local(far, 10), local(far, 11))).decode())
        outcome = await sync(connection)

        assert outcome.ok and await blocks(session, staff) == [(local(DAY, 10), local(DAY, 11))]
        assert "10:00" not in await hours(client, service, staff, DAY)
        customer = await headers_for(await create_user(session))
        refused = await client.post(URL, json=booking_body(service, staff, local(DAY, 10)), headers=customer)
        assert refused.status_code == 422 and refused.json()["code"] == "slot_not_offered", refused.text

        dav.delete(calendar_url, "meeting")
        await sync(connection)
        assert "10:00" in await hours(client, service, staff, DAY)

    async def test_a_weekly_event_blocks_each_week_across_a_dst_change(
        self, client, session, dav, calendar_url, staff, service, as_staff
    ):
        first = _day_before_dst_change()
        weekly = ics(ics_event("weekly", local(first, 10), local(first, 11), "RRULE:FREQ=WEEKLY;COUNT=3"))
        # Radicale wants the zone defined in the document when TZID is used.
        dav.put(calendar_url, "weekly", _with_berlin_zone(weekly.decode()))
        connection = await connect(client, as_staff, staff, calendar_url, dav)
        await sync(connection)

        found = [lo for lo, _ in await blocks(session, staff)]
        assert [lo.astimezone(BERLIN).time() for lo in found] == [time(10)] * 3
        assert len({lo.astimezone(UTC).hour for lo in found}) == 2  # 08:00Z and 09:00Z
        for week in range(3):
            assert "10:00" not in await hours(client, service, staff, first + timedelta(weeks=week))

    async def test_a_wrong_password_fails_readably_and_keeps_the_blocks(
        self, client, session, dav, calendar_url, staff, service, as_staff
    ):
        dav.put(calendar_url, "meeting", ics(ics_event("meeting", local(DAY, 10), local(DAY, 11))).decode())
        connection = await connect(client, as_staff, staff, calendar_url, dav)
        await sync(connection)
        item = f"{STAFF}/{staff.id}/calendars/{connection['id']}"
        changed = await client.patch(item, json={"password": "not-the-password"}, headers=as_staff)
        assert changed.status_code == 200 and "not-the-password" not in changed.text

        outcome = await sync(connection)

        assert not outcome.ok and outcome.error == "the server answered HTTP 401"
        shown = (await client.get(item, headers=as_staff)).json()
        assert shown["last_error"] == outcome.error and shown["block_count"] == 1 and shown["has_password"]
        assert dav.password not in str(shown)
        assert "10:00" not in await hours(client, service, staff, DAY)


def _with_berlin_zone(document: str) -> str:
    zone = (
        "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n"
        "BEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST\r\n"
        "DTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\n"
        "BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nTZNAME:CET\r\n"
        "DTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n"
        "END:VTIMEZONE\r\n"
    )
    return document.replace("PRODID:-//test//EN\r\n", "PRODID:-//test//EN\r\n" + zone, 1)


class TestPush:
    async def test_appointments_are_written_updated_and_removed_and_never_block_themselves(
        self, client, session, dav, calendar_url, staff, service, as_staff
    ):
        body = {"kind": "caldav", "url": calendar_url, "username": dav.user, "password": dav.password}
        created = await client.post(
            f"{STAFF}/{staff.id}/calendars", json={**body, "push_appointments": True}, headers=as_staff
        )
        assert created.status_code == 201 and created.json()["push_appointments"] is True
        connection = created.json()
        customer = await headers_for(await create_user(session, full_name="Carla Client"))
        booked = await client.post(URL, json=booking_body(service, staff, local(DAY, 14)), headers=customer)
        assert booked.status_code == 201, booked.text
        appointment_id = booked.json()["id"]
        href = f"{calendar_url}{appointment_id}@c3po.ics"

        assert (await sync(connection)).ok
        stored = dav.get(href)
        assert stored is not None and "Carla Client" in stored and "SEQUENCE:0" in stored
        assert "ATTENDEE" not in stored and "ORGANIZER" not in stored and "METHOD" not in stored
        assert (await sync(connection)).blocks == 0  # its own event, read back, blocks nothing

        moved = await client.patch(
            f"{URL}/{appointment_id}", json={"starts_at": local(DAY, 15).isoformat()}, headers=customer
        )
        assert moved.status_code == 200, moved.text
        await sync(connection)
        stored = dav.get(href)
        assert "SEQUENCE:1" in stored and local(DAY, 15).astimezone(UTC).strftime("DTSTART:%Y%m%dT%H%M%SZ") in stored

        cancelled = await client.post(f"{URL}/{appointment_id}/cancel", json={}, headers=customer)
        assert cancelled.status_code == 200, cancelled.text
        assert (await sync(connection)).ok
        assert dav.get(href) is None
