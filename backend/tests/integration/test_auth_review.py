"""Regression tests from the security review of accounts and auth: each class pins one problem that was found."""

import asyncio

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.models import User
from app.services.accounts import auth
from tests.assertions import assert_invalid_grant, assert_problem, assert_unauthorized
from tests.factories import (
    PASSWORD,
    bearer,
    create_user,
    login,
    mailed_token,
    outbox,
    refresh,
    start_session,
    unique_email,
)

AUTH = "/api/v1/auth"
ME = "/api/v1/users/me"
RESET = f"{AUTH}/password-reset"
NEW_PASSWORD = "a brand new passphrase"


class TestAccountEmailIsDoneBeforeTheAnswer:
    """Reset, resend and register used to do their work after the answer (a background task), which a
    restart lost; now it is committed before the 202 leaves, alike for known and unknown addresses
    (their times are printed by test_account_email_timing.py)."""

    @pytest.fixture
    async def recorded(self, app, monkeypatch):
        events: list[str] = []
        lookup = auth.get_user_by_email

        async def noted_lookup(session, email):
            events.append("lookup")
            return await lookup(session, email)

        monkeypatch.setattr(auth, "get_user_by_email", noted_lookup)

        async def recording_app(scope, receive, send):
            async def noted_send(message):
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    events.append("answered")

            await app(scope, receive, noted_send)

        transport = ASGITransport(app=recording_app, client=("203.0.113.7", 50000))
        async with AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, events

    @pytest.mark.parametrize(
        ("path", "payload"),
        [
            (RESET, lambda email: {"email": email}),
            (f"{AUTH}/verify-email/resend", lambda email: {"email": email}),
            (
                f"{AUTH}/register",
                lambda email: {"email": email, "password": "a long unusual passphrase", "full_name": "Ada"},
            ),
        ],
        ids=["password-reset", "resend", "register"],
    )
    async def test_the_work_is_committed_before_the_answer_leaves(self, recorded, session, path, payload):
        http, events = recorded
        known = await create_user(session, verified=False)
        answers = []
        for email in (known.email, unique_email()):
            events.clear()
            answers.append(await http.post(path, json=payload(email)))
            assert events == ["lookup", "answered"]

        assert answers[0].status_code == answers[1].status_code == 202
        assert answers[0].json() == answers[1].json()
        assert len(await outbox(session, to=known.email)) == 1

    async def test_a_weak_password_is_still_refused_in_the_answer(self, client, session):
        email = unique_email()
        response = await client.post(
            f"{AUTH}/register", json={"email": email, "password": "password1", "full_name": "Ada"}
        )
        assert_problem(response, 422, "weak_password")
        assert await outbox(session) == []


class TestConcurrentRegistration:
    """Two registrations racing for a new address made the loser a 500 (unique violation), which told the
    racer the address had been free; now every racer gets the same 202 and the owner one account."""

    async def test_every_racer_gets_the_same_answer_and_one_account_is_made(self, client, session):
        email = unique_email()
        body = {"email": email, "password": "a long unusual passphrase", "full_name": "Ada"}

        answers = await asyncio.gather(*(client.post(f"{AUTH}/register", json=body) for _ in range(3)))

        assert [a.status_code for a in answers] == [202, 202, 202]
        assert answers[0].json() == answers[1].json() == answers[2].json()
        assert await session.scalar(select(func.count()).select_from(User).where(User.email == email)) == 1
        templates = sorted(m.payload["template"] for m in await outbox(session, to=email))
        assert templates == ["already_registered", "already_registered", "verify_email"]


class TestPasswordGuessingLimitUnderConcurrency:
    """The per-email limit was checked before and counted after the (slow) hash check, so a burst of
    concurrent guesses all passed it: 20 parallel wrong passwords were all evaluated, not 5."""

    async def test_a_burst_of_guesses_gets_no_more_than_five_evaluated(self, client, session):
        user = await create_user(session)

        answers = await asyncio.gather(*(login(client, user.email, f"guess number {n}") for n in range(20)))

        codes = [a.json()["code"] for a in answers]
        assert codes.count("invalid_credentials") == 5, codes
        assert codes.count("rate_limited") == 15, codes
        assert_problem(await login(client, user.email), 429, "rate_limited")

    async def test_guessing_the_current_password_with_a_stolen_token_is_limited(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)

        async def change(current: str):
            return await client.post(
                f"{ME}/password",
                json={"current_password": current, "new_password": NEW_PASSWORD},
                headers=pair.headers,
            )

        for n in range(5):
            assert_problem(await change(f"guess number {n}"), 400, "invalid_password")
        blocked = await change(PASSWORD)

        assert_problem(blocked, 429, "rate_limited")
        assert int(blocked.headers["retry-after"]) > 0
        assert_problem(await login(client, user.email), 429, "rate_limited")  # one limit per account

    async def test_a_nul_in_the_username_is_a_wrong_credential_not_a_500(self, client):
        assert_invalid_grant(await login(client, "a\x00b@example.org", "anything at all"), "invalid_credentials")


