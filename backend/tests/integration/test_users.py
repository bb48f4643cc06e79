"""`/api/v1/users`: the caller's own profile and the admin's user management."""

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

import app.database
from app.config import Settings
from app.database import READ_POOL_APPLICATION_NAME
from app.models import OutboxMessage, Role, User
from tests.assertions import assert_invalid_grant, assert_problem, assert_unauthorized
from tests.factories import (
    PASSWORD,
    create_user,
    login,
    outbox,
    refresh,
    reload,
    start_session,
    unique_email,
)

DEAD_DATABASE = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens on port 1
USERS = "/api/v1/users"
ME = f"{USERS}/me"


@pytest.fixture
async def admin(session):
    user = await create_user(session, role=Role.admin)
    return await start_session(user)


class TestGetMe:
    async def test_profile(self, client, session):
        user = await create_user(session, full_name="Grace Hopper", phone="+1 555 0100", timezone="America/New_York")
        pair = await start_session(user)

        response = await client.get(ME, headers=pair.headers)

        assert response.status_code == 200
        body = response.json()
        assert body == {
            "id": str(user.id),
            "email": user.email,
            "full_name": "Grace Hopper",
            "phone": "+1 555 0100",
            "timezone": "America/New_York",
            "locale": "en",
            "role": "user",
            "is_active": True,
            "is_verified": True,
            "created_at": body["created_at"],
        }
        assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")

    async def test_requires_a_bearer_token(self, client):
        assert_unauthorized(await client.get(ME))

    # GET /me reads the caller outside the request session (one statement on the read pool); every change
    # committed to the row counts from the next request, the same token having worked just before.
    async def test_deactivation_counts_at_once(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

        user.is_active = False
        await session.commit()

        assert_unauthorized(await client.get(ME, headers=pair.headers))

    async def test_erasure_counts_at_once(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

        user.deleted_at = datetime.now(UTC)
        await session.commit()

        assert_unauthorized(await client.get(ME, headers=pair.headers))

    async def test_a_role_change_shows_at_once(self, client, session):
        user = await create_user(session, role=Role.staff)
        pair = await start_session(user)
        assert (await client.get(ME, headers=pair.headers)).json()["role"] == "staff"

        user.role = Role.user.value
        await session.commit()

        assert (await client.get(ME, headers=pair.headers)).json()["role"] == "user"

    async def test_revoking_every_session_counts_at_once(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

        user.tokens_valid_after = datetime.now(UTC)
        await session.commit()

        assert_unauthorized(await client.get(ME, headers=pair.headers))

    async def test_an_ended_login_counts_at_once(self, client, session):
        pair = await start_session(await create_user(session))
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

        assert (await client.post("/api/v1/auth/logout", headers=pair.headers)).status_code == 204

        assert_unauthorized(await client.get(ME, headers=pair.headers))

    async def test_survives_its_read_connections_being_cut(self, client, session):
        """A server restart leaves the read pool's connections dead: the read reconnects, no 5xx."""
        pair = await start_session(await create_user(session))
        assert (await client.get(ME, headers=pair.headers)).status_code == 200
        cut = await session.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": READ_POOL_APPLICATION_NAME},
        )
        assert cut >= 1

        for _ in range(3):
            assert (await client.get(ME, headers=pair.headers)).status_code == 200

    async def test_database_down_is_503(self, client, session, monkeypatch):
        pair = await start_session(await create_user(session))
        monkeypatch.setattr(app.database, "_read_pool", None)
        monkeypatch.setattr(app.database, "get_settings", lambda: Settings(database_url=DEAD_DATABASE))
        try:
            response = await client.get(ME, headers=pair.headers)
        finally:
            if app.database._read_pool is not None:
                await app.database._read_pool.close()

        assert_problem(response, 503, "database_unavailable")


class TestUpdateMe:
    async def test_editable_fields_are_saved(self, client, session):
        user = await create_user(session, phone="+49 30 1234567")
        pair = await start_session(user)
        changes = {"full_name": "  Ada King  ", "timezone": "Europe/Moscow", "locale": "ru"}

        response = await client.patch(ME, json=changes, headers=pair.headers)

        assert response.status_code == 200
        assert response.json()["full_name"] == "Ada King"
        user = await reload(session, user)
        assert (user.full_name, user.timezone, user.locale, user.phone) == (
            "Ada King",
            "Europe/Moscow",
            "ru",
            "+49 30 1234567",  # untouched: not in the request
        )

    async def test_phone_can_be_cleared(self, client, session):
        user = await create_user(session, phone="+49 30 1234567")
        pair = await start_session(user)

        response = await client.patch(ME, json={"phone": None}, headers=pair.headers)

        assert response.status_code == 200 and response.json()["phone"] is None
        assert (await reload(session, user)).phone is None

    @pytest.mark.parametrize(
        "change",
        [
            {"role": "admin"},
            {"email": "new@example.org"},
            {"is_active": False},
            {"is_verified": False},
            {"hashed_password": "x"},
            {"full_name": "Sneaky", "role": "admin"},
        ],
    )
    async def test_mass_assignment_changes_nothing(self, client, session, change):
        user = await create_user(session, full_name="Original Name")
        before = (user.email, user.role, user.is_active, user.full_name, user.hashed_password)
        pair = await start_session(user)

        body = assert_problem(await client.patch(ME, json=change, headers=pair.headers), 422, "validation_error")

        assert any(error["type"] == "extra_forbidden" for error in body["errors"])
        user = await reload(session, user)
        assert (user.email, user.role, user.is_active, user.full_name, user.hashed_password) == before
        assert user.is_verified

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"timezone": "Europe/Atlantis"}, "timezone"),
            ({"timezone": "CEST"}, "timezone"),
            ({"locale": "fr"}, "locale"),
            ({"phone": "call me maybe"}, "phone"),
            ({"full_name": ""}, "full_name"),
        ],
    )
    async def test_invalid_values(self, client, session, change, field):
        user = await create_user(session)
        pair = await start_session(user)

        body = assert_problem(await client.patch(ME, json=change, headers=pair.headers), 422, "validation_error")

        assert body["errors"][0]["loc"] == ["body", field]
        assert body["errors"][0]["msg"]
        assert (await reload(session, user)).timezone == "UTC"

    async def test_unknown_timezone_has_its_own_error_type(self, client, session):
        pair = await start_session(await create_user(session))

        body = assert_problem(
            await client.patch(ME, json={"timezone": "Europe/Atlantis"}, headers=pair.headers), 422, "validation_error"
        )

        assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", "timezone"], "unknown_timezone")]


