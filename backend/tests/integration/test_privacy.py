"""GDPR: erasure leaves no trace of the person in any column of any table; the export holds every
row about them, typed, and nobody else's contact details."""

import json
from datetime import UTC, datetime, timedelta

import icalendar
from sqlalchemy import select

from app.models import Appointment, AuditEntry, OutboxMessage, Role, StaffProfile, TimeOff, User
from app.services.accounts import auth
from app.utils.time import utcnow
from tests.factories import PASSWORD, create_user, login, outbox, start_session
from tests.privacy import column_count, redis_traces_of, traces_of
from tests.scheduling import add_appointment, booking_body, create_service, create_staff, days_ahead, local

ME = "/api/v1/users/me"
URL = "/api/v1/appointments"
EMAIL = "zebulon.quuxworth@example.org"
NAME = "Zebulon Quuxworth"
OLD_PHONE = "+31 6 1111 2222"
PHONE = "+31 6 8765 4321"


async def _ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


async def _book(client, headers, service, staff, days: int, **extra) -> dict:
    body = booking_body(service, staff, local(days_ahead(days), 10), **extra)
    return await _ok(await client.post(URL, json=body, headers=headers), 201)


async def _client_with_history(client, session):
    """A client as the issue describes: created by an admin, a changed phone, bookings past and
    future with notes, a series, a cancellation with a reason, a reset email and a bounce."""
    admin = await create_user(session, role=Role.admin)
    as_admin = (await start_session(admin)).headers
    staff = await create_staff(session, full_name="Alice Novak")
    service = await create_service(session, [staff], name="Massage")
    created = await _ok(
        await client.post(
            "/api/v1/users",
            json={"email": EMAIL, "password": PASSWORD, "full_name": NAME, "phone": OLD_PHONE},
            headers=as_admin,
        ),
        201,
    )
    person = await session.get(User, created["id"])
    as_person = (await start_session(person)).headers
    as_staff = (await start_session(staff)).headers
    await _ok(await client.patch(ME, json={"phone": PHONE}, headers=as_person))

    notes = f"{NAME} prefers the quiet room; {PHONE}"
    body = booking_body(service, staff, local(days_ahead(7), 10), notes=notes)
    idempotent = {**as_person, "Idempotency-Key": "first-booking"}
    kept = await _ok(await client.post(URL, json=body, headers=idempotent), 201)  # its answer is kept in Redis
    assert (await login(client, EMAIL, "not the password")).status_code == 400  # counted per email
    await _ok(await client.patch(f"{URL}/{kept['id']}", json={"notes": f"Ask {NAME} about x-rays"}, headers=as_staff))
    dropped = await _book(client, as_person, service, staff, 8, notes="Second visit")
    await _ok(await client.post(f"{URL}/{dropped['id']}/cancel", json={"reason": f"{NAME} travels"}, headers=as_person))
    await _book(client, as_person, service, staff, 9, recurrence={"rrule": "FREQ=DAILY;COUNT=2"})
    past = await add_appointment(session, person, staff, service, utcnow() - timedelta(days=3), commit=False)
    past.notes = f"Seen {NAME}, call back on {PHONE}"
    await auth.request_password_reset(session, EMAIL)
    session.add(
        OutboxMessage(
            kind="email",
            payload={"to": EMAIL, "template": "verify_email", "locale": "en", "context": {"full_name": NAME}},
            attempts=5,
            last_error=f"550 5.1.1 <{EMAIL.upper()}>: mailbox unavailable",
            failed_at=datetime.now(UTC),
        )
    )
    await session.commit()

    other = await create_user(session, full_name="Olga Other")
    other_booking = await _book(client, (await start_session(other)).headers, service, staff, 12, notes="Olga's notes")
    return person, as_person, staff, admin, other, other_booking


