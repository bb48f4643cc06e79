"""The waitlist of a group session: a freed seat is held for the first waiter, ONE seat of its
session, while its other seats stay bookable; the hold counts as a taken seat everywhere seats are
counted (availability's `seats_left`, `session_full`), blocks the staff member's time for every
other service, and passes to the next waiter once declined or expired."""

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import update

from app.models import WaitlistOffer
from app.services.booking import seats, waitlist
from app.utils.time import utcnow
from tests.assertions import assert_problem
from tests.factories import create_user, outbox
from tests.integration.test_reminders import deliver, run_workers
from tests.integration.test_waitlist import OFFERS, entry_status, join, offers_of, smtp, window  # noqa: F401 (the fixture)
from tests.scheduling import URL, booking_body, create_service, create_staff, days_ahead, headers_for, local, zulu
from tests.smtp import text_part

AVAILABILITY = "/api/v1/availability"


@pytest.fixture
async def staff(session):
    return await create_staff(session, full_name="Yara Yoga")


async def group(session, staff, capacity: int):
    service = await create_service(session, [staff], name="Yoga class", max_advance=120)
    service.capacity = capacity
    await session.commit()
    return service


@pytest.fixture
async def massage(session, staff):
    return await create_service(session, [staff], name="Massage", max_advance=120)


async def people(session, count: int):
    return [await create_user(session, full_name=f"Client {n}", timezone="Europe/Berlin") for n in range(count)]


async def book(client, user, service, staff, starts_at):
    return await client.post(URL, json=booking_body(service, staff, starts_at), headers=await headers_for(user))


async def seat(client, user, service, staff, starts_at) -> dict:
    response = await book(client, user, service, staff, starts_at)
    assert response.status_code == 201, response.text
    return response.json()


async def cancel(client, staff, appointment: dict) -> None:
    response = await client.post(f"{URL}/{appointment['id']}/cancel", json={}, headers=await headers_for(staff))
    assert response.status_code == 200, response.text


async def claim(client, user, offer: WaitlistOffer):
    return await client.post(f"{OFFERS}/{offer.id}/claim", headers=await headers_for(user))


async def seats_left(client, service, day) -> dict[str, int]:
    """Availability of the day (Berlin): start -> seats left."""
    params = {"service_id": str(service.id), "start": local(day, 0).isoformat(), "end": local(day, 23).isoformat()}
    response = await client.get(AVAILABILITY, params=params)
    assert response.status_code == 200, response.text
    return {slot["starts_at"]: slot.get("seats_left") for slot in response.json()["slots"]}


async def attendees(client, staff, appointment: dict) -> list[str]:
    response = await client.get(f"{URL}/{appointment['id']}/attendees", headers=await headers_for(staff))
    assert response.status_code == 200, response.text
    return sorted(a["client_id"] for a in response.json()["attendees"])


async def expire(session, offer: WaitlistOffer) -> None:
    await session.execute(
        update(WaitlistOffer).where(WaitlistOffer.id == offer.id).values(expires_at=utcnow() - timedelta(seconds=1))
    )
    await session.commit()
    assert await waitlist.expire_offers() == 1


async def full_session_with_waiters(client, session, staff, service, day, waiters):
    """Every seat of 10:00 (Berlin) booked, the waiters waiting for it, then one seat cancelled and
    scanned: the booked seats (the cancelled one first)."""
    booked = [await seat(client, user, service, staff, local(day, 10)) for user in await people(session, 2)]
    for waiter in waiters:
        await join(client, waiter, window(service, day, timezone="Europe/Berlin"))
    assert await waitlist.scan() == 0  # full: nothing to offer yet
    await cancel(client, staff, booked[0])
    assert await waitlist.scan() == 1
    return booked