class TestChangePassword:
    async def test_other_sessions_end_and_the_callers_stays(self, client, session):
        user = await create_user(session)
        caller = await start_session(user)
        other = await start_session(user)
        new_password = "a fresh passphrase for me"

        response = await client.post(
            f"{ME}/password", json={"current_password": PASSWORD, "new_password": new_password}, headers=caller.headers
        )

        assert response.status_code == 204
        assert (await client.get(ME, headers=caller.headers)).status_code == 200
        assert (await refresh(client, caller.refresh_token)).status_code == 200
        assert_unauthorized(await client.get(ME, headers=other.headers))
        assert_invalid_grant(await refresh(client, other.refresh_token), "invalid_refresh_token")
        assert (await reload(session, user)).hashed_password.startswith("$argon2id$")
        assert (await login(client, user.email, new_password)).status_code == 200

    async def test_wrong_current_password(self, client, session):
        user = await create_user(session)
        caller = await start_session(user)
        other = await start_session(user)
        before = user.hashed_password

        response = await client.post(
            f"{ME}/password",
            json={"current_password": "not my password", "new_password": "a fresh passphrase for me"},
            headers=caller.headers,
        )

        assert_problem(response, 400, "invalid_password")
        assert (await reload(session, user)).hashed_password == before
        assert (await client.get(ME, headers=other.headers)).status_code == 200

    @pytest.mark.parametrize(("new_password", "code"), [("trustno1", "weak_password"), ("short", "validation_error")])
    async def test_new_password_must_be_acceptable(self, client, session, new_password, code):
        user = await create_user(session)
        caller = await start_session(user)

        response = await client.post(
            f"{ME}/password", json={"current_password": PASSWORD, "new_password": new_password}, headers=caller.headers
        )

        assert_problem(response, 422, code)
        assert (await reload(session, user)).hashed_password == user.hashed_password


class TestExport:
    async def test_everything_stored_about_me(self, client, session):
        user = await create_user(session, full_name="Export Me", phone="+44 20 7946 0000", locale="ru")
        pair = await start_session(user)

        response = await client.get(f"{ME}/export", headers=pair.headers)

        assert response.status_code == 200
        body = response.json()
        assert body["user"]["id"] == str(user.id)
        assert body["user"]["email"] == user.email
        assert (body["user"]["full_name"], body["user"]["phone"], body["user"]["locale"]) == (
            "Export Me",
            "+44 20 7946 0000",
            "ru",
        )
        assert body["email_verified_at"] is not None and body["updated_at"]
        assert body["appointments"] == []


