"""`/api/v1/auth`: every row of API.md's auth table, failure rows included."""

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import select, update

from app.config import get_settings
from app.models import ActionToken, Role, User
from app.redis import get_redis
from app.services.accounts import tokens
from app.utils.keys import keyring
from app.utils.security import token_digest
from tests.assertions import assert_invalid_grant, assert_problem, assert_unauthorized
from tests.factories import (
    PASSWORD,
    bearer,
    create_user,
    hashed,
    login,
    login_session,
    mailed_token,
    outbox,
    refresh,
    reload,
    start_session,
    unique_email,
)

AUTH = "/api/v1/auth"
ME = "/api/v1/users/me"


def refresh_key(token: str) -> str:
    """Where Redis keeps a refresh token's record (see app/services/accounts/tokens.py)."""
    return f"refresh:{{{token.split('.')[0]}}}:{token_digest(token)}"


async def register(client, email: str, password: str = "a long unusual passphrase", **extra):
    return await client.post(
        f"{AUTH}/register", json={"email": email, "password": password, "full_name": "Ada Lovelace", **extra}
    )


class TestRegister:
    async def test_new_and_taken_email_get_the_same_answer(self, client, session):
        existing = await create_user(session, full_name="Old Owner")
        new_email = unique_email()

        taken = await register(client, existing.email.upper())
        fresh = await register(client, new_email, timezone="Europe/Berlin", locale="ru")

        assert taken.status_code == fresh.status_code == 202
        assert taken.json() == fresh.json()
        assert [m.payload["template"] for m in await outbox(session, to=existing.email)] == ["already_registered"]
        assert [m.payload["template"] for m in await outbox(session, to=new_email)] == ["verify_email"]
        assert (await reload(session, existing)).full_name == "Old Owner"
        created = await session.scalar(select(User).where(User.email == new_email))
        assert created is not None and not created.is_verified and created.role == Role.user
        assert (created.timezone, created.locale) == ("Europe/Berlin", "ru")
        assert created.hashed_password.startswith("$argon2id$")

    async def test_email_is_stored_lower_case(self, client, session):
        email = unique_email()
        assert (await register(client, email.upper())).status_code == 202
        assert await session.scalar(select(User.email).where(User.email == email)) == email

    @pytest.mark.parametrize("password", ["password1", "QWERTY123", "iloveyou1"])
    async def test_common_password_is_weak(self, client, session, password):
        email = unique_email()
        assert_problem(await register(client, email, password), 422, "weak_password")
        assert await session.scalar(select(User).where(User.email == email)) is None
        assert await outbox(session) == []

    @pytest.mark.parametrize(
        ("password", "status"),
        [
            ("x7#kQ2!", 422),  # 7 characters
            ("x7#kQ2!m", 202),  # 8
            ("пароль с пробелами ✓", 202),  # Unicode and spaces are fine
            ("g" * 64 + "7Kq!" * 16, 202),  # 128
            ("g" * 64 + "7Kq!" * 16 + "z", 422),  # 129
        ],
    )
    async def test_password_length_is_8_to_128_characters(self, client, password, status):
        response = await register(client, unique_email(), password)
        if status == 422:
            body = assert_problem(response, 422, "validation_error")
            assert body["errors"][0]["loc"] == ["body", "password"]
        else:
            assert response.status_code == 202

    @pytest.mark.parametrize(
        "extra",
        [{"timezone": "Mars/Olympus_Mons"}, {"locale": "de"}, {"role": "admin"}, {"is_verified": True}],
    )
    async def test_invalid_or_unknown_fields_are_refused(self, client, session, extra):
        email = unique_email()
        assert_problem(await register(client, email, **extra), 422, "validation_error")
        assert await session.scalar(select(User).where(User.email == email)) is None

    async def test_sixth_attempt_for_one_email_is_rate_limited(self, client):
        email = unique_email()
        for _ in range(5):  # weak passwords: each attempt counts, none costs a hash
            assert (await register(client, email, "password1")).status_code == 422
        response = await register(client, email, "password1")
        assert_problem(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) > 0


