"""Calendar feeds: `GET /calendar-feeds/{token}.ics` (content, validators, rate limit, who can read it),
the owner's `GET /users/me/calendar-feed` and rotation, export, erasure, the admin panel, the metric,
and the access log. Every feed is read back with `icalendar`."""

import asyncio
import io
import secrets
import uuid
from datetime import timedelta
from email.utils import format_datetime
from urllib.parse import urlsplit

import icalendar
import pytest
from loguru import logger
from sqlalchemy import select, update

from app.config import get_settings
from app.models import Appointment, AuditEntry, CalendarFeed, Role
from app.services.integrations.feeds import FEED_NAME, TOKEN_LENGTH
from app.utils.time import utcnow
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, outbox, reload
from tests.integration.test_admin import panel_login, post, signed_in_admin
from tests.metrics import delta, parse
from tests.scheduling import (
    URL,
    add_appointment,
    booking_body,
    create_service,
    create_staff,
    days_ahead,
    headers_for,
    local,
)

MINE = "/api/v1/users/me/calendar-feed"
NOT_FOUND = "calendar_feed_not_found"
REQUESTS = "c3po_calendar_feed_requests_total"


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Alice Novak")


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], name="Massage")


@pytest.fixture
async def customer(session):
    return await create_user(session, full_name="Uma User")


async def feed_url(client, user) -> str:
    """The path of the user's feed, as the API hands it out (signed in as them)."""
    answer = await client.get(MINE, headers=await headers_for(user))
    assert answer.status_code == 200, answer.text
    return urlsplit(answer.json()["url"]).path


async def read_feed(client, path: str, **headers: str) -> icalendar.Calendar:
    answer = await client.get(path, headers=headers)
    assert answer.status_code == 200, answer.text
    return icalendar.Calendar.from_ical(answer.content)


def events(calendar: icalendar.Calendar) -> dict[str, icalendar.Event]:
    return {str(event["UID"]): event for event in calendar.walk("VEVENT")}


def uid(appointment) -> str:
    return f"{appointment.id}@c3po"


DAY = days_ahead(7)
TEN = local(DAY, 10)