class TestDeleteMe:
    async def test_account_is_anonymised_and_every_session_ends(self, client, session):
        user = await create_user(session, full_name="Forget Me", phone="+1 555 0199")
        email = user.email
        pair = await start_session(user)
        other = await start_session(user)

        assert (await client.delete(ME, headers=pair.headers)).status_code == 204

        user = await reload(session, user)
        assert user.email != email and email.split("@")[0] not in user.email
        assert user.full_name != "Forget Me" and user.phone is None
        assert not user.is_active and user.deleted_at is not None
        for tokens in (pair, other):
            assert_unauthorized(await client.get(ME, headers=tokens.headers))
            assert_invalid_grant(await refresh(client, tokens.refresh_token), "invalid_refresh_token")
        assert_invalid_grant(await login(client, email), "invalid_credentials")
        assert await session.scalar(select(User).where(User.email == email)) is None

    async def test_mail_to_the_erased_address_is_forgotten_and_never_sent(self, client, session):
        user = await create_user(session, full_name="Forget Me")
        headers = (await start_session(user)).headers
        sent = OutboxMessage(
            kind="email",
            payload={
                "to": user.email,
                "template": "verify_email",
                "locale": "en",
                "context": {"full_name": "Forget Me"},
            },
            sent_at=datetime.now(UTC),
        )
        pending = OutboxMessage(
            kind="email",
            payload={"to": user.email, "template": "password_reset", "locale": "en", "context": {"link": "secret"}},
        )
        unrelated = OutboxMessage(kind="email", payload={"to": "someone@else.org", "template": "t", "context": {}})
        session.add_all([sent, pending, unrelated])
        await session.commit()

        assert (await client.delete(ME, headers=headers)).status_code == 204

        for row in (sent, pending, unrelated):
            await session.refresh(row)
        assert sent.payload == {"to": "[erased]", "template": "verify_email", "locale": "en", "context": {}}
        assert sent.failed_at is None  # it was delivered; only its content is gone
        assert pending.payload["to"] == "[erased]" and pending.failed_at is not None and pending.sent_at is None
        assert unrelated.payload["to"] == "someone@else.org" and unrelated.failed_at is None

    async def test_the_address_can_register_again(self, client, session):
        user = await create_user(session)
        email = user.email
        await client.delete(ME, headers=(await start_session(user)).headers)

        response = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "Back Again"}
        )

        assert response.status_code == 202
        assert [m.payload["template"] for m in await outbox(session, to=email)] == ["verify_email"]


class TestListUsers:
    async def test_page_envelope_and_order(self, client, session, admin):
        created = [await create_user(session) for _ in range(4)]

        response = await client.get(USERS, params={"limit": 2, "offset": 1}, headers=admin.headers)

        assert response.status_code == 200
        body = response.json()
        assert body.keys() == {"items", "total", "limit", "offset"}
        assert (body["total"], body["limit"], body["offset"]) == (5, 2, 1)  # four users and the admin
        assert [item["id"] for item in body["items"]] == [str(u.id) for u in created[:2]]  # oldest first

    async def test_default_limit_is_50(self, client, admin):
        body = (await client.get(USERS, headers=admin.headers)).json()
        assert (body["limit"], body["offset"], body["total"]) == (50, 0, 1)

    @pytest.mark.parametrize("params", [{"limit": 201}, {"limit": 0}, {"offset": -1}, {"role": "superuser"}])
    async def test_bad_parameters(self, client, admin, params):
        assert_problem(await client.get(USERS, params=params, headers=admin.headers), 422, "validation_error")

    async def test_filter_by_role(self, client, session, admin):
        staff = [await create_user(session, role=Role.staff) for _ in range(2)]
        await create_user(session)

        body = (await client.get(USERS, params={"role": "staff"}, headers=admin.headers)).json()

        assert body["total"] == 2
        assert {item["id"] for item in body["items"]} == {str(u.id) for u in staff}
        assert {item["role"] for item in body["items"]} == {"staff"}

    async def test_search_email_and_name(self, client, session, admin):
        by_name = await create_user(session, full_name="Marie Curie")
        by_email = await create_user(session, email="mcurie.fan@example.org", full_name="Someone Else")
        await create_user(session, full_name="Pierre", email="pierre@example.org")

        body = (await client.get(USERS, params={"q": "CURIE"}, headers=admin.headers)).json()

        assert {item["id"] for item in body["items"]} == {str(by_name.id), str(by_email.id)}
        assert body["total"] == 2

    async def test_search_wildcards_are_literal(self, client, session, admin):
        await create_user(session, full_name="Plain Name")
        body = (await client.get(USERS, params={"q": "%"}, headers=admin.headers)).json()
        assert body["total"] == 0

    async def test_erased_accounts_are_not_listed(self, client, session, admin):
        gone = await create_user(session)
        await client.delete(ME, headers=(await start_session(gone)).headers)

        body = (await client.get(USERS, headers=admin.headers)).json()

        assert str(gone.id) not in {item["id"] for item in body["items"]}


