"""Calendar writes of one staff member go one at a time, on every API process (issue 6, item 4).

Two uvicorn processes on the test database, real HTTP, requests fired together:
- a booking racing a time off (or a schedule replacement) of its staff member: the booking either
  lands first and is listed in the calendar change's `conflicting_appointments`, or is refused;
- two reschedules of one appointment, each sending the `sequence` its client read: one 200, one 409
  `appointment_changed`, one email to each party;
- a demotion racing a confirm by that staff member: the confirm lands first and the demotion is 409
  `staff_has_bookings`, or the demotion lands first and the confirm is refused; never both.
"""

from collections import Counter
from datetime import timedelta

import httpx
from sqlalchemy import select

from app.models import LIVE_STATUSES, Appointment, Role, User
from app.schemas.common import iso_z
from tests.e2e.test_booking_concurrency import api_servers, at, clients, fire  # noqa: F401 (a fixture)
from tests.factories import bearer, create_user, outbox, start_session
from tests.scheduling import URL, add_appointment, create_service, create_staff, days_ahead

PAIRS = 12
TRIES = 8


async def headers_for(user: User) -> dict[str, str]:
    return bearer((await start_session(user)).access_token)


async def http_get(url: str, headers: dict[str, str]) -> dict:
    async with httpx.AsyncClient() as http:
        response = await http.get(url, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def live_ids(session, staff: User) -> set[str]:
    query = select(Appointment.id).where(
        Appointment.staff_id == staff.id, Appointment.status.in_([s.value for s in LIVE_STATUSES])
    )
    return {str(i) for i in await session.scalars(query.execution_options(populate_existing=True))}


class TestBookingRacingACalendarChange:
    async def _pairs(self, session, change) -> list[tuple[User, tuple, tuple]]:
        people = await clients(session, PAIRS)
        day = days_ahead(3)
        pairs = []
        for _, client_headers in people:
            staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
            service = await create_service(session, [staff], duration=60)
            body = {"service_id": str(service.id), "staff_id": str(staff.id), "starts_at": at(day, 10).isoformat()}
            booking = ("POST", URL, body, client_headers)
            pairs.append((staff, booking, change(staff, day, await headers_for(staff))))
        return pairs

    async def _race(self, api_servers, session, change) -> Counter:  # noqa: F811
        pairs = await self._pairs(session, change)
        requests = [request for _, booking, other in pairs for request in (booking, other)]
        responses = await fire(api_servers, requests)
        outcomes: Counter = Counter()
        for n, (staff, _, _) in enumerate(pairs):
            booked, changed = responses[2 * n], responses[2 * n + 1]
            assert changed.status_code in (200, 201), changed.text
            listed = {a["id"] for a in changed.json().get("conflicting_appointments", [])}
            if booked.status_code == 201:
                outcomes["booked, listed" if booked.json()["id"] in listed else "booked, NOT listed"] += 1
            else:
                assert (booked.status_code, booked.json()["code"]) == (422, "slot_not_offered"), booked.text
                outcomes["refused"] += 1
            outcomes["live == listed"] += listed == await live_ids(session, staff)
        print(dict(outcomes))
        return outcomes

    async def test_time_off_lists_every_booking_it_covers(self, api_servers, session):  # noqa: F811
        def time_off(staff, day, headers):
            block = {"starts_at": at(day, 9).isoformat(), "ends_at": at(day, 12).isoformat()}
            return ("POST", f"/api/v1/staff/{staff.id}/time-off", block, headers)

        outcomes = await self._race(api_servers, session, time_off)
        assert outcomes["booked, NOT listed"] == 0
        assert outcomes["live == listed"] == PAIRS

    async def test_schedule_replacement_lists_every_booking_left_outside(self, api_servers, session):  # noqa: F811
        def afternoons_only(staff, day, headers):
            week = [{"weekday": d, "start": "14:00", "end": "18:00"} for d in range(7)]
            return ("PUT", f"/api/v1/staff/{staff.id}/schedule", {"timezone": "UTC", "intervals": week}, headers)

        outcomes = await self._race(api_servers, session, afternoons_only)
        assert outcomes["booked, NOT listed"] == 0
        assert outcomes["live == listed"] == PAIRS


class TestParallelReschedules:
    async def test_one_wins_the_other_is_told_it_changed(self, api_servers, session):  # noqa: F811
        staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
        service = await create_service(session, [staff], duration=60)
        day = days_ahead(5)
        outcomes: Counter = Counter()
        for n, (client, headers) in enumerate(await clients(session, TRIES)):
            appointment = await add_appointment(session, client, staff, service, at(day + timedelta(days=n), 9))
            path = f"{URL}/{appointment.id}"
            moves = [at(day + timedelta(days=n), hour).isoformat() for hour in (11, 14)]
            seen = (await http_get(api_servers[0] + path, headers))["sequence"]
            patches = [("PATCH", path, {"starts_at": s, "sequence": seen}, headers) for s in moves]
            first, second = await fire(api_servers, patches)
            result = sorted((r.status_code, r.json().get("code")) for r in (first, second))
            outcomes[str(result)] += 1
            emails = [
                m
                for m in await outbox(session, template="appointment_rescheduled")
                # By its invite: the client's link carries a manage token (and is blanked once sent).
                if m.payload["attachments"][0]["filename"] == f"appointment-{appointment.id}.ics"
            ]
            one_each = Counter(m.payload["to"] for m in emails) == {client.email: 1, staff.email: 1}
            outcomes["one email each"] += one_each
        print(dict(outcomes))
        assert outcomes == {str([(200, None), (409, "appointment_changed")]): TRIES, "one email each": TRIES}


class TestDemotionRacingAConfirm:
    async def _setup(self, session, tries: int):
        admin = await create_user(session, role=Role.admin)
        admin_headers = await headers_for(admin)
        people = await clients(session, tries)
        cases = []
        for n, (client, _) in enumerate(people):
            staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
            service = await create_service(session, [staff], duration=60, requires_confirmation=True)
            start = at(days_ahead(3 + n), 10)
            appointment = await add_appointment(session, client, staff, service, start, status="pending")
            cases.append((staff, appointment, await headers_for(staff)))
        return admin_headers, cases

    async def test_never_both(self, api_servers, session):  # noqa: F811
        admin_headers, cases = await self._setup(session, TRIES)
        outcomes: Counter = Counter()
        for staff, appointment, staff_headers in cases:
            confirm = ("POST", f"{URL}/{appointment.id}/confirm", {}, staff_headers)
            demote = ("PATCH", f"/api/v1/users/{staff.id}", {"role": "user"}, admin_headers)
            confirmed, demoted = await fire(api_servers, [confirm, demote])
            outcome = (confirmed.status_code, demoted.status_code, demoted.json().get("code"))
            outcomes[str(outcome)] += 1
            confirm_first = confirmed.status_code == 200 and outcome[1:] == (409, "staff_has_bookings")
            demotion_first = demoted.status_code == 200 and confirmed.status_code in (401, 403, 404)
            outcomes["allowed"] += confirm_first or demotion_first
            if confirm_first:
                assert demoted.json()["conflicting_appointments"][0]["id"] == str(appointment.id)
                assert demoted.json()["conflicting_appointments"][0]["starts_at"] == iso_z(appointment.starts_at)
        print(dict(outcomes))
        assert outcomes["allowed"] == TRIES

    async def test_cancel_future_leaves_nothing_live(self, api_servers, session):  # noqa: F811
        """With `cancel_future=true` the demotion always goes through: a confirm that landed first is
        cancelled with the rest, one that came second is refused, and nothing stays live."""
        admin_headers, cases = await self._setup(session, TRIES)
        outcomes: Counter = Counter()
        for staff, appointment, staff_headers in cases:
            confirm = ("POST", f"{URL}/{appointment.id}/confirm", {}, staff_headers)
            demote = ("PATCH", f"/api/v1/users/{staff.id}?cancel_future=true", {"role": "user"}, admin_headers)
            confirmed, demoted = await fire(api_servers, [confirm, demote])
            outcomes[str((confirmed.status_code, demoted.status_code))] += 1
            assert demoted.status_code == 200, demoted.text
            assert confirmed.status_code in (200, 401, 403, 404, 409), confirmed.text
            outcomes["nothing live"] += await live_ids(session, staff) == set()
            cancelled = await outbox(session, to=staff.email, template="appointment_cancelled")
            outcomes["cancellation mailed"] += len(cancelled) == 1
        print(dict(outcomes))
        assert outcomes["nothing live"] == outcomes["cancellation mailed"] == TRIES