class TestContent:
    async def test_the_same_uid_sequence_and_status_as_the_emailed_invite(
        self, client, session, service, staff, customer
    ):
        as_customer = await headers_for(customer)
        booked = await client.post(URL, json=booking_body(service, staff, TEN), headers=as_customer)
        assert booked.status_code == 201, booked.text
        appointment_id = booked.json()["id"]
        moved = await client.patch(
            f"{URL}/{appointment_id}", json={"starts_at": local(DAY, 12).isoformat()}, headers=as_customer
        )
        assert moved.status_code == 200, moved.text
        [invite] = await outbox(session, to=customer.email, template="appointment_rescheduled")
        emailed = icalendar.Calendar.from_ical(invite.payload["attachments"][0]["content"])
        [emailed_event] = emailed.walk("VEVENT")

        for user, other in ((customer, "Alice Novak"), (staff, "Uma User")):
            calendar = await read_feed(client, await feed_url(client, user))
            event = events(calendar)[f"{appointment_id}@c3po"]
            assert event["UID"] == emailed_event["UID"]
            assert int(event["SEQUENCE"]) == int(emailed_event["SEQUENCE"]) == 1
            assert str(event["STATUS"]) == str(emailed_event["STATUS"]) == "CONFIRMED"
            assert event.decoded("DTSTART") == emailed_event.decoded("DTSTART") == local(DAY, 12)
            assert event.decoded("DTEND") - event.decoded("DTSTART") == timedelta(minutes=service.duration_minutes)
            assert str(event["SUMMARY"]) == f"Massage — {other}"  # the other party, from the viewer's side
            assert "ATTENDEE" not in event  # a published event invites nobody

    async def test_a_calendar_for_subscribing(self, client, session, customer):
        answer = await client.get(await feed_url(client, customer))

        assert answer.headers["content-type"] == "text/calendar; charset=utf-8"
        assert answer.headers["content-disposition"] == 'inline; filename="c3po-appointments.ics"'
        assert answer.headers["cache-control"] == "private, no-cache"
        calendar = icalendar.Calendar.from_ical(answer.content)
        assert str(calendar["METHOD"]) == "PUBLISH" and str(calendar["X-WR-CALNAME"]) == FEED_NAME
        assert str(calendar["X-PUBLISHED-TTL"]) == "PT60M"
        assert calendar["REFRESH-INTERVAL"].dt == timedelta(minutes=60)
        assert calendar.walk("VEVENT") == []

    async def test_from_thirty_days_back_to_the_furthest_horizon(self, client, session, service, staff, customer):
        now = utcnow()
        at = {
            "too_old": now - timedelta(days=31),
            "done": now - timedelta(days=29),
            "pending": now + timedelta(days=2),
            "far": now + timedelta(days=700),
            "beyond": now + timedelta(days=731),
        }
        statuses = {"done": "completed", "pending": "pending"}
        made = {
            name: await add_appointment(session, customer, staff, service, when, status=statuses.get(name, "confirmed"))
            for name, when in at.items()
        }

        found = events(await read_feed(client, await feed_url(client, customer)))

        assert set(found) == {uid(made[name]) for name in ("done", "pending", "far")}
        assert str(found[uid(made["done"])]["STATUS"]) == "CONFIRMED"
        assert str(found[uid(made["pending"])]["STATUS"]) == "TENTATIVE"
        assert [e.decoded("DTSTART") for e in found.values()] == sorted(e.decoded("DTSTART") for e in found.values())

    async def test_a_staff_member_who_books_as_a_client_sees_both_roles(self, client, session, service, staff):
        other_staff = await create_staff(session, full_name="Bob Ortiz")
        other_service = await create_service(session, [other_staff], name="Haircut")
        customer = await create_user(session, full_name="Cleo Client")
        working = await add_appointment(session, customer, staff, service, TEN)
        booking = await add_appointment(session, staff, other_staff, other_service, local(DAY, 15))
        someone_else = await add_appointment(session, customer, other_staff, other_service, local(DAY, 17))

        found = events(await read_feed(client, await feed_url(client, staff)))

        assert set(found) == {uid(working), uid(booking)} and uid(someone_else) not in found
        assert str(found[uid(working)]["SUMMARY"]) == "Massage — Cleo Client"
        assert str(found[uid(booking)]["SUMMARY"]) == "Haircut — Bob Ortiz"

    async def test_a_cancellation_stays_as_cancelled_then_leaves(self, client, session, service, staff, customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)
        path = await feed_url(client, customer)
        cancelled = await client.post(
            f"{URL}/{appointment.id}/cancel", json={"reason": "ill"}, headers=await headers_for(customer)
        )
        assert cancelled.status_code == 200, cancelled.text

        event = events(await read_feed(client, path))[uid(appointment)]
        assert str(event["STATUS"]) == "CANCELLED" and int(event["SEQUENCE"]) == cancelled.json()["sequence"] == 1

        keep = get_settings().feed_cancelled_keep_days
        await session.execute(
            update(Appointment)
            .where(Appointment.id == appointment.id)
            .values(updated_at=utcnow() - timedelta(days=keep, minutes=1))
        )
        await session.commit()
        assert uid(appointment) not in events(await read_feed(client, path))


