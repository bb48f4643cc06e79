"""Signing keys through the API: a key ever published never signs a working token, and a rotation
(new `SECRET_KEY`, the old one in `PREVIOUS_SECRET_KEYS`) keeps every session alive."""

import secrets
import time
import uuid

import jwt
import pytest

from app.config import get_settings
from app.utils.keys import key_id, keyring
from tests.assertions import assert_invalid_grant, assert_unauthorized
from tests.factories import bearer, create_user, refresh, start_session
from tests.unit.test_signing_keys import PUBLISHED_KEYS

ME = "/api/v1/users/me"


def claims_of(user) -> dict:
    now = time.time()
    settings = get_settings()
    return {
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


class TestPublishedKeys:
    @pytest.mark.parametrize("key", PUBLISHED_KEYS)
    @pytest.mark.parametrize("kid", ["its own", "ours", "none"])
    async def test_a_token_signed_with_a_key_the_code_ever_shipped_is_refused(self, client, session, key, kid):
        user = await create_user(session)
        header = {"its own": {"kid": key_id(key)}, "ours": {"kid": keyring().current.kid}, "none": None}[kid]
        forged = jwt.encode(claims_of(user), key, algorithm="HS256", headers=header)
        assert_unauthorized(await client.get(ME, headers=bearer(forged)))

    async def test_the_same_token_signed_with_our_key_works(self, client, session):
        user = await create_user(session)
        ours = keyring().current
        token = jwt.encode(claims_of(user), ours.secret, algorithm="HS256", headers={"kid": ours.kid})
        assert (await client.get(ME, headers=bearer(token))).status_code == 200


class TestRotation:
    async def test_a_rotation_keeps_sessions_alive(self, client, session, deploy_keys):
        old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        deploy_keys(old)
        user = await create_user(session)
        before = await start_session(user)
        assert jwt.get_unverified_header(before.access_token)["kid"] == key_id(old)

        deploy_keys(new, old)  # the new key signs, the old one still verifies

        assert (await client.get(ME, headers=bearer(before.access_token))).status_code == 200
        refreshed = await refresh(client, before.refresh_token)
        assert refreshed.status_code == 200, refreshed.text
        after = refreshed.json()
        assert jwt.get_unverified_header(after["access_token"])["kid"] == key_id(new)
        assert (await client.get(ME, headers=bearer(after["access_token"]))).status_code == 200

        deploy_keys(new)  # the old key dropped once its tokens have expired

        assert_unauthorized(await client.get(ME, headers=bearer(before.access_token)))
        assert (await client.get(ME, headers=bearer(after["access_token"]))).status_code == 200
        assert (await refresh(client, after["refresh_token"])).status_code == 200  # opaque: no key in it

    async def test_a_refresh_replayed_across_the_rotation_still_gets_its_successor(self, client, session, deploy_keys):
        """The grace window's sealed successor was sealed with the previous key: opened with it."""
        old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        deploy_keys(old)
        first = await start_session(await create_user(session))
        rotated = (await refresh(client, first.refresh_token)).json()

        deploy_keys(new, old)
        replayed = await refresh(client, first.refresh_token)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["refresh_token"] == rotated["refresh_token"]

        deploy_keys(new)  # sealed by a key no longer listed: refused, never a wrong successor
        assert_invalid_grant(await refresh(client, first.refresh_token), "invalid_refresh_token")