class TestErasure:
    async def test_no_column_of_any_table_keeps_the_client(self, client, session):
        person, as_person, staff, _, other, other_booking = await _client_with_history(client, session)
        # A table erasure knows nothing about: only the sweep over every column finds the address.
        day = days_ahead(40)
        off = {"starts_at": local(day, 8).isoformat(), "ends_at": local(day, 9).isoformat(), "reason": f"Call {EMAIL}"}
        as_staff = (await start_session(staff)).headers
        time_off = await _ok(await client.post(f"/api/v1/staff/{staff.id}/time-off", json=off, headers=as_staff), 201)
        assert set(await traces_of(session, EMAIL, NAME, PHONE, OLD_PHONE)) >= {
            "users.email: " + EMAIL,
            "outbox.payload: " + NAME,
            "audit_log.after: " + PHONE,
            "appointments.notes: " + NAME,
        }  # the scan sees what is there
        stored_answers = [t for t in await traces_of(session, NAME) if t.startswith("idempotency_keys.")]
        assert stored_answers  # the idempotent booking's stored answer quotes the notes
        person_id = person.id

        await _ok(await client.delete(ME, headers=as_person), 204)

        print(f"scanned {await column_count(session)} columns")
        assert await traces_of(session, EMAIL, NAME, PHONE, OLD_PHONE) == []
        assert await redis_traces_of(EMAIL, NAME, PHONE, OLD_PHONE) == []
        session.expunge_all()
        rows = (await session.scalars(select(Appointment).where(Appointment.client_id == person_id))).all()
        assert len(rows) == 5  # the staff member's history stays, anonymised
        assert {r.notes for r in rows} == {None}
        assert {r.cancellation_reason for r in rows if r.status == "cancelled"} == {"Account deleted", None}
        assert (await session.get(User, person_id)).full_name == "Deleted user"
        other_row = await session.get(Appointment, other_booking["id"])
        assert other_row.notes == "Olga's notes"
        assert len(await outbox(session, to=other.email)) == 1
        reason = (await session.get(TimeOff, time_off["time_off"]["id"])).reason
        assert reason == f"Call deleted-{person_id}@deleted.invalid"

    async def test_the_staff_member_is_still_told_about_the_cancellations_anonymously(self, client, session):
        person, as_person, staff, *_ = await _client_with_history(client, session)
        before = {m.id for m in await outbox(session, to=staff.email, template="appointment_cancelled")}

        await _ok(await client.delete(ME, headers=as_person), 204)

        session.expunge_all()
        cancellations = await outbox(session, to=staff.email, template="appointment_cancelled")
        told = [m for m in cancellations if m.id not in before]
        assert len(told) == 3  # the single booking and both occurrences of the series, one email each
        for message in told:
            assert message.failed_at is None and message.sent_at is None  # still goes out
            context = message.payload["context"]
            assert (context["client_name"], context["other_name"], context["notes"]) == ("Deleted user",) * 2 + ("",)
            assert context["reason"] == "Account deleted"
            calendar = icalendar.Calendar.from_ical(message.payload["attachments"][0]["content"])
            event = calendar.walk("VEVENT")[0]
            assert event["ATTENDEE"].params["CN"] == "Deleted user"
            assert str(event["ATTENDEE"]) == f"mailto:deleted-{person.id}@deleted.invalid"
            assert str(event["ORGANIZER"]) == f"mailto:{staff.email}"
        assert await session.scalar(select(AuditEntry).where(AuditEntry.action == "user.erase"))

    async def test_no_column_keeps_an_erased_staff_member(self, client, session):
        name, email, phone = "Bartholomew Zyxstaff", "bart.zyxstaff@example.org", "+44 20 7946 0999"
        staff = await create_staff(session, full_name=name)
        staff.email, staff.phone = email, phone
        service = await create_service(session, [staff], name="Massage")
        profile = await session.get(StaffProfile, staff.id)
        profile.bio = f"{name}, twenty years in practice"
        await session.commit()
        as_staff = (await start_session(staff)).headers
        customer = await create_user(session, full_name="Uma User")
        booking = await _book(client, (await start_session(customer)).headers, service, staff, 7, notes="Bring a towel")
        day = days_ahead(20)
        time_off = {"starts_at": local(day, 0).isoformat(), "ends_at": local(day, 23).isoformat(), "reason": name}
        await _ok(await client.post(f"/api/v1/staff/{staff.id}/time-off", json=time_off, headers=as_staff), 201)
        assert await traces_of(session, email, name, phone)

        await _ok(await client.delete(ME, headers=as_staff), 204)

        assert await traces_of(session, email, name, phone) == []
        session.expunge_all()
        row = await session.get(Appointment, booking["id"])
        assert (row.status, row.notes) == ("cancelled", "Bring a towel")  # the client's own words stay
        told = await outbox(session, to=customer.email, template="appointment_cancelled")
        assert [m.payload["context"]["staff_name"] for m in told] == ["Deleted user"]