class TestValidators:
    async def test_if_none_match_answers_304_until_something_changes(self, client, session, service, staff, customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)
        path = await feed_url(client, customer)
        first = await client.get(path)
        etag = first.headers["etag"]
        assert etag.startswith('"') and not etag.startswith("W/")

        again = await client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag and again.headers["last-modified"] == first.headers["last-modified"]
        listed = await client.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
        assert listed.status_code == 304

        await session.execute(update(Appointment).where(Appointment.id == appointment.id).values(sequence=1))
        await session.commit()
        changed = await client.get(path, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert changed.headers["last-modified"] != first.headers["last-modified"]

    async def test_if_modified_since(self, client, session, service, staff, customer):
        appointment = await add_appointment(session, customer, staff, service, TEN)
        path = await feed_url(client, customer)
        first = await client.get(path)
        modified = first.headers["last-modified"]

        assert (await client.get(path, headers={"If-Modified-Since": modified})).status_code == 304
        assert (await client.get(path, headers={"If-Modified-Since": "not a date"})).status_code == 200
        earlier = format_datetime(utcnow() - timedelta(days=1), usegmt=True)
        assert (await client.get(path, headers={"If-Modified-Since": earlier})).status_code == 200

        await session.execute(update(Appointment).where(Appointment.id == appointment.id).values(status="cancelled"))
        await session.commit()
        after = await client.get(path, headers={"If-Modified-Since": modified})
        assert after.status_code == 200  # changed within the same second still moves Last-Modified on
        assert after.headers["last-modified"] != modified

    async def test_if_none_match_wins_over_if_modified_since(self, client, session, customer):
        path = await feed_url(client, customer)
        first = await client.get(path)
        answer = await client.get(
            path, headers={"If-None-Match": '"stale"', "If-Modified-Since": first.headers["last-modified"]}
        )
        assert answer.status_code == 200


class TestTheUrl:
    async def test_the_same_url_every_time_with_webcal(self, client, session, customer, monkeypatch):
        monkeypatch.setattr(get_settings(), "public_api_url", "https://api.c3po.example/")
        headers = await headers_for(customer)
        first, second = (
            (await client.get(MINE, headers=headers)).json(),
            (await client.get(MINE, headers=headers)).json(),
        )

        assert first == second
        assert first["url"].startswith("https://api.c3po.example/api/v1/calendar-feeds/")
        assert first["webcal_url"] == first["url"].replace("https://", "webcal://")
        token = first["url"].rsplit("/", 1)[1].removesuffix(".ics")
        assert len(token) == TOKEN_LENGTH >= 32
        assert first["rotated_at"] is None and first["created_at"]

    async def test_rotating_kills_the_old_url(self, client, session, customer):
        headers = await headers_for(customer)
        old = await feed_url(client, customer)
        rotated = await client.post(f"{MINE}/rotate", headers=headers)
        assert rotated.status_code == 200 and rotated.json()["rotated_at"]
        new = urlsplit(rotated.json()["url"]).path

        assert new != old
        assert_problem(await client.get(old), 404, NOT_FOUND)
        assert (await client.get(new)).status_code == 200
        assert urlsplit((await client.get(MINE, headers=headers)).json()["url"]).path == new
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "calendar_feed.rotate"))
        assert entry.actor_id == customer.id and entry.entity_id == str(customer.id)

    async def test_rotating_before_any_feed_makes_one(self, client, session, customer):
        rotated = await client.post(f"{MINE}/rotate", headers=await headers_for(customer))
        assert rotated.status_code == 200
        assert (await client.get(urlsplit(rotated.json()["url"]).path)).status_code == 200

    async def test_concurrent_first_reads_make_one_feed_and_rotations_leave_one_url(self, client, session, customer):
        headers = await headers_for(customer)
        reads = await asyncio.gather(*(client.get(MINE, headers=headers) for _ in range(4)))
        assert len({answer.json()["url"] for answer in reads}) == 1

        rotations = await asyncio.gather(*(client.post(f"{MINE}/rotate", headers=headers) for _ in range(3)))
        paths = {urlsplit(answer.json()["url"]).path for answer in rotations}
        answers = [(await client.get(path)).status_code for path in paths]
        assert len(paths) == 3 and sorted(answers) == [200, 404, 404]
        current = urlsplit((await client.get(MINE, headers=headers)).json()["url"]).path
        assert (await client.get(current)).status_code == 200

    @pytest.mark.parametrize(
        "token",
        ["short", "A" * TOKEN_LENGTH, "A" * 2000, "%00" * 20, "A" * (TOKEN_LENGTH - 1) + "="],
    )
    async def test_a_malformed_or_forged_token_is_not_found(self, client, token):
        assert_problem(await client.get(f"/api/v1/calendar-feeds/{token}.ics"), 404, NOT_FOUND)

    async def test_a_changed_character_is_not_found(self, client, session, customer):
        path = await feed_url(client, customer)
        token = path.rsplit("/", 1)[1].removesuffix(".ics")
        for index in (0, 20, TOKEN_LENGTH - 1):  # user id, version, MAC
            changed = token[:index] + ("B" if token[index] != "B" else "C") + token[index + 1 :]
            assert_problem(await client.get(f"/api/v1/calendar-feeds/{changed}.ics"), 404, NOT_FOUND)

    async def test_a_previous_signing_key_still_opens_it(self, client, session, customer, deploy_keys):
        old_key = get_settings().secret_key
        path = await feed_url(client, customer)
        new_key = secrets.token_urlsafe(32)

        deploy_keys(new_key, old_key)
        assert (await client.get(path)).status_code == 200
        assert await feed_url(client, customer) != path  # handed out under the new key from now on
        deploy_keys(new_key)
        assert_problem(await client.get(path), 404, NOT_FOUND)

    async def test_a_deactivated_users_feed_is_not_found(self, client, session, customer):
        path = await feed_url(client, customer)
        customer.is_active = False
        await session.commit()
        assert_problem(await client.get(path), 404, NOT_FOUND)

    async def test_signing_in_is_needed_to_see_or_rotate_it(self, client):
        assert_unauthorized(await client.get(MINE))
        assert_unauthorized(await client.post(f"{MINE}/rotate"))

    async def test_the_access_log_never_shows_the_token(self, client, session, customer):
        path = await feed_url(client, customer)
        token = path.rsplit("/", 1)[1].removesuffix(".ics")
        lines = io.StringIO()
        sink = logger.add(lines, level="INFO", format="{message}", filter="app")  # the server's lines
        try:
            assert (await client.get(path)).status_code == 200
        finally:
            logger.remove(sink)
        assert "GET /api/v1/calendar-feeds/[redacted].ics 200" in lines.getvalue()
        assert token not in lines.getvalue()