class TestVerifyEmail:
    async def test_registration_then_verification_then_login(self, client, session):
        email = unique_email()
        assert (await register(client, email, PASSWORD)).status_code == 202
        token = await mailed_token(session, email, "verify_email")

        response = await client.post(f"{AUTH}/verify-email", json={"token": token})

        assert response.status_code == 200
        body = response.json()
        assert body["email"] == email and body["is_verified"] is True and body["role"] == "user"
        user = await session.scalar(select(User).where(User.email == email))
        assert user.email_verified_at is not None
        signed_in = await login_session(client, email)
        assert (await client.get(ME, headers=signed_in.headers)).json()["email"] == email

    async def test_token_is_single_use(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/verify-email/resend", json={"email": user.email})
        token = await mailed_token(session, user.email, "verify_email")

        assert (await client.post(f"{AUTH}/verify-email", json={"token": token})).status_code == 200
        again = await client.post(f"{AUTH}/verify-email", json={"token": token})

        assert_problem(again, 400, "invalid_token")

    async def test_expired_token_is_refused(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/verify-email/resend", json={"email": user.email})
        token = await mailed_token(session, user.email, "verify_email")
        await session.execute(
            update(ActionToken)
            .where(ActionToken.token_hash == token_digest(token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()

        assert_problem(await client.post(f"{AUTH}/verify-email", json={"token": token}), 400, "invalid_token")
        assert not (await reload(session, user)).is_verified

    async def test_token_expires_after_48_hours(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/verify-email/resend", json={"email": user.email})
        token = await mailed_token(session, user.email, "verify_email")
        row = await session.get(ActionToken, token_digest(token))
        assert timedelta(hours=47, minutes=59) < row.expires_at - datetime.now(UTC) <= timedelta(hours=48)

    async def test_unknown_token_and_reset_token_are_refused(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/password-reset", json={"email": user.email})
        reset_token = await mailed_token(session, user.email, "password_reset")

        for token in ("not-a-token", reset_token):
            assert_problem(await client.post(f"{AUTH}/verify-email", json={"token": token}), 400, "invalid_token")
        assert not (await reload(session, user)).is_verified


class TestResendVerification:
    async def test_answer_is_the_same_and_only_unverified_accounts_get_mail(self, client, session):
        unverified = await create_user(session, verified=False)
        verified = await create_user(session)
        unknown = unique_email()

        answers = [
            await client.post(f"{AUTH}/verify-email/resend", json={"email": email})
            for email in (unverified.email, verified.email, unknown)
        ]

        assert {r.status_code for r in answers} == {202}
        assert answers[0].json() == answers[1].json() == answers[2].json()
        assert [m.payload["to"] for m in await outbox(session)] == [unverified.email]


class TestLogin:
    async def test_password_grant_answers_a_bearer_pair(self, client, session):
        user = await create_user(session)

        response = await login(client, user.email.upper())

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body.keys() == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == get_settings().access_token_expire_minutes * 60 == 900
        me = await client.get(ME, headers=bearer(body["access_token"]))
        assert me.status_code == 200 and me.json()["id"] == str(user.id)

    async def test_wrong_password_and_unknown_email_get_the_same_answer(self, client, session):
        user = await create_user(session)

        wrong_password = await login(client, user.email, "not the right password")
        unknown_email = await login(client, unique_email())

        assert_invalid_grant(wrong_password, "invalid_credentials")
        assert wrong_password.json() == unknown_email.json()
        assert wrong_password.status_code == unknown_email.status_code

    async def test_unverified_account_with_correct_password(self, client, session):
        user = await create_user(session, verified=False)
        assert_problem(await login(client, user.email), 403, "email_not_verified")

    async def test_unverified_account_with_wrong_password_tells_nothing(self, client, session):
        user = await create_user(session, verified=False)
        assert_invalid_grant(await login(client, user.email, "not the right password"), "invalid_credentials")

    async def test_inactive_account(self, client, session):
        user = await create_user(session, active=False)
        assert_problem(await login(client, user.email), 403, "inactive_user")

    async def test_sixth_failure_within_the_window_is_rate_limited(self, client, session):
        user = await create_user(session)
        other = await create_user(session)
        for _ in range(5):
            assert_invalid_grant(await login(client, user.email, "guess guess guess"), "invalid_credentials")

        blocked = await login(client, user.email)  # even the right password is refused now

        assert_problem(blocked, 429, "rate_limited")
        assert 0 < int(blocked.headers["retry-after"]) <= 15 * 60
        assert (await login(client, other.email)).status_code == 200  # the limit is per email

    async def test_bcrypt_hash_is_accepted_and_upgraded_to_argon2id(self, client, session):
        user = await create_user(session, hashed_password=BcryptHasher(rounds=4).hash(PASSWORD))

        assert (await login(client, user.email)).status_code == 200

        assert (await reload(session, user)).hashed_password.startswith("$argon2id$")
        assert (await login(client, user.email)).status_code == 200

    async def test_long_password_is_never_truncated(self, client, session):
        prefix = "correct horse battery staple " * 2 + "0123456789abcd"  # 72 bytes
        password = prefix + "and twenty-eight more chars!"
        assert (len(prefix.encode()), len(password)) == (72, 100)
        user = await create_user(session, password=password)

        assert_invalid_grant(await login(client, user.email, prefix), "invalid_credentials")
        assert (await login(client, user.email, password)).status_code == 200

    async def test_json_body_is_not_a_form(self, client, session):
        user = await create_user(session)
        response = await client.post(f"{AUTH}/login", json={"username": user.email, "password": PASSWORD})
        assert_problem(response, 415, "unsupported_media_type")

    async def test_missing_password_is_a_validation_error(self, client):
        body = assert_problem(await client.post(f"{AUTH}/login", data={"username": "a@b.c"}), 422, "validation_error")
        assert ["body", "password"] in [e["loc"] for e in body["errors"]]


class TestRefresh:
    async def test_rotation_hands_out_a_new_pair(self, client, session):
        user = await create_user(session)
        first = await start_session(user)

        response = await refresh(client, first.refresh_token)

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["token_type"] == "bearer" and body["expires_in"] == 900
        assert body["refresh_token"] != first.refresh_token
        assert (await client.get(ME, headers=bearer(body["access_token"]))).status_code == 200
        assert (await refresh(client, body["refresh_token"])).status_code == 200  # the chain goes on

    async def test_refresh_lifetime_is_absolute(self, client, session):
        user = await create_user(session)
        first = await start_session(user)
        redis = get_redis()
        first_ttl = await redis.ttl(refresh_key(first.refresh_token))
        assert 14 * 86400 - 60 < first_ttl <= 14 * 86400 + 1

        second = (await refresh(client, first.refresh_token)).json()["refresh_token"]

        assert await redis.ttl(refresh_key(second)) <= first_ttl  # rotation does not extend it

    async def test_reusing_a_rotated_token_revokes_the_whole_login(self, client, session, monkeypatch):
        monkeypatch.setattr(get_settings(), "refresh_reuse_grace_seconds", 0)  # see test_refresh_grace.py
        user = await create_user(session)
        stolen = await start_session(user)
        elsewhere = await start_session(user)
        newest = (await refresh(client, stolen.refresh_token)).json()

        replay = await refresh(client, stolen.refresh_token)

        assert_invalid_grant(replay, "token_reused")
        assert_invalid_grant(await refresh(client, newest["refresh_token"]), "invalid_refresh_token")
        assert_unauthorized(await client.get(ME, headers=bearer(newest["access_token"])))
        assert_unauthorized(await client.get(ME, headers=stolen.headers))
        # Another login of the same user is a different family and lives on.
        assert (await refresh(client, elsewhere.refresh_token)).status_code == 200

    @pytest.mark.parametrize("token", ["unknown", "x" * 256])
    async def test_unknown_token(self, client, token):
        assert_invalid_grant(await refresh(client, token), "invalid_refresh_token")

    async def test_access_token_is_not_a_refresh_token(self, client, session):
        pair = await start_session(await create_user(session))
        assert_invalid_grant(await refresh(client, pair.access_token[:256]), "invalid_refresh_token")

    async def test_expired_family_is_refused(self, client, session):
        pair = await start_session(await create_user(session))
        # What Redis does when the absolute lifetime ends: the keys go away.
        await get_redis().delete(refresh_key(pair.refresh_token))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")


class TestRevocationInTheDatabase:
    """Deactivating a user or moving their "tokens valid after" mark works even when done outside the API."""

    async def test_deactivated_row_refuses_access_and_refresh(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        await session.execute(update(User).where(User.id == user.id).values(is_active=False))
        await session.commit()

        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")

    async def test_tokens_issued_before_the_mark_die(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        await session.execute(
            update(User).where(User.id == user.id).values(tokens_valid_after=datetime.now(UTC) + timedelta(seconds=1))
        )
        await session.commit()

        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
        # The refused refresh ended that login for good, even once the mark has passed.
        await session.execute(
            update(User).where(User.id == user.id).values(tokens_valid_after=datetime.now(UTC) - timedelta(days=1))
        )
        await session.commit()
        assert_unauthorized(await client.get(ME, headers=pair.headers))


class TestLogout:
    async def test_access_and_refresh_token_stop_working_at_once(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        other = await start_session(user)

        response = await client.post(f"{AUTH}/logout", json={"refresh_token": pair.refresh_token}, headers=pair.headers)

        assert response.status_code == 204
        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
        assert (await client.get(ME, headers=other.headers)).status_code == 200  # other logins live on

    async def test_without_a_body_the_login_still_ends(self, client, session):
        pair = await start_session(await create_user(session))

        assert (await client.post(f"{AUTH}/logout", headers=pair.headers)).status_code == 204

        assert_unauthorized(await client.get(ME, headers=pair.headers))
        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")

    async def test_denied_jti_lives_only_as_long_as_the_token(self, client, session):
        pair = await start_session(await create_user(session))
        claims = jwt.decode(pair.access_token, options={"verify_signature": False})

        await client.post(f"{AUTH}/logout", headers=pair.headers)

        assert 0 < await get_redis().ttl(tokens.denied_key(claims["sid"], claims["jti"])) <= 15 * 60

    async def test_the_presented_refresh_token_of_another_login_is_revoked_too(self, client, session):
        user = await create_user(session)
        here = await start_session(user)
        there = await start_session(user)

        await client.post(f"{AUTH}/logout", json={"refresh_token": there.refresh_token}, headers=here.headers)

        assert_invalid_grant(await refresh(client, there.refresh_token), "invalid_refresh_token")

    async def test_someone_elses_refresh_token_is_left_alone(self, client, session):
        mine = await start_session(await create_user(session))
        theirs = await start_session(await create_user(session))

        await client.post(f"{AUTH}/logout", json={"refresh_token": theirs.refresh_token}, headers=mine.headers)

        assert (await refresh(client, theirs.refresh_token)).status_code == 200

    async def test_requires_a_bearer_token(self, client):
        assert_unauthorized(await client.post(f"{AUTH}/logout"))


class TestLogoutAll:
    async def test_every_session_ends(self, client, session):
        user = await create_user(session)
        sessions = [await start_session(user) for _ in range(3)]

        assert (await client.post(f"{AUTH}/logout-all", headers=sessions[0].headers)).status_code == 204

        for pair in sessions:
            assert_unauthorized(await client.get(ME, headers=pair.headers))
            assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
        later = await start_session(user)  # signing in again works
        assert (await client.get(ME, headers=later.headers)).status_code == 200

    async def test_requires_a_bearer_token(self, client):
        assert_unauthorized(await client.post(f"{AUTH}/logout-all"))


class TestPasswordReset:
    async def test_answer_is_the_same_for_every_address(self, client, session):
        known = await create_user(session)
        inactive = await create_user(session, active=False)

        answers = [
            await client.post(f"{AUTH}/password-reset", json={"email": email})
            for email in (known.email, inactive.email, unique_email())
        ]

        assert {r.status_code for r in answers} == {202}
        assert answers[0].json() == answers[1].json() == answers[2].json()
        assert [(m.payload["to"], m.payload["template"]) for m in await outbox(session)] == [
            (known.email, "password_reset")
        ]

    async def test_confirm_sets_the_password_once_and_ends_every_session(self, client, session):
        user = await create_user(session, verified=False)
        before = await start_session(user)
        await client.post(f"{AUTH}/password-reset", json={"email": user.email})
        token = await mailed_token(session, user.email, "password_reset")
        new_password = "a brand new passphrase"

        confirm = await client.post(
            f"{AUTH}/password-reset/confirm", json={"token": token, "new_password": new_password}
        )

        assert confirm.status_code == 204
        assert_unauthorized(await client.get(ME, headers=before.headers))
        assert_invalid_grant(await refresh(client, before.refresh_token), "invalid_refresh_token")
        again = await client.post(
            f"{AUTH}/password-reset/confirm", json={"token": token, "new_password": "yet another passphrase"}
        )
        assert_problem(again, 400, "invalid_token")
        assert (await reload(session, user)).is_verified  # the mailbox was proven
        assert_invalid_grant(await login(client, user.email, PASSWORD), "invalid_credentials")
        assert (await login(client, user.email, new_password)).status_code == 200

    async def test_weak_new_password(self, client, session):
        user = await create_user(session)
        await client.post(f"{AUTH}/password-reset", json={"email": user.email})
        token = await mailed_token(session, user.email, "password_reset")

        response = await client.post(
            f"{AUTH}/password-reset/confirm", json={"token": token, "new_password": "baseball"}
        )

        assert_problem(response, 422, "weak_password")
        assert (await reload(session, user)).hashed_password == await hashed(PASSWORD)

    async def test_expired_unknown_and_verification_tokens_are_refused(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/password-reset", json={"email": user.email})
        await client.post(f"{AUTH}/verify-email/resend", json={"email": user.email})
        reset_token = await mailed_token(session, user.email, "password_reset")
        verify_token = await mailed_token(session, user.email, "verify_email")
        await session.execute(
            update(ActionToken)
            .where(ActionToken.token_hash == token_digest(reset_token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()

        for token in (reset_token, verify_token, "unknown"):
            response = await client.post(
                f"{AUTH}/password-reset/confirm", json={"token": token, "new_password": "a brand new passphrase"}
            )
            assert_problem(response, 400, "invalid_token")
        assert (await reload(session, user)).hashed_password == await hashed(PASSWORD)

    async def test_sixth_request_for_one_email_is_rate_limited(self, client):
        email = unique_email()
        for _ in range(5):
            assert (await client.post(f"{AUTH}/password-reset", json={"email": email})).status_code == 202
        response = await client.post(f"{AUTH}/password-reset", json={"email": email})
        assert_problem(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) > 0


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(user: User, **changes) -> dict:
    settings = get_settings()
    now = time.time()  # sub-second, as the server issues them: the user row was created this very second
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": int(now),
        "exp": int(now) + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict, algorithm: str = "HS256", key: str | None = None) -> str:
    """Signed as the server signs (its current key, named in the header), or with another `key`."""
    ours = keyring().current
    return jwt.encode(claims, key or ours.secret, algorithm=algorithm, headers={"kid": ours.kid})


REQUIRED_CLAIMS = ["sub", "exp", "iat", "nbf", "jti", "iss", "aud", "typ", "role", "sid"]


class TestBearerTokens:
    """Every bad Bearer token is a 401 with `WWW-Authenticate: Bearer`; the forger itself is proven first."""

    async def test_forged_token_with_the_right_key_and_claims_is_accepted(self, client, session):
        user = await create_user(session)
        assert (await client.get(ME, headers=bearer(_sign(_claims(user))))).status_code == 200

    async def test_missing_token(self, client):
        assert_unauthorized(await client.get(ME))

    async def test_other_scheme(self, client):
        assert_unauthorized(await client.get(ME, headers={"Authorization": "Basic dXNlcjpwYXNz"}))

    async def test_alg_none(self, client, session):
        user = await create_user(session)
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(user))}."
        assert_unauthorized(await client.get(ME, headers=bearer(token)))

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    async def test_hs512_with_the_right_secret(self, client, session):
        user = await create_user(session)
        assert_unauthorized(await client.get(ME, headers=bearer(_sign(_claims(user), "HS512"))))

    async def test_rs256_with_a_key_of_the_attackers(self, client, session):
        user = await create_user(session)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert_unauthorized(await client.get(ME, headers=bearer(jwt.encode(_claims(user), key, algorithm="RS256"))))

    async def test_wrong_secret(self, client, session):
        user = await create_user(session)
        token = _sign(_claims(user), key="another-secret-of-at-least-32-bytes!!")
        assert_unauthorized(await client.get(ME, headers=bearer(token)))

    async def test_tampered_payload(self, client, session):
        user = await create_user(session)
        header, _, signature = _sign(_claims(user)).split(".")
        token = f"{header}.{_b64(_claims(user, role='admin'))}.{signature}"
        assert_unauthorized(await client.get(ME, headers=bearer(token)))

    @pytest.mark.parametrize(
        "changes",
        [
            {"aud": "someone-else"},
            {"iss": "someone-else"},
            {"typ": "refresh"},
            {"typ": "verify_email"},
            {"sub": "not-a-uuid"},
            {"sub": str(uuid.uuid4())},  # a well-signed token for nobody
        ],
        ids=["aud", "iss", "typ-refresh", "typ-verify", "sub-garbage", "sub-unknown"],
    )
    async def test_bad_claims(self, client, session, changes):
        user = await create_user(session)
        assert_unauthorized(await client.get(ME, headers=bearer(_sign(_claims(user, **changes)))))

    async def test_expired(self, client, session):
        user = await create_user(session)
        now = int(time.time())
        token = _sign(_claims(user, iat=now - 960, nbf=now - 960, exp=now - 60))
        assert_unauthorized(await client.get(ME, headers=bearer(token)))

    async def test_not_yet_valid(self, client, session):
        user = await create_user(session)
        token = _sign(_claims(user, nbf=int(time.time()) + 600))
        assert_unauthorized(await client.get(ME, headers=bearer(token)))

    @pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
    async def test_missing_claim(self, client, session, claim):
        user = await create_user(session)
        assert_unauthorized(await client.get(ME, headers=bearer(_sign(_claims(user, **{claim: None})))))

    async def test_refresh_token_as_bearer(self, client, session):
        pair = await start_session(await create_user(session))
        assert_unauthorized(await client.get(ME, headers=bearer(pair.refresh_token)))

    async def test_verification_and_reset_tokens_as_bearer(self, client, session):
        user = await create_user(session, verified=False)
        await client.post(f"{AUTH}/verify-email/resend", json={"email": user.email})
        await client.post(f"{AUTH}/password-reset", json={"email": user.email})
        for template in ("verify_email", "password_reset"):
            token = await mailed_token(session, user.email, template)
            assert_unauthorized(await client.get(ME, headers=bearer(token)))

    @pytest.mark.parametrize("token", ["random", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9.e30."])
    async def test_garbage(self, client, token):
        assert_unauthorized(await client.get(ME, headers={"Authorization": f"Bearer {token}"}))