class TestExport:
    async def test_every_part_about_the_client(self, client, session):
        person, as_person, staff, admin, other, _ = await _client_with_history(client, session)

        body = await _ok(await client.get(f"{ME}/export", headers=as_person))

        assert (body["user"]["email"], body["user"]["phone"]) == (EMAIL, PHONE)
        appointments = body["appointments"]
        assert len(appointments) == 5 and {a["role"] for a in appointments} == {"client"}
        assert {(a["service_name"], a["staff_name"]) for a in appointments} == {("Massage", "Alice Novak")}
        assert any(a["notes"] == f"Ask {NAME} about x-rays" for a in appointments)
        assert [(s["rrule"], s["role"], s["staff_name"]) for s in body["series"]] == [
            ("FREQ=DAILY;COUNT=2", "client", "Alice Novak")
        ]
        assert body["staff"] is None
        actions = {(e["action"], e["as_actor"], e["as_subject"]) for e in body["audit_entries"]}
        assert {
            ("user.create", False, True),  # by the admin
            ("user.update", True, True),
            ("appointment.create", True, True),
            ("appointment.update", False, True),  # by the staff member
            ("appointment.cancel", True, True),
        } <= actions
        created = next(e for e in body["audit_entries"] if e["action"] == "user.create")
        assert (created["actor_id"], created["after"]["phone"]) == (str(admin.id), OLD_PHONE)
        templates = [(e["template"], e["status"]) for e in body["emails"]]
        assert ("password_reset", "pending") in templates and ("verify_email", "failed") in templates
        booked = next(e for e in body["emails"] if e["template"] == "appointment_booked")
        assert booked["subject"].startswith("Booked: Massage with Alice Novak")
        assert {r["offset_minutes"] for r in body["reminders"]} == {1440, 60}
        assert [t["purpose"] for t in body["action_tokens"]] == ["password_reset"]
        text = json.dumps(body)
        for foreign in (staff.email, admin.email, other.email, other.full_name):
            assert foreign not in text

    async def test_a_staff_member_gets_their_calendar_and_no_client_contact(self, client, session):
        person, _, staff, _, other, _ = await _client_with_history(client, session)
        as_staff = (await start_session(staff)).headers
        day = days_ahead(30)
        override = {"date": day.isoformat(), "intervals": [{"start": "10:00", "end": "12:00"}]}
        await _ok(await client.post(f"/api/v1/staff/{staff.id}/overrides", json=override, headers=as_staff), 201)
        off = {"starts_at": local(day, 13).isoformat(), "ends_at": local(day, 15).isoformat(), "reason": "Dentist"}
        await _ok(await client.post(f"/api/v1/staff/{staff.id}/time-off", json=off, headers=as_staff), 201)

        body = await _ok(await client.get(f"{ME}/export", headers=as_staff))

        assert {a["role"] for a in body["appointments"]} == {"staff"} and len(body["appointments"]) == 6
        assert {s["role"] for s in body["series"]} == {"staff"}
        block = body["staff"]
        assert [s["name"] for s in block["services"]] == ["Massage"]
        assert len(block["weekly_hours"]) == 7 and block["weekly_hours"][0]["start"] == "09:00"
        assert [o["intervals"] for o in block["overrides"]] == [[{"start": "10:00", "end": "12:00"}]]
        assert [t["reason"] for t in block["time_off"]] == ["Dentist"]
        assert {"time_off.create", "override.set"} & {e["action"] for e in body["audit_entries"]}
        assert {e["template"] for e in body["emails"]} == {"appointment_booked", "appointment_cancelled"}
        text = json.dumps(body)
        for foreign in (EMAIL, other.email):  # (the notes a client wrote, which the staff member sees, stay)
            assert foreign not in text

    async def test_the_schema_is_typed(self, client):
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
        export = schemas["UserExport"]["properties"]
        assert export["appointments"]["items"] == {"$ref": "#/components/schemas/ExportAppointment"}
        for part, model in (("series", "ExportSeries"), ("emails", "ExportEmail"), ("reminders", "ExportReminder")):
            assert export[part]["items"] == {"$ref": f"#/components/schemas/{model}"}
        assert set(schemas["ExportAppointment"]["required"]) >= {"id", "starts_at", "service_name", "staff_name"}