class TestRefreshRotation:
    async def test_without_a_grace_window_concurrent_refreshes_give_at_most_one_pair(
        self, client, session, monkeypatch
    ):
        monkeypatch.setattr(get_settings(), "refresh_reuse_grace_seconds", 0)  # with one: test_refresh_grace.py
        pair = await start_session(await create_user(session))

        answers = await asyncio.gather(*(refresh(client, pair.refresh_token) for _ in range(8)))

        winners = [a for a in answers if a.status_code == 200]
        assert len(winners) <= 1
        for loser in (a for a in answers if a.status_code != 200):
            assert loser.json()["code"] in {"token_reused", "invalid_refresh_token"}
        for winner in winners:  # the replay revoked the login, the winner's pair included
            assert_invalid_grant(await refresh(client, winner.json()["refresh_token"]), "invalid_refresh_token")
            assert_unauthorized(await client.get(ME, headers=bearer(winner.json()["access_token"])))

    async def test_a_database_failure_does_not_burn_the_refresh_token(self, client, session, monkeypatch):
        """The token used to be spent in Redis before the user was read: a passing database error made the
        client's retry look like a replay, and the whole login was revoked."""
        pair = await start_session(await create_user(session))

        async def database_down(*args, **kwargs):
            raise OperationalError("SELECT", {}, ConnectionRefusedError("database down"))

        monkeypatch.setattr(AsyncSession, "get", database_down)
        assert_problem(await refresh(client, pair.refresh_token), 503, "database_unavailable")
        monkeypatch.undo()

        retry = await refresh(client, pair.refresh_token)

        assert retry.status_code == 200, retry.text
        assert (await client.get(ME, headers=bearer(retry.json()["access_token"]))).status_code == 200


class TestResetLinksAfterThePasswordChanged:
    """Every reset link mailed earlier stayed usable for its hour after a reset or a password change."""

    async def _two_reset_links(self, client, session, user) -> tuple[str, str]:
        tokens_seen = []
        for _ in range(2):
            await client.post(RESET, json={"email": user.email})
            tokens_seen.append(await mailed_token(session, user.email, "password_reset"))
        return tokens_seen[0], tokens_seen[1]

    async def _confirm(self, client, token: str, password: str):
        return await client.post(f"{RESET}/confirm", json={"token": token, "new_password": password})

    async def test_a_reset_voids_the_other_links(self, client, session):
        user = await create_user(session)
        older, newer = await self._two_reset_links(client, session, user)

        assert (await self._confirm(client, newer, NEW_PASSWORD)).status_code == 204

        assert_problem(await self._confirm(client, older, "an attackers passphrase"), 400, "invalid_token")
        assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200

    async def test_a_password_change_voids_pending_links(self, client, session):
        user = await create_user(session)
        older, newer = await self._two_reset_links(client, session, user)
        pair = await start_session(user)

        changed = await client.post(
            f"{ME}/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=pair.headers
        )

        assert changed.status_code == 204
        for token in (older, newer):
            assert_problem(await self._confirm(client, token, "an attackers passphrase"), 400, "invalid_token")

    async def test_a_deactivated_account_cannot_be_reset(self, client, session):
        user = await create_user(session)
        await client.post(RESET, json={"email": user.email})
        token = await mailed_token(session, user.email, "password_reset")
        user.is_active = False
        await session.commit()

        assert_problem(await self._confirm(client, token, NEW_PASSWORD), 400, "invalid_token")


class TestPerIPLimitsBehindProxies:
    """`X-Forwarded-For` read only its first header line, and IPv6 clients were counted per address."""

    @pytest.fixture(autouse=True)
    def _behind_our_proxy(self, monkeypatch):
        monkeypatch.setattr(get_settings(), "trusted_proxies", ["203.0.113.0/24"])

    async def _reset(self, client, headers):
        return await client.post(RESET, json={"email": unique_email()}, headers=headers)

    async def test_a_client_written_line_before_the_proxys_line_is_not_believed(self, client):
        # A proxy that adds its own header line (HAProxy's `option forwardfor`) after the client's.
        for n in range(10):
            headers = [("X-Forwarded-For", f"198.51.100.{n}"), ("X-Forwarded-For", "192.0.2.10")]
            assert (await self._reset(client, headers)).status_code == 202

        spoofed = await self._reset(client, [("X-Forwarded-For", "198.51.100.99"), ("X-Forwarded-For", "192.0.2.10")])

        assert_problem(spoofed, 429, "rate_limited")

    async def test_one_ipv6_subscriber_is_one_client(self, client):
        for n in range(10):
            assert (await self._reset(client, {"X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"})).status_code == 202

        same_slash_64 = await self._reset(client, {"X-Forwarded-For": "2001:db8:1:2:ffff::1"})
        other_slash_64 = await self._reset(client, {"X-Forwarded-For": "2001:db8:1:3::1"})

        assert_problem(same_slash_64, 429, "rate_limited")
        assert other_slash_64.status_code == 202

    async def test_ipv4_mapped_addresses_are_their_ipv4_address(self, client):
        for _ in range(10):
            assert (await self._reset(client, {"X-Forwarded-For": "::ffff:198.51.100.1"})).status_code == 202

        same_client = await self._reset(client, {"X-Forwarded-For": "198.51.100.1"})
        other_client = await self._reset(client, {"X-Forwarded-For": "::ffff:198.51.100.2"})

        assert_problem(same_client, 429, "rate_limited")
        assert other_client.status_code == 202
