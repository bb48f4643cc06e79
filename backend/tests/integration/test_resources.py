"""Resources (issue 10 item 3): admins define rooms and equipment, services need one of a set, a
booking takes the staff member and a free resource in one transaction; closures block like time off;
availability intersects staff and resource free time and names the resource; reschedules and series
pick per start; the database's own constraint refuses a double-booked resource."""

import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import icalendar
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from app.database import get_sessionmaker
from app.models import Appointment, AuditEntry, Resource, ResourceClosure, Role, Service, service_resources
from app.services.booking import appointments, resources
from app.services.messaging import mailer, reminders
from app.services.scheduling import availability
from app.services.scheduling.resources import ResourceUnavailable
from app.utils.time import timestamp
from tests.assertions import assert_problem, assert_unauthorized
from tests.factories import create_user, outbox
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

RESOURCES = "/api/v1/resources"
DAY = days_ahead(7)
TEN, NOON = local(DAY, 10), local(DAY, 12)


async def create_resource(session, name: str, *, active: bool = True) -> Resource:
    resource = Resource(name=name, description="", is_active=active)
    session.add(resource)
    await session.commit()
    return resource


async def needs(session, service, *resources: Resource) -> None:
    for resource in resources:
        await session.execute(insert(service_resources).values(service_id=service.id, resource_id=resource.id))
    await session.commit()


async def close(session, resource: Resource, start, end) -> None:
    session.add(ResourceClosure(resource_id=resource.id, starts_at=start, ends_at=end, reason="repairs"))
    await session.commit()


@pytest.fixture
async def alice(session):
    return await create_staff(session, full_name="Alice")


@pytest.fixture
async def bob(session):
    return await create_staff(session, full_name="Bob")


@pytest.fixture
async def rooms(session):
    """Two massage rooms; bookings pick by name, so "Room A" first."""
    return await create_resource(session, "Room A"), await create_resource(session, "Room B")


@pytest.fixture
async def massage(session, alice, bob, rooms):
    service = await create_service(session, [alice, bob], name="Massage")
    await needs(session, service, *rooms)
    return service


@pytest.fixture
async def as_admin(session):
    return await headers_for(await create_user(session, role=Role.admin))


async def book(client, service, staff, starts_at, headers=None, **extra):
    headers = headers or await headers_for(await _client_user())
    return await client.post(URL, json=booking_body(service, staff, starts_at, **extra), headers=headers)


_SESSION = {}


async def _client_user():
    return await create_user(_SESSION["session"])


@pytest.fixture(autouse=True)
def _remember_session(session):
    _SESSION["session"] = session
    yield
    _SESSION.clear()


