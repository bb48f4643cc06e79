"""The last free room, wanted by everyone at once (issue 10's acceptance): two staff members offer a
massage that needs one of two rooms; one room is closed at that time (or booked by a third staff
member). 200 simultaneous bookings over two API processes, 100 for each staff member, same start,
each by a different client: exactly one 201, and the database holds exactly one live booking in
the free room. The others are 409: `slot_unavailable` for the winner's staff member,
`resource_unavailable` for the other one."""

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from app.models import Appointment, Resource, ResourceClosure, Role, service_resources
from tests.apiserver import api_process
from tests.e2e.test_booking_concurrency import at, clients, fire
from tests.factories import create_user
from tests.scheduling import URL, add_appointment, create_service, create_staff, days_ahead, headers_for

REQUESTS = 200


@pytest.fixture(scope="module")
def api_servers(service_urls, tmp_path_factory) -> Iterator[list[str]]:
    """Two API processes on the test database. Every request reaches the database and waits there
    as long as it takes (no 503 `server_busy` for a slow pool on a busy machine): this is about who
    gets the room, not about shedding load. Bookings that take a resource queue for its lock."""
    settings = {
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "MAX_IN_FLIGHT_REQUESTS": str(REQUESTS),
        "DB_POOL_TIMEOUT_SECONDS": "60",
        "LOG_LEVEL": "WARNING",
    }
    logs = tmp_path_factory.mktemp("resource-api")
    with ExitStack() as stack:
        servers = [stack.enter_context(api_process(logs / f"api-{n}.log", **settings)) for n in range(2)]
        yield servers
    errors = [line for n in range(2) for line in (logs / f"api-{n}.log").read_text().splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors)


async def _massage_with_two_rooms(session):
    alice = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
    bob = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
    carol = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
    service = await create_service(session, [alice, bob, carol], duration=60)
    rooms = [Resource(name="Room 1", description=""), Resource(name="Room 2", description="")]
    session.add_all(rooms)
    await session.flush()
    for room in rooms:
        await session.execute(insert(service_resources).values(service_id=service.id, resource_id=room.id))
    await session.commit()
    return service, (alice, bob, carol), rooms


def _outcome(responses) -> Counter:
    return Counter((r.status_code, r.json().get("code")) for r in responses)


@pytest.mark.parametrize("taken_by", ["closure", "booking"])
async def test_two_hundred_bookings_for_the_last_free_room(api_servers, session, taken_by):
    service, (alice, bob, carol), (room_1, room_2) = await _massage_with_two_rooms(session)
    start = at(days_ahead(3), 10)
    if taken_by == "closure":
        session.add(ResourceClosure(resource_id=room_1.id, starts_at=at(start.date(), 9), ends_at=at(start.date(), 12)))
        await session.commit()
    else:
        held = await add_appointment(session, (await clients(session, 1))[0][0], carol, service, start, commit=False)
        held.resource_id = room_1.id
        await session.commit()
    people = await clients(session, REQUESTS)
    requests = [
        (
            "POST",
            URL,
            {"service_id": str(service.id), "staff_id": str((alice, bob)[n % 2].id), "starts_at": start.isoformat()},
            headers,
        )
        for n, (_, headers) in enumerate(people)
    ]

    responses = await fire(api_servers, requests)

    outcome = _outcome(responses)
    assert outcome[(201, None)] == 1, outcome
    assert outcome[(409, "slot_unavailable")] + outcome[(409, "resource_unavailable")] == REQUESTS - 1, outcome
    assert outcome[(409, "resource_unavailable")] >= REQUESTS // 2  # everyone asking for the other staff member
    (winner,) = [r.json() for r in responses if r.status_code == 201]
    assert winner["resource_id"] == str(room_2.id)
    live = select(func.count()).where(
        Appointment.resource_id == room_2.id,
        Appointment.status.in_(["pending", "confirmed"]),
        Appointment.staff_id.in_([alice.id, bob.id]),
    )
    assert await session.scalar(live) == 1
    booked = select(func.count()).where(Appointment.staff_id.in_([alice.id, bob.id]))
    assert await session.scalar(booked) == 1


ROOMS_PAIRS = 12


async def test_a_closure_lists_every_booking_that_raced_it(api_servers, session):
    """Bookings and closures of the same rooms, fired together with crossing lock needs (each booking
    locks both rooms, each closure one): nothing deadlocks or fails, and every closure lists exactly
    the live bookings that take its room during it — a booking either landed first (and is listed)
    or was checked against the closure (and took the other room, or was refused)."""
    service, (alice, bob, carol), rooms = await _massage_with_two_rooms(session)
    admin_headers = await headers_for(await create_user(session, role=Role.admin))
    people = await clients(session, ROOMS_PAIRS * 3)
    day = days_ahead(4)
    requests, closures = [], []
    for n in range(ROOMS_PAIRS):
        start = at(day, 8) + timedelta(minutes=30 * n)  # hours 08:00..13:30, overlapping neighbours
        for m, staff in enumerate((alice, bob, carol)):
            body = {
                "service_id": str(service.id),
                "staff_id": str(staff.id),
                "starts_at": at(day, 8 + n % 10).isoformat(),
            }
            requests.append(("POST", URL, body, people[3 * n + m][1]))
        room = rooms[n % 2]
        block = {"starts_at": start.isoformat(), "ends_at": (start + timedelta(hours=1)).isoformat()}
        closures.append((len(requests), room))
        requests.append(("POST", f"/api/v1/resources/{room.id}/closures", block, admin_headers))

    responses = await fire(api_servers, requests)

    for response in responses:
        assert response.status_code in (201, 409), response.text
        if response.status_code == 409:
            assert response.json()["code"] in ("slot_unavailable", "resource_unavailable")
    for index, room in closures:
        answer = responses[index].json()
        listed = {a["id"] for a in answer["conflicting_appointments"]}
        closure = answer["closure"]
        covered = select(Appointment.id).where(
            Appointment.resource_id == room.id,
            Appointment.status.in_(["pending", "confirmed"]),
            Appointment.starts_at < datetime.fromisoformat(closure["ends_at"]),
            Appointment.ends_at > datetime.fromisoformat(closure["starts_at"]),
        )
        assert listed == {str(i) for i in await session.scalars(covered)}
