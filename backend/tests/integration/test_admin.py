"""The admin panel at /admin: who gets in, CSRF, the business rules behind its forms, session end."""

import asyncio
import re
import secrets
import time

import pyotp
import pytest
from sqlalchemy import select

from app.config import get_settings
from app.models import (
    Appointment,
    AuditEntry,
    DateOverride,
    OutboxMessage,
    Role,
    Service,
    TimeOff,
    TotpCredential,
    TotpRecoveryCode,
    User,
    WeeklyInterval,
)
from app.utils.time import utcnow
from tests.factories import PASSWORD, create_user, start_session
from tests.scheduling import add_appointment, booking_body, create_service, create_staff, days_ahead, local

CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


async def csrf(client, path: str = "/admin/login") -> str:
    page = await client.get(path)
    match = CSRF.search(page.text)
    assert match, page.text[:500]
    return match.group(1)


async def panel_login(client, email: str, password: str = PASSWORD, totp_code: str = ""):
    token = await csrf(client)
    form = {"username": email, "password": password, "totp_code": totp_code, "csrf_token": token}
    return await client.post("/admin/login", data=form)


async def signed_in_admin(client, session):
    admin = await create_user(session, role=Role.admin)
    answer = await panel_login(client, admin.email)
    assert answer.status_code == 302, answer.text
    return admin


async def post(client, path: str, data: dict, *, token: str | None = None):
    token = token if token is not None else await csrf(client, "/admin/")
    return await client.post(path, data={**data, "csrf_token": token})


def admin_urls(ids: dict[str, str]) -> list[tuple[str, str]]:
    views = ["user", "service", "weekly-interval", "date-override", "time-off", "appointment", "audit-entry"]
    urls = [("GET", "/admin/")]
    urls += [("GET", f"/admin/{v}/list") for v in [*views, "outbox-message"]]
    urls += [("GET", f"/admin/{v}/create") for v in ("user", "service", "appointment", "time-off")]
    urls += [("GET", f"/admin/user/details/{ids['user']}"), ("GET", f"/admin/user/edit/{ids['user']}")]
    urls += [("GET", f"/admin/appointment/details/{ids['appointment']}")]
    urls += [("POST", f"/admin/appointment/transition/{ids['appointment']}"), ("POST", "/admin/outbox-message/retry/1")]
    return urls


class TestWhoGetsIn:
    async def test_every_admin_url_refuses_anonymous_staff_and_clients(self, client, session):
        staff = await create_staff(session)
        client_user = await create_user(session)
        service = await create_service(session, [staff])
        appointment = await add_appointment(session, client_user, staff, service, local(days_ahead(3), 10))
        urls = admin_urls({"user": str(client_user.id), "appointment": str(appointment.id)})

        for person in (None, staff, client_user):
            client.cookies.clear()
            headers = {}
            if person is not None:
                refused = await panel_login(client, person.email)
                assert refused.status_code == 403 and "Only admins" in refused.text
                headers = (await start_session(person)).headers  # an API token opens nothing here either
            token = await csrf(client)
            for method, url in urls:
                answer = await client.request(method, url, headers=headers, data={"csrf_token": token})
                assert answer.status_code == 303, (person, method, url, answer.status_code)
                assert answer.headers["location"].endswith("/admin/login")
        assert (await session.get(Appointment, appointment.id)).status == "confirmed"

    async def test_an_admin_signs_in_and_out_with_a_strict_httponly_cookie(self, client, session):
        admin = await create_user(session, role=Role.admin)
        answer = await panel_login(client, admin.email)
        assert answer.status_code == 302
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/admin" in cookie
        assert f"max-age={get_settings().admin_session_minutes * 60}" in cookie
        assert (await client.get("/admin/service/list")).status_code == 200
        await client.get("/admin/logout")
        assert (await client.get("/admin/service/list")).status_code == 303

    async def test_a_wrong_password_counts_toward_the_api_lockout(self, client, session):
        admin = await create_user(session, role=Role.admin)
        for _ in range(5):
            assert (await panel_login(client, admin.email, "not the password")).status_code == 400
        locked = await panel_login(client, admin.email)
        assert locked.status_code == 429 and "retry-after" in locked.headers
        api = await client.post("/api/v1/auth/login", data={"username": admin.email, "password": PASSWORD})
        assert api.status_code == 429


