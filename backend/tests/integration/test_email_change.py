"""`POST /users/me/email` and `POST /auth/email-change/confirm`: the new address counts only once confirmed."""

import pytest
from sqlalchemy import select

from app.models import ActionToken, AuditEntry
from app.services.messaging.mailer import render
from tests.assertions import assert_problem
from tests.factories import PASSWORD, create_user, login, mailed_token, outbox, reload, start_session, unique_email

EMAIL = "/api/v1/users/me/email"
CONFIRM = "/api/v1/auth/email-change/confirm"


async def ask(client, pair, new_email: str, password: str = PASSWORD):
    return await client.post(EMAIL, json={"new_email": new_email, "password": password}, headers=pair.headers)


class TestRequest:
    async def test_the_new_address_gets_a_link_and_the_old_one_is_told(self, client, session):
        user = await create_user(session)
        old, new = user.email, unique_email()

        answer = await ask(client, await start_session(user), new.upper())

        assert answer.status_code == 202, answer.text
        assert (await reload(session, user)).email == old  # nothing changes before the confirmation
        assert [m.payload["template"] for m in await outbox(session, to=new)] == ["email_change_verify"]
        [notice] = await outbox(session, to=old)
        assert notice.payload["template"] == "email_change_requested"
        assert notice.payload["context"]["new_email"] == new

    async def test_a_taken_address_is_answered_like_a_free_one(self, client, session):
        user, owner = await create_user(session), await create_user(session)
        pair = await start_session(user)

        taken = await ask(client, pair, owner.email)
        free = await ask(client, pair, unique_email())

        assert taken.status_code == free.status_code == 202
        assert taken.json() == free.json()
        assert [m.payload["template"] for m in await outbox(session, to=owner.email)] == ["email_change_taken"]
        assert (await reload(session, owner)).email == owner.email

    async def test_a_wrong_password_is_refused(self, client, session):
        user = await create_user(session)
        assert_problem(
            await ask(client, await start_session(user), unique_email(), "not my password"), 400, "invalid_password"
        )
        assert await outbox(session) == []

    async def test_the_same_address_changes_nothing(self, client, session):
        user = await create_user(session)
        assert (await ask(client, await start_session(user), user.email)).status_code == 202
        assert await outbox(session) == []

    async def test_unauthenticated_is_401(self, client):
        response = await client.post(EMAIL, json={"new_email": unique_email(), "password": PASSWORD})
        assert response.status_code == 401


class TestConfirm:
    async def test_the_link_moves_the_account_and_the_old_address_is_told(self, client, session):
        user = await create_user(session, verified=False)
        pair = await start_session(user)
        old, new = user.email, unique_email()
        await ask(client, pair, new)

        confirmed = await client.post(CONFIRM, json={"token": await mailed_token(session, new, "email_change_verify")})

        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["email"] == new and confirmed.json()["is_verified"]
        assert (await login(client, new)).status_code == 200
        assert_problem(await login(client, old), 400, "invalid_credentials")
        assert [m.payload["template"] for m in await outbox(session, to=old)] == [
            "email_change_requested",
            "email_changed",
        ]
        assert (await client.get("/api/v1/users/me", headers=pair.headers)).status_code == 200  # sessions stay
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "user.email_change"))
        assert entry is not None and entry.before == {"email": old} and entry.after == {"email": new}

    async def test_the_link_works_once(self, client, session):
        user = await create_user(session)
        new = unique_email()
        await ask(client, await start_session(user), new)
        token = await mailed_token(session, new, "email_change_verify")
        assert (await client.post(CONFIRM, json={"token": token})).status_code == 200
        assert_problem(await client.post(CONFIRM, json={"token": token}), 400, "invalid_token")

    async def test_only_the_latest_request_can_be_confirmed(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        first, second = unique_email(), unique_email()
        await ask(client, pair, first)
        await ask(client, pair, second)
        stale = await mailed_token(session, first, "email_change_verify")
        assert_problem(await client.post(CONFIRM, json={"token": stale}), 400, "invalid_token")

    async def test_an_address_taken_meanwhile_is_a_conflict(self, client, session):
        user = await create_user(session)
        new = unique_email()
        await ask(client, await start_session(user), new)
        await create_user(session, email=new)
        token = await mailed_token(session, new, "email_change_verify")
        assert_problem(await client.post(CONFIRM, json={"token": token}), 409, "email_taken")
        assert (await reload(session, user)).email != new

    async def test_reset_links_mailed_to_the_old_address_stop_working(self, client, session):
        user = await create_user(session)
        new = unique_email()
        assert (await client.post("/api/v1/auth/password-reset", json={"email": user.email})).status_code == 202
        reset = await mailed_token(session, user.email, "password_reset")
        await ask(client, await start_session(user), new)
        await client.post(CONFIRM, json={"token": await mailed_token(session, new, "email_change_verify")})

        body = {"token": reset, "new_password": "an entirely new passphrase"}
        assert_problem(await client.post("/api/v1/auth/password-reset/confirm", json=body), 400, "invalid_token")


async def test_erasure_forgets_a_pending_change(client, session):
    user = await create_user(session)
    pair = await start_session(user)
    await ask(client, pair, unique_email())

    assert (await client.delete("/api/v1/users/me", headers=pair.headers)).status_code == 204

    assert await session.scalar(select(ActionToken.new_email).where(ActionToken.new_email.is_not(None))) is None


CONTEXT = {
    "full_name": "Ada Lovelace",
    "new_email": "ada@new.example",
    "link": "https://app.test/x?token=t",
    "expires_hours": 48,
}
PREFIXES = {
    ("email_change_verify", "en"): "Email change: ",
    ("email_change_verify", "ru"): "Смена адреса: ",
    ("email_change_requested", "en"): "Email change requested: ",
    ("email_change_requested", "ru"): "Запрошена смена адреса: ",
    ("email_changed", "en"): "Email changed: ",
    ("email_changed", "ru"): "Адрес изменён: ",
    ("email_change_taken", "en"): "Email change refused: ",
    ("email_change_taken", "ru"): "Смена адреса отклонена: ",
}


@pytest.mark.parametrize(("template", "locale"), sorted(PREFIXES))
def test_templates_start_their_subject_with_the_kind(template, locale):
    email = render(template, locale, CONTEXT)
    assert email.subject.startswith(PREFIXES[template, locale])
    assert "ada@new.example" in email.text and "ada@new.example" in email.html
    if template == "email_change_verify":
        assert CONTEXT["link"] in email.text
