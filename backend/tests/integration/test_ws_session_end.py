"""Sockets end with their session, at once (close code 4001), not at the next heartbeat check."""

import json

from app.api import ws
from app.config import get_settings
from app.models import Role
from tests.factories import PASSWORD, create_user, mailed_token, refresh, start_session
from tests.integration import test_ws
from tests.integration.test_ws import closed_with, open_socket, receive

ws_url = test_ws.ws_url  # the module's fixture, used here too

AUTH = "/api/v1/auth"


async def _still_open(socket_) -> None:
    await socket_.send("ping")
    assert await receive(socket_) == {"type": "pong"}


class TestSessionEnd:
    async def test_logout_closes_only_that_sessions_sockets(self, ws_url, client, session):
        user = await create_user(session)
        leaving, staying = await start_session(user), await start_session(user)
        gone, kept = await open_socket(ws_url, leaving.access_token), await open_socket(ws_url, staying.access_token)

        assert (await client.post(f"{AUTH}/logout", headers=leaving.headers)).status_code == 204

        assert await closed_with(gone) == ws.SESSION_ENDED
        await _still_open(kept)
        await kept.close()

    async def test_password_change_keeps_the_changing_sessions_sockets(self, ws_url, client, session):
        user = await create_user(session)
        changing, other = await start_session(user), await start_session(user)
        mine, theirs = await open_socket(ws_url, changing.access_token), await open_socket(ws_url, other.access_token)

        body = {"current_password": PASSWORD, "new_password": "an entirely new passphrase"}
        assert (await client.post("/api/v1/users/me/password", json=body, headers=changing.headers)).status_code == 204

        assert await closed_with(theirs) == ws.SESSION_ENDED
        await _still_open(mine)
        await mine.close()

    async def test_password_reset_closes_every_socket(self, ws_url, client, session):
        user = await create_user(session)
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        assert (await client.post(f"{AUTH}/password-reset", json={"email": user.email})).status_code == 202
        token = await mailed_token(session, user.email, "password_reset")

        confirm = {"token": token, "new_password": "an entirely new passphrase"}
        assert (await client.post(f"{AUTH}/password-reset/confirm", json=confirm)).status_code == 204

        assert await closed_with(socket_) == ws.SESSION_ENDED

    async def test_role_change_and_deactivation_close_every_socket(self, ws_url, client, session):
        admin = await create_user(session, role=Role.admin)
        headers = (await start_session(admin)).headers
        promoted, deactivated = await create_user(session), await create_user(session)
        first = await open_socket(ws_url, (await start_session(promoted)).access_token)
        second = await open_socket(ws_url, (await start_session(deactivated)).access_token)

        changed = await client.patch(f"/api/v1/users/{promoted.id}", json={"role": "staff"}, headers=headers)
        assert changed.status_code == 200, changed.text
        assert await closed_with(first) == ws.SESSION_ENDED

        assert (await client.delete(f"/api/v1/users/{deactivated.id}", headers=headers)).status_code == 204
        assert await closed_with(second) == ws.SESSION_ENDED

    async def test_a_replayed_refresh_token_closes_that_logins_sockets(self, ws_url, client, session, monkeypatch):
        monkeypatch.setattr(get_settings(), "refresh_reuse_grace_seconds", 0)
        user = await create_user(session)
        pair = await start_session(user)
        socket_ = await open_socket(ws_url, pair.access_token)
        assert (await refresh(client, pair.refresh_token)).status_code == 200

        assert (await refresh(client, pair.refresh_token)).json()["code"] == "token_reused"

        assert await closed_with(socket_) == ws.SESSION_ENDED

    async def test_an_ordinary_event_named_like_it_is_still_delivered(self, ws_url, session):
        from tests.integration.test_ws import publish_committed

        user = await create_user(session)
        socket_ = await open_socket(ws_url, (await start_session(user)).access_token)
        await publish_committed([user.id], "session.endedness", {"x": 1})
        assert json.dumps(await receive(socket_)) == json.dumps({"type": "session.endedness", "data": {"x": 1}})
        await socket_.close()