class TestCsrf:
    async def test_a_form_without_the_token_is_refused(self, client, session):
        await signed_in_admin(client, session)
        body = {"name": "Massage", "duration_minutes": "30", "price": "10", "currency": "EUR", "is_active": "y"}
        assert (await client.post("/admin/service/create", data=body)).status_code == 403
        assert (await post(client, "/admin/service/create", body, token="forged")).status_code == 403
        assert (await session.scalar(select(Service.id))) is None
        assert (await post(client, "/admin/service/create", body)).status_code == 302

    async def test_sign_in_without_the_token_is_refused(self, client, session):
        admin = await create_user(session, role=Role.admin)
        answer = await client.post("/admin/login", data={"username": admin.email, "password": PASSWORD})
        assert answer.status_code == 403

    async def test_a_foreign_origin_is_refused(self, client, session):
        await signed_in_admin(client, session)
        token = await csrf(client, "/admin/")
        answer = await client.post(
            "/admin/service/create", data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert answer.status_code == 403


class TestBusinessRules:
    async def test_an_overlapping_appointment_gets_the_apis_refusal(self, client, session):
        staff = await create_staff(session)
        service = await create_service(session, [staff])
        first, second = await create_user(session), await create_user(session)
        starts_at = local(days_ahead(3), 10)
        await add_appointment(session, first, staff, service, starts_at)
        await signed_in_admin(client, session)
        body = booking_body(service, staff, starts_at, client_id=str(second.id))

        api = await client.post("/api/v1/appointments", json=body, headers=await _admin_headers(session))
        assert api.status_code in (409, 422)
        panel = await post(client, "/admin/appointment/create", body)
        assert panel.status_code == 400
        assert api.json()["code"] in panel.text
        assert len((await session.scalars(select(Appointment.id))).all()) == 1

    async def test_cancel_goes_through_the_booking_service(self, client, session):
        staff = await create_staff(session)
        service = await create_service(session, [staff])
        appointment = await add_appointment(
            session, await create_user(session), staff, service, local(days_ahead(3), 10)
        )
        await signed_in_admin(client, session)
        url = f"/admin/appointment/transition/{appointment.id}"
        done = await post(client, url, {"action": "cancel", "reason": "Closed for repairs"})
        assert done.status_code == 303 and "done=cancel" in done.headers["location"]
        await session.refresh(appointment)
        assert appointment.status == "cancelled" and appointment.cancellation_reason == "Closed for repairs"
        again = await post(client, url, {"action": "cancel"})
        assert "invalid_transition" in again.headers["location"]
        actions = (await session.scalars(select(AuditEntry.action))).all()
        assert "appointment.cancel" in actions

    async def test_an_admin_cannot_demote_themself(self, client, session):
        admin = await signed_in_admin(client, session)
        body = {"full_name": "A", "timezone": "UTC", "locale": "en", "role": "user", "is_active": "y"}
        answer = await post(client, f"/admin/user/edit/{admin.id}", body)
        assert answer.status_code == 400 and "self_lockout" in answer.text
        await session.refresh(admin)
        assert admin.role == "admin"

    async def test_user_pages_never_show_a_hash_or_a_totp_secret(self, client, session):
        admin = await signed_in_admin(client, session)
        headers = await _login_headers(client, admin.email)
        secret = (await client.post("/api/v1/auth/totp/setup", headers=headers)).json()["secret"]
        for url in ("/admin/user/list", f"/admin/user/details/{admin.id}", f"/admin/user/edit/{admin.id}"):
            page = await client.get(url)
            assert page.status_code == 200 and secret not in page.text and "hashed_password" not in page.text


async def _admin_headers(session) -> dict[str, str]:
    return (await start_session(await create_user(session, role=Role.admin))).headers


async def _login_headers(client, email: str, code: str | None = None) -> dict[str, str]:
    form = {"username": email, "password": PASSWORD} | ({"totp_code": code} if code else {})
    answer = await client.post("/api/v1/auth/login", data=form)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


class TestPanelSessionEnds:
    @pytest.mark.parametrize("change", ["demote", "deactivate", "logout_all"])
    async def test_when_its_admin_loses_access(self, client, session, change):
        admin = await signed_in_admin(client, session)
        assert (await client.get("/admin/")).status_code == 200
        if change == "logout_all":
            headers = await _login_headers(client, admin.email)
            assert (await client.post("/api/v1/auth/logout-all", headers=headers)).status_code == 204
        else:
            other = await _admin_headers(session)
            body = {"role": "user"} if change == "demote" else {"is_active": False}
            assert (await client.patch(f"/api/v1/users/{admin.id}", json=body, headers=other)).status_code == 200
        answer = await client.get("/admin/")
        assert answer.status_code == 303 and answer.headers["location"].endswith("/admin/login")


def codes_for(secret: str) -> tuple[str, str]:
    """This 30-second step's code and the next one's (both accepted: one step of drift)."""
    totp, step = pyotp.TOTP(secret), int(time.time() // 30)
    return totp.at(step * 30), totp.at((step + 1) * 30)


async def enable_totp(client, headers) -> tuple[str, list[str], str]:
    setup = await client.post("/api/v1/auth/totp/setup", headers=headers)
    assert setup.status_code == 200 and setup.headers["cache-control"] == "no-store"
    secret = setup.json()["secret"]
    assert setup.json()["otpauth_uri"].startswith("otpauth://totp/")
    now, following = codes_for(secret)
    enabled = await client.post("/api/v1/auth/totp/enable", json={"code": now}, headers=headers)
    assert enabled.status_code == 200, enabled.text
    return secret, enabled.json()["recovery_codes"], following


class TestTotp:
    async def test_sign_in_needs_a_fresh_code_or_an_unused_recovery_code(self, client, session):
        staff = await create_staff(session)
        secret, recovery, following = await enable_totp(client, await _login_headers(client, staff.email))
        assert len(recovery) == 10

        login = {"username": staff.email, "password": PASSWORD}
        missing = await client.post("/api/v1/auth/login", data=login)
        assert missing.status_code == 400 and missing.json()["code"] == "totp_required"
        assert (await client.post("/api/v1/auth/login", data=login | {"totp_code": following})).status_code == 200
        replay = await client.post("/api/v1/auth/login", data=login | {"totp_code": following})
        assert replay.json()["code"] == "totp_invalid"

        assert (await client.post("/api/v1/auth/login", data=login | {"totp_code": recovery[0]})).status_code == 200
        reused = await client.post("/api/v1/auth/login", data=login | {"totp_code": recovery[0]})
        assert reused.status_code == 400 and reused.json()["code"] == "totp_invalid"

        stored = await session.scalar(select(TotpCredential.secret_encrypted))
        assert stored is not None and secret not in stored

    async def test_one_code_signs_in_once_even_when_sent_twice_at_once(self, client, session):
        staff = await create_staff(session)
        _, _, following = await enable_totp(client, await _login_headers(client, staff.email))
        login = {"username": staff.email, "password": PASSWORD, "totp_code": following}
        answers = await asyncio.gather(*(client.post("/api/v1/auth/login", data=login) for _ in range(2)))
        assert sorted(a.status_code for a in answers) == [200, 400]

    async def test_wrong_codes_count_toward_the_lockout(self, client, session):
        staff = await create_staff(session)
        await enable_totp(client, await _login_headers(client, staff.email))
        login = {"username": staff.email, "password": PASSWORD, "totp_code": "000000"}
        answers = [(await client.post("/api/v1/auth/login", data=login)).status_code for _ in range(6)]
        assert answers[-1] == 429

    async def test_disable_needs_the_password_and_a_code(self, client, session):
        staff = await create_staff(session)
        headers = await _login_headers(client, staff.email)
        _, recovery, _ = await enable_totp(client, headers)
        wrong = await client.post(
            "/api/v1/auth/totp/disable", json={"password": "nope", "code": recovery[0]}, headers=headers
        )
        assert wrong.json()["code"] == "invalid_password"
        done = await client.post(
            "/api/v1/auth/totp/disable", json={"password": PASSWORD, "code": recovery[1]}, headers=headers
        )
        assert done.status_code == 204
        assert (
            await client.post("/api/v1/auth/login", data={"username": staff.email, "password": PASSWORD})
        ).status_code == 200

    async def test_clients_cannot_enable_it(self, client, session):
        user = await create_user(session)
        answer = await client.post("/api/v1/auth/totp/setup", headers=await _login_headers(client, user.email))
        assert answer.status_code == 403

    async def test_the_panel_requires_it_when_the_setting_says_so(self, client, session, monkeypatch):
        monkeypatch.setattr(get_settings(), "admin_require_totp", True)
        admin = await create_user(session, role=Role.admin)
        refused = await panel_login(client, admin.email)
        assert refused.status_code == 403 and "two-factor" in refused.text
        secret, _, following = await enable_totp(client, await _login_headers(client, admin.email))
        assert (await panel_login(client, admin.email)).status_code == 400  # totp_required
        assert (await panel_login(client, admin.email, totp_code=following)).status_code == 302
        assert (await client.get("/admin/")).status_code == 200


class TestForms:
    async def test_weekly_hours_are_replaced_through_the_schedules_service(self, client, session):
        staff = await create_staff(session, hours=[("09:00", "12:00")], weekdays=[0])
        await signed_in_admin(client, session)
        added = await post(
            client,
            "/admin/weekly-interval/create",
            {"staff_id": str(staff.id), "weekday": "0", "start": "13:00", "end": "17:00"},
        )
        assert added.status_code == 302, added.text
        overlap = await post(
            client,
            "/admin/weekly-interval/create",
            {"staff_id": str(staff.id), "weekday": "0", "start": "11:00", "end": "14:00"},
        )
        assert overlap.status_code == 400 and "overlapping_intervals" in overlap.text  # as PUT /schedule says
        rows = (await session.scalars(select(WeeklyInterval).where(WeeklyInterval.staff_id == staff.id))).all()
        assert sorted(str(r.start_time) for r in rows) == ["09:00:00", "13:00:00"]
        morning = next(r for r in rows if r.start_time.hour == 9)
        token = await csrf(client, "/admin/")
        deleted = await client.delete(
            f"/admin/weekly-interval/delete?pks={morning.id}", headers={"X-CSRF-Token": token}
        )
        assert deleted.status_code == 200
        left = (
            await session.scalars(select(WeeklyInterval.start_time).where(WeeklyInterval.staff_id == staff.id))
        ).all()
        assert [str(t) for t in left] == ["13:00:00"]

    async def test_overrides_and_time_off(self, client, session):
        staff = await create_staff(session)
        await signed_in_admin(client, session)
        day = days_ahead(5).isoformat()
        made = await post(
            client, "/admin/date-override/create", {"staff_id": str(staff.id), "date": day, "intervals": "10:00-12:00"}
        )
        assert made.status_code == 302, made.text
        override = await session.scalar(select(DateOverride).where(DateOverride.staff_id == staff.id))
        assert override.intervals == [{"start": "10:00", "end": "12:00"}]
        starts = local(days_ahead(6), 9).isoformat()
        ends = local(days_ahead(6), 12).isoformat()
        block = {"staff_id": str(staff.id), "starts_at": starts, "ends_at": ends, "reason": "Training"}
        assert (await post(client, "/admin/time-off/create", block)).status_code == 302
        backwards = await post(client, "/admin/time-off/create", block | {"starts_at": ends, "ends_at": starts})
        assert backwards.status_code == 400 and "invalid_interval" in backwards.text
        off = await session.scalar(select(TimeOff).where(TimeOff.staff_id == staff.id))
        token = {"X-CSRF-Token": await csrf(client, "/admin/")}
        assert (await client.delete(f"/admin/date-override/delete?pks={override.id}", headers=token)).status_code == 200
        assert (await client.delete(f"/admin/time-off/delete?pks={off.id}", headers=token)).status_code == 200
        session.expire_all()
        assert (
            await session.scalar(select(DateOverride.id)) is None and await session.scalar(select(TimeOff.id)) is None
        )
        assert "override.create" in " ".join((await session.scalars(select(AuditEntry.action))).all())

    async def test_users_are_created_changed_and_deactivated_through_the_users_service(self, client, session):
        await signed_in_admin(client, session)
        body = {"email": "new.staff@example.com", "password": "a quiet harbour at dusk", "full_name": "New Staff"}
        made = await post(client, "/admin/user/create", body | {"role": "staff", "timezone": "UTC", "locale": "en"})
        assert made.status_code == 302, made.text
        weak = await post(client, "/admin/user/create", body | {"email": "x@example.com", "password": "password"})
        assert weak.status_code == 400 and "weak_password" in weak.text
        user = await session.scalar(select(User).where(User.email == "new.staff@example.com"))
        edit = {"full_name": "Renamed", "timezone": "Europe/Berlin", "locale": "ru", "role": "staff", "is_active": "y"}
        assert (await post(client, f"/admin/user/edit/{user.id}", edit)).status_code == 302
        token = {"X-CSRF-Token": await csrf(client, "/admin/")}
        assert (await client.delete(f"/admin/user/delete?pks={user.id}", headers=token)).status_code == 200
        await session.refresh(user)
        assert (user.full_name, user.locale, user.is_active) == ("Renamed", "ru", False)

    async def test_a_service_edit_keeps_the_bookings_rule(self, client, session):
        staff = await create_staff(session)
        service = await create_service(session, [staff])
        await add_appointment(session, await create_user(session), staff, service, local(days_ahead(3), 10))
        await signed_in_admin(client, session)
        body = {"name": "Renamed", "duration_minutes": "60", "price": "12.50", "currency": "EUR"}  # not active
        refused = await post(client, f"/admin/service/edit/{service.id}", body)
        assert refused.status_code == 400 and "service_has_bookings" in refused.text
        renamed = await post(client, f"/admin/service/edit/{service.id}", body | {"is_active": "y"})
        assert renamed.status_code == 302
        await session.refresh(service)
        assert (service.name, str(service.price), service.is_active) == ("Renamed", "12.50", True)

    async def test_services_are_created_and_deactivated_through_the_catalogue(self, client, session):
        await signed_in_admin(client, session)
        body = {"name": "Massage", "duration_minutes": "30", "price": "10", "currency": "EUR", "is_active": "y"}
        assert (await post(client, "/admin/service/create", body)).status_code == 302
        bad = await post(client, "/admin/service/create", body | {"duration_minutes": "0"})
        assert bad.status_code == 400 and "validation_error" in bad.text
        service = await session.scalar(select(Service).where(Service.name == "Massage"))
        token = {"X-CSRF-Token": await csrf(client, "/admin/")}
        assert (await client.delete(f"/admin/service/delete?pks={service.id}", headers=token)).status_code == 200
        await session.refresh(service)
        assert service.is_active is False

    async def test_a_services_booking_limits_are_set_and_lifted(self, client, session):
        await signed_in_admin(client, session)
        body = {"name": "Lesson", "duration_minutes": "30", "price": "10", "currency": "EUR", "is_active": "y"}
        limits = {"max_bookings_per_client_week": "2", "min_gap_minutes": "600"}
        assert (await post(client, "/admin/service/create", body | limits)).status_code == 302
        service = await session.scalar(select(Service).where(Service.name == "Lesson"))
        assert (service.max_bookings_per_client_week, service.min_gap_minutes) == (2, 600)
        assert (await post(client, f"/admin/service/edit/{service.id}", body)).status_code == 302
        await session.refresh(service)
        assert (service.max_bookings_per_client_week, service.min_gap_minutes) == (None, None)

    async def test_an_appointment_is_booked_and_moved_through_the_booking_service(self, client, session):
        staff = await create_staff(session)
        service = await create_service(session, [staff])
        customer = await create_user(session)
        await signed_in_admin(client, session)
        body = booking_body(service, staff, local(days_ahead(3), 10), client_id=str(customer.id))
        assert (await post(client, "/admin/appointment/create", body)).status_code == 302
        appointment = await session.scalar(select(Appointment))
        moved = await post(
            client, f"/admin/appointment/edit/{appointment.id}", {"starts_at": local(days_ahead(3), 13).isoformat()}
        )
        assert moved.status_code == 302, moved.text
        await session.refresh(appointment)
        assert appointment.starts_at == local(days_ahead(3), 13) and appointment.sequence == 1
        early = await post(client, f"/admin/appointment/transition/{appointment.id}", {"action": "complete"})
        assert "appointment_not_started" in early.headers["location"]

    async def test_a_failed_email_can_be_retried_once(self, client, session):
        message = OutboxMessage(kind="email", payload={"to": "a@example.com"}, failed_at=utcnow(), attempts=12)
        session.add(message)
        await session.commit()
        await signed_in_admin(client, session)
        page = await client.get(f"/admin/outbox-message/details/{message.id}")
        assert "Retry sending" in page.text
        done = await post(client, f"/admin/outbox-message/retry/{message.id}", {})
        assert "done=retry" in done.headers["location"]
        await session.refresh(message)
        assert message.failed_at is None and message.attempts == 0
        again = await post(client, f"/admin/outbox-message/retry/{message.id}", {})
        assert "outbox_not_failed" in again.headers["location"]
        assert (await client.get("/admin/audit-entry/list")).status_code == 200


class TestTotpSetUpOrder:
    async def test_each_step_in_its_turn(self, client, session):
        staff = await create_staff(session)
        headers = await _login_headers(client, staff.email)
        early = await client.post("/api/v1/auth/totp/enable", json={"code": "123456"}, headers=headers)
        assert early.status_code == 409 and early.json()["code"] == "totp_not_set_up"
        not_on = await client.post(
            "/api/v1/auth/totp/disable", json={"password": PASSWORD, "code": "123456"}, headers=headers
        )
        assert not_on.json()["code"] == "totp_not_enabled"
        first = (await client.post("/api/v1/auth/totp/setup", headers=headers)).json()["secret"]
        second = (await client.post("/api/v1/auth/totp/setup", headers=headers)).json()["secret"]
        assert first != second  # an unfinished set-up is replaced
        stale, _ = codes_for(first)
        wrong = await client.post("/api/v1/auth/totp/enable", json={"code": stale}, headers=headers)
        assert wrong.status_code == 400 and wrong.json()["code"] == "totp_invalid"
        now, _ = codes_for(second)
        assert (await client.post("/api/v1/auth/totp/enable", json={"code": now}, headers=headers)).status_code == 200
        again = await client.post("/api/v1/auth/totp/setup", headers=headers)
        assert again.status_code == 409 and again.json()["code"] == "totp_already_enabled"
        twice = await client.post("/api/v1/auth/totp/enable", json={"code": now}, headers=headers)
        assert twice.json()["code"] == "totp_already_enabled"


class TestTotpErasure:
    async def test_erasure_forgets_the_secret_and_the_recovery_codes(self, client, session):
        staff = await create_staff(session)
        headers = await _login_headers(client, staff.email)
        await enable_totp(client, headers)
        assert (await client.delete("/api/v1/users/me", headers=headers)).status_code == 204
        assert await session.scalar(select(TotpCredential.user_id)) is None
        assert await session.scalar(select(TotpRecoveryCode.id)) is None

    async def test_a_secret_sealed_under_another_key_leaves_the_recovery_codes(self, client, session, deploy_keys):
        staff = await create_staff(session)
        _, recovery, following = await enable_totp(client, await _login_headers(client, staff.email))
        deploy_keys(secrets.token_urlsafe(32))  # the sealing key dropped at once
        login = {"username": staff.email, "password": PASSWORD}
        stale = await client.post("/api/v1/auth/login", data=login | {"totp_code": following})
        assert stale.status_code == 400 and stale.json()["code"] == "totp_invalid"
        assert (await client.post("/api/v1/auth/login", data=login | {"totp_code": recovery[0]})).status_code == 200

    async def test_a_secret_opens_after_a_rotation_while_its_key_is_listed(self, client, session, deploy_keys):
        staff = await create_staff(session)
        _, _, following = await enable_totp(client, await _login_headers(client, staff.email))
        deploy_keys(secrets.token_urlsafe(32), get_settings().secret_key)
        login = {"username": staff.email, "password": PASSWORD, "totp_code": following}
        assert (await client.post("/api/v1/auth/login", data=login)).status_code == 200
