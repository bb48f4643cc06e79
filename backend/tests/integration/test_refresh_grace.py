"""Refresh grace: tabs refreshing with one token at once all stay signed in; a late replay still ends the login."""

import asyncio
import time

from app.config import get_settings
from app.redis import get_redis
from tests.assertions import assert_invalid_grant, assert_unauthorized
from tests.factories import bearer, create_user, refresh, start_session

ME = "/api/v1/users/me"
TABS = 8


async def _works(client, pair: dict) -> None:
    """The access token reads /users/me and the refresh token refreshes once more."""
    assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
    again = await refresh(client, pair["refresh_token"])
    assert again.status_code == 200, again.text
    assert (await client.get(ME, headers=bearer(again.json()["access_token"]))).status_code == 200


class TestConcurrentRefresh:
    async def test_tabs_refreshing_with_one_token_at_once_all_keep_a_working_session(self, client, session):
        user = await create_user(session)
        shared = await start_session(user)

        started = time.perf_counter()
        answers = await asyncio.gather(*(refresh(client, shared.refresh_token) for _ in range(TABS)))
        print(f"{TABS} concurrent refreshes took {time.perf_counter() - started:.3f}s")

        assert [a.status_code for a in answers] == [200] * TABS, [a.text for a in answers]
        pairs = [a.json() for a in answers]
        # One rotation happened; every tab got its successor (each with an access token of its own).
        assert len({p["refresh_token"] for p in pairs}) == 1
        assert len({p["access_token"] for p in pairs}) == TABS
        for pair in pairs:
            assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        await _works(client, pairs[0])

    async def test_replay_within_the_window_returns_the_same_successor(self, client, session):
        user = await create_user(session)
        first = await start_session(user)
        rotated = (await refresh(client, first.refresh_token)).json()

        replayed = await refresh(client, first.refresh_token)

        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["refresh_token"] == rotated["refresh_token"]
        assert (await client.get(ME, headers=bearer(replayed.json()["access_token"]))).status_code == 200
        await _works(client, replayed.json())

    async def test_the_successor_is_not_stored_in_plaintext(self, client, session):
        user = await create_user(session)
        first = await start_session(user)
        successor = (await refresh(client, first.refresh_token)).json()["refresh_token"]
        secret = successor.split(".")[-1]

        redis = get_redis()
        for key in await redis.keys("*"):
            kind = await redis.type(key)
            values = (
                list((await redis.hgetall(key)).values())
                if kind == "hash"
                else list(await redis.smembers(key))
                if kind == "set"
                else [await redis.get(key)]
            )
            assert not any(secret in str(v) for v in values), key


class TestReuseAfterTheWindow:
    async def test_replay_after_the_window_revokes_the_whole_login(self, client, session, monkeypatch):
        monkeypatch.setattr(get_settings(), "refresh_reuse_grace_seconds", 0.2)
        user = await create_user(session)
        stolen = await start_session(user)
        elsewhere = await start_session(user)
        newest = (await refresh(client, stolen.refresh_token)).json()
        await asyncio.sleep(0.4)

        assert_invalid_grant(await refresh(client, stolen.refresh_token), "token_reused")

        assert_invalid_grant(await refresh(client, newest["refresh_token"]), "invalid_refresh_token")
        assert_unauthorized(await client.get(ME, headers=bearer(newest["access_token"])))
        assert (await refresh(client, elsewhere.refresh_token)).status_code == 200

    async def test_a_revoked_login_gets_nothing_even_within_the_window(self, client, session):
        user = await create_user(session)
        pair = await start_session(user)
        await refresh(client, pair.refresh_token)
        await client.post("/api/v1/auth/logout", headers=pair.headers)

        assert_invalid_grant(await refresh(client, pair.refresh_token), "invalid_refresh_token")