class TestAdmin:
    async def test_create_read_list_update_delete(self, client, as_admin):
        created = await client.post(
            RESOURCES, json={"name": "  Chair 1 ", "description": "By the window"}, headers=as_admin
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["name"] == "Chair 1" and body["is_active"] is True
        path = f"{RESOURCES}/{body['id']}"
        assert (await client.get(path, headers=as_admin)).json() == body

        changed = await client.patch(path, json={"name": "Chair 2", "is_active": False}, headers=as_admin)
        assert changed.status_code == 200 and changed.json()["name"] == "Chair 2"
        active = (await client.get(RESOURCES, headers=as_admin)).json()
        assert body["id"] not in [r["id"] for r in active["items"]]
        everything = (await client.get(RESOURCES, params={"include_inactive": "true"}, headers=as_admin)).json()
        assert body["id"] in [r["id"] for r in everything["items"]]

        assert (await client.delete(path, headers=as_admin)).status_code == 204
        assert_problem(await client.get(path, headers=as_admin), 404, "not_found")
        assert_problem(await client.delete(path, headers=as_admin), 404, "not_found")

    async def test_changes_are_audited(self, client, session, as_admin):
        created = (await client.post(RESOURCES, json={"name": "Laser"}, headers=as_admin)).json()
        await client.patch(f"{RESOURCES}/{created['id']}", json={"description": "Class 4"}, headers=as_admin)
        actions = await session.scalars(
            select(AuditEntry.action).where(AuditEntry.entity_id == created["id"]).order_by(AuditEntry.id)
        )
        assert list(actions) == ["resource.create", "resource.update"]

    @pytest.mark.parametrize(
        "body",
        [
            {"name": ""},
            {"name": "   "},
            {"name": "x" * 201},
            {"name": "Room", "description": "x" * 5001},
            {"name": "Room", "is_active": "yes"},
            {"name": "Room", "capacity": 3},
        ],
    )
    async def test_bad_input_is_422(self, client, as_admin, body):
        assert_problem(await client.post(RESOURCES, json=body, headers=as_admin), 422, "validation_error")

    async def test_only_admins(self, client, session, rooms):
        room, _ = rooms
        for role in (Role.user, Role.staff):
            headers = await headers_for(await create_user(session, role=role))
            assert_problem(await client.get(RESOURCES, headers=headers), 403, "forbidden")
            assert_problem(await client.post(RESOURCES, json={"name": "X"}, headers=headers), 403, "forbidden")
            closures = f"{RESOURCES}/{room.id}/closures"
            assert_problem(await client.get(closures, headers=headers), 403, "forbidden")
        assert_unauthorized(await client.get(RESOURCES))
        assert_unauthorized(await client.delete(f"{RESOURCES}/{room.id}"))

    async def test_services_name_the_set_they_need_one_of(self, client, as_admin, alice, rooms):
        ids = [str(r.id) for r in rooms]
        body = {"name": "Massage", "duration_minutes": 60, "staff_ids": [str(alice.id)], "resource_ids": ids}
        created = await client.post("/api/v1/services", json=body, headers=as_admin)
        assert created.status_code == 201, created.text
        assert sorted(created.json()["resource_ids"]) == sorted(ids)
        path = f"/api/v1/services/{created.json()['id']}"
        assert sorted((await client.get(path)).json()["resource_ids"]) == sorted(ids)
        assert (await client.patch(path, json={"resource_ids": ids[:1]}, headers=as_admin)).json()[
            "resource_ids"
        ] == ids[:1]

        unknown = str(uuid.uuid4())
        refused = assert_problem(
            await client.patch(path, json={"resource_ids": [unknown]}, headers=as_admin), 422, "unknown_resource"
        )
        assert refused["resource_ids"] == [unknown]
        too_many = [str(uuid.uuid4()) for _ in range(21)]
        assert_problem(
            await client.patch(path, json={"resource_ids": too_many}, headers=as_admin), 422, "validation_error"
        )
        assert (await client.get("/api/v1/services", params={"limit": 100})).json()["items"][0][
            "resource_ids"
        ] is not None

    async def test_in_use_refuses_deactivation_and_deletion(self, client, session, as_admin, massage, alice, rooms):
        room, _ = rooms
        booked = await book(client, massage, alice, TEN)
        assert booked.json()["resource_id"] == str(room.id)
        path = f"{RESOURCES}/{room.id}"
        refused = assert_problem(
            await client.patch(path, json={"is_active": False}, headers=as_admin), 409, "resource_in_use"
        )
        assert refused["conflicting_total"] == 1 and refused["conflicting_appointments"][0]["id"] == booked.json()["id"]
        assert_problem(await client.delete(path, headers=as_admin), 409, "resource_in_use")

        await client.post(f"{URL}/{booked.json()['id']}/cancel", json={}, headers=as_admin)
        assert (await client.patch(path, json={"is_active": False}, headers=as_admin)).status_code == 200
        assert (await client.delete(path, headers=as_admin)).status_code == 204
        appointment = await session.get(Appointment, uuid.UUID(booked.json()["id"]))
        await session.refresh(appointment)
        assert appointment.resource_id is None  # history keeps the time, no longer the deleted room


class TestClosures:
    async def test_crud_and_the_bookings_it_covers(self, client, session, as_admin, massage, alice, rooms):
        room, _ = rooms
        booked = (await book(client, massage, alice, TEN)).json()
        path = f"{RESOURCES}/{room.id}/closures"
        window = {"starts_at": local(DAY, 9).isoformat(), "ends_at": local(DAY, 11).isoformat(), "reason": "Paint"}
        created = await client.post(path, json=window, headers=as_admin)
        assert created.status_code == 201, created.text
        answer = created.json()
        assert [a["id"] for a in answer["conflicting_appointments"]] == [booked["id"]]
        assert answer["closure"]["starts_at"] == zulu(local(DAY, 9))

        listed = (await client.get(path, params={"from": zulu(local(DAY, 8))}, headers=as_admin)).json()
        assert [c["id"] for c in listed["items"]] == [answer["closure"]["id"]]
        later = (await client.get(path, params={"from": zulu(local(DAY, 12))}, headers=as_admin)).json()
        assert later["items"] == []
        closure = f"{path}/{answer['closure']['id']}"
        assert (await client.delete(closure, headers=as_admin)).status_code == 204
        assert_problem(await client.delete(closure, headers=as_admin), 404, "not_found")

    async def test_bad_closures(self, client, as_admin, rooms):
        room, _ = rooms
        path = f"{RESOURCES}/{room.id}/closures"
        backwards = {"starts_at": local(DAY, 11).isoformat(), "ends_at": local(DAY, 9).isoformat()}
        assert_problem(await client.post(path, json=backwards, headers=as_admin), 422, "invalid_interval")
        naive = {"starts_at": "2026-12-24T08:00:00", "ends_at": local(DAY, 9).isoformat()}
        assert_problem(await client.post(path, json=naive, headers=as_admin), 422, "validation_error")
        long_reason = {**backwards, "ends_at": local(DAY, 12).isoformat(), "reason": "x" * 501}
        assert_problem(await client.post(path, json=long_reason, headers=as_admin), 422, "validation_error")
        nowhere = f"{RESOURCES}/{uuid.uuid4()}/closures"
        ok = {"starts_at": local(DAY, 9).isoformat(), "ends_at": local(DAY, 11).isoformat()}
        assert_problem(await client.post(nowhere, json=ok, headers=as_admin), 404, "not_found")
        assert_problem(await client.get(nowhere, headers=as_admin), 404, "not_found")

    async def test_a_closed_resource_is_not_taken(self, client, session, massage, alice, bob, rooms):
        room_a, room_b = rooms
        await close(session, room_a, local(DAY, 9), local(DAY, 11))
        first = await book(client, massage, alice, TEN)
        assert first.status_code == 201 and first.json()["resource_id"] == str(room_b.id)
        refused = assert_problem(await book(client, massage, bob, TEN), 409, "resource_unavailable")
        assert refused["conflicts"] == [zulu(TEN)]
        # After the closure, room A is the first choice again.
        assert (await book(client, massage, bob, NOON)).json()["resource_id"] == str(room_a.id)


class TestBooking:
    async def test_takes_the_first_free_resource_then_refuses(self, client, session, massage, alice, bob, rooms):
        room_a, room_b = rooms
        third = await create_staff(session)
        await session.execute(text("INSERT INTO service_staff VALUES (:s, :t)"), {"s": massage.id, "t": third.id})
        await session.commit()
        assert (await book(client, massage, alice, TEN)).json()["resource_id"] == str(room_a.id)
        assert (await book(client, massage, bob, TEN)).json()["resource_id"] == str(room_b.id)
        assert_problem(await book(client, massage, third, TEN), 409, "resource_unavailable")
        # The staff member's own time is still theirs: Alice again at ten is the usual 409.
        assert_problem(await book(client, massage, alice, TEN), 409, "slot_unavailable")

    async def test_with_an_idempotency_key_too(self, client, massage, alice, rooms):
        headers = await headers_for(await _client_user())
        headers = {**headers, "Idempotency-Key": str(uuid.uuid4())}
        first = await book(client, massage, alice, TEN, headers)
        assert first.status_code == 201 and first.json()["resource_id"] == str(rooms[0].id)
        replay = await book(client, massage, alice, TEN, headers)
        assert replay.json() == first.json()

    async def test_inactive_resources_are_never_taken(self, client, session, massage, alice, bob, rooms):
        room_a, room_b = rooms
        room_a.is_active = False
        await session.commit()
        assert (await book(client, massage, alice, TEN)).json()["resource_id"] == str(room_b.id)
        assert_problem(await book(client, massage, bob, TEN), 409, "resource_unavailable")

    async def test_buffers_count_for_the_resource(self, client, session, alice, bob, rooms):
        service = await create_service(session, [alice, bob], name="Sauna", buffer_after=30)
        await needs(session, service, rooms[0])
        assert (await book(client, service, alice, TEN)).status_code == 201
        # Bob at 11:00 would use the room during Alice's clean-up (until 11:30).
        assert_problem(await book(client, service, bob, local(DAY, 11)), 409, "resource_unavailable")
        assert (await book(client, service, bob, NOON)).status_code == 201

    async def test_services_without_resources_take_none(self, client, session, alice):
        plain = await create_service(session, [alice], name="Talk")
        assert (await book(client, plain, alice, TEN)).json()["resource_id"] is None

    async def test_the_constraint_refuses_an_overlapping_insert_made_directly(
        self, session, massage, alice, bob, rooms
    ):
        room_id, customer = rooms[0].id, await create_user(session)
        insert_sql = text(
            "INSERT INTO appointments (id, client_id, staff_id, service_id, starts_at, ends_at, blocked_from,"
            " blocked_until, status, sequence, resource_id, session_key, seat)"
            " VALUES (:id, :client, :staff, :service, :start, :end, :start, :end, :status, 0, :room, :key, :seat)"
        )

        async def insert_one(staff, start, *, status="confirmed", key=None, seat=None, client=customer):
            values = {"client": client.id, "service": massage.id, "start": start, "end": start + timedelta(hours=1)}
            await session.execute(
                insert_sql,
                {**values, "id": uuid.uuid4(), "staff": staff.id, "status": status, "room": room_id, "key": key}
                | {"seat": seat},
            )

        key = uuid.uuid4()
        await insert_one(alice, TEN, key=key, seat=1)
        await insert_one(bob, TEN + timedelta(hours=1))  # touching is fine: ranges are half-open
        await insert_one(bob, TEN - timedelta(minutes=30), status="cancelled")  # a cancelled one holds nothing
        # A seat of the same group session (another client's) shares the room.
        await insert_one(alice, TEN, key=key, seat=2, client=await create_user(session))
        await session.commit()
        with pytest.raises(IntegrityError, match="no_resource_double_booking"):
            await insert_one(await create_staff(session), TEN + timedelta(minutes=30))  # free staff, taken room
        await session.rollback()
        live = select(func.count()).where(Appointment.resource_id == room_id, Appointment.status == "confirmed")
        assert await session.scalar(live) == 3


class TestReschedule:
    async def test_moves_staff_and_resource_together(self, client, session, as_admin, massage, alice, bob, rooms):
        room_a, room_b = rooms
        moving = (await book(client, massage, alice, TEN)).json()
        assert moving["resource_id"] == str(room_a.id)
        assert (await book(client, massage, bob, NOON)).json()["resource_id"] == str(room_a.id)
        path = f"{URL}/{moving['id']}"

        moved = await client.patch(path, json={"starts_at": NOON.isoformat()}, headers=as_admin)
        assert moved.status_code == 200, moved.text
        assert moved.json()["resource_id"] == str(room_b.id)  # room A is Bob's at noon
        assert moved.json()["starts_at"] == zulu(NOON)

        kept = await client.patch(path, json={"starts_at": local(DAY, 14).isoformat()}, headers=as_admin)
        assert kept.json()["resource_id"] == str(room_b.id)  # free at 14:00 too: it keeps its room

        await close(session, room_a, local(DAY, 15), local(DAY, 17))
        await close(session, room_b, local(DAY, 15), local(DAY, 17))
        refused = await client.patch(path, json={"starts_at": local(DAY, 15).isoformat()}, headers=as_admin)
        assert_problem(refused, 409, "resource_unavailable")
        unchanged = (await client.get(path, headers=as_admin)).json()
        assert unchanged["starts_at"] == zulu(local(DAY, 14)) and unchanged["resource_id"] == str(room_b.id)

    async def test_it_keeps_its_room_when_free_and_its_old_time_does_not_block_it(
        self, client, session, as_admin, alice, bob, rooms
    ):
        room_a, room_b = rooms
        sauna = await create_service(session, [alice, bob], name="Sauna", buffer_after=60)
        await needs(session, sauna, *rooms)
        assert (await book(client, sauna, bob, TEN)).json()["resource_id"] == str(room_a.id)  # A until 12:00
        moving = (await book(client, sauna, alice, TEN)).json()
        assert moving["resource_id"] == str(room_b.id)  # B until 12:00
        path = f"{URL}/{moving['id']}"

        overlapping = await client.patch(path, json={"starts_at": local(DAY, 11).isoformat()}, headers=as_admin)
        assert overlapping.status_code == 200, overlapping.text
        assert overlapping.json()["resource_id"] == str(room_b.id)  # its own 10:00-12:00 does not block B
        later = await client.patch(path, json={"starts_at": local(DAY, 14).isoformat()}, headers=as_admin)
        assert later.json()["resource_id"] == str(room_b.id)  # A is free then too, but it keeps B


class TestSeries:
    async def test_each_occurrence_gets_a_free_resource(self, client, session, massage, alice, rooms):
        room_a, room_b = rooms
        week = timedelta(days=7)
        await close(session, room_a, TEN + week - timedelta(hours=1), TEN + week + timedelta(hours=2))
        body = booking_body(massage, alice, TEN, recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"})
        booked = await client.post(URL, json=body, headers=await headers_for(await _client_user()))
        assert booked.status_code == 201, booked.text
        rows = await session.scalars(
            select(Appointment.resource_id)
            .where(Appointment.series_id == uuid.UUID(booked.json()["series_id"]))
            .order_by(Appointment.starts_at)
        )
        assert list(rows) == [room_a.id, room_b.id, room_a.id]

    async def test_all_or_nothing(self, client, session, massage, alice, rooms):
        week = timedelta(days=14)
        for room in rooms:
            await close(session, room, TEN + week, TEN + week + timedelta(hours=1))
        body = booking_body(massage, alice, TEN, recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"})
        refused = await client.post(URL, json=body, headers=await headers_for(await _client_user()))
        assert assert_problem(refused, 409, "resource_unavailable")["conflicts"] == [zulu(TEN + week)]
        assert await session.scalar(select(func.count()).where(Appointment.service_id == massage.id)) == 0


class TestAvailability:
    async def slots(self, client, service, **params):
        query = {
            "service_id": str(service.id),
            "start": zulu(local(DAY, 0)),
            "end": zulu(local(DAY + timedelta(days=1), 0)),
        }
        answer = await client.get("/api/v1/availability", params={**query, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()["slots"]

    async def test_a_group_session_keeps_its_room_and_a_new_one_needs_a_free_one(
        self, client, session, massage, alice, bob, rooms
    ):
        massage.capacity = 3
        await session.commit()
        await close(session, rooms[1], TEN - timedelta(hours=1), TEN + timedelta(hours=2))
        booked = await book(client, massage, alice, TEN)
        assert booked.status_code == 201, booked.text
        assert booked.json()["resource_id"] == str(rooms[0].id)
        at_ten = {s["staff_id"]: s for s in await self.slots(client, massage) if s["starts_at"] == zulu(TEN)}
        # Alice's session has its room and two seats; a session of Bob's would need a room, and none is free.
        assert list(at_ten) == [str(alice.id)] and at_ten[str(alice.id)]["seats_left"] == 2
        joined = await book(client, massage, alice, TEN)
        assert joined.status_code == 201 and joined.json()["resource_id"] == str(rooms[0].id)
        assert_problem(await book(client, massage, bob, TEN), 409, "resource_unavailable")
        later = {s["staff_id"] for s in await self.slots(client, massage) if s["starts_at"] == zulu(NOON)}
        assert later == {str(alice.id), str(bob.id)}  # both rooms are free at noon: fresh sessions for both

    async def test_intersects_staff_and_resource_time_and_names_the_resource(
        self, client, session, massage, alice, bob, rooms
    ):
        room_a, room_b = rooms
        before = await self.slots(client, massage)
        at_ten = [s for s in before if s["starts_at"] == zulu(TEN)]
        assert {s["staff_id"] for s in at_ten} == {str(alice.id), str(bob.id)}
        assert {s["resource_id"] for s in at_ten} == {str(room_a.id)}

        await close(session, room_a, local(DAY, 9), local(DAY, 11))
        assert (await book(client, massage, alice, TEN)).json()["resource_id"] == str(room_b.id)
        after = await self.slots(client, massage)
        # Alice is busy; Bob is free but both rooms are taken (closed, booked): nobody at ten.
        assert [s for s in after if s["starts_at"] == zulu(TEN)] == []
        nine = [s for s in after if s["starts_at"] == zulu(local(DAY, 9))]
        assert {s["resource_id"] for s in nine} == {str(room_b.id)}
        eleven = [s for s in after if s["starts_at"] == zulu(local(DAY, 11))]
        assert {(s["staff_id"], s["resource_id"]) for s in eleven} == {
            (str(alice.id), str(room_a.id)),
            (str(bob.id), str(room_a.id)),
        }
        only_bob = await self.slots(client, massage, staff_id=str(bob.id), tz="Europe/Berlin")
        assert {s["staff_id"] for s in only_bob} == {str(bob.id)}
        assert all("starts_at_local" in s and s["resource_id"] for s in only_bob)

    async def test_services_without_resources_name_none(self, client, session, alice):
        plain = await create_service(session, [alice], name="Talk")
        slots = await self.slots(client, plain)
        assert slots and all("resource_id" not in s for s in slots)

    async def test_no_active_resource_means_no_slot(self, client, session, massage, rooms):
        for room in rooms:
            room.is_active = False
        await session.commit()
        assert await self.slots(client, massage) == []


class TestPanel:
    async def test_resources_and_closures_through_the_resources_service(self, client, session, massage, alice, rooms):
        from tests.integration.test_admin import csrf, post, signed_in_admin

        room, _ = rooms
        booked = (await book(client, massage, alice, TEN)).json()
        await signed_in_admin(client, session)
        assert (await client.get("/admin/resource/list")).status_code == 200
        assert (await client.get("/admin/resource-closure/list")).status_code == 200
        assert (await post(client, "/admin/resource/create", {"name": "Chair", "is_active": "y"})).status_code == 302
        assert await session.scalar(select(Resource.id).where(Resource.name == "Chair")) is not None
        refused = await post(client, f"/admin/resource/edit/{room.id}", {"name": "Room A"})  # unticked: deactivate
        assert refused.status_code == 400 and "resource_in_use" in refused.text

        block = {"resource_id": str(room.id), "starts_at": local(DAY, 9).isoformat(), "ends_at": TEN.isoformat()}
        assert (await post(client, "/admin/resource-closure/create", block)).status_code == 302
        bad = await post(client, "/admin/resource-closure/create", block | {"resource_id": "room"})
        assert bad.status_code == 400 and "validation_error" in bad.text
        closure = await session.scalar(select(ResourceClosure).where(ResourceClosure.resource_id == room.id))
        token = {"X-CSRF-Token": await csrf(client, "/admin/")}
        deleted = await client.delete(f"/admin/resource-closure/delete?pks={closure.id}", headers=token)
        assert deleted.status_code == 200
        cancelled = await client.post(f"{URL}/{booked['id']}/cancel", json={}, headers=await headers_for(alice))
        assert cancelled.status_code == 200, cancelled.text
        gone = await client.delete(f"/admin/resource/delete?pks={room.id}", headers=token)
        assert gone.status_code == 200, gone.text
        assert await session.scalar(select(func.count()).where(Resource.id == room.id)) == 0


class TestUnderTheHood:
    """What the API cannot easily provoke: a clash at the resource constraint itself (the locks make
    it rare), a seat taking its session's room, the fresh availability of a manage link."""

    async def _taken_room(self, session, massage, rooms):
        room_id, customer, carol = rooms[0].id, await create_user(session), await create_staff(session)
        taken = await add_appointment(session, customer, carol, massage, TEN, commit=False)
        taken.resource_id = room_id
        await session.commit()
        return room_id, customer

    async def test_a_clash_at_the_resource_constraint_reads_resource_unavailable(self, session, massage, alice, rooms):
        room_id, customer = await self._taken_room(session, massage, rooms)
        actor = await create_user(session, role=Role.admin)
        async with get_sessionmaker()() as other, other.begin():
            one = appointments.new_appointment(massage, customer, alice.id, TEN)
            one.resource_id = room_id
            with pytest.raises(ResourceUnavailable):
                await appointments.insert_all(other, actor, [one])
        async with get_sessionmaker()() as other, other.begin():
            week = [appointments.new_appointment(massage, customer, alice.id, TEN + timedelta(days=n)) for n in (0, 7)]
            for occurrence in week:
                occurrence.resource_id = room_id
            with pytest.raises(ResourceUnavailable) as refused:
                await appointments.insert_all(other, actor, week)
            assert refused.value.extra["conflicts"] == [zulu(TEN)]

    async def test_a_seat_takes_the_room_of_its_session(self, session, massage, alice, rooms):
        room_a, room_b = rooms[0].id, rooms[1].id
        customer = await create_user(session)
        key = uuid.uuid4()
        first_seat = await add_appointment(session, customer, alice, massage, TEN, commit=False)
        first_seat.resource_id, first_seat.session_key, first_seat.seat = room_b, key, 1
        await session.commit()
        async with get_sessionmaker()() as other, other.begin():
            service = await other.get(Service, massage.id)
            seat = appointments.new_appointment(service, customer, alice.id, TEN)
            seat.session_key, seat.seat = key, 2
            stranger = appointments.new_appointment(service, customer, alice.id, TEN + timedelta(hours=3))
            await resources.assign(other, service, [seat, stranger])
            assert (seat.resource_id, stranger.resource_id) == (room_b, room_a)

    async def test_manage_link_availability_intersects_too(self, session, massage, alice, bob, rooms):
        room_id, customer = await self._taken_room(session, massage, rooms)
        await close(session, rooms[1], local(DAY, 9), local(DAY, 11))
        mine = await add_appointment(session, customer, alice, massage, local(DAY, 13), commit=False)
        mine.resource_id = room_id
        await session.commit()
        window = (local(DAY, 0), local(DAY + timedelta(days=1), 0))
        slots = await availability.find_slots(session, massage.id, *window, alice.id, exclude_appointments=[mine.id])
        starts = {s.start: s.resource_id for s in slots}
        assert timestamp(TEN) not in starts  # room A taken with Carol, room B closed
        assert starts[timestamp(local(DAY, 13))] == room_id  # its own booking does not block it


class TestWhere:
    """Emails, invites, reminders and feeds name the room a booking takes."""

    async def test_the_booked_emails_and_their_invites_name_the_room(self, client, session, massage, alice, rooms):
        customer = await create_user(session)
        answer = await book(client, massage, alice, TEN, await headers_for(customer))
        assert answer.status_code == 201, answer.text

        for message in await outbox(session, template="appointment_booked"):
            assert message.payload["context"]["where"] == "Room A"
            email = mailer.render("appointment_booked", message.payload["locale"], message.payload["context"])
            assert "Where: Room A" in email.text and "Room A" in email.html
            invite = icalendar.Calendar.from_ical(message.payload["attachments"][0]["content"])
            assert str(invite.walk("VEVENT")[0]["LOCATION"]) == "Room A"

    async def test_a_booking_without_a_room_names_none(self, client, session, alice):
        plain = await create_service(session, [alice], name="Consultation")
        answer = await book(client, plain, alice, TEN)
        assert answer.status_code == 201, answer.text

        (message, *_) = await outbox(session, template="appointment_booked")
        assert message.payload["context"]["where"] == ""
        assert "Where:" not in mailer.render("appointment_booked", "en", message.payload["context"]).text
        invite = icalendar.Calendar.from_ical(message.payload["attachments"][0]["content"])
        assert "LOCATION" not in invite.walk("VEVENT")[0]

    async def test_each_occurrence_of_a_series_names_its_own_room(self, client, session, massage, alice, rooms):
        week = timedelta(days=7)
        await close(session, rooms[0], TEN + week - timedelta(hours=1), TEN + week + timedelta(hours=2))
        answer = await book(client, massage, alice, TEN, recurrence={"rrule": "FREQ=WEEKLY;COUNT=2"})
        assert answer.status_code == 201, answer.text

        (to_client, *_) = await outbox(session, template="appointment_booked")
        first, second = to_client.payload["context"]["occurrences"]
        assert first.endswith(" · Room A") and second.endswith(" · Room B")
        rooms_in_invites = [
            str(icalendar.Calendar.from_ical(a["content"]).walk("VEVENT")[0]["LOCATION"])
            for a in to_client.payload["attachments"]
        ]
        assert rooms_in_invites == ["Room A", "Room B"]

    async def test_the_reminder_and_the_feed_name_it(self, client, session, massage, alice, rooms):
        customer = await create_user(session)
        answer = await book(client, massage, alice, TEN, await headers_for(customer))
        assert answer.status_code == 201, answer.text

        assert await reminders.send_due(now=TEN - timedelta(hours=1)) >= 1
        (reminder,) = await outbox(session, template="reminder")
        assert reminder.payload["context"]["where"] == "Room A"
        assert "Where: Room A" in mailer.render("reminder", "en", reminder.payload["context"]).text

        mine = await client.get("/api/v1/users/me/calendar-feed", headers=await headers_for(customer))
        feed = await client.get(urlsplit(mine.json()["url"]).path)
        (event,) = icalendar.Calendar.from_ical(feed.content).walk("VEVENT")
        assert str(event["LOCATION"]) == "Room A"