class TestSeatHold:
    async def test_a_cancelled_seat_is_held_for_the_waiter_alone_who_claims_it(self, client, session, staff):
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (waiter, stranger) = await people(session, 2)
        _, kept = await full_session_with_waiters(client, session, staff, yoga, day, [waiter])

        (offer,) = await offers_of(waiter)
        assert (offer.starts_at, offer.status) == (local(day, 10), "offered")
        assert offer.session_key == uuid.UUID(kept["session_key"]) == seats.key_of(yoga, staff.id, local(day, 10))
        shown = await client.get(f"{OFFERS}/{offer.id}", headers=await headers_for(waiter))
        assert shown.json()["session_key"] == kept["session_key"]  # the front end can tell a seat hold
        assert [m.payload["to"] for m in await outbox(session, template="waitlist_offer")] == [waiter.email]
        assert zulu(local(day, 10)) not in await seats_left(client, yoga, day)  # 0 seats left: not offered
        refused = assert_problem(await book(client, stranger, yoga, staff, local(day, 10)), 409, "session_full")
        assert refused["full"] == [zulu(local(day, 10))]
        assert await waitlist.scan() == 0  # held: nobody else is offered it

        claimed = await claim(client, waiter, offer)

        assert claimed.status_code == 201, claimed.text
        assert claimed.json()["session_key"] == kept["session_key"]
        assert claimed.json()["seat"] == 1  # the cancelled seat's number
        assert await attendees(client, staff, kept) == sorted([str(waiter.id), kept["client_id"]])
        (offer,) = await offers_of(waiter)
        assert (offer.status, str(offer.appointment_id)) == ("claimed", claimed.json()["id"])
        assert_problem(await book(client, stranger, yoga, staff, local(day, 10)), 409, "session_full")

    @pytest.mark.parametrize("ending", ["declined", "expired"])
    async def test_once_the_hold_is_gone_the_seat_is_bookable_again(self, client, session, staff, ending):
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (waiter, stranger) = await people(session, 2)
        await full_session_with_waiters(client, session, staff, yoga, day, [waiter])
        (offer,) = await offers_of(waiter)

        if ending == "declined":
            declined = await client.post(f"{OFFERS}/{offer.id}/decline", headers=await headers_for(waiter))
            assert declined.status_code == 200, declined.text
        else:
            await expire(session, offer)

        assert [o.status for o in await offers_of(waiter)] == [ending]
        assert (await seats_left(client, yoga, day))[zulu(local(day, 10))] == 1
        assert (await book(client, stranger, yoga, staff, local(day, 10))).status_code == 201

    async def test_the_other_seats_stay_bookable_while_one_is_held(self, client, session, staff):
        yoga = await group(session, staff, 3)
        day = days_ahead(5)
        (booker, waiter, third, fourth) = await people(session, 4)
        await seat(client, booker, yoga, staff, local(day, 10))
        await join(client, waiter, window(yoga, day, timezone="Europe/Berlin"))
        assert await waitlist.scan() == 1  # a seat is free already: offered at once
        (offer,) = await offers_of(waiter)
        assert (await seats_left(client, yoga, day))[zulu(local(day, 10))] == 1  # 3 - a seat - a hold

        assert (await book(client, third, yoga, staff, local(day, 10))).status_code == 201
        assert_problem(await book(client, fourth, yoga, staff, local(day, 10)), 409, "session_full")
        assert (await claim(client, waiter, offer)).status_code == 201  # the held seat was kept for them

    async def test_a_held_fresh_start_blocks_the_staff_members_time_for_other_services(
        self, client, session, staff, massage, set_env
    ):
        set_env(SLOT_STEP_MINUTES="30")
        yoga = await group(session, staff, 3)
        day = days_ahead(5)
        (waiter, other, booker) = await people(session, 3)
        await join(client, waiter, window(yoga, day, timezone="Europe/Berlin"))
        assert await waitlist.scan() == 1  # nobody has booked 10:00: a new session, one seat held
        (offer,) = await offers_of(waiter)
        assert offer.session_key == seats.key_of(yoga, staff.id, local(day, 10))

        params = {"service_id": str(massage.id), "start": local(day, 0).isoformat(), "end": local(day, 23).isoformat()}
        plain = [s["starts_at"] for s in (await client.get(AVAILABILITY, params=params)).json()["slots"]]
        assert zulu(local(day, 10)) not in plain and zulu(local(day, 9, 30)) not in plain
        assert zulu(local(day, 11)) in plain
        assert_problem(await book(client, other, massage, staff, local(day, 10, 30)), 409, "slot_unavailable")
        series = booking_body(massage, staff, local(day, 10)) | {"recurrence": {"rrule": "FREQ=DAILY;COUNT=2"}}
        refused = await client.post(URL, json=series, headers=await headers_for(other))  # the full path
        assert_problem(refused, 409, "slot_unavailable")
        # Its own session stays open: 2 seats left; an overlapping start of it is not offered.
        group_slots = await seats_left(client, yoga, day)
        assert group_slots[zulu(local(day, 10))] == 2
        assert zulu(local(day, 10, 30)) not in group_slots
        joined = await seat(client, booker, yoga, staff, local(day, 10))
        assert uuid.UUID(joined["session_key"]) == offer.session_key
        assert_problem(await book(client, other, yoga, staff, local(day, 10, 30)), 409, "slot_unavailable")


