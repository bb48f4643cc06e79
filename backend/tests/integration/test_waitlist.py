"""The waitlist: clients wait for a slot; a freed slot is held for the first of them, alone, until
they claim it, decline it or the hold runs out; then it passes to the next one. Exactly one offer
per freed slot, with two real workers scanning at once."""

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select, update

from app.database import get_sessionmaker
from app.models import (
    Appointment,
    Resource,
    ResourceClosure,
    Role,
    User,
    WaitlistEntry,
    WaitlistOffer,
    service_resources,
)
from app.services.booking import seats, waitlist
from app.services.messaging.outbox import get_arq_pool
from app.services.scheduling.availability_changes import CALENDAR_CHANGED_JOB
from app.utils.time import utcnow
from tests.assertions import assert_problem
from tests.factories import create_user, outbox
from tests.integration.test_admin import signed_in_admin
from tests.integration.test_reminders import deliver, run_workers
from tests.scheduling import (
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
from tests.smtp import SmtpServer, settings_env, text_part

WAITLIST = "/api/v1/waitlist"
OFFERS = f"{WAITLIST}/offers"


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port)):
        yield server
        server.stop()


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Alice Novak")


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], name="Massage", max_advance=120)


@pytest.fixture
async def first(session):
    return await create_user(session, full_name="Fiona First", timezone="Europe/Berlin")


@pytest.fixture
async def second(session):
    return await create_user(session, full_name="Sam Second", timezone="Europe/Berlin")


@pytest.fixture
async def other(session):
    return await create_user(session, full_name="Olga Other")


def window(service, day, earliest="10:00", latest="11:00", **extra) -> dict:
    return {
        "service_id": str(service.id),
        "first_date": day.isoformat(),
        "last_date": day.isoformat(),
        "earliest_time": earliest,
        "latest_time": latest,
        **extra,
    }


async def join(client, user: User, body: dict) -> dict:
    response = await client.post(WAITLIST, json=body, headers=await headers_for(user))
    assert response.status_code == 201, response.text
    return response.json()


async def offers_of(user: User) -> list[WaitlistOffer]:
    async with get_sessionmaker()() as db:
        query = select(WaitlistOffer).where(WaitlistOffer.client_id == user.id).order_by(WaitlistOffer.created_at)
        return list(await db.scalars(query))


async def entry_status(entry_id) -> str:
    async with get_sessionmaker()() as db:
        return await db.scalar(select(WaitlistEntry.status).where(WaitlistEntry.id == entry_id))


async def cancel(client, staff: User, appointment: Appointment) -> None:
    response = await client.post(f"{URL}/{appointment.id}/cancel", json={}, headers=await headers_for(staff))
    assert response.status_code == 200, response.text


async def free_starts(client, service, day) -> list[str]:
    params = {"service_id": str(service.id), "start": day.isoformat(), "end": day.isoformat(), "tz": "Europe/Berlin"}
    params["end"] = (day + timedelta(days=1)).isoformat()
    response = await client.get("/api/v1/availability", params=params)
    assert response.status_code == 200, response.text
    return [slot["starts_at"] for slot in response.json()["slots"]]


async def held_slot(client, session, staff, service, other, waiters, day):
    """The 10:00 slot (Berlin) of `day` booked by `other`, the waiters waiting for it, then cancelled and scanned."""
    taken = await add_appointment(session, other, staff, service, local(day, 10))
    body = window(service, day, timezone="Europe/Berlin")
    entries = [await join(client, waiter, body) for waiter in waiters]
    assert await waitlist.scan() == 0  # nothing free in their window yet
    await cancel(client, staff, taken)
    assert await waitlist.scan() == 1
    return entries


