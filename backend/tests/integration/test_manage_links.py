"""Manage links: the link mailed to the client (read from a real SMTP server) lets them view, cancel and
reschedule that one appointment without signing in, under the rules a signed-in client meets; it stops
with the appointment, is never a bearer token, and nothing else is one."""

import re
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from app.models import AuditEntry, OutboxMessage, Role
from app.services.messaging import reminders
from app.services.messaging.worker import attempt_delivery
from app.utils import manage_tokens
from app.utils.manage_tokens import Action
from app.utils.redact import REDACTED, redact_path
from tests.factories import bearer, create_user, start_session
from tests.integration.test_ws import open_socket, receive, ws_url  # noqa: F401 (ws_url: a fixture)
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
from tests.smtp import SmtpServer, html_part, settings_env, text_part

FRONTEND = "https://app.c3po.test"
MANAGE = "/api/v1/manage"
DAY = days_ahead(6)


@pytest.fixture
async def smtp(app):
    server = SmtpServer().start()
    with settings_env(MAIL_SERVER=server.host, MAIL_PORT=str(server.port), FRONTEND_URL=FRONTEND):
        yield server
        server.stop()


@pytest.fixture
async def world(session, smtp):
    staff = await create_staff(session, full_name="Dr. Olga Staff")
    service = await create_service(session, [staff], name="Consultation")
    client = await create_user(session, full_name="Ada Client", timezone="Europe/London")
    other = await create_user(session, full_name="Bob Other")
    return {"staff": staff, "service": service, "client": client, "other": other}


async def deliver(smtp: SmtpServer) -> list[EmailMessage]:
    """Send every queued email the way the worker does; everything the SMTP server holds."""
    while await attempt_delivery(due_within=timedelta(days=1)) is not None:
        pass
    return smtp.messages


def link_pattern(appointment_id: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(FRONTEND)}/appointments/{appointment_id}(\?token=([A-Za-z0-9_-]+))?")


async def mailed_token(smtp: SmtpServer, to: str, appointment_id: str, subject: str) -> str:
    """The token of the link in the newest email to `to` whose subject starts with `subject`."""
    messages = [m for m in await deliver(smtp) if to in str(m["To"]) and str(m["Subject"]).startswith(subject)]
    assert messages, f"no {subject!r} email to {to}"
    text, html = text_part(messages[-1]), html_part(messages[-1])
    found = link_pattern(appointment_id).search(text)
    assert found and found.group(2), text
    assert f'href="{found.group(0)}"' in html  # the button carries the same link
    return found.group(2)