class TestQueue:
    async def test_two_waiters_one_freed_seat_one_offer_then_the_next(self, client, session, staff):
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (first, second) = await people(session, 2)
        await full_session_with_waiters(client, session, staff, yoga, day, [first, second])

        (offer,) = await offers_of(first)
        assert await offers_of(second) == []
        assert await waitlist.scan() == 0
        declined = await client.post(f"{OFFERS}/{offer.id}/decline", headers=await headers_for(first))
        assert declined.status_code == 200, declined.text

        assert await waitlist.scan() == 1
        (passed,) = await offers_of(second)
        assert (passed.starts_at, passed.session_key) == (offer.starts_at, offer.session_key)
        assert (await claim(client, second, passed)).status_code == 201

    async def test_two_freed_seats_go_to_two_waiters_in_one_scan(self, client, session, staff):
        yoga = await group(session, staff, 3)
        day = days_ahead(5)
        (first, second, third) = await people(session, 3)
        for waiter in (first, second, third):
            await join(client, waiter, window(yoga, day, timezone="Europe/Berlin"))
        await seat(client, (await people(session, 1))[0], yoga, staff, local(day, 10))

        assert await waitlist.scan() == 2  # 3 seats, 1 booked: the first two waiters hold one each
        assert [len(await offers_of(w)) for w in (first, second, third)] == [1, 1, 0]
        assert zulu(local(day, 10)) not in await seats_left(client, yoga, day)

    async def test_a_client_with_a_seat_or_a_hold_of_the_session_is_not_offered_another(self, client, session, staff):
        yoga = await group(session, staff, 4)
        day = days_ahead(5)
        (seated, holder) = await people(session, 2)
        await seat(client, seated, yoga, staff, local(day, 10))
        await join(client, seated, window(yoga, day, timezone="Europe/Berlin"))  # joined after booking
        body = window(yoga, day, timezone="Europe/Berlin")
        twice = [await join(client, holder, body), await join(client, holder, body)]

        assert await waitlist.scan() == 1  # the holder's first entry only
        assert await offers_of(seated) == []
        assert [await entry_status(e["id"]) for e in twice] == ["offered", "waiting"]

    async def test_booking_the_held_session_directly_releases_the_waiters_hold(self, client, session, staff):
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (waiter,) = await people(session, 1)
        await seat(client, (await people(session, 1))[0], yoga, staff, local(day, 10))
        entry = await join(client, waiter, window(yoga, day, timezone="Europe/Berlin"))
        assert await waitlist.scan() == 1

        booked = await seat(client, waiter, yoga, staff, local(day, 10))  # their own hold does not count

        assert booked["seat"] == 2
        assert [o.status for o in await offers_of(waiter)] == ["withdrawn"]
        assert await entry_status(entry["id"]) == "booked"


class TestWorker:
    async def test_two_workers_offer_a_cancelled_seat_once_and_the_email_arrives(
        self,
        client,
        session,
        staff,
        smtp,  # noqa: F811 (the fixture imported above)
    ):
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (first, second) = await people(session, 2)
        booked = [await seat(client, user, yoga, staff, local(day, 10)) for user in await people(session, 2)]
        for waiter in (first, second):
            await join(client, waiter, window(yoga, day, timezone="Europe/Berlin"))
        await cancel(client, staff, booked[0])

        await run_workers(2)

        (offer,) = await offers_of(first)
        assert offer.session_key == uuid.UUID(booked[1]["session_key"])
        assert await offers_of(second) == []
        emails = [m for m in await deliver(smtp) if "held for you" in str(m["Subject"])]
        assert [m["To"] for m in emails] == [first.email]
        assert f"/waitlist/offers/{offer.id}" in text_part(emails[0])


class TestLockOrder:
    async def test_a_claim_takes_its_seat_before_its_entry_row_like_a_booking(
        self, client, session, staff, service_urls
    ):
        """A booking takes a seat's lock, then (closing the client's entries) their entry's row. A
        claim waiting for that seat must not hold the entry's row meanwhile: the two would deadlock."""
        yoga = await group(session, staff, 2)
        day = days_ahead(5)
        (waiter,) = await people(session, 1)
        await full_session_with_waiters(client, session, staff, yoga, day, [waiter])
        (offer,) = await offers_of(waiter)
        booking = await asyncpg.connect(service_urls["database_url"])  # in a booking's place
        try:
            async with booking.transaction():
                key = seats.seat_lock_key(offer.session_key, 1)
                await booking.execute("SELECT pg_advisory_xact_lock($1, $2)", seats.SEAT_LOCK_CLASS, key)
                claiming = asyncio.create_task(claim(client, waiter, offer))
                await waiting_for_a_lock(booking)
                await booking.execute("SET LOCAL lock_timeout = '10s'")
                await booking.execute("SELECT id FROM waitlist_entries WHERE id = $1 FOR UPDATE", offer.entry_id)
            claimed = await asyncio.wait_for(claiming, 15)
        finally:
            await booking.close()
        assert claimed.status_code == 201, claimed.text


async def waiting_for_a_lock(conn) -> None:
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    async with asyncio.timeout(15):
        while not await conn.fetchval(query):
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            await asyncio.sleep(0.02)