class TestJoin:
    async def test_a_verified_client_joins_and_sees_their_entry(self, client, service, staff, first, second):
        day = days_ahead(5)
        entry = await join(client, first, window(service, day, staff_id=str(staff.id)))

        assert entry["status"] == "waiting"
        assert entry["timezone"] == "Europe/Berlin"  # the client's own zone by default
        assert (entry["earliest_time"], entry["latest_time"]) == ("10:00", "11:00")
        mine = (await client.get(WAITLIST, headers=await headers_for(first))).json()
        assert [e["id"] for e in mine["items"]] == [entry["id"]]
        theirs = (await client.get(WAITLIST, headers=await headers_for(second))).json()
        assert theirs["items"] == []
        calendar = (await client.get(WAITLIST, headers=await headers_for(staff))).json()
        assert [e["id"] for e in calendar["items"]] == [entry["id"]]  # waiting for their calendar

    async def test_admins_list_all_with_filters(self, client, session, service, first, second):
        admin = await create_user(session, role=Role.admin)
        day = days_ahead(5)
        a = await join(client, first, window(service, day))
        await join(client, second, window(service, day))

        listed = await client.get(WAITLIST, params={"client_id": str(first.id)}, headers=await headers_for(admin))
        assert [e["id"] for e in listed.json()["items"]] == [a["id"]]
        everyone = await client.get(WAITLIST, params={"status": "waiting"}, headers=await headers_for(admin))
        assert everyone.json()["total"] == 2

    async def test_staff_add_a_client_to_their_own_calendar_only(self, client, session, service, staff, first):
        body = window(service, days_ahead(5), staff_id=str(staff.id), client_id=str(first.id))
        added = await join(client, staff, body)
        assert added["client_id"] == str(first.id)

        response = await client.post(WAITLIST, json=window(service, days_ahead(5), client_id=str(staff.id)),
                                     headers=await headers_for(first))  # fmt: skip
        assert_problem(response, 403, "forbidden")

    @pytest.mark.parametrize(
        ("change", "status", "code"),
        [
            ({"last_date": days_ahead(3).isoformat()}, 422, "validation_error"),  # before first_date
            ({"latest_time": "09:00"}, 422, "validation_error"),  # before earliest_time
            ({"latest_time": "24:00"}, 422, "validation_error"),
            ({"first_date": days_ahead(-2).isoformat()}, 422, "invalid_waitlist_window"),
            ({"last_date": days_ahead(5 + 90).isoformat()}, 422, "invalid_waitlist_window"),  # 91 days
            ({"timezone": "Mars/Olympus"}, 422, "validation_error"),
            ({"service_id": "00000000-0000-0000-0000-000000000000"}, 404, "not_found"),
        ],
    )
    async def test_bounds(self, client, service, first, change, status, code):
        body = window(service, days_ahead(5)) | change
        assert_problem(await client.post(WAITLIST, json=body, headers=await headers_for(first)), status, code)

    async def test_ninety_days_is_fine_and_the_horizon_bounds_it(self, client, session, staff, first):
        far = await create_service(session, [staff], max_advance=30)
        body = window(far, days_ahead(1)) | {"last_date": days_ahead(90).isoformat()}
        assert_problem(await client.post(WAITLIST, json=body, headers=await headers_for(first)), 422,
                       "invalid_waitlist_window")  # fmt: skip
        near = await create_service(session, [staff], max_advance=120)
        await join(client, first, window(near, days_ahead(1)) | {"last_date": days_ahead(90).isoformat()})

    async def test_open_entries_per_client_are_bounded(self, client, service, first, set_env):
        set_env(WAITLIST_ENTRIES_PER_CLIENT="2")
        await join(client, first, window(service, days_ahead(5)))
        second = await join(client, first, window(service, days_ahead(6)))

        refused = await client.post(WAITLIST, json=window(service, days_ahead(7)), headers=await headers_for(first))
        assert_problem(refused, 409, "waitlist_full")
        await client.delete(f"{WAITLIST}/{second['id']}", headers=await headers_for(first))
        await join(client, first, window(service, days_ahead(7)))  # a left entry is not counted

    async def test_concurrent_joins_respect_the_bound(self, client, service, first, set_env):
        set_env(WAITLIST_ENTRIES_PER_CLIENT="3")
        headers = await headers_for(first)
        answers = await asyncio.gather(
            *(client.post(WAITLIST, json=window(service, days_ahead(5 + i)), headers=headers) for i in range(10))
        )
        assert sorted(r.status_code for r in answers) == [201] * 3 + [409] * 7

    async def test_unverified_clients_cannot_join(self, client, session, service):
        unverified = await create_user(session, verified=False)
        response = await client.post(
            WAITLIST, json=window(service, days_ahead(5)), headers=await headers_for(unverified)
        )
        assert_problem(response, 403, "email_not_verified")