ADMIN_ROUTES = [
    ("GET", USERS, None),
    ("POST", USERS, {"email": "x@example.org", "password": PASSWORD, "full_name": "X"}),
    ("GET", f"{USERS}/{{id}}", None),
    ("PATCH", f"{USERS}/{{id}}", {"role": "admin"}),
    ("DELETE", f"{USERS}/{{id}}", None),
]


class TestAdminOnly:
    @pytest.mark.parametrize("role", [Role.user, Role.staff])
    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_other_roles_are_forbidden(self, client, session, role, method, path, body):
        caller = await create_user(session, role=role)
        pair = await start_session(caller)

        response = await client.request(method, path.format(id=caller.id), json=body, headers=pair.headers)

        assert_problem(response, 403, "forbidden")
        caller = await reload(session, caller)
        assert caller.role == role and caller.is_active
        assert await session.scalar(select(User).where(User.email == "x@example.org")) is None

    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_anonymous_is_unauthorized(self, client, method, path, body):
        assert_unauthorized(await client.request(method, path.format(id=uuid.uuid4()), json=body))


class TestCreateUser:
    async def test_create_an_unverified_staff_member(self, client, session, admin):
        email = unique_email()
        payload = {
            "email": email.upper(),
            "password": "staff member passphrase",
            "full_name": "New Specialist",
            "role": "staff",
            "is_verified": False,
            "timezone": "Europe/Berlin",
        }

        response = await client.post(USERS, json=payload, headers=admin.headers)

        assert response.status_code == 201
        body = response.json()
        assert (body["email"], body["role"], body["is_verified"], body["timezone"]) == (
            email,
            "staff",
            False,
            "Europe/Berlin",
        )
        created = await session.get(User, uuid.UUID(body["id"]))
        assert created.hashed_password.startswith("$argon2id$") and created.role == "staff"
        assert_problem(await login(client, email, "staff member passphrase"), 403, "email_not_verified")

    async def test_verified_by_default(self, client, admin):
        payload = {"email": unique_email(), "password": "user passphrase here", "full_name": "Plain User"}
        body = (await client.post(USERS, json=payload, headers=admin.headers)).json()
        assert (body["role"], body["is_verified"], body["is_active"]) == ("user", True, True)

    async def test_taken_email_is_a_conflict(self, client, session, admin):
        existing = await create_user(session)
        payload = {"email": existing.email.upper(), "password": "user passphrase here", "full_name": "Dup"}
        assert_problem(await client.post(USERS, json=payload, headers=admin.headers), 409, "email_taken")

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            ({"password": "football"}, "weak_password"),
            ({"role": "root"}, "validation_error"),
            ({"email": "not-an-email"}, "validation_error"),
            ({"timezone": "Nowhere/Special"}, "validation_error"),
        ],
    )
    async def test_invalid_input(self, client, session, admin, change, code):
        payload = {"email": unique_email(), "password": "user passphrase here", "full_name": "Someone", **change}
        assert_problem(await client.post(USERS, json=payload, headers=admin.headers), 422, code)
        assert await session.scalar(select(User).where(User.full_name == "Someone")) is None


class TestGetUser:
    async def test_by_id(self, client, session, admin):
        user = await create_user(session, role=Role.staff)
        response = await client.get(f"{USERS}/{user.id}", headers=admin.headers)
        assert response.status_code == 200
        assert (response.json()["id"], response.json()["role"]) == (str(user.id), "staff")

    async def test_unknown_id(self, client, admin):
        assert_problem(await client.get(f"{USERS}/{uuid.uuid4()}", headers=admin.headers), 404, "not_found")

    async def test_malformed_id(self, client, admin):
        assert_problem(await client.get(f"{USERS}/42", headers=admin.headers), 422, "validation_error")