class TestRateLimit:
    async def test_each_url_has_its_budget_and_refusals_are_counted(self, client, session, customer, monkeypatch):
        monkeypatch.setattr(get_settings(), "feed_requests_per_token", "3/hour")
        path = await feed_url(client, customer)
        other = await feed_url(client, await create_user(session))
        before = parse((await client.get("/metrics")).text)

        first = await client.get(path)
        assert (await client.get(path, headers={"If-None-Match": first.headers["etag"]})).status_code == 304
        assert (await client.get(path)).status_code == 200
        refused = assert_problem(await client.get(path), 429, "rate_limited")
        assert refused and int((await client.get(path)).headers["retry-after"]) > 0
        assert (await client.get(other)).status_code == 200
        await client.get(f"/api/v1/calendar-feeds/{'x' * TOKEN_LENGTH}.ics")

        after = parse((await client.get("/metrics")).text)
        assert delta(before, after, REQUESTS, outcome="200") == 3
        assert delta(before, after, REQUESTS, outcome="304") == 1
        assert delta(before, after, REQUESTS, outcome="429") == 2
        assert delta(before, after, REQUESTS, outcome="404") == 1


class TestDataRights:
    async def test_the_export_tells_of_the_feed_but_not_its_url(self, client, session, customer):
        headers = await headers_for(customer)
        assert (await client.get("/api/v1/users/me/export", headers=headers)).json()["calendar_feed"] is None
        path = await feed_url(client, customer)
        await client.get(path)
        await client.post(f"{MINE}/rotate", headers=headers)

        answer = await client.get("/api/v1/users/me/export", headers=headers)
        feed = answer.json()["calendar_feed"]
        assert set(feed) == {"created_at", "rotated_at", "last_fetched_at"}
        assert feed["rotated_at"] and feed["last_fetched_at"]
        new_token = (await client.get(MINE, headers=headers)).json()["url"].rsplit("/", 1)[1].removesuffix(".ics")
        assert path.rsplit("/", 1)[1].removesuffix(".ics") not in answer.text and new_token not in answer.text

    async def test_erasure_deletes_the_feed(self, client, session, customer):
        path = await feed_url(client, customer)
        assert (await client.delete("/api/v1/users/me", headers=await headers_for(customer))).status_code == 204

        assert_problem(await client.get(path), 404, NOT_FOUND)
        assert await session.get(CalendarFeed, customer.id) is None
        assert (await reload(session, customer)).deleted_at is not None


class TestAdminPanel:
    async def test_an_admin_sees_feeds_and_rotates_one(self, client, session, customer):
        path = await feed_url(client, customer)
        admin = await signed_in_admin(client, session)

        listed = await client.get("/admin/calendar-feed/list")
        assert listed.status_code == 200 and f'href="/admin/user/details/{customer.id}"' in listed.text
        details = await client.get(f"/admin/calendar-feed/details/{customer.id}")
        assert details.status_code == 200 and "rotate-feed" in details.text

        answer = await post(client, f"/admin/calendar-feed/rotate/{customer.id}", {})
        assert answer.status_code == 303 and answer.headers["location"].endswith("done=rotate")
        assert_problem(await client.get(path), 404, NOT_FOUND)
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "calendar_feed.rotate"))
        assert entry.actor_id == admin.id

    async def test_rotating_a_feed_that_is_not_there_is_refused(self, client, session):
        await signed_in_admin(client, session)
        answer = await post(client, f"/admin/calendar-feed/rotate/{uuid.uuid4()}", {})
        assert answer.status_code == 303 and "not_found" in answer.headers["location"]

    async def test_staff_cannot_open_it(self, client, session):
        staff = await create_user(session, role=Role.staff)
        assert (await panel_login(client, staff.email)).status_code == 403
        answer = await client.get("/admin/calendar-feed/list")
        assert answer.status_code == 303 and answer.headers["location"].endswith("/admin/login")