class TestOtherServices:
    async def test_a_group_session_service_has_a_waitlist(self, client, session, staff, service, first):
        service.capacity = 5
        await session.commit()
        entry = await join(client, first, window(service, days_ahead(5)))
        assert entry["status"] == "waiting"  # seat holds: see test_waitlist_seats

    async def test_a_service_made_a_group_session_later_offers_a_seat(
        self, client, session, staff, service, other, first
    ):
        day = days_ahead(5)
        taken = await add_appointment(session, other, staff, service, local(day, 10))
        await join(client, first, window(service, day, timezone="Europe/Berlin"))
        service.capacity = 5
        await session.commit()
        await cancel(client, staff, taken)
        assert await waitlist.scan() == 1
        (offer,) = await offers_of(first)
        assert offer.starts_at == local(day, 10)
        assert offer.session_key == seats.key_of(service, staff.id, local(day, 10))  # one seat of it

    async def test_a_slot_no_resource_is_free_for_is_not_offered(self, client, session, staff, service, other, first):
        room = Resource(name="Room", description="", is_active=True)
        session.add(room)
        await session.flush()
        await session.execute(insert(service_resources).values(service_id=service.id, resource_id=room.id))
        day = days_ahead(5)
        taken = await add_appointment(session, other, staff, service, local(day, 10))
        session.add(ResourceClosure(resource_id=room.id, starts_at=local(day, 9), ends_at=local(day, 12), reason="x"))
        await session.commit()
        await join(client, first, window(service, day, timezone="Europe/Berlin"))
        await cancel(client, staff, taken)
        assert await waitlist.scan() == 0  # the staff member is free at 10:00, the room is not
        await session.execute(delete(ResourceClosure).where(ResourceClosure.resource_id == room.id))
        await session.commit()
        assert await waitlist.scan() == 1
        (offer,) = await offers_of(first)
        assert offer.starts_at == local(day, 10)
        claimed = await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(first))
        assert claimed.status_code == 201, claimed.text
        assert claimed.json()["resource_id"] == str(room.id)  # the claim takes the room, like a booking

    async def test_a_claim_is_refused_when_the_last_room_went_under_the_hold(
        self, client, session, staff, service, other, first
    ):
        room = Resource(name="Room", description="", is_active=True)
        session.add(room)
        await session.flush()
        await session.execute(insert(service_resources).values(service_id=service.id, resource_id=room.id))
        await session.commit()
        day = days_ahead(5)
        await held_slot(client, session, staff, service, other, [first], day)
        (offer,) = await offers_of(first)
        session.add(ResourceClosure(resource_id=room.id, starts_at=local(day, 9), ends_at=local(day, 12), reason="x"))
        await session.commit()

        claimed = await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(first))

        assert_problem(claimed, 409, "resource_unavailable")
        assert [o.status for o in await offers_of(first)] == ["offered"]  # still held: nothing changed