class TestUpdateUser:
    async def test_role_change_ends_the_users_sessions(self, client, session, admin):
        user = await create_user(session)
        pair = await start_session(user)

        response = await client.patch(f"{USERS}/{user.id}", json={"role": "staff"}, headers=admin.headers)

        assert response.status_code == 200 and response.json()["role"] == "staff"
        assert (await reload(session, user)).role == "staff"
        # The old access token says "user": it must not outlive the change.
        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
        fresh = await start_session(user)
        assert (await client.get(ME, headers=fresh.headers)).json()["role"] == "staff"

    async def test_deactivation_ends_the_users_sessions_at_once(self, client, session, admin):
        user = await create_user(session)
        pair = await start_session(user)

        response = await client.patch(f"{USERS}/{user.id}", json={"is_active": False}, headers=admin.headers)

        assert response.status_code == 200 and response.json()["is_active"] is False
        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
        assert_problem(await login(client, user.email), 403, "inactive_user")

    async def test_reactivation(self, client, session, admin):
        user = await create_user(session, active=False)
        response = await client.patch(f"{USERS}/{user.id}", json={"is_active": True}, headers=admin.headers)
        assert response.status_code == 200
        assert (await reload(session, user)).is_active

    async def test_profile_fields_leave_sessions_alone(self, client, session, admin):
        user = await create_user(session)
        pair = await start_session(user)

        response = await client.patch(
            f"{USERS}/{user.id}", json={"full_name": "Renamed", "locale": "ru"}, headers=admin.headers
        )

        assert response.status_code == 200
        assert (response.json()["full_name"], response.json()["locale"]) == ("Renamed", "ru")
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

    @pytest.mark.parametrize("change", [{"email": "other@example.org"}, {"hashed_password": "x"}, {"role": "god"}])
    async def test_refused_fields(self, client, session, admin, change):
        user = await create_user(session)
        before = (user.email, user.role, user.hashed_password)
        assert_problem(
            await client.patch(f"{USERS}/{user.id}", json=change, headers=admin.headers), 422, "validation_error"
        )
        user = await reload(session, user)
        assert (user.email, user.role, user.hashed_password) == before

    async def test_unknown_id(self, client, admin):
        response = await client.patch(f"{USERS}/{uuid.uuid4()}", json={"role": "staff"}, headers=admin.headers)
        assert_problem(response, 404, "not_found")


class TestDeactivateUser:
    async def test_deactivates_and_ends_sessions_at_once(self, client, session, admin):
        user = await create_user(session)
        pair = await start_session(user)

        assert (await client.delete(f"{USERS}/{user.id}", headers=admin.headers)).status_code == 204

        user = await reload(session, user)
        assert not user.is_active and user.deleted_at is None  # deactivated, not erased
        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")

    async def test_unknown_id(self, client, admin):
        assert_problem(await client.delete(f"{USERS}/{uuid.uuid4()}", headers=admin.headers), 404, "not_found")

    async def test_admin_tokens_still_work_afterwards(self, client, session, admin):
        user = await create_user(session)
        await client.delete(f"{USERS}/{user.id}", headers=admin.headers)
        assert (await client.get(ME, headers=admin.headers)).status_code == 200


class TestAdminSelfLockout:
    """An admin cannot take away their own powers: with one admin left, nobody could give them back."""

    @pytest.mark.parametrize("change", [{"role": "staff"}, {"is_active": False}])
    async def test_demoting_or_deactivating_oneself_is_refused(self, client, session, change):
        me = await create_user(session, role=Role.admin)
        pair = await start_session(me)

        assert_problem(await client.patch(f"{USERS}/{me.id}", json=change, headers=pair.headers), 409, "self_lockout")

        me = await reload(session, me)
        assert (me.role, me.is_active) == ("admin", True)
        assert (await client.get(ME, headers=pair.headers)).status_code == 200

    async def test_deleting_oneself_is_refused(self, client, session):
        me = await create_user(session, role=Role.admin)
        pair = await start_session(me)

        assert_problem(await client.delete(f"{USERS}/{me.id}", headers=pair.headers), 409, "self_lockout")

        assert (await reload(session, me)).is_active

    async def test_editing_ones_own_profile_is_fine(self, client, session):
        me = await create_user(session, role=Role.admin)
        pair = await start_session(me)

        response = await client.patch(f"{USERS}/{me.id}", json={"full_name": "Still Admin"}, headers=pair.headers)

        assert response.status_code == 200 and response.json()["role"] == "admin"


class TestConcurrentAdminCreate:
    async def test_the_same_email_twice_at_once_gives_one_201_and_one_409(self, client, session, admin):
        body = {"email": "twice@example.org", "password": "a long unusual passphrase", "full_name": "Twice"}

        first, second = await asyncio.gather(
            client.post(USERS, json=body, headers=admin.headers), client.post(USERS, json=body, headers=admin.headers)
        )

        assert sorted([first.status_code, second.status_code]) == [201, 409]
        loser = first if first.status_code == 409 else second
        assert_problem(loser, 409, "email_taken")