async def book(http, world, starts_at: datetime, who: str = "client") -> dict:
    headers = await headers_for(world[who])
    answer = await http.post(URL, json=booking_body(world["service"], world["staff"], starts_at), headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def booked_with_link(client, world, smtp, starts_at: datetime | None = None) -> tuple[dict, str]:
    appointment = await book(client, world, starts_at or local(DAY, 10))
    token = await mailed_token(smtp, world["client"].email, appointment["id"], "Booked: ")
    return appointment, token


def token_for(appointment: dict, *, actions: Action = manage_tokens.EVERY_ACTION, **changes) -> str:
    ends_at = datetime.fromisoformat(appointment["ends_at"])
    claims = {"client_id": uuid.UUID(appointment["client_id"]), "expires_at": ends_at, **changes}
    return manage_tokens.issue(uuid.UUID(appointment["id"]), claims["client_id"], claims["expires_at"], actions)


def problem_code(answer) -> str:
    return answer.json()["code"]


class TestEmails:
    async def test_the_clients_booking_email_carries_a_manage_link_the_staff_members_the_plain_page(
        self, client, session, world, smtp
    ):
        appointment = await book(client, world, local(DAY, 10))
        messages = await deliver(smtp)

        to_staff = [m for m in messages if world["staff"].email in str(m["To"])]
        assert len(to_staff) == 1
        staff_link = link_pattern(appointment["id"]).search(text_part(to_staff[0]))
        assert staff_link and staff_link.group(1) is None  # no token: the staff member signs in
        token = await mailed_token(smtp, world["client"].email, appointment["id"], "Booked: ")
        assert len(token) >= 32 and redact_path(f"{MANAGE}/{token}") == f"{MANAGE}/{REDACTED}"

        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        by_recipient = {row.payload["to"]: row for row in rows}
        client_row, staff_row = by_recipient[world["client"].email], by_recipient[world["staff"].email]
        assert client_row.sent_at is not None
        assert client_row.payload["context"]["link"] == "[redacted]"  # the credential is not kept
        assert token not in str(client_row.payload)
        assert staff_row.payload["context"]["link"] == f"{FRONTEND}/appointments/{appointment['id']}"

    async def test_the_link_of_each_kind_of_email_opens_the_appointment(self, client, session, world, smtp):
        service = await create_service(session, [world["staff"]], name="Checked", requires_confirmation=True)
        world = {**world, "service": service}
        appointment = await book(client, world, local(DAY, 10))
        booked = await mailed_token(smtp, world["client"].email, appointment["id"], "Booked: ")
        staff_headers = await headers_for(world["staff"])
        answer = await client.post(f"{URL}/{appointment['id']}/confirm", headers=staff_headers)
        assert answer.status_code == 200, answer.text
        confirmed = await mailed_token(smtp, world["client"].email, appointment["id"], "Confirmed: ")
        moved = await client.post(f"{MANAGE}/{confirmed}/reschedule", json={"starts_at": local(DAY, 14).isoformat()})
        assert moved.status_code == 200, moved.text
        rescheduled = await mailed_token(smtp, world["client"].email, appointment["id"], "Rescheduled: ")
        starts_at = datetime.fromisoformat(moved.json()["starts_at"])
        assert await reminders.send_due(now=starts_at - timedelta(hours=1)) == 1
        reminded = await mailed_token(smtp, world["client"].email, appointment["id"], "Reminder: ")

        # A token is a function of (appointment, client, end): a move mints a new one.
        assert booked == confirmed != rescheduled == reminded
        for token in (booked, confirmed, rescheduled, reminded):
            view = await client.get(f"{MANAGE}/{token}")
            assert view.status_code == 200, view.text
            assert view.json()["appointment"]["starts_at"] == zulu(local(DAY, 14))

    async def test_a_series_email_links_its_first_occurrence(self, client, world, smtp):
        headers = await headers_for(world["client"])
        body = booking_body(
            world["service"], world["staff"], local(DAY, 10), recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"}
        )
        answer = await client.post(URL, json=body, headers=headers)
        assert answer.status_code == 201, answer.text
        first = answer.json()
        token = await mailed_token(smtp, world["client"].email, first["id"], "Booked: ")

        view = await client.get(f"{MANAGE}/{token}")
        assert view.status_code == 200
        assert view.json()["appointment"]["id"] == first["id"]

    async def test_a_russian_client_gets_the_link_in_russian(self, client, session, world, smtp):
        russian = await create_user(session, locale="ru", full_name="Борис")
        appointment = await book(client, {**world, "client": russian}, local(DAY, 10))
        token = await mailed_token(smtp, russian.email, appointment["id"], "Забронировано: ")
        message = [m for m in smtp.messages if russian.email in str(m["To"])][-1]
        assert "Входить в аккаунт не нужно" in text_part(message)
        assert (await client.get(f"{MANAGE}/{token}")).status_code == 200


class TestView:
    async def test_shows_the_appointment_as_the_api_does_with_names_zones_and_actions(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        signed_in = await client.get(f"{URL}/{appointment['id']}", headers=await headers_for(world["client"]))

        answer = await client.get(f"{MANAGE}/{token}")

        assert answer.status_code == 200
        assert answer.headers["Cache-Control"] == "no-store"
        body = answer.json()
        assert body["appointment"] == signed_in.json()
        assert body["service"] == {"id": str(world["service"].id), "name": "Consultation", "duration_minutes": 60}
        assert body["staff"] == {"id": str(world["staff"].id), "full_name": "Dr. Olga Staff"}
        assert (body["timezone"], body["client_timezone"]) == ("Europe/Berlin", "Europe/London")
        assert body["change_deadline"] == zulu(local(DAY, 10) - timedelta(hours=24))
        allowed = {"allowed": True, "code": None, "reason": None}
        assert body["actions"] == {"view": allowed, "cancel": allowed, "reschedule": allowed}

    async def test_inside_the_cut_off_the_page_says_why_it_cannot_change(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        with settings_env(CANCELLATION_MIN_NOTICE_HOURS=str(24 * 30)):
            actions = (await client.get(f"{MANAGE}/{token}")).json()["actions"]
        assert actions["view"]["allowed"] is True
        for action in ("cancel", "reschedule"):
            assert actions[action]["allowed"] is False
            assert actions[action]["code"] == "cancellation_window_closed"
            assert "720 hours" in actions[action]["reason"]

    async def test_a_view_only_link_shows_the_other_actions_refused(self, client, world, smtp):
        appointment, _ = await booked_with_link(client, world, smtp)
        token = token_for(appointment, actions=Action.view)

        actions = (await client.get(f"{MANAGE}/{token}")).json()["actions"]
        assert actions["cancel"]["code"] == actions["reschedule"]["code"] == "manage_action_not_allowed"
        cancel = await client.post(f"{MANAGE}/{token}/cancel")
        assert (cancel.status_code, problem_code(cancel)) == (403, "manage_action_not_allowed")
        slots = await client.get(
            f"{MANAGE}/{token}/availability", params={"start": DAY.isoformat(), "end": DAY.isoformat(), "tz": "UTC"}
        )
        assert slots.status_code == 403


class TestCancel:
    async def test_cancels_as_the_client_with_audit_emails_and_the_link_then_closed(self, client, session, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        seen = len(smtp.messages)

        answer = await client.post(f"{MANAGE}/{token}/cancel", json={"reason": "Feeling unwell"})

        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["status"], body["cancellation_reason"]) == ("cancelled", "Feeling unwell")
        assert body["cancelled_by"] == str(world["client"].id)
        entry = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "appointment.cancel", AuditEntry.entity_id == appointment["id"]
            )
        )
        assert entry is not None and entry.actor_id == world["client"].id
        cancelled = [m for m in (await deliver(smtp))[seen:] if str(m["Subject"]).startswith("Cancelled: ")]
        assert sorted(str(m["To"]) for m in cancelled) == sorted([world["client"].email, world["staff"].email])

        for request in (client.get(f"{MANAGE}/{token}"), client.post(f"{MANAGE}/{token}/cancel")):
            refused = await request
            assert (refused.status_code, problem_code(refused)) == (410, "appointment_closed")
            assert refused.json()["appointment_status"] == "cancelled"

    async def test_without_a_body_too(self, client, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        answer = await client.post(f"{MANAGE}/{token}/cancel")
        assert (answer.status_code, answer.json()["cancellation_reason"]) == (200, None)

    async def test_inside_the_cut_off_it_is_refused_as_signed_in(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        headers = await headers_for(world["client"])
        with settings_env(CANCELLATION_MIN_NOTICE_HOURS=str(24 * 30)):
            by_link = await client.post(f"{MANAGE}/{token}/cancel")
            signed_in = await client.post(f"{URL}/{appointment['id']}/cancel", headers=headers)
        assert by_link.status_code == signed_in.status_code == 409
        assert problem_code(by_link) == problem_code(signed_in) == "cancellation_window_closed"

    async def test_an_admin_who_is_the_client_meets_the_cut_off_through_a_link(self, client, session, world, smtp):
        admin = await create_user(session, role=Role.admin)
        appointment = await book(client, {**world, "client": admin}, local(DAY, 10))
        token = await mailed_token(smtp, admin.email, appointment["id"], "Booked: ")
        with settings_env(CANCELLATION_MIN_NOTICE_HOURS=str(24 * 30)):
            answer = await client.post(f"{MANAGE}/{token}/cancel")
        assert (answer.status_code, problem_code(answer)) == (409, "cancellation_window_closed")


class TestReschedule:
    async def test_moves_it_with_the_same_checks_as_booking(self, client, session, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)

        answer = await client.post(f"{MANAGE}/{token}/reschedule", json={"starts_at": local(DAY, 15).isoformat()})

        assert answer.status_code == 200, answer.text
        assert (answer.json()["starts_at"], answer.json()["sequence"]) == (zulu(local(DAY, 15)), 1)
        entry = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "appointment.reschedule", AuditEntry.entity_id == appointment["id"]
            )
        )
        assert entry is not None and entry.actor_id == world["client"].id
        assert (await client.get(f"{MANAGE}/{token}")).status_code == 200  # the old link still opens it

    @pytest.mark.parametrize(
        ("hour", "status", "code"),
        [(12, 409, "slot_unavailable"), (3, 422, "slot_not_offered")],
    )
    async def test_refusals_match_the_signed_in_reschedule(self, client, world, smtp, hour, status, code):
        appointment, token = await booked_with_link(client, world, smtp)
        await book(client, world, local(DAY, 12), who="other")
        body = {"starts_at": local(DAY, hour).isoformat()}
        headers = await headers_for(world["client"])

        by_link = await client.post(f"{MANAGE}/{token}/reschedule", json=body)
        signed_in = await client.patch(f"{URL}/{appointment['id']}", json=body, headers=headers)

        assert by_link.status_code == signed_in.status_code == status
        assert problem_code(by_link) == problem_code(signed_in) == code

    async def test_into_the_cut_off_is_refused_as_signed_in(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp, local(days_ahead(20), 10))
        body = {"starts_at": local(DAY, 11).isoformat()}
        headers = await headers_for(world["client"])
        with settings_env(CANCELLATION_MIN_NOTICE_HOURS=str(24 * 10)):
            by_link = await client.post(f"{MANAGE}/{token}/reschedule", json=body)
            signed_in = await client.patch(f"{URL}/{appointment['id']}", json=body, headers=headers)
        assert by_link.status_code == signed_in.status_code == 409
        assert problem_code(by_link) == problem_code(signed_in) == "cancellation_window_closed"
        assert by_link.json()["new_start"] == signed_in.json()["new_start"]

    async def test_a_stale_sequence_is_refused(self, client, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        body = {"starts_at": local(DAY, 15).isoformat(), "sequence": 7}
        answer = await client.post(f"{MANAGE}/{token}/reschedule", json=body)
        assert (answer.status_code, problem_code(answer)) == (409, "appointment_changed")

    async def test_an_input_beyond_its_bounds_is_a_422(self, client, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        for body in ({}, {"starts_at": "tomorrow"}, {"starts_at": local(DAY, 15).isoformat(), "extra": 1}):
            answer = await client.post(f"{MANAGE}/{token}/reschedule", json=body)
            assert (answer.status_code, problem_code(answer)) == (422, "validation_error")
        long_reason = await client.post(f"{MANAGE}/{token}/cancel", json={"reason": "x" * 501})
        assert long_reason.status_code == 422


class TestAvailability:
    async def test_offers_what_a_reschedule_accepts_its_own_slot_included(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        await book(client, world, local(DAY, 12), who="other")
        params = {"start": DAY.isoformat(), "end": (DAY + timedelta(days=1)).isoformat(), "tz": "Europe/Berlin"}
        public = await client.get(
            "/api/v1/availability",
            params={**params, "service_id": str(world["service"].id), "staff_id": str(world["staff"].id)},
        )

        answer = await client.get(f"{MANAGE}/{token}/availability", params=params)

        assert answer.status_code == 200, answer.text
        starts = [slot["starts_at"] for slot in answer.json()["slots"]]
        assert starts == sorted([slot["starts_at"] for slot in public.json()["slots"]] + [zulu(local(DAY, 10))])
        assert zulu(local(DAY, 12)) not in starts
        assert answer.json()["slots"][0]["starts_at_local"].endswith(("+01:00", "+02:00"))
        assert {slot["staff_id"] for slot in answer.json()["slots"]} == {str(world["staff"].id)}

    async def test_nothing_inside_the_cut_off(self, client, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        params = {"start": DAY.isoformat(), "end": (DAY + timedelta(days=1)).isoformat(), "tz": "Europe/Berlin"}
        with settings_env(CANCELLATION_MIN_NOTICE_HOURS=str(24 * 30)):
            answer = await client.get(f"{MANAGE}/{token}/availability", params=params)
        assert (answer.status_code, answer.json()["slots"]) == (200, [])

    @pytest.mark.parametrize(
        ("params", "code"),
        [
            ({"start": "2030-01-02", "end": "2030-01-01", "tz": "UTC"}, "invalid_window"),
            ({"start": "2030-01-01", "end": "2030-06-01", "tz": "UTC"}, "window_too_large"),
            ({"start": "2030-01-01", "end": "2030-01-02"}, "validation_error"),
        ],
    )
    async def test_bad_windows_are_refused_as_by_the_public_availability(self, client, world, smtp, params, code):
        _, token = await booked_with_link(client, world, smtp)
        answer = await client.get(f"{MANAGE}/{token}/availability", params=params)
        assert (answer.status_code, problem_code(answer)) == (422, code)


class TestTheToken:
    async def test_a_tampered_forged_or_foreign_token_is_not_a_link(self, client, session, world, smtp, deploy_keys):
        appointment, token = await booked_with_link(client, world, smtp)
        others = await book(client, world, local(DAY, 14), who="other")
        flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
        # The other client's appointment under our client's name: signed, but it is not theirs.
        not_theirs = token_for(others, client_id=world["client"].id)

        for bad in (flipped, token[:-1], token + "A", "x" * 88, not_theirs, "%2e%2e", "a" * 1024):
            answer = await client.get(f"{MANAGE}/{bad}")
            assert (answer.status_code, problem_code(answer)) == (404, "manage_link_invalid"), bad

        old_key = manage_tokens.keyring().current
        deploy_keys("a brand new signing key, long enough to pass", "x" * 40)
        assert manage_tokens.keyring().current != old_key
        refused = await client.get(f"{MANAGE}/{token}")
        assert (refused.status_code, problem_code(refused)) == (404, "manage_link_invalid")

    async def test_a_previous_key_still_opens_links_it_signed(self, client, world, smtp, deploy_keys):
        import os

        _, token = await booked_with_link(client, world, smtp)
        deploy_keys("a brand new signing key, long enough to pass", os.environ["SECRET_KEY"])
        assert (await client.get(f"{MANAGE}/{token}")).status_code == 200

    async def test_it_stops_at_the_appointments_end(self, client, session, world, smtp):
        past = await add_appointment(
            session, world["client"], world["staff"], world["service"], datetime.now(UTC) - timedelta(hours=3)
        )
        token = manage_tokens.issue(past.id, world["client"].id, past.ends_at)
        answer = await client.get(f"{MANAGE}/{token}")
        assert (answer.status_code, problem_code(answer)) == (410, "manage_link_expired")

    async def test_it_stops_at_the_end_it_was_issued_for_even_if_the_appointment_moved_later(self, client, world, smtp):
        appointment, _ = await booked_with_link(client, world, smtp)
        issued_for_an_earlier_end = token_for(appointment, expires_at=datetime.now(UTC) - timedelta(seconds=1))
        answer = await client.post(f"{MANAGE}/{issued_for_an_earlier_end}/cancel")
        assert (answer.status_code, problem_code(answer)) == (410, "manage_link_expired")

    async def test_a_completed_appointment_is_closed(self, client, session, world, smtp):
        started = await add_appointment(
            session,
            world["client"],
            world["staff"],
            world["service"],
            datetime.now(UTC) - timedelta(minutes=30),
            status="completed",
        )
        token = manage_tokens.issue(started.id, world["client"].id, started.ends_at)
        answer = await client.get(f"{MANAGE}/{token}")
        assert (answer.status_code, answer.json()["appointment_status"]) == (410, "completed")

    async def test_a_closed_account_has_no_link(self, client, session, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        world["client"].is_active = False
        await session.commit()
        answer = await client.get(f"{MANAGE}/{token}")
        assert (answer.status_code, problem_code(answer)) == (404, "manage_link_invalid")

    async def test_it_is_never_a_bearer_token(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        headers = bearer(token)
        for request in (
            client.get("/api/v1/users/me", headers=headers),
            client.get(URL, headers=headers),
            client.get(f"{URL}/{appointment['id']}", headers=headers),
            client.post(f"{URL}/{appointment['id']}/cancel", headers=headers),
            client.patch(f"{URL}/{appointment['id']}", json={"notes": "x"}, headers=headers),
        ):
            assert (await request).status_code == 401
        assert (await client.get(f"{MANAGE}/{token}")).json()["appointment"]["status"] == "confirmed"

    async def test_no_sign_in_token_is_a_manage_token(self, client, world, smtp):
        await booked_with_link(client, world, smtp)
        signed_in = await start_session(world["client"])
        for token in (signed_in.access_token, signed_in.refresh_token):
            answer = await client.get(f"{MANAGE}/{token}")
            assert (answer.status_code, problem_code(answer)) == (404, "manage_link_invalid")


class TestIdempotency:
    async def test_a_repeated_cancel_replays_its_answer_even_after_the_link_closed(self, client, session, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        key = {"Idempotency-Key": "cancel-once"}

        first = await client.post(f"{MANAGE}/{token}/cancel", json={"reason": "r"}, headers=key)
        again = await client.post(f"{MANAGE}/{token}/cancel", json={"reason": "r"}, headers=key)
        other_body = await client.post(f"{MANAGE}/{token}/cancel", json={"reason": "other"}, headers=key)

        assert (first.status_code, again.status_code) == (200, 200)
        assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
        assert again.json() == first.json()
        assert (other_body.status_code, problem_code(other_body)) == (422, "idempotency_key_reused")
        entries = await session.scalars(select(AuditEntry).where(AuditEntry.entity_id == appointment["id"]))
        assert [e.action for e in entries].count("appointment.cancel") == 1

    async def test_the_links_of_two_emails_are_one_request(self, client, world, smtp):
        appointment, token = await booked_with_link(client, world, smtp)
        # As another email would mint it: the same appointment and client, another expiry.
        second_link = token_for(appointment, expires_at=datetime.fromisoformat(appointment["ends_at"]) - timedelta(1))
        assert second_link != token
        key = {"Idempotency-Key": "move-once"}
        body = {"starts_at": local(DAY, 15).isoformat()}

        first = await client.post(f"{MANAGE}/{token}/reschedule", json=body, headers=key)
        again = await client.post(f"{MANAGE}/{second_link}/reschedule", json=body, headers=key)

        assert first.status_code == again.status_code == 200
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["sequence"] == first.json()["sequence"] == 1


class TestRateLimit:
    async def test_per_link_then_429_with_retry_after(self, client, world, smtp):
        _, token = await booked_with_link(client, world, smtp)
        with settings_env(MANAGE_REQUESTS_PER_TOKEN="3/minute"):
            answers = [await client.get(f"{MANAGE}/{token}") for _ in range(4)]
            other_link = await client.get(f"{MANAGE}/{'y' * 88}")
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert problem_code(answers[-1]) == "rate_limited" and int(answers[-1].headers["Retry-After"]) >= 1
        assert other_link.status_code == 404  # another token has its own window

    async def test_per_ip(self, client, world, smtp):
        with settings_env(MANAGE_REQUESTS_PER_IP="2/minute"):
            answers = [await client.get(f"{MANAGE}/{'z' * 40}{n}") for n in range(3)]
        assert [a.status_code for a in answers] == [404, 404, 429]


class TestEvents:
    async def test_both_parties_sockets_hear_of_a_change_made_through_the_link(
        self,
        client,
        world,
        smtp,
        ws_url,  # noqa: F811 (the fixture imported above)
    ):
        appointment, token = await booked_with_link(client, world, smtp)
        sockets = [
            await open_socket(ws_url, (await start_session(world[who])).access_token) for who in ("client", "staff")
        ]

        moved = await client.post(f"{MANAGE}/{token}/reschedule", json={"starts_at": local(DAY, 15).isoformat()})
        cancelled = await client.post(f"{MANAGE}/{token}/cancel")

        for socket_ in sockets:
            assert await receive(socket_) == {"type": "appointment.updated", "data": moved.json()}
            assert await receive(socket_) == {"type": "appointment.cancelled", "data": cancelled.json()}
            await socket_.close()