class TestLeave:
    async def test_leaving_closes_the_entry_once(self, client, service, first, second):
        entry = await join(client, first, window(service, days_ahead(5)))
        url = f"{WAITLIST}/{entry['id']}"

        assert_problem(await client.delete(url, headers=await headers_for(second)), 404, "not_found")
        assert (await client.delete(url, headers=await headers_for(first))).status_code == 204
        assert await entry_status(entry["id"]) == "left"
        assert_problem(await client.delete(url, headers=await headers_for(first)), 409, "waitlist_entry_closed")

    async def test_leaving_releases_a_hold_to_the_next_waiter(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        one, two = await held_slot(client, session, staff, service, other, [first, second], day)

        assert (await client.delete(f"{WAITLIST}/{one['id']}", headers=await headers_for(first))).status_code == 204
        assert [o.status for o in await offers_of(first)] == ["withdrawn"]
        assert await waitlist.scan() == 1
        assert [o.starts_at for o in await offers_of(second)] == [local(day, 10)]
        assert await entry_status(two["id"]) == "offered"


class TestOffer:
    async def test_a_freed_slot_is_held_for_the_first_waiter_and_emailed(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        one, two = await held_slot(client, session, staff, service, other, [first, second], day)

        (offer,) = await offers_of(first)
        assert (offer.starts_at, offer.staff_id, offer.status) == (local(day, 10), staff.id, "offered")
        assert timedelta(minutes=29) < offer.expires_at - utcnow() <= timedelta(minutes=30)
        assert await offers_of(second) == []
        assert (await entry_status(one["id"]), await entry_status(two["id"])) == ("offered", "waiting")
        (email,) = await outbox(session, template="waitlist_offer")
        assert email.payload["to"] == first.email
        assert email.payload["context"]["link"].endswith(f"/waitlist/offers/{offer.id}")
        assert await waitlist.scan() == 0  # held: nobody else is offered it

        got = await client.get(f"{OFFERS}/{offer.id}", headers=await headers_for(first))
        assert got.status_code == 200
        assert (got.json()["status"], got.json()["starts_at"]) == ("offered", zulu(local(day, 10)))
        assert got.json()["session_key"] is None  # it holds the whole slot
        assert_problem(await client.get(f"{OFFERS}/{offer.id}", headers=await headers_for(second)), 404, "not_found")

    async def test_a_held_slot_is_refused_to_others_and_missing_from_availability(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        await held_slot(client, session, staff, service, other, [first], day)

        assert zulu(local(day, 10)) not in await free_starts(client, service, day)
        assert zulu(local(day, 11)) in await free_starts(client, service, day)
        body = booking_body(service, staff, local(day, 10))
        assert_problem(await client.post(URL, json=body, headers=await headers_for(second)), 409, "slot_unavailable")
        series = body | {"recurrence": {"rrule": "FREQ=DAILY;COUNT=2"}}  # the full path
        assert_problem(await client.post(URL, json=series, headers=await headers_for(second)), 409, "slot_unavailable")
        # Not even the waiter books it around the offer: they claim it.
        assert_problem(await client.post(URL, json=body, headers=await headers_for(first)), 409, "slot_unavailable")
        # A reschedule into it is refused too.
        moved = await add_appointment(session, second, staff, service, local(day, 14))
        response = await client.patch(f"{URL}/{moved.id}", json={"starts_at": local(day, 10).isoformat()},
                                      headers=await headers_for(second))  # fmt: skip
        assert_problem(response, 409, "slot_unavailable")

    async def test_the_waiter_claims_it(self, client, session, staff, service, other, first, second):
        day = days_ahead(5)
        (one,) = await held_slot(client, session, staff, service, other, [first], day)
        (offer,) = await offers_of(first)

        response = await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(first))

        assert response.status_code == 201, response.text
        booked = response.json()
        assert (booked["starts_at"], booked["client_id"], booked["status"]) == (
            zulu(local(day, 10)), str(first.id), "confirmed",
        )  # fmt: skip
        (offer,) = await offers_of(first)
        assert (offer.status, str(offer.appointment_id)) == ("claimed", booked["id"])
        assert await entry_status(one["id"]) == "booked"
        assert zulu(local(day, 10)) not in await free_starts(client, service, day)
        again = await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(first))
        assert_problem(again, 409, "offer_closed")
        assert_problem(await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(second)), 404,
                       "not_found")  # fmt: skip

    async def test_an_expired_offer_cannot_be_claimed_and_passes_on(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        one, two = await held_slot(client, session, staff, service, other, [first, second], day)
        (offer,) = await offers_of(first)
        await session.execute(
            update(WaitlistOffer).where(WaitlistOffer.id == offer.id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()

        read = await client.get(f"{OFFERS}/{offer.id}", headers=await headers_for(first))
        assert read.json()["status"] == "expired"
        claimed = await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(first))
        assert_problem(claimed, 410, "offer_expired")
        assert await waitlist.expire_offers() == 1
        assert (await entry_status(one["id"]), [o.status for o in await offers_of(first)]) == ("expired", ["expired"])
        assert await waitlist.scan() == 1
        assert [o.starts_at for o in await offers_of(second)] == [local(day, 10)]
        assert_problem(await client.post(f"{OFFERS}/{offer.id}/decline", headers=await headers_for(first)), 410,
                       "offer_expired")  # fmt: skip

    async def test_declining_passes_it_to_the_next_waiter(self, client, session, staff, service, other, first, second):
        day = days_ahead(5)
        one, two = await held_slot(client, session, staff, service, other, [first, second], day)
        (offer,) = await offers_of(first)

        response = await client.post(f"{OFFERS}/{offer.id}/decline", headers=await headers_for(first))

        assert response.status_code == 200
        assert response.json()["status"] == "declined"
        assert await entry_status(one["id"]) == "declined"
        assert await waitlist.scan() == 1
        (passed,) = await offers_of(second)
        assert passed.starts_at == local(day, 10)
        claimed = await client.post(f"{OFFERS}/{passed.id}/claim", headers=await headers_for(second))
        assert claimed.status_code == 201

    async def test_the_window_is_local_time_in_the_entry_zone(self, client, session, staff, service, other, first):
        day = days_ahead(5)
        taken = await add_appointment(session, other, staff, service, local(day, 10))
        # 09:00-10:00 UTC is 10:00-11:00 in Berlin in winter and 11:00-12:00 in summer.
        offset = int(local(day, 10).utcoffset().total_seconds() // 3600)
        utc = f"{10 - offset:02d}:00", f"{11 - offset:02d}:00"
        await join(client, first, window(service, day, *utc, timezone="UTC"))
        await cancel(client, staff, taken)

        assert await waitlist.scan() == 1
        assert [o.starts_at for o in await offers_of(first)] == [local(day, 10)]

    async def test_an_entry_for_one_staff_member_is_not_offered_another(self, client, session, staff, other, first):
        colleague = await create_staff(session)
        service = await create_service(session, [staff, colleague])
        day = days_ahead(5)
        taken = await add_appointment(session, other, colleague, service, local(day, 10))
        await add_appointment(session, other, staff, service, local(day, 10))
        await join(client, first, window(service, day, staff_id=str(staff.id)))
        await cancel(client, colleague, taken)

        assert await waitlist.scan() == 0


class TestBookedElsewhere:
    async def test_the_hot_path_removes_the_waiter_and_releases_their_hold(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        one, two = await held_slot(client, session, staff, service, other, [first, second], day)

        response = await client.post(URL, json=booking_body(service, staff, local(day, 14)),
                                     headers=await headers_for(first))  # fmt: skip

        assert response.status_code == 201
        assert await entry_status(one["id"]) == "booked"
        assert [o.status for o in await offers_of(first)] == ["withdrawn"]
        assert await entry_status(two["id"]) == "waiting"
        assert await waitlist.scan() == 1  # the released slot passes on
        assert [o.starts_at for o in await offers_of(second)] == [local(day, 10)]

    async def test_the_full_path_removes_the_waiter(self, client, session, staff, service, other, first):
        day = days_ahead(5)
        waiting = await join(client, first, window(service, day))
        elsewhere = await join(client, first, window(service, days_ahead(6)))
        unrelated = await create_service(session, [staff], name="Other")
        kept = await join(client, first, window(unrelated, day))
        body = booking_body(service, staff, local(days_ahead(10), 14), recurrence={"rrule": "FREQ=DAILY;COUNT=2"})

        response = await client.post(URL, json=body, headers=await headers_for(first))

        assert response.status_code == 201
        assert [await entry_status(e["id"]) for e in (waiting, elsewhere, kept)] == ["booked", "booked", "waiting"]

    async def test_a_failed_booking_keeps_the_waiter(self, client, session, staff, service, other, first):
        day = days_ahead(5)
        await add_appointment(session, other, staff, service, local(day, 14))
        entry = await join(client, first, window(service, day))

        response = await client.post(URL, json=booking_body(service, staff, local(day, 14)),
                                     headers=await headers_for(first))  # fmt: skip

        assert_problem(response, 409, "slot_unavailable")
        assert await entry_status(entry["id"]) == "waiting"


class TestPrivacy:
    async def test_the_export_lists_entries_and_offers(self, client, session, staff, service, other, first):
        day = days_ahead(5)
        (entry,) = await held_slot(client, session, staff, service, other, [first], day)
        (offer,) = await offers_of(first)

        exported = (await client.get("/api/v1/users/me/export", headers=await headers_for(first))).json()

        assert [e["id"] for e in exported["waitlist"]] == [entry["id"]]
        assert [o["id"] for o in exported["waitlist"][0]["offers"]] == [str(offer.id)]
        assert exported["waitlist"][0]["offers"][0]["starts_at"] == zulu(local(day, 10))

    async def test_erasure_deletes_them_and_the_hold_passes_on(
        self, client, session, staff, service, other, first, second
    ):
        day = days_ahead(5)
        await held_slot(client, session, staff, service, other, [first, second], day)

        response = await client.delete("/api/v1/users/me", headers=await headers_for(first))

        assert response.status_code == 204, response.text
        async with get_sessionmaker()() as db:
            assert (await db.scalars(select(WaitlistEntry).where(WaitlistEntry.client_id == first.id))).all() == []
            assert (await db.scalars(select(WaitlistOffer).where(WaitlistOffer.client_id == first.id))).all() == []
        assert await waitlist.scan() == 1
        assert [o.starts_at for o in await offers_of(second)] == [local(day, 10)]


class TestWorker:
    async def test_a_cancellation_makes_the_worker_offer_it_and_the_email_arrives(
        self, client, session, staff, service, other, first, smtp
    ):
        day = days_ahead(5)
        taken = await add_appointment(session, other, staff, service, local(day, 10))
        await join(client, first, window(service, day))
        await cancel(client, staff, taken)

        await run_workers(2)

        (offer,) = await offers_of(first)
        emails = [m for m in await deliver(smtp) if m["To"] == first.email]
        (email,) = [m for m in emails if "held for you" in str(m["Subject"])]
        body = text_part(email)
        assert f"/waitlist/offers/{offer.id}" in body
        assert "held for you alone until" in body

    async def test_the_email_is_in_the_waiters_language(self, client, session, staff, service, other, smtp):
        waiter = await create_user(session, locale="ru", timezone="Europe/Moscow")
        day = days_ahead(5)
        await held_slot(client, session, staff, service, other, [waiter], day)

        emails = [m for m in await deliver(smtp) if m["To"] == waiter.email]
        (email,) = emails
        assert "удерживается" in text_part(email)
        assert "Europe/Moscow" in text_part(email)


@dataclass
class Trial:
    """One freed slot and its own two waiters: the acceptance's unit, run ten at a time."""

    day: date
    taken: Appointment
    first: User
    second: User
    held: WaitlistOffer | None = None

    async def offers(self, user: User) -> list[WaitlistOffer]:
        return [o for o in await offers_of(user) if o.starts_at == local(self.day, 10)]


class TestAcceptance:
    """Two waiters, one freed slot, two real workers, fifty times: each time exactly one offer, to
    the first waiter; the second is offered only once the first hold has expired or was declined.

    The fifty trials run in rounds of ten slots freed at the same moment (each slot with waiters of
    its own), which also makes the cancellations simultaneous. Rounds alternate between holds left
    to run out and holds declined."""

    REPETITIONS = int(os.environ.get("WAITLIST_REPETITIONS", "50"))
    AT_ONCE = 10
    HOLD_MINUTES = 0.1  # 6 s, for the rounds that let the holds run out: ten trials are checked in it

    async def scan_with_workers(self, staff: User) -> None:
        """Two arq workers side by side, each running the startup cron (expire and scan everything)
        and, between them, the scans queued by the change and three more queued at the same moment."""
        pool = await get_arq_pool()
        for _ in range(3):
            await pool.enqueue_job(CALENDAR_CHANGED_JOB, [str(staff.id)])
        await run_workers(2)

    async def test_one_offer_per_freed_slot_with_two_workers(
        self, client, session, staff, service, other, set_env, smtp
    ):
        trials: list[Trial] = []
        checked_while_held = 0
        for round_start in range(0, self.REPETITIONS, self.AT_ONCE):
            expire = (round_start // self.AT_ONCE) % 2 == 0
            set_env(WAITLIST_HOLD_MINUTES=str(self.HOLD_MINUTES if expire else 30))
            round_trials = []
            for repetition in range(round_start, min(round_start + self.AT_ONCE, self.REPETITIONS)):
                day = days_ahead(2 + repetition)
                taken = await add_appointment(session, other, staff, service, local(day, 10))
                first = await create_user(session, full_name=f"First {repetition}", timezone="Europe/Berlin")
                second = await create_user(session, full_name=f"Second {repetition}", timezone="Europe/Berlin")
                one = await join(client, first, window(service, day))
                two = await join(client, second, window(service, day))
                assert (await entry_status(one["id"]), await entry_status(two["id"])) == ("waiting", "waiting")
                round_trials.append(Trial(day, taken, first, second))

            await asyncio.gather(*(cancel(client, staff, trial.taken) for trial in round_trials))
            await self.scan_with_workers(staff)

            for trial in round_trials:
                offered = await trial.offers(trial.first)
                assert len(offered) == 1, trial.day
                (trial.held,) = offered
            if datetime.now(UTC) < min(t.held.expires_at for t in round_trials) - timedelta(seconds=0.5):
                for trial in round_trials:
                    assert trial.held.status == "offered", trial.day
                    assert await trial.offers(trial.second) == [], trial.day
                await self.scan_with_workers(staff)  # while they are held, nobody else gets them
            for trial in round_trials:
                if datetime.now(UTC) < trial.held.expires_at:
                    checked_while_held += 1
                    assert await trial.offers(trial.second) == [], trial.day

            if expire:
                last = max(t.held.expires_at for t in round_trials)
                await asyncio.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds()) + 0.05)
            else:
                for trial in round_trials:
                    declined = await client.post(
                        f"{OFFERS}/{trial.held.id}/decline", headers=await headers_for(trial.first)
                    )
                    assert declined.status_code == 200, declined.text
            await self.scan_with_workers(staff)

            for trial in round_trials:
                (gone,) = await trial.offers(trial.first)
                assert gone.status == ("expired" if expire else "declined"), trial.day
                passed = await trial.offers(trial.second)
                assert len(passed) == 1, trial.day
                # A short hold may have run out already on a slow machine (and been swept by the scan).
                assert passed[0].status == "offered" or (expire and passed[0].status == "expired"), trial.day
                assert passed[0].created_at >= (gone.expires_at if expire else gone.updated_at), trial.day
            trials += round_trials

        # Every declined round, and most short holds, were also checked again while still held.
        assert checked_while_held >= self.REPETITIONS * 3 // 4, checked_while_held
        offers = [m["To"] for m in smtp.messages if "held for you" in str(m["Subject"])]
        expected = [trial.first.email for trial in trials] + [trial.second.email for trial in trials]
        assert sorted(offers) == sorted(expected)  # one email per offer
        assert len(trials) == self.REPETITIONS


class TestAdminPanel:
    async def test_admins_see_entries_and_offers(self, client, session, staff, service, other, first):
        day = days_ahead(5)
        (entry,) = await held_slot(client, session, staff, service, other, [first], day)
        await signed_in_admin(client, session)

        entries = await client.get("/admin/waitlist-entry/list")
        offers = await client.get("/admin/waitlist-offer/list")

        assert entries.status_code == offers.status_code == 200
        assert str(first.id) in entries.text and "offered" in entries.text
        assert str(first.id) in offers.text
